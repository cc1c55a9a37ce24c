"""Do recurrent models generate better than GANs? Every model trains for the same seconds on the
same data, then the evaluate stage's own judge scores it (rnngen.evaluate.report): sample
quality (Fréchet classifier distance, classifier score, with the binary classifier the
classifier stage trains), repair of three kinds of hole (the judge's accuracy on completed
images), the test NLL where the model has a likelihood, and the cost: training seconds and
sampling speed (binary images/s, batches of 100, best of 3).

    python bench/gan_vs_recurrent.py --budget 600 --pictures docs/gan                 # embedded MNIST
    python bench/gan_vs_recurrent.py --budget 1800 --dataset fashion-mnist \\
        --path /usr/share/datasets/fashion-mnist         # apt-get install dataset-fashion-mnist

Each model trains with Adam at --lr (the GANs scale it by model.dcgan.lr_scale, as in the
pipeline), a constant schedule, early stopping on validation (patience --patience; a GAN's
validation loss is its pooled-pixel Fréchet distance), fp32. Run it pinned to one core
(``taskset -c 0``) with --threads 1 to keep the comparison fair on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from rnngen import data
from rnngen.classifier import ClassifierConfig, train_classifier
from rnngen.evaluate import EvalConfig, report
from rnngen.models import build_model, model_config
from rnngen.pictures import save_grid
from rnngen.train import TrainConfig, fit

#: label -> (model, model config, train settings): PixelRNN at batch 32 (its default), the rest 64
VARIANTS: dict[str, tuple[str, dict, dict]] = {
    "dcgan": ("dcgan", {"loss": "gan"}, {}),
    "wgan_gp": ("dcgan", {"loss": "wgan_gp"}, {}),
    "pixelrnn": ("pixelrnn", {"variant": "row_lstm"}, {"batch_size": 32}),  # as measured in docs/gan.md
    "draw": ("draw", {}, {}),
    "row_lstm_vae": ("row_lstm_vae", {}, {}),
    "mlp_vae": ("mlp_vae", {}, {}),
}
#: the columns of the table, from report's metrics
COLUMNS = {
    "test_fcd": "fcd", "test_classifier_score_samples": "classifier_score",
    "inpaint_bottom_half_accuracy_completed": "repair_bottom",
    "inpaint_centre_square_accuracy_completed": "repair_centre",
    "inpaint_random_pixels_accuracy_completed": "repair_random", "test_nll_iwae": "test_nll",
}


def sampling_speed(model: torch.nn.Module, n: int = 100, repeats: int = 3) -> float:
    """Binary images per second, the best of ``repeats`` batches of ``n``."""
    best = float("inf")
    with torch.no_grad():
        for seed in range(repeats):
            t0 = time.perf_counter()
            model.sample_binary(n, generator=torch.Generator().manual_seed(seed))
            best = min(best, time.perf_counter() - t0)
    return n / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=600.0, help="training seconds per model (default 600)")
    p.add_argument("--models", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--lr", type=float, default=2e-3, help="train.lr (default: 0.002, as measured in docs/gan.md)")
    p.add_argument("--patience", type=int, default=10, help="train.patience (default 10)")
    p.add_argument("--k", type=int, default=20, help="importance samples for the IWAE bound (default 20)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--dataset", default="mnist", help="data.dataset (default: the embedded MNIST digits)")
    p.add_argument("--path", default="", help="data.path: a folder with the four IDX .gz files (data.source local)")
    p.add_argument("--pictures", help="save each model's 64 samples here as <model>_samples.png")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    source = "local" if args.path else "embedded"
    raw = data.acquire(data.DataConfig(dataset=args.dataset, source=source, path=args.path), workdir=None)  # type: ignore[arg-type]
    parts = data.split(raw, data.SplitConfig())
    x_train, x_val = (torch.from_numpy(parts[k][0]) for k in ("train", "val"))
    x_test, y_test = map(torch.from_numpy, parts["test"])
    judge, judge_metrics = train_classifier(*parts["train"], *parts["val"], ClassifierConfig(), progress=False)
    cfg = EvalConfig(k=args.k)
    print(f"{uptime()}; {torch.get_num_threads()} threads; the judge's accuracy on the validation images: "
          f"{judge_metrics.get('val_accuracy', float('nan')):.3f}", flush=True)

    rows = []
    for label in args.models:
        name, overrides, train = VARIANTS[label]
        torch.manual_seed(0)
        model = build_model(name, model_config(name, overrides))
        train_cfg = TrainConfig(epochs=10_000, patience=args.patience, device="cpu", time_budget_s=args.budget,
                                lr=args.lr, **{"batch_size": 64, **train})
        t0 = time.perf_counter()
        result = fit(model, x_train, x_val, train_cfg, "dynamic", progress=False)
        seconds = time.perf_counter() - t0
        model.load_state_dict(result.best_weights)
        model.eval()
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            metrics = report(model, data.Images(x_test, y_test), judge, cfg, "dynamic", Path(folder), progress=False)
        row = {"model": label, "epochs": len(result.history), "best_epoch": result.best_epoch,
               "train_s": round(seconds), "eval_s": round(time.perf_counter() - t0),
               **{short: round(metrics[key], 3) if key in metrics else None for key, short in COLUMNS.items()},
               "samples_per_s": round(sampling_speed(model))}
        rows.append(row)
        print(json.dumps(row), f"| {uptime()}", flush=True)
        # the same for every model (same judge, images and masks): what repair is measured against
        untouched = {key.removeprefix("inpaint_"): round(value, 3) for key, value in metrics.items()
                     if key.endswith(("_accuracy_masked", "_accuracy_original"))}
        if args.pictures:
            os.makedirs(args.pictures, exist_ok=True)
            with torch.no_grad():
                grid = model.sample_binary(64, generator=torch.Generator().manual_seed(0))
            big = torch.nn.functional.interpolate(grid, scale_factor=2)
            save_grid(big, Path(args.pictures) / f"{label}_samples.png", nrow=8)
    table = pd.DataFrame(rows).sort_values("fcd")
    sizes = " / ".join(f"{len(parts[k][0]):,} {k}" for k in ("train", "val", "test"))
    print(f"\n{args.budget:.0f} s of training per model, {source} {args.dataset} ({sizes}); judged by the binary "
          f"classifier; repair = the judge's accuracy on completed images (200 test images, effort 32); "
          f"test NLL in nats (k={args.k}; none: no likelihood); lower FCD is better")
    print(table.to_string(index=False))
    print("the judge on the same 200 test images, untouched and masked (no repair):", json.dumps(untouched))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    if args.pictures:
        side_by_side(Path(args.pictures), [row["model"] for row in rows])


def side_by_side(folder: Path, labels: list[str]) -> Path:
    """The models' sample grids in one picture, each under its name: ``folder/side_by_side.png``."""
    from PIL import Image, ImageDraw

    grids = [Image.open(folder / f"{label}_samples.png").convert("L") for label in labels]
    width, height = grids[0].size
    out = Image.new("L", (len(grids) * (width + 8), height + 20), 255)
    draw = ImageDraw.Draw(out)
    for i, (label, grid) in enumerate(zip(labels, grids, strict=True)):
        out.paste(grid, (i * (width + 8), 20))
        draw.text((i * (width + 8) + 4, 4), label, fill=0)
    out.save(folder / "side_by_side.png")
    return folder / "side_by_side.png"


def uptime() -> str:
    return "load average " + " ".join(open("/proc/loadavg").read().split()[:3])


if __name__ == "__main__":
    main()
