"""The one error hierarchy: what a user can fix, reported as one clear message, no traceback.

Every module that raises a user-facing error subclasses :class:`UserError`; this module
imports nothing from rnngen, so any layer may import it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """A problem the user can fix (bad params, missing input, unreachable store, ...); the
    message says what is wrong, where, and how to fix it."""


class MissingInputError(UserError, FileNotFoundError):
    """An input file a stage needs does not exist (a stage run out of order, say)."""


class DiskFullError(UserError, OSError):
    """A file could not be written for want of room (no space left, a quota, a file-size limit)."""


def guard(main: Callable[[], object]) -> int:
    """Run ``main``; print a :class:`UserError` as ``error: ...`` and return exit code 2.

    Anything else is a bug and keeps its traceback.
    """
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
