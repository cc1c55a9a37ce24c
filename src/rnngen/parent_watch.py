"""A child process that outlives its parent keeps training and writing where the next run will
look: workers started by torchrun (each in a process group of its own) or by the tuning stage
exit as soon as their parent is gone."""

from __future__ import annotations

import os
import threading
import time


def exit_when_parent_dies(interval: float = 0.5) -> None:
    """Start a daemon thread that ends this process (exit code 3) once its parent has died:
    the kernel then re-parents it, so its parent id changes."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(3)

    threading.Thread(target=watch, daemon=True, name="exit-when-parent-dies").start()
