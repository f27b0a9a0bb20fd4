"""The one exception type for mistakes a user can cause; the CLI prints it as a single line."""


class UserError(Exception):
    """A bad path, flag or file: reported as one clear line and a non-zero exit, never a traceback."""
