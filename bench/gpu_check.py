"""The prepared GPU check: training on CUDA with bfloat16 autocast through the pipeline's own
code (``train.fit`` with ``amp=True``, ``likelihood_metrics``), throughput next to the CPU
figures, and DRAW with vs without attention at a compute budget a 2-core CPU cannot give.

    python bench/gpu_check.py --split data/split --out gpu_report      # about 6 minutes on one H200
    python bench/gpu_check.py --split data/split --seconds 30 --models draw_paper

``--split`` is the split stage's output folder (``dvc repro split`` makes it). Throughput runs
bench/throughput.py's timing at batch 64 in float32 and with autocast; the CPU column is read
from ``--cpu-csv`` (written on the 2-core CPU by ``bench/throughput.py --csv``). Each training
run uses the same seed, split and early stopping; its best weights are scored on the test
split with the importance-weighted bound (k=100, test images binarized once, seed 0). Samples
and a canvas strip of each model go to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import torch

from rnngen import data
from rnngen.data import binarized_test_set
from rnngen.models import build_model, model_config
from rnngen.pictures import canvas_strip, save_grid
from rnngen.train import TrainConfig, fit

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
import throughput

RUNS = {  # label -> (model, params section)
    "draw_paper": ("draw", {"preset": "paper"}),
    "draw_paper_no_attention": ("draw", {"preset": "paper", "attention": False}),
    "row_lstm_vae": ("row_lstm_vae", {}),
    "mlp_vae": ("mlp_vae", {}),
}


def throughput_table(args: argparse.Namespace, device: torch.device) -> None:
    cpu: dict[str, dict[str, str]] = {}
    if args.cpu_csv and Path(args.cpu_csv).is_file():
        with open(args.cpu_csv) as f:
            cpu = {row["model"]: row for row in csv.DictReader(f)}
    bench_args = argparse.Namespace(batch=args.batch, warmup=3, iters=5, repeats=5, amp=False)
    rows = []
    for label in throughput.MODELS:
        try:
            fp32 = throughput.bench_model(label, bench_args, device)
            bf16 = throughput.bench_model(label, argparse.Namespace(**{**vars(bench_args), "amp": True}), device)
        except Exception as exc:  # report and go on: one model's failure is a finding, not the end
            print(f"{label}: FAILED {type(exc).__name__}: {exc}", flush=True)
            continue
        rows.append((label, fp32, bf16))
        ref = cpu.get(label, {})
        print(f"{label:<14} train img/s: cpu {ref.get('train_best', '-'):>8}  cuda fp32 "
              f"{statistics.median(fp32['train']):>9.0f}  cuda bf16 {statistics.median(bf16['train']):>9.0f}   "
              f"sample: cpu {ref.get('sample_best', '-'):>9}  cuda fp32 {statistics.median(fp32['sample']):>9.0f}"
              f"  bf16 {statistics.median(bf16['sample']):>9.0f}", flush=True)
    with open(Path(args.out) / "throughput_gpu.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["model", "batch", "cpu_train_best", "cuda_fp32_train_median", "cuda_bf16_train_median",
                      "cpu_sample_best", "cuda_fp32_sample_median", "cuda_bf16_sample_median"])
        for label, fp32, bf16 in rows:
            ref = cpu.get(label, {})
            out.writerow([label, args.batch, ref.get("train_best", ""), f"{statistics.median(fp32['train']):.0f}",
                          f"{statistics.median(bf16['train']):.0f}", ref.get("sample_best", ""),
                          f"{statistics.median(fp32['sample']):.0f}", f"{statistics.median(bf16['sample']):.0f}"])


def training_runs(args: argparse.Namespace, device: torch.device) -> None:
    x_train, _ = data.load_split(args.split, "train")
    x_val, _ = data.load_split(args.split, "val")
    x_test_u8, _ = data.load_split(args.split, "test")
    x_test = binarized_test_set(x_test_u8, "dynamic", seed=0)
    out = Path(args.out)
    rows = []
    for label in args.models:
        name, section = RUNS[label]
        torch.manual_seed(0)
        model = build_model(name, model_config(name, section)).to(device)
        cfg = TrainConfig(epochs=10_000, patience=10, device=str(device), amp=True, lr=args.lr,
                          batch_size=args.train_batch, time_budget_s=args.seconds)
        t0 = time.perf_counter()
        try:
            result = fit(model, x_train, x_val, cfg, "dynamic", progress=False)
        except Exception as exc:
            print(f"{label}: FAILED {type(exc).__name__}: {exc}", flush=True)
            continue
        seconds = time.perf_counter() - t0
        model.load_state_dict(result.best_weights)
        bounds = model.likelihood_metrics(x_test.to(device), 100, 100, seed=0, progress=False)
        gen = torch.Generator(device=device).manual_seed(0)
        save_grid(model.sample(64, generator=gen).float().cpu(), out / f"samples_{label}.png")
        frames = model.sample_steps(8, generator=gen)
        if frames is not None:
            canvas_strip(frames.float().cpu(), out / f"canvas_{label}.png")
        rates = [h["images_per_second"] for h in result.history]
        last = result.history[-1]
        rows.append({
            "model": label, "epochs": len(result.history), "best_epoch": result.best_epoch,
            "train_s": round(seconds), "img_per_s": round(statistics.median(rates)),
            "final_kl": round(last["train_kl"], 2), "val_nelbo": round(result.best_val, 2),
            "test_nll_elbo": round(bounds["nll_elbo"], 2), "test_nll_iwae": round(bounds["nll_iwae"], 2),
        })
        print(rows[-1], flush=True)
    if not rows:
        return
    with open(out / "quality_gpu.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", required=True, help="the split stage's output folder (train/val/test .npy)")
    p.add_argument("--out", default="gpu_report", help="folder for the CSVs and pictures")
    p.add_argument("--cpu-csv", default=str(Path(__file__).parent / "results" / "throughput_cpu.csv"))
    p.add_argument("--batch", type=int, default=64, help="batch of the throughput runs")
    p.add_argument("--seconds", type=float, default=120, help="training budget per model")
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--models", nargs="+", default=["draw_paper", "draw_paper_no_attention"], choices=list(RUNS))
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--device", default="cuda", help="cuda | cuda:N (cpu only to smoke-test this script)")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("no CUDA device: this check is for a GPU machine (bench/throughput.py covers the CPU)")
    device = torch.device(args.device)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        print(f"torch {torch.__version__}, {props.name}, {props.total_memory / 2**30:.0f} GiB, "
              f"CUDA {torch.version.cuda}", flush=True)
    if not args.skip_throughput:
        throughput_table(args, device)
    training_runs(args, device)
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
