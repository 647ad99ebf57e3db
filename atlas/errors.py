"""User-facing errors: one line that says what went wrong and what to do."""

from __future__ import annotations


class AtlasError(Exception):
    """An error the user can act on. ``str(err)`` is the whole message, one line.

    Raise it as ``AtlasError("what went wrong — what to do")``. The CLI prints it without a
    traceback (``--debug`` shows one) and exits non-zero.
    """


class DatabaseUnavailable(AtlasError):
    """The database cannot be reached or refuses us."""


class SchemaOutOfDate(AtlasError):
    """The database schema is behind (or ahead of) this version of the atlas."""
