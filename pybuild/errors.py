"""Error types shared by the command line and the builder.

Every error a user can cause is a PybuildError whose str() is one line (or a
line plus a source excerpt) that says what is wrong and where; the CLI prints it
and exits non-zero. Tracebacks are for bugs only.
"""

from __future__ import annotations


class PybuildError(Exception):
    """A failure pybuild reports to the user (exit status 1 unless `exit_code` says otherwise)."""

    exit_code = 1


class UsageError(PybuildError):
    """Bad command-line input (exit status 2, like docker)."""

    exit_code = 2


class BuildError(PybuildError):
    """A build step failed. `location` is "FILE:LINE:COL" (1-based) for an error about a Dockerfile
    instruction (the flag value or argument it is about, else the keyword), else what the error is
    about (e.g. "--target", the Dockerfile's name)."""

    def __init__(self, message: str, location: str | None = None):
        self.location = location
        super().__init__(f"{location}: {message}" if location else message)
