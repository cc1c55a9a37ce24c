"""Turn the errors a user can fix into one clear message and a non-zero exit, no traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


def user_error_types() -> tuple[type[BaseException], ...]:
    from rnngen.checkpoint import CheckpointError
    from rnngen.config import ConfigError
    from rnngen.data import DataError
    from rnngen.tracking import TrackingError
    from rnngen.train import NonFiniteLossError
    from rnngen.tune import TuneError

    # FileNotFoundError: a missing input named by its path (a stage run out of order, say)
    return (ConfigError, DataError, TrackingError, CheckpointError, NonFiniteLossError, FileNotFoundError, TuneError)


def guard(main: Callable[[], object]) -> int:
    """Run ``main``; print a user error as ``error: ...`` and return exit code 2."""
    try:
        main()
    except user_error_types() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
