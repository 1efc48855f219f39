"""The one rule for names that become paths: a config, corpus, arm, experiment or release
name (and a release version) is a folder name under the data root, part of a release path
and of a push destination, so it must be one plain path component.

A plain name is ASCII letters, digits, ``_``, ``-`` and ``.``, at most 128 characters,
starting with a letter, a digit or ``_``: not with ``.`` (``..``, hidden folders) nor with
``-`` (it would read as an option on a command line, e.g. ``release push -x DEST``). ASCII
only: object stores and the Hugging Face Hub take no other letters in repository names.

This module imports nothing heavy: the command line checks a name given to it with
``check_name`` before it loads anything else.
"""

from __future__ import annotations

import re

from semisynth.errors import BadName

MAX_NAME = 128
PLAIN_NAME = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{MAX_NAME - 1}}}")
NAME_RULE = (f"a plain name: letters, digits, '_', '-' and '.', at most {MAX_NAME} "
             "characters, not starting with '.' or '-'")


def is_plain_name(value: object) -> bool:
    return isinstance(value, str) and PLAIN_NAME.fullmatch(value) is not None


def check_name(value: object, key: str) -> str:
    """``value`` when it is a plain name; else BadName (an InputError: exit 2) naming
    ``key``, where the name was given."""
    if not is_plain_name(value):
        raise BadName(key, value, NAME_RULE)
    return value
