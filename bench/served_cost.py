"""What the default model's class costs a served request: each task of `rnngen.service` on the
class-conditional PixelRNN given no class (`score` sums over the classes, one pass each;
`sample` draws a class, guided, so a label-free twin runs beside each image) against the same
network with `conditional: false`, in alternating windows of one process.

    python bench/served_cost.py                 # params.yaml's PixelRNN, untrained, 1 torch thread
    python bench/served_cost.py --threads 2 --windows 9

Untrained weights: the cost of a request does not depend on them. One torch thread per process
is what `rnngen serve` runs. Prints the median of the windows in ms and the ratio.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from rnngen import service
from rnngen.config import load_params
from rnngen.models import GenerativeModel, build_model, model_config

ROOT = Path(__file__).resolve().parents[1]


def tasks() -> dict[str, Callable[[GenerativeModel], object]]:
    def images(n: int) -> torch.Tensor:
        return (torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0)) < 0.2).float()

    return {"score 1": lambda m: service.score(m, images(1)), "score 32": lambda m: service.score(m, images(32)),
            "sample 4": lambda m: service.draw(m, 4, 0), "sample 64": lambda m: service.draw(m, 64, 0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch threads (rnngen serve: 1 per worker)")
    p.add_argument("--windows", type=int, default=5, help="timed windows per task and model")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    section = load_params(ROOT / "params.yaml")["model"]["pixelrnn"]
    models = {flag: build_model("pixelrnn", model_config("pixelrnn", {**section, "conditional": flag})).eval()
              for flag in (False, True)}
    print(f"PixelRNN of params.yaml, {args.threads} thread(s), median of {args.windows} windows")
    for name, task in tasks().items():
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.windows):
            for flag, model in models.items():
                start = time.perf_counter()
                task(model)
                times[flag].append(time.perf_counter() - start)
        median = {flag: sorted(v)[len(v) // 2] * 1000 for flag, v in times.items()}
        print(f"{name:10s} conditional: false {median[False]:8.1f} ms   default, no class {median[True]:8.1f} ms"
              f"   ratio {median[True] / median[False]:.2f}")


if __name__ == "__main__":
    main()
