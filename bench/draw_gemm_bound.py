"""How fast could DRAW train on this CPU if everything but the matrix products were free?

    python bench/draw_gemm_bound.py                 # the paper setting, batch 64
    python bench/draw_gemm_bound.py --steps 16      # the default T

Times exactly the GEMMs one training iteration of ``rnngen.models.draw`` performs (same shapes,
same order: per-step forward and backward products, then the weight gradients batched over all
steps), with random data and PyTorch's own GEMM, and prints the images/s they alone allow next
to the measured training rate (bench/throughput.py's timing), i.e. the share of the GEMM bound
reached. The fixed ~400 images/s "ceiling" in the issue assumes ~157 GFLOP/s; this measures what
GEMMs of these shapes (64-row products inside the recurrence) actually reach here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from rnngen.models import build_model, model_config

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
import throughput


def gemm_plan(model: torch.nn.Module, batch: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every product in one iteration, read off the model's fused weight layout."""
    spec = model.spec
    w = model._weights()
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=64, help="T (64: the paper setting)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--skip-measured", action="store_true", help="only the GEMM bound")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model("draw", model_config("draw", {"preset": "paper", "steps": args.steps}))
    plan = gemm_plan(model, args.batch)
    # the weights (right operands) are the same matrices at every step, as in training, so they
    # stay in cache as they do there; the activations are fresh per step
    weights: dict[tuple[int, int], torch.Tensor] = {}
    operands = [(torch.randn(m, k), weights.setdefault((k, n), torch.randn(k, n))) for m, k, n in plan]
    flops = sum(2 * m * k * n for m, k, n in plan)

    def iteration() -> None:
        for a, b in operands:
            torch.mm(a, b)

    for _ in range(2):
        iteration()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(3):
            iteration()
        times.append((time.perf_counter() - start) / 3)
    best = min(times)
    bound = args.batch / best
    print(f"DRAW T={args.steps}, batch {args.batch}, {torch.get_num_threads()} threads: {len(plan)} GEMMs, "
          f"{flops / args.batch / 1e6:.0f} MFLOP per image")
    print(f"GEMMs alone: {best * 1e3:.0f} ms per iteration = {flops / best / 1e9:.0f} GFLOP/s "
          f"-> at most {bound:.0f} images/s (median window {args.batch / statistics.median(times):.0f})")
    if args.skip_measured:
        return
    bench_args = argparse.Namespace(batch=args.batch, warmup=2, iters=3, repeats=args.repeats, amp=False)
    spec = ("draw", {"preset": "paper", "steps": args.steps})
    measured = max(throughput.bench_model("draw", bench_args, torch.device("cpu"), spec)["train"])
    print(f"measured training: {measured:.0f} images/s = {measured / bound:.0%} of the GEMM-only bound")


if __name__ == "__main__":
    main()
