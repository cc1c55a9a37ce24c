"""What pruning and extra workers buy in the `tune` stage, printed as ratios.

1. Pruning: the median pruner vs no pruner at the same trial budget and seed:
   epochs trained and wall time (compute spent), and best validation loss reached.
2. Workers: 2 worker processes vs 1 on one journal file: trials per minute. Both searches
   use one hidden size and batch size so every trial costs the same.

Each search runs the real stage function in a fresh folder with its own journal file and
MLflow store. Runs on the embedded MNIST digits (data/split when present, else a fresh split).

    python bench/tune_bench.py                  # defaults: about 2-4 minutes on 2 idle cores
    python bench/tune_bench.py --model pixelrnn # the default pipeline's model (slower trials)
    python bench/tune_bench.py --seeds 3 --trials 12
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from rnngen import tuning
from rnngen.config import load_params, set_dotted
from rnngen.models import MODELS
from rnngen.stages import download, split

ROOT = Path(__file__).resolve().parents[1]


def add_split_argument(p: argparse.ArgumentParser) -> None:
    """--split: the split stage output the tune benches read (made from the embedded data when missing)."""
    p.add_argument("--split", type=Path, default=ROOT / "data" / "split",
                   help="split stage output (default: %(default)s; made from the embedded data when missing)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_argument(p)
    p.add_argument("--model", default="row_lstm_vae", choices=sorted(MODELS),
                   help="model.name of every trial (default: %(default)s, the model the README's figures used)")
    p.add_argument("--trials", type=int, default=8, help="trial budget of every search (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per trial (default: %(default)s)")
    p.add_argument("--images", type=int, default=2000, help="training images per trial (default: %(default)s)")
    p.add_argument("--hidden", type=int, nargs="+", default=[16, 32, 64],
                   help="hidden sizes searched in the pruning comparison (default: %(default)s)")
    p.add_argument("--pruner", choices=["median", "hyperband"], default="median")
    p.add_argument("--seeds", type=int, default=1, help="repeat the pruning comparison over N seeds")
    p.add_argument("--workers", type=int, default=2, help="processes in the parallel search (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per worker process, in every search (default: %(default)s; 0 = torch's)")
    p.add_argument("--skip", choices=["pruning", "workers"], action="append", default=[],
                   help="leave out one comparison")
    return p.parse_args(argv)


def ensure_split(path: Path, scratch: Path) -> Path:
    if (path / "split.json").is_file():
        return path
    params = load_params(ROOT / "params.yaml")
    params = set_dotted(params, {"data.source": "embedded"})
    download.run(params, scratch / "raw")
    split.run(params, scratch / "raw", scratch / "split")
    return scratch / "split"


def run_search(split: Path, scratch: Path, label: str, model: str, **tune_overrides: Any) -> dict[str, Any]:
    """One real search of ``model`` in a fresh study folder and MLflow store; the stage's summary."""
    folder = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=scratch))
    params = load_params(ROOT / "params.yaml")
    params = set_dotted(params, {"model.name": model, **{f"tune.{k}": v for k, v in tune_overrides.items()}})
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    os.environ.pop(tuning.STORAGE_ENV, None)
    print(f"\n=== {label}: {tune_overrides}", flush=True)
    cpu = cpu_seconds()
    result = tuning.search(params, split, folder / "study", folder / "best.json")
    return {**result, "cpu_s": cpu_seconds() - cpu,
            "trial_span_s": trial_span(folder / "study" / tuning.JOURNAL_FILE)}


def cpu_seconds() -> float:
    """CPU time of this process and its finished workers (user + system)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def trial_span(journal: Path) -> float:
    """Seconds from the first trial's start to the last trial's end: process start-up excluded."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(journal)))
    (name,) = optuna.study.get_all_study_names(storage)
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    start = min(t.datetime_start for t in trials)
    return (max(t.datetime_complete for t in trials) - start).total_seconds()


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = os.getloadavg()
    common = {"n_trials": args.trials, "epochs": args.epochs, "train_images": args.images,
              "device": "cpu", "startup_trials": 3, "prune_startup": 2, "storage": "", "threads": args.threads}
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tune-bench-") as tmp:
        scratch = Path(tmp)
        split = ensure_split(args.split, scratch)
        if "pruning" not in args.skip:
            rows = []
            for seed in range(args.seeds):
                space = {**common, "seed": seed, "hidden": args.hidden, "workers": 1}
                pruned = run_search(split, scratch, f"pruner-{args.pruner}-seed{seed}", args.model,
                                    pruner=args.pruner, **space)
                full = run_search(split, scratch, f"no-pruner-seed{seed}", args.model, pruner="none", **space)
                rows.append((pruned, full))
                lines.append(
                    f"seed {seed}: {args.pruner}: {pruned['epochs_trained']} epochs, {pruned['seconds']:.0f} s, "
                    f"best {pruned['best_value']:.2f}, {pruned['trials']['pruned']} pruned | none: "
                    f"{full['epochs_trained']} epochs, {full['seconds']:.0f} s, best {full['best_value']:.2f}"
                )
            def avg(key: str, which: int) -> float:
                return statistics.fmean(pair[which][key] for pair in rows)

            lines.append(
                f"pruning ({args.pruner} / none, {args.trials} trials x {args.epochs} epochs, {args.seeds} seed(s)):"
                f"  epochs trained {ratio(avg('epochs_trained', 0), avg('epochs_trained', 1))}"
                f"  wall time {ratio(avg('seconds', 0), avg('seconds', 1))}"
                f"  best val loss {ratio(avg('best_value', 0), avg('best_value', 1))}"
                "  (below 1 = less compute / lower loss)"
            )
        if "workers" not in args.skip:
            # One hidden size and batch size: every trial costs the same, whatever lr/optimizer.
            space = {**common, "hidden": [args.hidden[-1]], "batch_size": [64], "pruner": "none"}
            one = run_search(split, scratch, "workers-1", args.model, workers=1, **space)
            many = run_search(split, scratch, f"workers-{args.workers}", args.model, workers=args.workers, **space)
            for key, what in (("seconds", "stage wall time"), ("trial_span_s", "first trial start to last end")):
                per_min = [60 * r["trials_run_now"] / r[key] for r in (many, one)]
                lines.append(
                    f"workers ({args.workers} / 1, {args.threads or 'default'} thread(s) each, {args.trials} trials, "
                    f"{what}): trials per minute {ratio(*per_min)}  ({per_min[0]:.1f} vs {per_min[1]:.1f})"
                )
            cpu = [r["cpu_s"] / r["trials_run_now"] for r in (many, one)]
            lines.append(
                f"workers: CPU seconds per trial {ratio(*cpu)}  ({cpu[0]:.1f} vs {cpu[1]:.1f}, incl. process start;"
                " near 1 = no parallel overhead, so idle cores give close to workers x the trials per minute)"
            )
    load_after = os.getloadavg()
    print("\n" + "\n".join(lines))
    busy = max(load_before[0], load_after[0]) > (os.cpu_count() or 1)
    print(f"machine: {os.cpu_count()} CPUs; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after"
          + ("  (busy machine: timings are noisy)" if busy else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
