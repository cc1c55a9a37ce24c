"""PixelRNN speed: the fast implementation against the plain per-row / per-pixel one of the same
network (rnngen.models.reference.pixelrnn), side by side in one process, alternating windows.
"fast" is what training runs: the Row LSTM's C++ row loop (rnngen.models.kernels); "ops" the
same loop in PyTorch ops (RNNGEN_KERNELS=0; the Diagonal BiLSTM has only that one).

    python bench/pixelrnn_speed.py                        # hidden 32, 4 layers, batch 32 (the README's speed table)
    python bench/pixelrnn_speed.py --hidden 16 --layers 7 --variants diagonal_bilstm

For each variant: training images/s (forward + backward + Adam on a random binary batch) of
the fast and the plain code, fp32 and under bf16 autocast, best and median of ``--repeats``
alternating windows, the fast/plain ratio, and the seconds to sample 64 images (28 x 28).
State the machine load (``uptime``) with the figures: windows alternate so that load hits both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from unittest import mock

import torch

from rnngen.models import build_model, kernels, model_config
from rnngen.models.base import bernoulli_nll
from rnngen.models.reference import pixelrnn as reference


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
            for step in steps.values():
                step()  # warm-up
            rates: dict[str, list[float]] = {k: [] for k in steps}
            for _ in range(args.repeats):  # alternating windows: load falls on all alike
                for k, step in steps.items():
                    rates[k].append(window(step, args.iters, args.batch))
            best = {k: max(v) for k, v in rates.items()}
            med = {k: statistics.median(v) for k, v in rates.items()}
            cols = " | ".join(f"{k} best {best[k]:6.0f} median {med[k]:6.0f}" for k in steps)
            print(f"{variant:16s} {'bf16' if amp else 'fp32'}  train img/s  {cols} | fast/plain best "
                  f"{best['fast'] / best['plain']:.2f} median {med['fast'] / med['plain']:.2f}", flush=True)
        model.eval()
        start = time.perf_counter()
        model.sample(64, generator=torch.Generator().manual_seed(0))
        print(f"{variant:16s} sampling 64 images: {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
