"""dvc.yaml tells the truth: every stage lists as deps the code it runs and the files it reads.

The import closure of each stage's command script is walked statically (every ``import`` in
every module reached, lazy ones inside functions too), so a code change anywhere in it reruns
the stage. The files a stage opens are checked for real in ``test_pipeline.py``.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from rnngen import digests

SRC = ROOT / "src"
FIRST_PARTY = ("rnngen", "_common")


def import_closure(script: Path, src: Path = SRC) -> set[Path]:
    return digests.import_closure(script, [script.parent, src], FIRST_PARTY)


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


def test_native_sources_beside_a_module_are_in_its_closure_and_the_code_digest(tmp_path: Path) -> None:
    """A C++ kernel a package compiles at run time is code that runs: it is in the closure (so in
    the training fingerprint's code digest, digests.source_digest), and changing it changes the digest."""
    pkg = tmp_path / "src" / "rnngen"
    (pkg / "csrc").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "csrc" / "k.cpp").write_text("int f() { return 1; }\n")
    script = tmp_path / "s.py"
    script.write_text("import rnngen\n")
    found = import_closure(script, tmp_path / "src")
    assert pkg / "csrc" / "k.cpp" in found
    before = digests.tree_digest(found, tmp_path)
    (pkg / "csrc" / "k.cpp").write_text("int f() { return 2; }\n")
    assert digests.tree_digest(found, tmp_path) != before
    real = digests.import_closure(ROOT / "src/rnngen/stages/train.py", [SRC])
    for kernel in ("row_lstm.cpp", "diagonal_bilstm.cpp", "lstm_cell.cpp", "cell_math.h"):
        assert ROOT / "src/rnngen/models/csrc" / kernel in real, kernel


def test_the_real_dvc_yaml_fails_when_a_dep_is_removed() -> None:
    """Deleting one declared module from a stage's deps makes the check fail (it can fail)."""
    stage = dict(stages()["train"])
    stage["deps"] = [d for d in dep_paths(stage) if d != "src/rnngen/checkpoint.py"]
    assert "src/rnngen/checkpoint.py" in undeclared(stage)


def test_the_stages_package_imports_nothing() -> None:
    """rnngen/stages/__init__.py runs before every stage: importing a stage from it would put
    every stage's code in every stage's closure."""
    assert digests.imported_modules(SRC / "rnngen" / "stages" / "__init__.py", FIRST_PARTY) == set()


def stage_arg(stage: str, flag: str) -> Path:
    argv = shlex.split(stages()[stage]["cmd"])
    return Path(argv[argv.index(flag) + 1])


def test_the_commands_read_the_outputs_where_dvc_yaml_writes_them() -> None:
    """rnngen.layout names dvc.yaml's outputs once for the commands run after `dvc repro`."""
    from rnngen import layout, registry

    assert layout.SPLIT == stage_arg("split", "--out") == stage_arg("train", "--split")
    assert layout.RUN_JSON == stage_arg("train", "--out") / registry.RUN_FILE
    assert layout.METRICS_JSON == stage_arg("evaluate", "--metrics")
    assert layout.PROMOTION_REPORT.parent == layout.METRICS_JSON.parent
