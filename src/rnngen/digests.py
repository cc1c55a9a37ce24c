"""Digests of inputs and code: what a cache, a fingerprint or a study identity compares."""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def json_digest(obj: Any) -> str:
    """sha256 (hex) of ``obj`` as canonical JSON: equal settings, equal digest."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


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
