"""Errors every layer raises and the command line maps to exit codes."""


class InputError(ValueError):
    """A usage or input problem the user can fix (exit code 2)."""


class KeyedInputError(InputError):
    """An input problem with one key of a config (``corpora.x.reference``) or one argument
    of a command (``NAME``): raised from a config model's validator, the config's error
    message names this key instead of the model's."""

    def __init__(self, key: str, problem: str):
        self.key, self.problem = key, problem
        super().__init__(f"{key}: {problem}")
