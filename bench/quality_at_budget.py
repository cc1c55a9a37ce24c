"""Quality at a fixed wall-clock budget: each model trains for the same time on the embedded
data (early stopping on validation), then the best weights are scored on the test split with
the importance-weighted NLL bound (k samples, test images binarized once with a fixed seed);
PixelRNN's likelihood is exact, and its column holds that exact value.

    python bench/quality_at_budget.py --budget 600            # 10 minutes per model, as make repro
    python bench/quality_at_budget.py --budget 60 --models mlp_vae row_lstm_vae
    python bench/quality_at_budget.py --models pixelrnn_diagonal_bilstm --layers 7 --hidden 16  # the paper's size
    python bench/quality_at_budget.py --budget 1200 --dataset fashion-mnist \
        --path /usr/share/datasets/fashion-mnist                 # full size: apt-get install dataset-fashion-mnist

Every model runs with and without augmentation (random shifts <= 2 px, rotations <= 10 deg).
The MLP VAE (784-400-20, as in pytorch/examples) is the non-recurrent baseline. With ``--fcd``
the classifier stage's judge is trained once on the training split (binary images, as in the
pipeline) and every model's sample quality is scored as the evaluate stage scores it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from rnngen import data
from rnngen.classifier import ClassifierConfig, train_classifier
from rnngen.data import binarized_test_set
from rnngen.models import build_model, model_config
from rnngen.pictures import canvas_strip, save_grid
from rnngen.quality import sample_quality
from rnngen.train import TrainConfig, fit

#: name -> (model, model config, train settings); Adam, lr --lr (1e-3), batch 64 but for
#: PixelRNN (batch 32, the default's setting)
VARIANTS: dict[str, tuple[str, dict, dict]] = {
    "mlp_vae": ("mlp_vae", {}, {}),
    "row_lstm_vae": ("row_lstm_vae", {}, {}),
    "draw": ("draw", {}, {}),
    "draw_no_attention": ("draw", {"attention": False}, {}),
    "pixelrnn_row_lstm": ("pixelrnn", {"variant": "row_lstm"}, {"batch_size": 32}),
    "pixelrnn_diagonal_bilstm": ("pixelrnn", {"variant": "diagonal_bilstm"}, {"batch_size": 32}),
}


def save_pictures(model: torch.nn.Module, folder: Path, label: str) -> None:
    """64 samples (seed 0) as a grid, upscaled 3x, and the strip of generation over time."""
    model.eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        samples = model.sample(64, generator=gen)
        steps = model.sample_steps(4, generator=gen)
    grid = torch.nn.functional.interpolate(samples, scale_factor=3, mode="nearest")
    save_grid(grid, folder / f"{label}_samples.png", nrow=8)
    if steps is not None:
        canvas_strip(steps, folder / f"{label}_steps.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=600.0, help="training seconds per model (default 600)")
    p.add_argument("--models", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--k", type=int, default=100, help="importance samples for the test bound")
    p.add_argument("--no-augment-runs", action="store_true", help="skip the runs with augmentation")
    p.add_argument("--amp", action="store_true", help="train under bfloat16 autocast (train.amp)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of every model (default 1e-3)")
    p.add_argument("--cosine-epochs", type=int, default=0,
                   help="train.lr_schedule cosine over this many epochs (train.epochs; the budget still stops "
                        "training); 0 = constant lr, epochs unbounded")
    p.add_argument("--csv", help="also write the table to this CSV file")
    p.add_argument("--pictures", help="save each trained model's samples (and generation over time) here")
    p.add_argument("--dataset", default="mnist", help="data.dataset (default: the embedded MNIST digits)")
    p.add_argument("--path", default="", help="data.path: a folder with the four IDX .gz files (data.source local)")
    p.add_argument("--test-images", type=int, default=0,
                   help="score the first N test images (0 = all; k=100 bounds on 10,000 take a while)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="train.weight_decay of every model")
    p.add_argument("--dropout", type=float, default=0.0, help="model dropout (PixelRNN's only)")
    p.add_argument("--layers", type=int, default=0, help="PixelRNN's recurrent layers (default: the model's, 4)")
    p.add_argument("--hidden", type=int, default=0, help="PixelRNN's h, units per position (default: the model's, 32)")
    p.add_argument("--canvas-init", choices=["zero", "mean"], default="mean",
                   help="DRAW's model.draw.canvas_init (default: %(default)s)")
    p.add_argument("--fcd", action="store_true", help="also score sample quality (FCD, n=1000, binary)")
    p.add_argument("--seed", type=int, default=0,
                   help="train.seed and the initial weights' seed (default 0); the test binarization stays seed 0")
    args = p.parse_args()

    source = "local" if args.path else "embedded"
    data_cfg = data.DataConfig(dataset=args.dataset, source=source, path=args.path)
    if data_cfg.problems():
        p.error("; ".join(data_cfg.problems()))
    raw = data.acquire(data_cfg, workdir=None)  # type: ignore[arg-type]  # embedded and local need none
    parts = data.split(raw, data.SplitConfig())
    x_train, x_val = torch.from_numpy(parts["train"][0]), torch.from_numpy(parts["val"][0])
    x_test = binarized_test_set(torch.from_numpy(parts["test"][0][: args.test_images or None]), "dynamic", seed=0)
    judge = None
    if args.fcd:
        judge, _ = train_classifier(*parts["train"], *parts["val"], ClassifierConfig(), progress=False)

    rows = []
    for variant in args.models:
        name, overrides, train = VARIANTS[variant]
        for aug in (False,) if args.no_augment_runs else (False, True):
            torch.manual_seed(args.seed)
            extra = {"dropout": args.dropout} if args.dropout else {}
            if name == "pixelrnn":
                extra |= {k: v for k, v in (("layers", args.layers), ("hidden", args.hidden)) if v}
            if name == "draw":
                extra["canvas_init"] = args.canvas_init
            model = build_model(name, model_config(name, {**overrides, **extra}))
            cfg = TrainConfig(epochs=args.cosine_epochs or 10_000, patience=5, device="cpu", seed=args.seed,
                              time_budget_s=args.budget, lr=args.lr, amp=args.amp,
                              lr_schedule="cosine" if args.cosine_epochs else "constant",
                              weight_decay=args.weight_decay,
                              augment_shift=2 if aug else 0, augment_rotate=10.0 if aug else 0.0,
                              **{"batch_size": 64, **train})
            t0 = time.perf_counter()
            result = fit(model, x_train, x_val, cfg, "dynamic", progress=False)
            seconds = time.perf_counter() - t0
            model.load_state_dict(result.best_weights)
            bounds = model.likelihood_metrics(x_test, args.k, 100, seed=0, progress=False)
            if args.pictures:
                save_pictures(model, Path(args.pictures), f"{variant}{'_augment' if aug else ''}")
            quality = {}
            if judge is not None:
                scores = sample_quality(model, judge, x_test, min(1000, len(x_test)), seed=0)
                quality = {"fcd": round(scores["fcd"], 1),
                           "classifier_score": round(scores["classifier_score_samples"], 2)}
            rows.append({
                "model": variant, "seed": args.seed, "augment": aug, "amp": args.amp,
                "lr_schedule": f"cosine/{args.cosine_epochs}" if args.cosine_epochs else "constant",
                "likelihood": "exact" if model.exact_likelihood else "bound",
                "epochs": len(result.history), "best_epoch": result.best_epoch,
                "train_s": round(seconds), "val_nelbo": round(result.best_val, 2),
                "test_nll_elbo": round(bounds["nll_elbo"], 2), "test_nll_iwae": round(bounds["nll_iwae"], 2),
                "weight_decay": args.weight_decay, "dropout": args.dropout,
                **({"canvas_init": args.canvas_init} if name == "draw" else {}),
                **({"layers": model.config.layers, "hidden": model.config.hidden} if name == "pixelrnn" else {}),
                "params": sum(p.numel() for p in model.parameters()), **quality,
            })
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows).sort_values("test_nll_iwae")
    sizes = " / ".join(f"{len(parts[k][0]):,} {k}" for k in ("train", "val")) + f" / {len(x_test):,} test"
    print(f"\nquality at a {args.budget:.0f} s training budget per model, {source} {args.dataset} "
          f"({sizes}), test NLL in nats (k={args.k}, binarized once, seed 0)")
    print(table.to_string(index=False))
    baseline = table[(table.model == "mlp_vae") & (~table.augment)]
    if len(baseline):
        base = float(baseline.test_nll_iwae.iloc[0])
        for row in table.itertuples():
            if row.model == "mlp_vae" and not row.augment:
                continue
            verdict = "beats" if row.test_nll_iwae < base else "does NOT beat"
            print(f"{row.model:<18} augment={row.augment!s:<5} {verdict} the MLP baseline "
                  f"({row.test_nll_iwae:.2f} vs {base:.2f})")
    if args.csv:
        table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
