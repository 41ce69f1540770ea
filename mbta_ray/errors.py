"""The project's one error type.

Every error a user can cause (a bad file, option, version or registry state) is a ``MbtaRayError``:
the CLI catches it in one place and prints its message as one line with exit code 2, never a
traceback. Subclasses keep the built-in base they had (``ValueError``, ``LookupError``, ...) so
callers that catch those still work.
"""

from __future__ import annotations


class MbtaRayError(Exception):
    """An error whose message is meant for the user: it names the file, option or version at fault."""


class ConfigError(MbtaRayError, ValueError):
    """An option or config value is out of range or inconsistent; the message names it."""


class MissingFileError(MbtaRayError, FileNotFoundError):
    """A file or folder the user pointed at does not exist (or is not what it should be)."""


class DataError(MbtaRayError, ValueError):
    """A file's contents are not what they should be; the message names the file and the field."""
