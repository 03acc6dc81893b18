"""The one exception type users see: the CLI prints its message as a single line."""


class HiresError(Exception):
    """A problem with the user's input or request, reported without a traceback."""
