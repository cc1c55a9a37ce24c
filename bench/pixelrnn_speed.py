"""PixelRNN speed: the fast implementation against the plain per-row / per-pixel one of the same
network (rnngen.models.reference.pixelrnn), side by side in one process, alternating windows.
"fast" is what training runs: the Row LSTM's C++ row loop (rnngen.models.kernels); "ops" the
same loop in PyTorch ops (RNNGEN_KERNELS=0; the Diagonal BiLSTM has only that one).

    python bench/pixelrnn_speed.py                        # hidden 32, 4 layers, batch 32 (the README's speed table)
    python bench/pixelrnn_speed.py --hidden 16 --layers 7 --variants diagonal_bilstm

For each variant: training images/s (forward + backward + Adam on a random binary batch) of
the fast and the plain code, fp32 and under bf16 autocast, best and median of ``--repeats``
alternating windows, the fast/plain ratio, and the seconds to sample 64 images (28 x 28).
For the Row LSTM also "bound": the images/s that the matrix products of one training iteration
alone allow (:func:`row_lstm_plan`, timed in the same alternating windows with operands in the
step's precision), and the fast code's share of it.
State the machine load (``uptime``) with the figures: windows alternate so that load hits both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch

from rnngen.models import build_model, kernels, model_config
from rnngen.models.base import bernoulli_nll
from rnngen.models.pixelrnn import PixelRNNConfig
from rnngen.models.reference import pixelrnn as reference

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
from draw_gemm_bound import plan_iteration

SIDE = 28


def row_lstm_plan(config: PixelRNNConfig, batch: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every matrix product of one Row LSTM training iteration, as
    rnngen/models/csrc/row_lstm.cpp and the model around it run them: n = batch x 28 positions
    per row, the 7x7 mask-A convolution as its im2col product (forward and weight gradient; the
    image needs no gradient), per layer one product per row for both convolutions (input taps
    and the previous row's states against [w_is; w_ss]) and one per row back into the states,
    the weight and input gradients over all rows at once, the residual 1x1, and the two 1x1
    output layers with their gradients."""
    h, c, o = config.hidden, 2 * config.hidden, config.out_hidden
    n = batch * SIDE
    every = SIDE * n  # every position of a map
    kx, kh, g4 = (config.kernel // 2 + 1) * c, config.kernel * h, 4 * h
    plan = [(every, 49, c), (49, every, c)]
    for _ in range(config.layers):
        plan += [(n, kx + kh, g4)] * SIDE  # the row loop, forward
        plan += [(every, h, c), (every, c, h), (h, every, c)]  # residual 1x1: forward, d hs, d w_up
        plan += [(n, g4, kh)] * SIDE  # the row loop, backward: into the previous row's states
        plan += [(kx + kh, every, g4), (every, g4, kx)]  # d [w_is; w_ss] over all rows, d input taps
    plan += [(every, c, o), (every, o, 1), (every, 1, o), (o, every, 1), (every, o, c), (c, every, o)]
    return plan


def window(step: Callable[[], None], iters: int, batch: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return batch * iters / (time.perf_counter() - start)


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, *, plain: bool,
                  amp: bool, kernel: bool = True) -> Callable[[], None]:
    """One forward + backward + Adam step of the fast (``plain=False``) or plain code; with
    ``kernel=False`` the fast code's PyTorch-op loop instead of the C++ one."""
    def run() -> None:
        # set for this step only, so that the next variant and the caller see the user's setting
        with mock.patch.dict(os.environ, {"RNNGEN_KERNELS": "1" if kernel else "0"}):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                logits = reference.logits(model, x) if plain else model.logits(x)
                loss = bernoulli_nll(logits.float(), x).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["row_lstm", "diagonal_bilstm"])
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--iters", type=int, default=3, help="training steps per timed window")
    p.add_argument("--repeats", type=int, default=4, help="timed windows per implementation")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    kernels.keep_freed_memory()  # as training does
    print(f"load average {os.getloadavg()[0]:.2f}, {args.threads} threads, hidden {args.hidden}, "
          f"{args.layers} layers, batch {args.batch}")
    for variant in args.variants:
        torch.manual_seed(0)
        model = build_model("pixelrnn", model_config("pixelrnn", {"variant": variant, "layers": args.layers,
                                                                   "hidden": args.hidden}))
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        x = torch.bernoulli(torch.full((args.batch, 1, 28, 28), 0.2), generator=torch.Generator().manual_seed(0))

        for amp in (False, True):
            steps = {"fast": training_step(model, optimizer, x, plain=False, amp=amp),
                     "plain": training_step(model, optimizer, x, plain=True, amp=amp)}
            if variant == "row_lstm":
                steps["ops"] = training_step(model, optimizer, x, plain=False, amp=amp, kernel=False)
                steps["bound"] = plan_iteration(row_lstm_plan(model.config, args.batch),
                                                torch.bfloat16 if amp else torch.float32)
            for step in steps.values():
                step()  # warm-up
            rates: dict[str, list[float]] = {k: [] for k in steps}
            for _ in range(args.repeats):  # alternating windows: load falls on all alike
                for k, step in steps.items():
                    rates[k].append(window(step, args.iters, args.batch))
            best = {k: max(v) for k, v in rates.items()}
            med = {k: statistics.median(v) for k, v in rates.items()}
            cols = " | ".join(f"{k} best {best[k]:6.0f} median {med[k]:6.0f}" for k in steps)
            share = f" | fast/bound best {best['fast'] / best['bound']:.0%}" if "bound" in best else ""
            print(f"{variant:16s} {'bf16' if amp else 'fp32'}  train img/s  {cols} | fast/plain best "
                  f"{best['fast'] / best['plain']:.2f} median {med['fast'] / med['plain']:.2f}{share}", flush=True)
        model.eval()
        start = time.perf_counter()
        model.sample(64, generator=torch.Generator().manual_seed(0))
        print(f"{variant:16s} sampling 64 images: {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
