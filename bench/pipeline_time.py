"""Wall time of each pipeline stage from a clean clone, as a user's `make repro` runs it.

    python bench/pipeline_time.py                  # defaults from params.yaml
    python bench/pipeline_time.py -S train.epochs=3 -S tune.n_trials=0

Clones the current commit into a temporary folder (uncommitted changes are not measured),
runs `dvc repro -s <stage>` for each stage in order and prints a table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["download", "split", "tune", "train", "classifier", "evaluate"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a param for this measurement (dotted key, YAML value)")
    p.add_argument("--keep", action="store_true", help="keep the temporary clone and print its path")
    args = p.parse_args()

    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    tmp = Path(tempfile.mkdtemp(prefix="rnngen-bench-"))
    subprocess.run(["git", "clone", "-q", str(ROOT), str(tmp)], check=True)
    if args.set:
        params = yaml.safe_load((tmp / "params.yaml").read_text())
        for item in args.set:
            key, value = item.split("=", 1)
            node = params
            *parents, leaf = key.split(".")
            for part in parents:
                node = node[part]
            node[leaf] = yaml.safe_load(value)
        (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    rows, total = [], 0.0
    for stage in STAGES:
        t0 = time.perf_counter()
        proc = subprocess.run([str(bin_dir / "dvc"), "repro", "-f", "-s", stage], cwd=tmp, env=env,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"stage {stage} failed:\n{proc.stdout}\n{proc.stderr}")
        rows.append((stage, seconds))
        total += seconds
    print(f"pipeline wall time per stage ({os.cpu_count()} CPUs, clean clone of {_head()})")
    print(f"{'stage':<10} {'seconds':>9} {'share':>7}")
    for stage, seconds in rows:
        print(f"{stage:<10} {seconds:9.1f} {seconds / total:7.1%}")
    print(f"{'total':<10} {total:9.1f}")
    if args.keep:
        print(f"clone kept at {tmp}")


def _head() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()


if __name__ == "__main__":
    main()
