"""Writing outputs so that a failure leaves nothing half-written; finding the project root."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rnngen.errors import DiskFullError, MissingInputError


@contextlib.contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``out``; move it into place only on success.

    On any exception the temporary folder is removed and ``out`` is left absent (a stage's
    outputs are removed by DVC before it runs, so "absent" is the clean state).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.replace(tmp, out)


def umask() -> int:
    """The process's file-creation mask, read without changing it where Linux shows it (setting
    it to read it back would race with files other threads create meanwhile)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | Path, private: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix) to write; rename it into place on
    success, remove it on failure: a kill mid-write leaves the previous file intact, and no room
    to write it (a full disk, a quota, a file-size limit) is a :class:`DiskFullError` saying so.

    The one atomic writer: text, JSON, checkpoints, PNGs and CSVs all go through it. The file
    gets the mode the umask gives (0644 under umask 022), like ``open`` would: ``mkstemp``'s
    0600 would hide pictures and reports from everyone else. ``private`` keeps 0600 (secrets).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    if not private:
        os.chmod(tmp, 0o666 & ~umask())
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise DiskFullError(f"could not write {path}: {exc.strerror} (no room on its disk, or a file-size "
                                "limit); what was there before is intact. Free space, then rerun: training "
                                "resumes from its last checkpoint") from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    """A JSON input; a missing file is a :class:`MissingInputError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path} not found; run the stage that writes it first (dvc repro)")
    return json.loads(path.read_text())


def find_project_root(start: str | Path | None = None) -> Path:
    """The folder holding ``dvc.yaml``, walking up from ``start`` (default: the cwd).

    A DVC temporary experiment runs in ``<root>/.dvc/tmp/exps/<name>``: its own copy of the
    repo. We climb out of it so that every experiment logs to the project's one MLflow store.
    """
    here = Path(start or Path.cwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return here
