"""PixelRNN speed: the fast implementation against the plain per-row / per-pixel one of the same
network (rnngen.models.pixelrnn_reference), side by side in one process, alternating windows.

    python bench/pixelrnn_speed.py                        # hidden 32, 4 layers, batch 32 (the issue's setting)
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

import torch

from rnngen.models import build_model, model_config
from rnngen.models import pixelrnn_reference as reference
from rnngen.models.base import bernoulli_nll


def window(step: Callable[[], None], iters: int, batch: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return batch * iters / (time.perf_counter() - start)


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, *, plain: bool,
                  amp: bool) -> Callable[[], None]:
    """One forward + backward + Adam step of the fast (``plain=False``) or plain code."""
    def run() -> None:
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
    print(f"load average {os.getloadavg()[0]:.2f}, {args.threads} threads, hidden {args.hidden}, "
          f"{args.layers} layers, batch {args.batch}")
    for variant in args.variants:
        torch.manual_seed(0)
        model = build_model("pixelrnn", model_config("pixelrnn", {"variant": variant, "layers": args.layers,
                                                                   "hidden": args.hidden}))
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        x = torch.bernoulli(torch.full((args.batch, 1, 28, 28), 0.2), generator=torch.Generator().manual_seed(0))

        for amp in (False, True):
            fast, plain = (training_step(model, optimizer, x, plain=p, amp=amp) for p in (False, True))
            fast(), plain()  # warm-up
            rates: dict[str, list[float]] = {"fast": [], "plain": []}
            for _ in range(args.repeats):  # alternating windows: load falls on both alike
                rates["fast"].append(window(fast, args.iters, args.batch))
                rates["plain"].append(window(plain, args.iters, args.batch))
            best = {k: max(v) for k, v in rates.items()}
            med = {k: statistics.median(v) for k, v in rates.items()}
            print(f"{variant:16s} {'bf16' if amp else 'fp32'}  train img/s  fast best {best['fast']:6.0f} "
                  f"median {med['fast']:6.0f} | plain best {best['plain']:6.0f} median {med['plain']:6.0f} | "
                  f"ratio best {best['fast'] / best['plain']:.2f} median {med['fast'] / med['plain']:.2f}",
                  flush=True)
        model.eval()
        start = time.perf_counter()
        model.sample(64, generator=torch.Generator().manual_seed(0))
        print(f"{variant:16s} sampling 64 images: {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
