"""Writing outputs so that a failure leaves nothing half-written; digests of inputs and code."""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rnngen.errors import MissingInputError


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


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix) to write; rename it into place on
    success, remove it on failure: a kill mid-write leaves the previous file intact.

    The one atomic writer: text, JSON, checkpoints, PNGs and CSVs all go through it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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


def file_digest(path: str | Path, algorithm: str = "md5") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_digest(files: Iterable[Path], root: Path) -> str:
    """sha256 over the names (relative to ``root``) and bytes of ``files``, in sorted order."""
    h = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(file_digest(path, "sha256").encode() + b"\n")
    return h.hexdigest()


def folder_digest(folder: str | Path, pattern: str = "*") -> str:
    """:func:`tree_digest` of the files matching ``pattern`` in ``folder`` (not recursive)."""
    folder = Path(folder)
    return tree_digest((p for p in folder.glob(pattern) if p.is_file()), folder)


def imported_modules(path: Path, packages: Sequence[str]) -> set[str]:
    """Every module of ``packages`` that ``path`` imports (inside functions too), with the
    parent packages that importing it runs."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # submodules, if they are
    out = set()
    for name in names:
        parts = name.split(".")
        if parts[0] in packages:
            out.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return out


def import_closure(start: Path, search: Sequence[Path], packages: Sequence[str] = ("rnngen",)) -> set[Path]:
    """The files of ``packages`` (found under ``search``) that running ``start`` can import,
    walking every import statically, lazy ones too; ``start`` included. Native sources in a
    ``csrc/`` folder beside a module reached (C++ kernels its package compiles and loads, as
    ``rnngen.models.kernels`` does) are code that runs too, and are included."""
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path, packages):
            for base in search:
                stem = base.joinpath(*name.split("."))
                found = next((c for c in (stem.with_suffix(".py"), stem / "__init__.py") if c.is_file()), None)
                if found is not None:
                    todo.append(found)
                    break
    native = {f for path in seen if (path.parent / "csrc").is_dir() for f in (path.parent / "csrc").rglob("*")
              if f.is_file()}
    return seen | native


def source_digest(module: str) -> str:
    """sha256 of the source of ``module`` (e.g. ``rnngen.stages.train``) and of every rnngen
    module it can import: the code that runs.

    Part of the training fingerprint, so that a checkpoint written by other code (a fixed
    initialisation, a changed loss) is never resumed; the same files are the stage's deps in
    dvc.yaml (tests/test_dvc_deps.py), so what the fingerprint reads, DVC watches.
    """
    src = Path(__file__).resolve().parents[1]
    start = src.joinpath(*module.split(".")).with_suffix(".py")
    return tree_digest(import_closure(start, [src]), src)


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
