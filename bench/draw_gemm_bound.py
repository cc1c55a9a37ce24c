"""How fast could DRAW train on this CPU if everything but the matrix products were free?

    python bench/draw_gemm_bound.py                 # the paper setting, batch 64, fp32 and bf16
    python bench/draw_gemm_bound.py --steps 16      # the default T

Times exactly the GEMMs one training iteration of ``rnngen.models.draw`` performs (same shapes,
same order: per-step forward and backward products, then the weight gradients batched over all
steps), with random data and PyTorch's own GEMM, in float32 and with bfloat16 operands (what the
model's GEMMs take under bf16 autocast), and prints the images/s they alone allow next to the
measured training rate (bench/throughput.py's timing), i.e. the share of the GEMM bound reached.
:func:`gemm_iteration` is what bench/throughput.py times, at each DRAW model's own shapes, in
the same alternating windows as the training steps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from rnngen.models import build_model, model_config
from rnngen.models.fast import draw_bptt


def gemm_plan(model: torch.nn.Module, batch: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every product in one iteration, read off the model's fused weight layout."""
    spec = draw_bptt.recurrence_sizes(model.config)
    w = draw_bptt.fused_weights(model)
    rd, he4, hd = spec.read_dim, 4 * spec.enc_hidden, spec.dec_hidden
    dec_cols, enc_cols = w.w_dec.shape[1], w.w_enc.shape[1]
    per_step = [
        (batch, rd, he4),  # r_t into the encoder gates
        (batch, spec.enc_hidden, enc_cols),  # h_enc_t: q(z_t) and the encoder recurrence
        (batch, spec.z_dim, 4 * hd),  # z_t into the decoder gates
        (batch, hd, dec_cols),  # h_dec_t: decoder and encoder gates, write patch, attention
        (batch, dec_cols, hd),  # backward: d h_dec
        (batch, 4 * hd, spec.z_dim),  # d z
        (batch, enc_cols, spec.enc_hidden),  # d h_enc
        (batch, he4, rd),  # d r
    ]
    rows = spec.steps * batch
    weight_grads = [(hd, rows, dec_cols), (spec.enc_hidden, rows, enc_cols), (rd, rows, he4),
                    (spec.z_dim, rows, 4 * hd)]
    return per_step * spec.steps + weight_grads


def plan_iteration(plan: list[tuple[int, int, int]], dtype: torch.dtype = torch.float32) -> Callable[[], None]:
    """A call that runs the products of ``plan`` ((m, k, n) each) with operands in ``dtype`` on
    random data. Right operands of one shape are one matrix, as the weights are in training (they
    stay in cache as they do there); the left operands are fresh per product."""
    weights: dict[tuple[int, int], torch.Tensor] = {}
    operands = [(torch.randn(m, k).to(dtype), weights.setdefault((k, n), torch.randn(k, n).to(dtype)))
                for m, k, n in plan]

    def iteration() -> None:
        for a, b in operands:
            torch.mm(a, b)

    return iteration


def gemm_iteration(model: torch.nn.Module, batch: int, dtype: torch.dtype = torch.float32
                   ) -> tuple[Callable[[], None], list[tuple[int, int, int]]]:
    """A call that runs exactly the GEMMs of one training iteration of DRAW ``model`` at
    ``batch`` with operands in ``dtype`` on random data, and its plan (:func:`gemm_plan`)."""
    plan = gemm_plan(model, batch)
    return plan_iteration(plan, dtype), plan


def time_plan(plan: list[tuple[int, int, int]], batch: int, dtype: torch.dtype = torch.float32, repeats: int = 5,
              iters: int = 3) -> dict[str, float]:
    """Time :func:`plan_iteration` on the CPU: best of ``repeats`` windows of ``iters``
    iterations, after 2 warm-up ones. Returns seconds per iteration (best and median window), the
    images/s that allows (``images_per_s``: from the best window), GFLOP/s, MFLOP per image and
    the number of GEMMs."""
    iteration = plan_iteration(plan, dtype)
    flops = sum(2 * m * k * n for m, k, n in plan)
    for _ in range(2):
        iteration()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            iteration()
        times.append((time.perf_counter() - start) / iters)
    best = min(times)
    return {"seconds": best, "seconds_median": statistics.median(times), "images_per_s": batch / best,
            "gflops": flops / best / 1e9, "mflop_per_image": flops / batch / 1e6, "gemms": len(plan)}


def gemm_bound(model: torch.nn.Module, batch: int, dtype: torch.dtype = torch.float32, repeats: int = 5,
               iters: int = 3) -> dict[str, float]:
    """:func:`time_plan` of DRAW ``model``'s training iteration (:func:`gemm_plan`)."""
    return time_plan(gemm_plan(model, batch), batch, dtype, repeats, iters)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=64, help="T (64: the paper setting)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--skip-measured", action="store_true", help="only the GEMM bound")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model("draw", model_config("draw", {"preset": "paper", "steps": args.steps}))
    bounds = {}
    for prec in args.precisions:
        b = gemm_bound(model, args.batch, torch.bfloat16 if prec == "bf16" else torch.float32, args.repeats)
        bounds[prec] = b["images_per_s"]
        print(f"DRAW T={args.steps}, batch {args.batch}, {torch.get_num_threads()} threads, {prec}: "
              f"{b['gemms']} GEMMs, {b['mflop_per_image']:.0f} MFLOP per image")
        print(f"GEMMs alone: {b['seconds'] * 1e3:.0f} ms per iteration = {b['gflops']:.0f} GFLOP/s "
              f"-> at most {b['images_per_s']:.0f} images/s (median window {args.batch / b['seconds_median']:.0f})")
    if args.skip_measured:
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
    import throughput  # here: throughput imports this module

    spec = ("draw", {"preset": "paper", "steps": args.steps})
    for prec, bound in bounds.items():
        bench_args = argparse.Namespace(batch=args.batch, warmup=2, iters=3, repeats=args.repeats, amp=prec == "bf16")
        measured = max(throughput.bench_model("draw", bench_args, torch.device("cpu"), spec)["train"])
        print(f"measured training, {prec}: {measured:.0f} images/s = {measured / bound:.0%} of the GEMM-only bound")


if __name__ == "__main__":
    main()
