"""Where a PixelRNN training step's time goes: the whole step against the same model with its
recurrent layers removed (the first layer, output layers, loss and Adam only) and against the
matrix products of the plan alone, all in one process with alternating windows, so that the
machine's state falls on every part alike.

    python bench/pixelrnn_step_parts.py                          # Row LSTM, hidden 32, 4 layers, bf16
    python bench/pixelrnn_step_parts.py --variant diagonal_bilstm --rounds 12

Prints, in ms per step (best and median over the rounds): the step, the step without layers,
their difference divided by the layer count (one layer's forward and backward), the plan's
products (``pixelrnn_speed.PLANS``) in and outside the layers, and what lies beyond the products
in each place. The fraction "of bound" is the products' time over the step's, as in
``pixelrnn_speed.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from rnngen.models import build_model, kernels, model_config
from rnngen.train import TrainConfig, make_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
from draw_gemm_bound import plan_iteration
from pixelrnn_speed import PLANS, SIDE, training_step, window


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="row_lstm", choices=list(PLANS))
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--iters", type=int, default=5, help="training steps per timed window")
    p.add_argument("--rounds", type=int, default=8, help="timed windows per part")
    p.add_argument("--fp32", action="store_true", help="fp32 instead of bf16 autocast")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    kernels.keep_freed_memory()  # as training does
    amp = not args.fp32
    dtype = torch.bfloat16 if amp else torch.float32
    config = model_config("pixelrnn", {"variant": args.variant, "layers": args.layers, "hidden": args.hidden})
    x = torch.bernoulli(torch.full((args.batch, 1, SIDE, SIDE), 0.2), generator=torch.Generator().manual_seed(0))

    def step_of(layers: int) -> Callable[[], None]:
        torch.manual_seed(0)
        model = build_model("pixelrnn", config)
        model.layers = torch.nn.ModuleList(list(model.layers)[:layers])
        return training_step(model, make_optimizer(model, TrainConfig(lr=1e-3)), x, plain=False, amp=amp)

    plan, outside = (PLANS[args.variant](c, args.batch) for c in (config, dataclasses.replace(config, layers=0)))
    parts = {"step": step_of(args.layers), "no layers": step_of(0),
             "products": plan_iteration(plan, dtype), "products outside layers": plan_iteration(outside, dtype)}
    for run in parts.values():
        run()
        run()  # warm-up: kernels built, memory mapped
    print(f"load average {os.getloadavg()[0]:.2f} at the start; {args.variant}, hidden {args.hidden}, "
          f"{args.layers} layers, batch {args.batch}, {'bf16' if amp else 'fp32'}, {args.threads} threads; "
          f"{args.rounds} rounds of alternating {args.iters}-step windows")
    times: dict[str, list[float]] = {k: [] for k in parts}
    for _ in range(args.rounds):
        for name, run in parts.items():
            times[name].append(args.batch / window(run, args.iters, args.batch) * 1e3)  # ms a step
    for stat_name, stat in (("best", min), ("median", statistics.median)):
        t = {k: stat(v) for k, v in times.items()}
        layer = (t["step"] - t["no layers"]) / args.layers
        layer_products = (t["products"] - t["products outside layers"]) / args.layers
        outside = t["products outside layers"]
        print(f"{stat_name:6s} step {t['step']:6.1f} ms | no layers {t['no layers']:5.1f} "
              f"(products {outside:4.1f}, beyond {t['no layers'] - outside:4.1f})"
              f" | one layer {layer:5.1f} (products {layer_products:4.1f}, beyond {layer - layer_products:4.1f})"
              f" | products {t['products']:5.1f} = {t['products'] / t['step']:.0%} of the step")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
