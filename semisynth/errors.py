"""Errors every layer raises and the command line maps to exit codes: every exception class
of semisynth is here, but for a module's private control-flow signals (``documents._Refused``,
``serve._Stop``)."""

import errno
import reprlib


class InputError(ValueError):
    """A usage or input problem the user can fix (exit code 2)."""


class KeyedInputError(InputError):
    """An input problem with one key of a config (``corpora.x.reference``) or one argument
    of a command (``NAME``): raised from a config model's validator, the config's error
    message names this key instead of the model's."""

    def __init__(self, key: str, problem: str):
        self.key, self.problem = key, problem
        super().__init__(f"{clip(key, 2 * EXCERPT_CHARS)}: {problem}")


class BadName(KeyedInputError):
    """A name that is not a plain name (``rule``: ``names.NAME_RULE``); ``key`` says where it
    was given (a config key such as ``corpora.x.edited_from``, or a command-line argument
    such as ``NAME``)."""

    def __init__(self, key: str, value: object, rule: str):
        self.value = value
        super().__init__(key, f"{excerpt(value)} is not {rule}")


class NotWritable(InputError):
    """A place semisynth must write (the data root, a report's file) refuses it: permission
    denied, or a read-only filesystem. The user's to fix (another folder, or the rights),
    not a crash. ``hint`` says what to do instead."""

    def __init__(self, what: str, path: object, exc: OSError, hint: str = ""):
        self.path = path
        super().__init__(f"{what} {path} is not writable ({exc.strerror or exc}: "
                         f"{exc.filename or path}){'; ' + hint if hint else ''}")


class WrongEncoding(ValueError):
    """A jsonl file that is not UTF-8 at all (UTF-16 or UTF-32) from some line on."""


class VerificationFailed(RuntimeError):
    """The release, or its copy, does not match its manifest (exit code 1)."""

    def __init__(self, what: str, problems: list[str]):
        super().__init__(f"{what}: " + "; ".join(problems))
        self.what, self.problems = what, problems


class DestinationTaken(InputError):
    """The destination holds another release's copy, or other files (exit code 2)."""


class UnknownRun(LookupError):
    """A run id the warehouse does not hold (``semisynth report``: exit code 2)."""


class LockHeld(RuntimeError):
    """Another process holds a lock semisynth needs, past the wait allowed (exit code 3)."""


class DataRootLocked(LockHeld):
    """Another run holds the data root's lock."""


class QueryError(ValueError):
    """The statement was refused or failed (exit code 2)."""


class QueryTimeout(QueryError):
    """The statement ran past its time limit and was interrupted."""


def write_refused(exc: OSError) -> bool:
    """Whether ``exc`` says a place may not be written: permissions or a read-only
    filesystem (not a full disk or a missing folder)."""
    return exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)


# What a run refuses rather than crashes on: exit 2, and a tracked run ends REFUSED
# (warehouse.records) and its flow run "Refused" (flows.lifecycle). FileNotFoundError is
# here because the command line has always answered it with 2 (a document file or config
# that is not there), so the run's status and the exit code agree.
REFUSALS = (InputError, FileNotFoundError)

# At most this many characters of a bad value in an error message. A YAML alias expands a
# 1 KB config to gigabytes of repr: never build a value's whole repr for a message.
EXCERPT_CHARS = 80


class _Excerpt(reprlib.Repr):
    def __init__(self):
        super().__init__()  # keyword arguments only from Python 3.12
        self.maxlevel = 3
        for kind in ("tuple", "list", "array", "dict", "set", "frozenset", "deque"):
            setattr(self, f"max{kind}", 4)
        self.maxstring = self.maxlong = self.maxother = EXCERPT_CHARS

    def repr_int(self, x: int, level: int) -> str:
        # reprlib writes the whole number first: past 4300 digits Python refuses to
        if x.bit_length() > 4 * self.maxlong:
            return f"<an integer of about {int(x.bit_length() * 0.30103)} digits>"
        return super().repr_int(x, level)


_EXCERPT = _Excerpt()


def clip(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text``, cut to at most ``limit`` characters with ``...``: a key or name as given."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """A repr of ``value`` of at most ``limit`` characters, built in bounded time: at most 4
    items of each container, 3 levels deep (``reprlib``), then cut with ``...``."""
    return clip(_EXCERPT.repr(value), limit)
