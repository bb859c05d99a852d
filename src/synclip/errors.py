"""The base of every error that is the caller's to fix; the CLI prints it as one line."""


class UserError(ValueError):
    """Bad input, params or files: the message names what is wrong and where."""
