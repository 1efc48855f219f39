"""Errors every layer raises and the command line maps to exit codes."""


class InputError(ValueError):
    """A usage or input problem the user can fix (exit code 2)."""
