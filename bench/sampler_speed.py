"""PixelRNN drawing against scoring: the compiled sampler (csrc/pixelrnn_sampler.cpp), the PyTorch-op
sampler it replaces, and the scoring of as many images, side by side in one process, alternating
windows; then the latency of drawing 1, 4, 16 and 64 images.

    python bench/sampler_speed.py                                     # both variants, untrained, default size
    python bench/sampler_speed.py --pyfunc models:/rnngen@champion    # the champion, as the server runs it
    python bench/sampler_speed.py --url http://127.0.0.1:5001         # a served model's sample requests, over HTTP

Direct mode times ``model.generate`` (compiled, and the PyTorch sampler) and ``service.score`` on
each variant at the default size (4 layers, hidden 32), fp32 and under bfloat16 autocast (the
compiled sampler computes in fp32 under either; scoring's layers take bf16 operands). With
``--pyfunc`` the same tasks go through the loaded MLflow pyfunc (``predict`` with ``task``
``sample`` and ``score``), as ``mlflow models serve`` calls it; with ``--url`` only the latency of
``sample`` requests to that server (``make serve``), client and HTTP included. Rates are images/s, best and median
of ``--repeats`` windows; "draw/score" is drawing's best over scoring's best in the same precision.
State the load (printed first): windows alternate so that load from other work falls on all alike.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable
from unittest import mock

import numpy as np
import torch

from rnngen import service
from rnngen.models import build_model, model_config
from rnngen.models.fast.pixelrnn_sampler import CompiledSampler

Task = Callable[[int], object]  # n -> the work for n images


def precision(bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def direct_tasks(variant: str) -> dict[str, Task]:
    torch.manual_seed(0)
    model = build_model("pixelrnn", model_config("pixelrnn", {"variant": variant})).eval()
    real = torch.bernoulli(torch.full((64, 1, 28, 28), 0.15), generator=torch.Generator().manual_seed(0))

    def draw(compiled: bool, bf16: bool) -> Task:
        def run(n: int) -> object:
            with precision(bf16), contextlib.ExitStack() as stack:
                if not compiled:
                    stack.enter_context(mock.patch.object(CompiledSampler, "build", return_value=None))
                return model.generate(n, torch.Generator().manual_seed(n))
        return run

    def score(bf16: bool) -> Task:
        def run(n: int) -> object:
            with precision(bf16):
                return service.score(model, real[:n])
        return run

    return {"draw fp32": draw(True, False), "draw bf16": draw(True, True), "draw, PyTorch sampler": draw(False, False),
            "score fp32": score(False), "score bf16": score(True)}


def pyfunc_tasks(uri: str) -> dict[str, Task]:
    import mlflow

    model = mlflow.pyfunc.load_model(uri)
    real = (np.random.default_rng(0).random((64, 28, 28)) < 0.15).astype(np.float32)

    def task(name: str, bf16: bool) -> Task:
        def run(n: int) -> object:
            with precision(bf16):
                if name == "sample":
                    return model.predict(None, params={"task": "sample", "n": n, "seed": n})
                return model.predict(real[:n], params={"task": "score"})
        return run

    return {f"{'draw' if name == 'sample' else name} {p}": task(name, p == "bf16")
            for name in ("sample", "score") for p in ("fp32", "bf16")}


def http_tasks(url: str) -> dict[str, Task]:
    import requests

    def run(n: int) -> object:
        answer = requests.post(f"{url}/invocations", json={"inputs": [], "params": {"task": "sample", "n": n}},
                               timeout=60)
        answer.raise_for_status()
        return answer
    return {"draw fp32": run}


def rates(tasks: dict[str, Task], n: int, repeats: int) -> dict[str, list[float]]:
    """Images/s of every task on ``n`` images, one window each per round, rounds alternating."""
    for task in tasks.values():
        task(n)  # warm-up: builds, caches, allocator
    out: dict[str, list[float]] = {name: [] for name in tasks}
    for _ in range(repeats):
        for name, task in tasks.items():
            start = time.perf_counter()
            task(n)
            out[name].append(n / (time.perf_counter() - start))
    return out


def report(label: str, tasks: dict[str, Task], repeats: int, latency_repeats: int) -> None:
    if len(tasks) > 1:
        throughput(label, tasks, repeats)
    print(f"latency of drawing n images, fp32, ms (best / median of {latency_repeats})")
    for n in (1, 4, 16, 64):
        seconds = [1 / r * n for r in rates({"draw": tasks["draw fp32"]}, n, latency_repeats)["draw"]]
        print(f"n = {n:2d}: {1000 * min(seconds):7.1f} / {1000 * statistics.median(seconds):7.1f}")


def throughput(label: str, tasks: dict[str, Task], repeats: int) -> None:
    print(f"\n## {label}: images/s in batches of 64 (best / median of {repeats} windows)")
    measured = rates(tasks, 64, repeats)
    for name, values in measured.items():
        print(f"{name:24s} {max(values):8.1f} / {statistics.median(values):8.1f}")
    for p in ("fp32", "bf16"):
        ratio = max(measured[f"draw {p}"]) / max(measured[f"score {p}"])
        print(f"draw/score {p}: {ratio:.2f}x")
    if "draw, PyTorch sampler" in measured:
        print(f"compiled/PyTorch sampler: {max(measured['draw fp32']) / max(measured['draw, PyTorch sampler']):.1f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pyfunc", default="", help="a model URI (e.g. models:/rnngen@champion): time its pyfunc")
    p.add_argument("--url", default="", help="a model server's address (make serve): time its sample requests")
    p.add_argument("--variants", nargs="+", default=["diagonal_bilstm", "row_lstm"])
    p.add_argument("--repeats", type=int, default=5, help="timed windows per task")
    p.add_argument("--latency-repeats", type=int, default=9)
    args = p.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} (1 min), {torch.get_num_threads()} torch threads")
    if args.pyfunc or args.url:
        tasks = pyfunc_tasks(args.pyfunc) if args.pyfunc else http_tasks(args.url)
        report(args.pyfunc or args.url, tasks, args.repeats, args.latency_repeats)
        return
    for variant in args.variants:
        report(f"{variant}, untrained, default size", direct_tasks(variant), args.repeats, args.latency_repeats)


if __name__ == "__main__":
    main()
