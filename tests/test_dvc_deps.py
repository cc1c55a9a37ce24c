"""dvc.yaml tells the truth: every stage lists as deps the code it runs and the files it reads.

The import closure of each stage's command script is walked statically (every ``import`` in
every module reached, lazy ones inside functions too), so a code change anywhere in it reruns
the stage. The files a stage opens are checked for real in ``test_pipeline.py``.
"""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

SRC = ROOT / "src"
FIRST_PARTY = ("rnngen", "_common")


def module_file(name: str, search: list[Path]) -> Path | None:
    """The file behind module ``name`` (a module or a package's ``__init__.py``), or None."""
    for base in search:
        path = base.joinpath(*name.split("."))
        for candidate in (path.with_suffix(".py"), path / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every first-party module ``path`` imports, with the packages that importing runs."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # submodules, if they are
    out = set()
    for name in names:
        if name.split(".")[0] in FIRST_PARTY:
            parts = name.split(".")
            out.update(".".join(parts[: i + 1]) for i in range(len(parts)))  # parent packages run too
    return out


def import_closure(script: Path, src: Path = SRC) -> set[Path]:
    search = [script.parent, src]
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path):
            found = module_file(name, search)
            if found is not None:
                todo.append(found)
    return seen


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def dep_paths(stage: dict) -> list[str]:
    return [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]


def covered(path: Path, deps: list[str], root: Path = ROOT) -> bool:
    rel = path.resolve().relative_to(root.resolve()).as_posix()
    return any(rel == d.rstrip("/") or rel.startswith(d.rstrip("/") + "/") for d in deps)


def script_of(stage: dict) -> Path:
    argv = shlex.split(stage["cmd"])
    assert argv[0] == "python", f"stage command should start with python: {stage['cmd']}"
    return ROOT / argv[1]


def undeclared(stage: dict) -> list[str]:
    deps = dep_paths(stage)
    return sorted(p.relative_to(ROOT).as_posix() for p in import_closure(script_of(stage))
                  if not covered(p, deps))


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_module_a_stage_runs_is_a_declared_dep(name: str) -> None:
    missing = undeclared(stages()[name])
    assert not missing, f"dvc.yaml stage {name!r} runs these files but does not list them as deps: {missing}"


def test_the_closure_walk_catches_an_undeclared_lazy_import(tmp_path: Path) -> None:
    """The check itself: a module that imports another inside a function, undeclared, is found."""
    pkg = tmp_path / "src" / "rnngen"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from rnngen import b\n    return b\n")
    (pkg / "b.py").write_text("X = 1\n")
    script = tmp_path / "pipeline" / "s.py"
    script.parent.mkdir()
    script.write_text("from rnngen.a import f\n")
    found = import_closure(script, tmp_path / "src")
    rel = {p.relative_to(tmp_path).as_posix() for p in found}
    assert rel == {"pipeline/s.py", "src/rnngen/__init__.py", "src/rnngen/a.py", "src/rnngen/b.py"}
    deps = ["pipeline/s.py", "src/rnngen/__init__.py", "src/rnngen/a.py"]
    assert [p.name for p in found if not covered(p, deps, tmp_path)] == ["b.py"]


def test_the_real_dvc_yaml_fails_when_a_dep_is_removed() -> None:
    """Deleting one declared module from a stage's deps makes the check fail (it can fail)."""
    stage = dict(stages()["train"])
    stage["deps"] = [d for d in dep_paths(stage) if d != "src/rnngen/checkpoint.py"]
    assert "src/rnngen/checkpoint.py" in undeclared(stage)


def test_the_stages_package_imports_nothing() -> None:
    """rnngen/stages/__init__.py runs before every stage: importing a stage from it would put
    every stage's code in every stage's closure."""
    assert imported_modules(SRC / "rnngen" / "stages" / "__init__.py") == set()
