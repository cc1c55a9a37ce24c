"""PixelRNN scoring speed: the teacher-forced pass without gradients (log p(x), what ``rnngen
score``, the served ``score`` and the evaluate stage run) over a batch of images, with freed memory
kept for reuse (what rnngen's C++ kernels set: :func:`rnngen.models.kernels.keep_freed_memory`)
and with glibc's default malloc, which maps every buffer over 32 MiB afresh and page-faults it in.
Each setting runs in its own fresh process (malloc's settings are process-wide), the two
alternating; each process times ``--passes`` passes after one warm-up pass.

    python bench/scoring_speed.py                                  # the default model, 200 images
    python bench/scoring_speed.py --variant row_lstm --images 1000

Prints images/s per round and setting, the medians and their ratio. State the load (``uptime``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def child(variant: str, images: int, passes: int, kept: bool) -> float:
    """Images/s of ``passes`` teacher-forced passes of a conditional PixelRNN (one class each)."""
    import torch

    from rnngen.models import build_model, kernels, model_config

    if not kept:
        kernels.keep_freed_memory = lambda: False  # ops() calls it by name: glibc's defaults stay
    torch.manual_seed(0)
    model = build_model("pixelrnn", model_config("pixelrnn", {"variant": variant, "conditional": True})).eval()
    x = torch.bernoulli(torch.full((images, 1, 28, 28), 0.2), generator=torch.Generator().manual_seed(1))
    y = torch.zeros(images, dtype=torch.long)
    with torch.no_grad():
        model.logits(x, y)  # warm-up: kernels loaded, thread pool started
        start = time.perf_counter()
        for _ in range(passes):
            model.logits(x, y)
    return images * passes / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="diagonal_bilstm", choices=["diagonal_bilstm", "row_lstm"])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--child", choices=["kept", "default"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.variant, args.images, args.passes, args.child == "kept")))
        return
    print(f"load average {os.getloadavg()[0]:.2f}, {args.variant}, {args.images} images, {args.passes} passes")
    rates: dict[str, list[float]] = {"kept": [], "default": []}
    for r in range(args.rounds):
        for kind in rates:
            out = subprocess.run([sys.executable, __file__, "--child", kind, "--variant", args.variant,
                                  "--images", str(args.images), "--passes", str(args.passes)],
                                 check=True, capture_output=True, text=True).stdout
            rates[kind].append(json.loads(out.splitlines()[-1]))
            print(f"round {r}: {kind:7s} {rates[kind][-1]:6.0f} img/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"median img/s: freed memory kept {med['kept']:.0f}, glibc's default {med['default']:.0f}; "
          f"ratio {med['kept'] / med['default']:.2f}")


if __name__ == "__main__":
    main()
