"""Does tuning pay at equal wall time? The tune + train stages against params.yaml's untuned
values, with the same total seconds, over several seeds; test NLL of each (exact for PixelRNN,
IWAE k=100 otherwise), on the split's test images binarized as the evaluate stage does.

    python bench/tune_vs_untuned.py                       # 3 seeds, 300 s each arm (make repro's cap)
    python bench/tune_vs_untuned.py --seeds 1 --total 120 --tuned-epochs 8

untuned: the train stage with params.yaml (tune.n_trials 0) and train.time_budget_s = --total.
tuned: the tune stage with successive halving on the real schedule (tune.pruner halving,
--trials configurations of --first-epochs epochs, the best 1 / --rate go on, and so on) and
warm start (the train stage continues the winner), then the train stage with
train.time_budget_s = --total minus what the tune stage took; train.epochs = --tuned-epochs,
the schedule's length, shorter than params.yaml's by about what the losers cost. Both arms run
the real stage functions in fresh folders with their own MLflow store; the order of the two
alternates from seed to seed, so load from other work falls on both alike.
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

from rnngen import data, registry, tuning
from rnngen.checkpoint import load_model
from rnngen.config import load_params, set_dotted
from rnngen.stages import train as train_stage
from rnngen.stages import tune as tune_stage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tune_bench import add_split_argument, ensure_split  # noqa: E402  (bench/ is not a package)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_argument(p)
    p.add_argument("--seeds", type=int, default=3, help="seeds (train.seed and tune.seed) (default: %(default)s)")
    p.add_argument("--total", type=float, default=300.0, help="seconds per arm, tune + train (default: %(default)s)")
    p.add_argument("--trials", type=int, default=4, help="configurations in the first rung (default: %(default)s)")
    p.add_argument("--first-epochs", type=int, default=2, help="epochs of the first rung (default: %(default)s)")
    p.add_argument("--rate", type=int, default=2, help="tune.halving_rate (default: %(default)s)")
    p.add_argument("--tuned-epochs", type=int, default=20,
                   help="train.epochs of the tuned arm: its schedule (default: %(default)s)")
    p.add_argument("--lr", type=float, nargs=2, default=[1e-3, 5e-3], metavar=("LOW", "HIGH"),
                   help="tune.lr range, log scale (default: %(default)s)")
    p.add_argument("--models", nargs="+", default=[], help="tune.models (default: model.name alone)")
    p.add_argument("--hidden", type=int, nargs="+", help="tune.hidden (default: the model's own hidden size)")
    p.add_argument("--batch-size", type=int, nargs="+", help="tune.batch_size (default: train.batch_size)")
    p.add_argument("--k", type=int, default=100, help="importance samples for latent models' bounds")
    return p.parse_args(argv)


def run_arm(label: str, params: dict[str, Any], split: Path, folder: Path, total: float, tuned: bool,
            k: int) -> dict[str, Any]:
    folder.mkdir(parents=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    print(f"\n=== {label}", flush=True)
    t0 = time.perf_counter()
    result = tune_stage.run(params, split, folder / "study", folder / "best.json", folder / "warm.pt")
    tune_s = time.perf_counter() - t0
    left = max(1.0, total - tune_s)
    params = set_dotted(params, {"train.time_budget_s": left})
    summary = train_stage.run(params, split, folder / "best.json", folder / "models", folder / "ck.pt",
                               folder / "h.csv", folder / "warm.pt")
    wall = time.perf_counter() - t0
    model = load_model(folder / "models" / registry.CHECKPOINT_FILE)
    x_test, _ = data.load_split(split, "test")
    binarization = data.split_info(split)["binarization"]
    x = data.binarized_test_set(x_test, binarization, seed=0)  # as the evaluate stage (evaluate.seed 0)
    bounds = model.likelihood_metrics(x, k, 100, seed=0, progress=False)
    chosen = {key.split(".")[-1]: v for key, v in result.get("params", {}).items()}
    return {"arm": label, "tuned": tuned, "test_nll": bounds["nll_iwae"], "exact": model.exact_likelihood,
            "tune_s": tune_s, "train_s": summary["train_seconds"], "wall_s": wall,
            "epochs": summary["epochs_run"], "warm_start_epochs": summary["resumed_from_epoch"],
            "chosen": chosen}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    load_before = os.getloadavg()
    base = load_params(ROOT / "params.yaml")
    rows = []
    with tempfile.TemporaryDirectory(prefix="tune-vs-untuned-") as tmp:
        scratch = Path(tmp)
        split = ensure_split(args.split, scratch)
        for seed in range(args.seeds):
            untuned = set_dotted(base, {"tune.n_trials": 0, "train.seed": seed})
            space = {"pruner": "halving", "resource": "epochs", "n_trials": args.trials, "epochs": args.first_epochs,
                     "halving_rate": args.rate, "warm_start": True, "train_images": 0, "seed": seed,
                     "budget_s": args.total / 2, "lr": {"low": args.lr[0], "high": args.lr[1]},
                     "optimizer": ["adam"], "models": args.models, "startup_trials": args.trials,
                     "workers": 1, "threads": 0, "storage": "", "device": "cpu"}
            model = "+".join(args.models) or base["model"]["name"]
            if args.hidden or not args.models:  # default: the model's own size, so only lr is searched
                own = tuning.families(tuning.tune_config(base), base)[0]
                space["hidden"] = args.hidden or sorted({own.section[f] for f in own.hidden_fields})
            space["batch_size"] = args.batch_size or [base["train"]["batch_size"]]
            tuned = set_dotted(base, {**{f"tune.{k}": v for k, v in space.items()},
                                      "train.seed": seed, "train.epochs": args.tuned_epochs})
            arms = [("untuned", untuned, False), ("tuned", tuned, True)]
            if seed % 2:
                arms.reverse()
            for label, params, is_tuned in arms:
                row = run_arm(f"{label} seed {seed} ({model})", params, split, scratch / f"{label}-{seed}",
                              args.total, is_tuned, args.k)
                rows.append({**row, "seed": seed})
                print(row, flush=True)
    load_after = os.getloadavg()

    print(f"\ntuned vs untuned at {args.total:.0f} s per arm (tune + train), test NLL in nats "
          f"({'exact' if rows[0]['exact'] else f'IWAE k={args.k}'}), {args.seeds} seed(s)")
    print(f"{'seed':>4} {'untuned':>9} {'tuned':>9} {'tuned - untuned':>16}  tuned: wall s (of it tune), epochs "
          "(warm start after), chosen | untuned: wall s, epochs")
    diffs = []
    for seed in sorted({r["seed"] for r in rows}):
        u = next(r for r in rows if r["seed"] == seed and not r["tuned"])
        t = next(r for r in rows if r["seed"] == seed and r["tuned"])
        diffs.append(t["test_nll"] - u["test_nll"])
        print(f"{seed:>4} {u['test_nll']:9.2f} {t['test_nll']:9.2f} {diffs[-1]:+16.2f}  "
              f"{t['wall_s']:.0f} s ({t['tune_s']:.0f}), {t['epochs']} ({t['warm_start_epochs']}), {t['chosen']}"
              f"  | {u['wall_s']:.0f} s, {u['epochs']}")
    mean_u = statistics.fmean(r["test_nll"] for r in rows if not r["tuned"])
    mean_t = statistics.fmean(r["test_nll"] for r in rows if r["tuned"])
    spread = f" (sd of the differences {statistics.stdev(diffs):.2f})" if len(diffs) > 1 else ""
    wins = sum(d < 0 for d in diffs)
    print(f"mean: untuned {mean_u:.2f}, tuned {mean_t:.2f}, difference {mean_t - mean_u:+.2f}{spread}; "
          f"tuned better in {wins} of {len(diffs)} seed(s)")
    print(f"machine: {os.cpu_count()} CPUs; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
