"""PixelRNN speed: the fast implementation against the plain per-row / per-pixel one of the same
network (rnngen.models.reference.pixelrnn), side by side in one process, alternating windows.
"fast" is what training runs: each layer's C++ kernel (rnngen.models.kernels: the Row LSTM's row
loop, the Diagonal BiLSTM's diagonal loop); "ops" the same loop in PyTorch ops (RNNGEN_KERNELS=0).

    python bench/pixelrnn_speed.py                        # hidden 32, 4 layers, batch 32 (the README's speed table)
    python bench/pixelrnn_speed.py --hidden 16 --layers 7 --variants diagonal_bilstm

For each variant: training images/s (forward + backward + training's Adam on a random binary batch) of
the fast, the op-loop and the plain code, fp32 and under bf16 autocast, best and median of
``--repeats`` windows, the fast/plain and fast/ops ratios, and the seconds to sample 64 images
(28 x 28); "bound": the images/s that the matrix products of one training iteration alone allow
(:func:`row_lstm_plan`, :func:`diagonal_plan`, operands in the step's precision), and the fast
code's share of it. Every variant's windows alternate with every other's (one precision at a
time), so the last line, the Diagonal BiLSTM's rate over the Row LSTM's, compares like with like.
State the machine load (``uptime``) with the figures: windows alternate so that load hits all.
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
from rnngen.models.pixelrnn import PixelRNNConfig, causal_mask
from rnngen.models.reference import pixelrnn as reference
from rnngen.train import TrainConfig, make_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
from draw_gemm_bound import plan_iteration

SIDE = 28
TAPS_A = int(causal_mask(7, 7, "A").sum())  # the first layer's taps: 24 of the 7 x 7


def row_lstm_plan(config: PixelRNNConfig, batch: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every matrix product of one Row LSTM training iteration, as
    rnngen/models/csrc/row_lstm.cpp and the model around it run them: n = batch x 28 positions
    per row, the 7x7 mask-A convolution as its product over the 24 taps mask A keeps (forward and
    weight gradient; the image needs no gradient), per layer one product per row for both
    convolutions (input taps and the previous row's states against [w_is; w_ss]) and one per row
    back through both (into the row's input taps and the previous row's states), the weight
    gradient over all rows at once, the residual 1x1, and the two 1x1 output layers with their
    gradients."""
    h, c, o = config.hidden, 2 * config.hidden, config.out_hidden
    n = batch * SIDE
    every = SIDE * n  # every position of a map
    kx, kh, g4 = (config.kernel // 2 + 1) * c, config.kernel * h, 4 * h
    plan = [(every, TAPS_A, c), (TAPS_A, every, c)]
    for _ in range(config.layers):
        plan += [(n, kx + kh, g4)] * SIDE  # the row loop, forward
        plan += [(every, h, c), (every, c, h), (h, every, c)]  # residual 1x1: forward, d hs, d w_up
        plan += [(n, g4, kx + kh)] * SIDE  # the row loop, backward: into the row's input and state taps
        plan += [(kx + kh, every, g4)]  # d [w_is; w_ss] over all rows
    plan += [(every, c, o), (every, o, 1), (every, 1, o), (o, every, 1), (every, o, c), (c, every, o)]
    return plan


def diagonal_plan(config: PixelRNNConfig, batch: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every matrix product of one Diagonal BiLSTM training iteration, as
    rnngen/models/csrc/diagonal_bilstm.cpp runs them: the first and output layers as in
    :func:`row_lstm_plan`; per layer the 1x1 input-to-state product for both directions, per
    anti-diagonal (k positions x batch) and direction one product for the 2x1 state-to-state
    convolution forward and one back into the states, the weight and input gradients over all
    positions, and the residual 1x1."""
    h, c, o = config.hidden, 2 * config.hidden, config.out_hidden
    every = SIDE * SIDE * batch
    diagonals = [min(t, 2 * SIDE - 2 - t) + 1 for t in range(2 * SIDE - 1)]  # positions per diagonal
    plan = [(every, TAPS_A, c), (TAPS_A, every, c)]
    for _ in range(config.layers):
        plan += [(every, c, 8 * h), (every, h, c), (every, c, h), (h, every, c)]  # input-to-state, residual
        plan += [(k * batch, 2 * h, 4 * h) for k in diagonals for _ in range(2)]  # the loop, forward
        plan += [(k * batch, 4 * h, 2 * h) for k in diagonals for _ in range(2)]  # the loop, backward
        plan += [(2 * h, every, 4 * h)] * 2 + [(c, every, 8 * h), (every, 8 * h, c)]  # d w_ss, d w_is, d input
    plan += [(every, c, o), (every, o, 1), (every, 1, o), (o, every, 1), (every, o, c), (c, every, o)]
    return plan


PLANS = {"row_lstm": row_lstm_plan, "diagonal_bilstm": diagonal_plan}


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
    p.add_argument("--variants", nargs="+", default=["row_lstm", "diagonal_bilstm"], choices=list(PLANS))
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
    models = {}
    for variant in args.variants:
        torch.manual_seed(0)
        model = build_model("pixelrnn", model_config("pixelrnn", {"variant": variant, "layers": args.layers,
                                                                   "hidden": args.hidden}))
        models[variant] = (model, make_optimizer(model, TrainConfig(lr=1e-3)))  # training's Adam (fused)
    x = torch.bernoulli(torch.full((args.batch, 1, 28, 28), 0.2), generator=torch.Generator().manual_seed(0))
    for amp in (False, True):
        steps = {}
        for variant, (model, optimizer) in models.items():
            steps[variant, "fast"] = training_step(model, optimizer, x, plain=False, amp=amp)
            steps[variant, "ops"] = training_step(model, optimizer, x, plain=False, amp=amp, kernel=False)
            steps[variant, "plain"] = training_step(model, optimizer, x, plain=True, amp=amp)
            steps[variant, "bound"] = plan_iteration(PLANS[variant](model.config, args.batch),
                                                     torch.bfloat16 if amp else torch.float32)
        for step in steps.values():
            step()  # warm-up
        rates: dict[tuple[str, str], list[float]] = {k: [] for k in steps}
        for _ in range(args.repeats):  # alternating windows: load falls on all alike
            for k, step in steps.items():
                rates[k].append(window(step, args.iters, args.batch))
        best = {k: max(v) for k, v in rates.items()}
        med = {k: statistics.median(v) for k, v in rates.items()}
        for variant in models:
            cols = " | ".join(f"{kind} best {best[variant, kind]:6.0f} median {med[variant, kind]:6.0f}"
                              for kind in ("fast", "ops", "plain", "bound"))
            ratios = " | ".join(f"fast/{kind} best {best[variant, 'fast'] / best[variant, kind]:.2f}"
                                for kind in ("plain", "ops"))
            print(f"{variant:16s} {'bf16' if amp else 'fp32'}  train img/s  {cols} | {ratios} | fast/bound best "
                  f"{best[variant, 'fast'] / best[variant, 'bound']:.0%}", flush=True)
        if len(models) == 2:
            print(f"diagonal_bilstm / row_lstm, fast, {'bf16' if amp else 'fp32'}: best "
                  f"{best['diagonal_bilstm', 'fast'] / best['row_lstm', 'fast']:.0%} median "
                  f"{med['diagonal_bilstm', 'fast'] / med['row_lstm', 'fast']:.0%}", flush=True)
    for variant, (model, _) in models.items():
        model.eval()
        start = time.perf_counter()
        model.sample(64, generator=torch.Generator().manual_seed(0))
        print(f"{variant:16s} sampling 64 images: {time.perf_counter() - start:.1f} s", flush=True)

if __name__ == "__main__":
    main()
