"""Stage `download`: acquire the dataset named by ``data.*`` as uint8 arrays + manifest."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rnngen import data
from rnngen.config import section
from rnngen.digests import file_digest
from rnngen.files import atomic_dir, write_json


def run(params: Mapping[str, Any], out: Path) -> dict[str, Any]:
    """Acquire the dataset into ``out``: uint8 ``.npy`` arrays and ``manifest.json``."""
    cfg = section(data.DataConfig, params, "data")
    with atomic_dir(out) as tmp:
        raw = data.acquire(cfg, tmp)
        if (tmp / "downloads").exists():
            shutil.rmtree(tmp / "downloads")
        raw.save(tmp)
        manifest = {
            "dataset": cfg.dataset,
            "source": cfg.source,
            "origin": cfg.mirror or cfg.path or cfg.source,
            "files_md5": raw.files,
            "counts": {"train": len(raw.x_train), "test": len(raw.x_test)},
            "official_test_split": bool(len(raw.x_test)),
            "classes": int(raw.y_train.max()) + 1,
            "x_train_sha256": file_digest(tmp / "x_train.npy", "sha256"),
        }
        write_json(tmp / data.MANIFEST, manifest)
    print(f"{cfg.dataset} ({cfg.source}): {manifest['counts']}")
    return manifest
