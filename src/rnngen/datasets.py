"""The official datasets as IDX files (MNIST, Fashion-MNIST, KMNIST): torchvision's file lists
and checksums, overrides for private mirrors, known repackagings, download, verification and
parsing. :func:`rnngen.data.acquire` decides when they are read.

:class:`DataError` lives here, the lowest data module, so every data module raises the one class.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from rnngen.digests import file_digest
from rnngen.errors import UserError


class _Official(Mapping[str, Any]):
    """torchvision's dataset class of each official dataset (its file names, checksums and
    mirrors), imported on first use: importing torchvision loads its models and ops too, about
    a second that every stage and command would otherwise pay at start."""

    CLASSES: ClassVar[dict[str, str]] = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}

    def __getitem__(self, name: str) -> Any:
        from torchvision import datasets

        return getattr(datasets, self.CLASSES[name])

    def __contains__(self, name: object) -> bool:
        return name in self.CLASSES

    def __iter__(self) -> Iterator[str]:
        return iter(self.CLASSES)

    def __len__(self) -> int:
        return len(self.CLASSES)


OFFICIAL = _Official()
#: repackagings whose files differ from the official ones only in their gzip wrapping, by the md5
#: of each file, accepted where no data.checksums is given. Debian recompresses the upstream .gz
#: files when it builds the package (their gzip headers carry the build date, 2020-06-05)
KNOWN_REBUILDS: dict[str, dict[str, dict[str, str]]] = {
    "fashion-mnist": {
        "Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1": {
            "train-images-idx3-ubyte.gz": "cf8536b0aa1a6ac5fa3f23001093305c",
            "train-labels-idx1-ubyte.gz": "10bea18fdb374794d4bb42e356e600c9",
            "t10k-images-idx3-ubyte.gz": "f78720b4224f21cce2f2ccf2d7a94c9a",
            "t10k-labels-idx1-ubyte.gz": "0d30e22e447f3c33dab9ed536400ac01",
        },
    },
}


class DataError(UserError, ValueError):
    """Bad or missing input data; the message names the file and the fix."""


def expected_md5(dataset: str, checksums: str) -> dict[str, str]:
    """File name -> md5 of ``dataset``'s four files: the official ones, or those of the
    md5sum-style file ``checksums`` (data.checksums) when given."""
    official = dict(OFFICIAL[dataset].resources)
    if not checksums:
        return official
    path = Path(checksums)
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


def download(dataset: str, mirror: str, expected: dict[str, str], folder: Path) -> None:
    """Each file of ``expected`` into ``folder``, from ``mirror`` (data.mirror) or else
    torchvision's mirrors in turn."""
    mirrors = [mirror] if mirror else list(OFFICIAL[dataset].mirrors)
    folder.mkdir(parents=True, exist_ok=True)
    for name in expected:
        errors = []
        for base in mirrors:
            url = base.rstrip("/") + "/" + name
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


def read_idx_folder(
    folder: Path, expected: dict[str, str], rebuilds: dict[str, dict[str, str]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, str]]:
    """Train images and labels, test images and labels, and the md5 of each file read, from the
    four IDX files of ``expected`` in ``folder``, each checked against its md5 (or, all four
    together, against a named repackaging of ``rebuilds``)."""
    missing = [name for name in expected if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"missing file {folder / missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + f"; the folder must hold {', '.join(expected)}"
        )
    files = {}
    got_all = {name: file_digest(folder / name) for name in expected}
    rebuild = next((r for r, sums in rebuilds.items() if sums == got_all), None)
    if rebuild is not None:  # a named repackaging, byte for byte: accepted as it stands
        expected = {name: got_all[name] for name in expected}
        print(f"data: {folder} holds the files of {rebuild} (known checksums)", flush=True)
    for name, md5 in expected.items():
        path = folder / name
        got = got_all[name]
        if got != md5:
            raise DataError(
                f"checksum mismatch for {path}: md5 {got}, expected {md5}. The file is "
                "truncated or corrupted: download it again (or point data.checksums at the "
                "checksums of your own build)"
            )
        files[name] = got
    arrays = {name: read_idx(folder / name) for name in expected}
    names = list(expected)  # torchvision order: train images, train labels, test images, test labels
    x_tr, y_tr, x_te, y_te = (arrays[n] for n in names)
    for x, y, what in ((x_tr, y_tr, "train"), (x_te, y_te, "test")):
        if x.ndim != 3 or x.shape[1:] != (28, 28) or len(x) != len(y):
            raise DataError(f"{what} files in {folder}: got images {x.shape} and {len(y)} labels")
    return x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64), files


def read_idx(path: Path) -> np.ndarray:
    """A gzipped IDX file (images or labels) as a numpy array; torchvision parses it."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / path.name.removesuffix(".gz")
        try:
            with gzip.open(path) as src, open(raw, "wb") as dst:
                shutil.copyfileobj(src, dst)
            reader = read_label_file if "labels" in path.name else read_image_file
            return reader(str(raw)).numpy()
        except Exception as exc:  # gzip, IDX header or size errors
            raise DataError(f"cannot parse {path} as a gzipped IDX file: {exc}") from exc
