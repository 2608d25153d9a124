"""Small exception classes; the CLI prints their message as one line and exits non-zero."""


class OnestockError(Exception):
    """A user-facing error: its message says what was wrong and where."""


class CatalogError(OnestockError):
    """The catalog file is refused whole; the message names the JSON path."""
