"""Stage `split`: seeded, stratified train/val/test split (``split.*``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rnngen import data
from rnngen.config import section
from rnngen.digests import file_digest
from rnngen.files import atomic_dir, read_json, write_json


def run(params: Mapping[str, Any], raw_dir: Path, out: Path) -> dict[str, Any]:
    """Seeded stratified train/val/test from ``raw_dir`` into ``out/{train,val,test}_{x,y}.npy``."""
    cfg = section(data.SplitConfig, params, "split")
    raw = data.RawData.load(raw_dir)
    manifest = read_json(raw_dir / data.MANIFEST)
    parts = data.split(raw, cfg)
    with atomic_dir(out) as tmp:
        for name, (x, y) in parts.items():
            data.save_split(tmp, name, x, y)
        info = {
            **dataclasses.asdict(cfg),
            "counts": {name: len(y) for name, (_, y) in parts.items()},
            "dataset": manifest["dataset"],
            "source": manifest["source"],
            "manifest_sha256": file_digest(raw_dir / data.MANIFEST, "sha256"),
        }
        write_json(tmp / data.SPLIT_INFO, info)
    print(f"split: {info['counts']} (binarization: {cfg.binarization})")
    return info
