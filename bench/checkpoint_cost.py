"""Cost of the per-epoch checkpoint (full training state, atomic write) as a fraction of
epoch time, for each model at its params.yaml-style defaults on the embedded data size.

    python bench/checkpoint_cost.py [--models row_lstm_vae draw] [--images 3600]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from rnngen import checkpoint as ckpt
from rnngen.models import MODELS, build_model, model_config
from rnngen.train import TrainConfig, make_optimizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=sorted(MODELS))
    p.add_argument("--images", type=int, default=3600, help="training images per epoch (embedded: 3600)")
    p.add_argument("--batches", type=int, default=10, help="batches timed to estimate the epoch time")
    args = p.parse_args()
    cfg = TrainConfig()
    print(f"{'model':<14} {'params':>9} {'ckpt MB':>8} {'save s':>7} {'epoch s':>8} {'fraction':>9}")
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name, model_config(name, {}))
        opt = make_optimizer(model, cfg)
        x = torch.bernoulli(torch.full((cfg.batch_size, 1, 28, 28), 0.2))
        for _ in range(2):  # warm-up; also creates Adam's state, which the checkpoint holds
            opt.zero_grad()
            model(x).nelbo.mean().backward()
            opt.step()
        t0 = time.perf_counter()
        for _ in range(args.batches):
            opt.zero_grad()
            model(x).nelbo.mean().backward()
            opt.step()
        epoch_s = (time.perf_counter() - t0) / args.batches * (args.images / cfg.batch_size)
        state = {"model": ckpt.model_spec(model), "weights": model.state_dict(), "optimizer": opt.state_dict(),
                 "best_weights": {k: v.clone() for k, v in model.state_dict().items()},
                 "rng_cpu": torch.get_rng_state(), "epoch": 1}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "train.pt"
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                ckpt.save(path, state)
                times.append(time.perf_counter() - t0)
            size = path.stat().st_size / 1e6
        save_s = sorted(times)[len(times) // 2]
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{name:<14} {n_params:9d} {size:8.1f} {save_s:7.3f} {epoch_s:8.1f} {save_s / epoch_s:9.2%}")


if __name__ == "__main__":
    main()
