"""Does turning tuning on ever ship a worse model, and does it rescue a poor params.yaml?

Runs the real tune and train stages as `dvc exp run -S tune.n_trials=8 -S tune.warm_start=true`
does, on the embedded split, for each seed and each starting point, and scores on the test split
(exact NLL for PixelRNN, IWAE k=100 otherwise, binarized as the evaluate stage does):

- shipped: the model the train stage registers after the search;
- untuned: trial 0 of the same search, which is params.yaml's own configuration trained under
  the same train.time_budget_s (its checkpoint is kept in the study folder), i.e. what
  `make repro` ships without tuning.

Starting points: `defaults` (params.yaml as it is) and `poor` (--poor-overrides, by default
train.lr=1e-4 and model.pixelrnn.hidden=16). For `poor`, the gap recovered is
(untuned poor - shipped poor) / (untuned poor - untuned defaults), seed by seed.

    python bench/tuning_helps.py                           # 3 seeds, both starting points
    python bench/tuning_helps.py --seeds 1 --starts poor   # one seed of the poor start
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from rnngen import checkpoint, data, registry
from rnngen.config import load_params, load_yaml, set_dotted
from rnngen.models import build_model, model_choice
from rnngen.stages import train as train_stage
from rnngen.stages import tune as tune_stage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tune_bench import add_split_argument, ensure_split  # noqa: E402  (bench/ is not a package)

POOR = ["train.lr=1e-4", "model.pixelrnn.hidden=16"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_argument(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train.seed and tune.seed values")
    p.add_argument("--starts", nargs="+", choices=["defaults", "poor"], default=["defaults", "poor"])
    p.add_argument("--n-trials", type=int, default=8, help="tune.n_trials (default: %(default)s)")
    p.add_argument("--poor-overrides", nargs="+", default=POOR, metavar="KEY=VALUE",
                   help="the poor params.yaml (default: %(default)s)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more overrides for both starts")
    p.add_argument("--defaults-untuned", nargs="*", default=[], metavar="SEED=NLL",
                   help="untuned test NLL of the defaults start from an earlier run, for the gap of --starts poor")
    p.add_argument("--k", type=int, default=100, help="importance samples for latent models' bounds")
    return p.parse_args(argv)


def overrides(pairs: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs, each value read as params.yaml reads it (1e-4 a number)."""
    return {k: load_yaml(v) for k, v in (pair.split("=", 1) for pair in pairs)}


def test_nll(model: Any, split: Path, k: int) -> float:
    x_test, _ = data.load_split(split, "test")
    x = data.binarized_test_set(x_test, data.split_info(split)["binarization"], seed=0)  # evaluate.seed 0
    return model.likelihood_metrics(x, k, 100, seed=0, progress=False)["nll_iwae"]


def untuned_model(params: dict[str, Any], study: Path, trial: int) -> Any:
    """Trial 0's best weights in params.yaml's own model."""
    (path,) = study.rglob(f"halving/*/trial-{trial}.pt")
    choice = model_choice(params)
    model = build_model(choice.name, choice.config)
    model.load_state_dict(checkpoint.load(path)["best_weights"])
    return model.eval()


def run_start(label: str, params: dict[str, Any], split: Path, folder: Path, k: int) -> dict[str, Any]:
    folder.mkdir(parents=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    print(f"\n=== {label}", flush=True)
    t0 = time.perf_counter()
    result = tune_stage.run(params, split, folder / "study", folder / "best.json", folder / "warm.pt")
    tune_s = time.perf_counter() - t0
    tuned = set_dotted(params, result["params"])
    summary = train_stage.run(tuned, split, folder / "best.json", folder / "models", folder / "ck.pt",
                              folder / "h.csv", folder / "warm.pt")
    shipped = checkpoint.load_model(folder / "models" / registry.CHECKPOINT_FILE)
    untuned = untuned_model(params, folder / "study", result["untuned_trial"])
    return {"label": label, "shipped": test_nll(shipped, split, k), "untuned": test_nll(untuned, split, k),
            "tune_s": tune_s, "train_epochs_now": summary["epochs_run"] - summary["resumed_from_epoch"],
            "chosen": result["chosen"], "why": result["why"],
            "values": {key.split(".")[-1]: v for key, v in result["params"].items()},
            "speed": result.get("images_per_second")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    load_before = os.getloadavg()
    base = set_dotted(load_params(ROOT / "params.yaml"), overrides(args.set))
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="tuning-helps-") as tmp:
        scratch = Path(tmp)
        split = ensure_split(args.split, scratch)
        for seed in args.seeds:
            for start in args.starts:
                params = set_dotted(base, {"tune.n_trials": args.n_trials, "tune.warm_start": True,
                                           "tune.seed": seed, "train.seed": seed})
                if start == "poor":
                    params = set_dotted(params, overrides(args.poor_overrides))
                row = run_start(f"{start} seed {seed}", params, split, scratch / f"{start}-{seed}", args.k)
                rows[(start, seed)] = row
                print(row, flush=True)
    load_after = os.getloadavg()

    print(f"\ntune.n_trials={args.n_trials}, tune.warm_start=true; test NLL (nats), seeds {args.seeds}")
    print(f"{'start':>8} {'seed':>4} {'untuned':>8} {'shipped':>8} {'diff':>6}  tune s  chosen")
    for (start, seed), r in rows.items():
        print(f"{start:>8} {seed:>4} {r['untuned']:8.2f} {r['shipped']:8.2f} {r['shipped'] - r['untuned']:+6.2f}"
              f"  {r['tune_s']:6.0f}  {r['chosen']} {r['values'] or ''}")
    for start in args.starts:
        diffs = [r["shipped"] - r["untuned"] for (s, _), r in rows.items() if s == start]
        print(f"{start}: shipped - untuned, mean {statistics.fmean(diffs):+.2f}, worst {max(diffs):+.2f}")
    good = {int(k): float(v) for k, v in (pair.split("=", 1) for pair in args.defaults_untuned)}
    good.update({s: r["untuned"] for (start, s), r in rows.items() if start == "defaults"})
    poor = {s: r for (start, s), r in rows.items() if start == "poor"}
    recovered = [(r["untuned"] - r["shipped"]) / (r["untuned"] - good[s]) for s, r in poor.items() if s in good]
    if recovered:
        print("poor: gap to the defaults recovered " + ", ".join(f"{g:.0%}" for g in recovered)
              + f" (mean {statistics.fmean(recovered):.0%})")
    print(f"machine: {os.cpu_count()} CPUs; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
