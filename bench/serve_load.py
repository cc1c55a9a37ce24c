"""The served model under load: concurrent clients send a mix of requests to a real
``mlflow models serve`` on the loopback interface, and this prints, per concurrency and task, the
p50 / p95 / p99 latency, throughput and failures, and the server's memory (RSS of its process
tree) over a soak.

    python bench/serve_load.py --model-uri models:/rnngen@champion          # 1, 4, 16 clients, then the soak
    python bench/serve_load.py --model-uri models:/rnngen@champion --workers 2 --threads 1 --soak 0
    python bench/serve_load.py --url http://127.0.0.1:5001 --levels 16 --seconds 60   # a server already running

With ``--model-uri`` the server is started here as ``rnngen serve`` (``make serve``) starts it, with
its settings by default (``--workers``, ``--threads`` torch threads per worker, ``--timeout``), on a
free loopback port, and stopped at the end. The mix, each client drawing its next request at random
(seeded): ``score`` of 1 and of 32 images, ``sample`` of 4 images, ``inpaint`` of 1 image with
``effort`` 8 (the centre square). A failure is any answer but 200, a connection error or a client
timeout (``--client-timeout``). After 10 s of warm-up (4 clients, not counted), every level runs
``--seconds``; the soak (``--soak`` seconds at the last level) samples the server's RSS every 10 s
and reports its growth between minute 2 and the end. State the load (printed first) with the
figures: the clients share the server's 2 cores.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import urllib3

from rnngen import serving
from rnngen.server import descendants, free_port, http_status

DIGITS = (np.random.default_rng(0).random((32, 28, 28)) < 0.15).astype(np.float32).tolist()
#: task name -> the request's JSON body
MIX: dict[str, dict] = {
    "score 1": {"inputs": DIGITS[:1], "params": {"task": "score"}},
    "score 32": {"inputs": DIGITS, "params": {"task": "score"}},
    "sample 4": {"inputs": [], "params": {"task": "sample", "n": 4}},
    "inpaint 1": {"inputs": DIGITS[:1], "params": {"task": "inpaint", "effort": 8}},
}


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {task: [] for task in MIX})
    failures: dict[str, list[str]] = field(default_factory=lambda: {task: [] for task in MIX})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, task: str, seconds: float, failure: str | None) -> None:
        with self.lock:
            (self.failures[task] if failure else self.latencies[task]).append(failure or seconds)


def client(url: str, seed: int, until: float, results: Results, timeout: float) -> None:
    pick, pool = random.Random(seed), urllib3.PoolManager()  # one kept-alive connection per client
    while time.monotonic() < until:
        task = pick.choice(list(MIX))
        start = time.perf_counter()
        try:
            answer = pool.request("POST", f"{url}/invocations", json=MIX[task], timeout=timeout, retries=False)
            text = answer.data[:200].decode(errors="replace")
            failure = None if answer.status == 200 else f"HTTP {answer.status}: {text}"
        except urllib3.exceptions.HTTPError as exc:
            failure = type(exc).__name__
        results.add(task, time.perf_counter() - start, failure)


def tree_rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and every process below it, MiB (from /proc)."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    return total / 2**20


def run_level(url: str, clients: int, seconds: float, timeout: float, seed: int) -> Results:
    results, until = Results(), time.monotonic() + seconds
    threads = [threading.Thread(target=client, args=(url, seed + k, until, results, timeout)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def table(clients: int, seconds: float, results: Results) -> None:
    print(f"\n{clients} client(s), {seconds:.0f} s | answers | failed | req/s | p50 s | p95 s | p99 s")
    for task in MIX:
        times, failed = sorted(results.latencies[task]), results.failures[task]
        if not times:
            print(f"{task:10s} | 0 | {len(failed)} | 0 | - | - | -")
            continue
        q = statistics.quantiles(times, n=100, method="inclusive") if len(times) > 1 else times * 99
        print(f"{task:10s} | {len(times)} | {len(failed)} | {len(times) / seconds:.2f} | {q[49]:.3f} | {q[94]:.3f} "
              f"| {q[98]:.3f}")
        for failure in sorted(set(failed))[:3]:
            print(f"    failure: {failure}")


@contextmanager
def served(model_uri: str, workers: int, threads: int, timeout: int) -> Iterator[tuple[str, int]]:
    """``mlflow models serve`` of ``model_uri`` on a free loopback port: (url, pid)."""
    port = free_port()
    cmd, extra = serving.serve_command(model_uri, "127.0.0.1", port, workers, threads, timeout)
    env = {**os.environ, **extra}
    log = tempfile.NamedTemporaryFile(prefix="serve_load.", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while http_status(f"{url}/ping") != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start: {' '.join(cmd)}; its log: {log.name}")
            time.sleep(1)
        yield url, proc.pid
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
        proc.wait(timeout=60)


def soak(url: str, pid: int | None, clients: int, seconds: float, timeout: float) -> None:
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def watch() -> None:
        start = time.monotonic()
        while not done.wait(10):
            if pid is not None:
                samples.append((time.monotonic() - start, tree_rss_mib(pid)))

    watcher = threading.Thread(target=watch)
    watcher.start()
    results = run_level(url, clients, seconds, timeout, seed=1000)
    done.set()
    watcher.join()
    table(clients, seconds, results)
    if samples:
        at2 = min(samples, key=lambda s: abs(s[0] - 120))[1]
        end, peak = samples[-1][1], max(s[1] for s in samples)
        print(f"server RSS, MiB: {at2:.0f} at minute 2, {end:.0f} at the end ({100 * (end / at2 - 1):+.1f} %), "
              f"peak {peak:.0f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--model-uri", help="serve this model here (e.g. models:/rnngen@champion)")
    where.add_argument("--url", help="a server already running")
    p.add_argument("--workers", type=int, default=serving.WORKERS, help="default: rnngen serve's")
    p.add_argument("--threads", type=int, default=serving.THREADS, help="torch threads per worker")
    p.add_argument("--timeout", type=int, default=serving.TIMEOUT_S, help="seconds")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients")
    p.add_argument("--seconds", type=float, default=60, help="per level")
    p.add_argument("--soak", type=float, default=600, help="seconds at the last level, RSS watched; 0 = none")
    p.add_argument("--client-timeout", type=float, default=60)
    args = p.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores")

    def measure(url: str, pid: int | None) -> None:
        run_level(url, 4, 10, args.client_timeout, seed=0)  # warm-up: every worker loads its kernels
        for level in args.levels:
            table(level, args.seconds, run_level(url, level, args.seconds, args.client_timeout, seed=level))
        if args.soak > 0:
            soak(url, pid, args.levels[-1], args.soak, args.client_timeout)

    if args.url:
        measure(args.url, None)
        return
    print(f"serving {args.model_uri}: {args.workers} worker(s), {args.threads} torch thread(s) each, "
          f"timeout {args.timeout} s")
    with served(args.model_uri, args.workers, args.threads, args.timeout) as (url, pid):
        measure(url, pid)


if __name__ == "__main__":
    main()
