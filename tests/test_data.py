"""Data sources (embedded, download over a loopback HTTP server, local IDX, image folders)
and the split: clear errors, no partial outputs, no test-set leakage."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_params
from rnngen import data, stages
from rnngen.config import ConfigError

NAMES = [name for name, _ in data.OFFICIAL["mnist"].resources]


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX format: magic (0, 0, dtype 0x08 = ubyte, ndim), big-endian dims, raw data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def write_idx_set(folder: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> dict[str, str]:
    """Four generated IDX .gz files under the official names; returns their md5s."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = [
        rng.integers(0, 256, (n_train, 28, 28)), np.arange(n_train) % 10,
        rng.integers(0, 256, (n_test, 28, 28)), np.arange(n_test) % 10,
    ]
    md5 = {}
    for name, arr in zip(NAMES, arrays, strict=True):
        blob = idx_bytes(arr)
        (folder / name).write_bytes(blob)
        md5[name] = hashlib.md5(blob).hexdigest()
    return md5


def write_checksums(path: Path, md5: dict[str, str]) -> Path:
    path.write_text("".join(f"{digest}  {name}\n" for name, digest in md5.items()))
    return path


@pytest.fixture()
def http_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", root
    server.shutdown()
    server.server_close()


def params_for(**data_keys: str) -> dict:
    return tiny_params(**{f"data.{k}": v for k, v in data_keys.items()})


# ------------------------------------------------------------------------- embedded


def test_embedded_gives_5000_real_digits(tmp_path: Path) -> None:
    manifest = stages.download.run(tiny_params(), tmp_path / "raw")
    raw = data.RawData.load(tmp_path / "raw")
    assert raw.x_train.shape == (5000, 28, 28) and raw.x_train.dtype == np.uint8
    assert np.bincount(raw.y_train).tolist() == [500] * 10
    assert manifest["counts"] == {"train": 5000, "test": 0}


def test_download_output_is_byte_identical_across_runs(tmp_path: Path) -> None:
    a = stages.download.run(tiny_params(), tmp_path / "a")
    b = stages.download.run(tiny_params(), tmp_path / "b")
    assert a["x_train_sha256"] == b["x_train_sha256"]
    assert (tmp_path / "a/x_train.npy").read_bytes() == (tmp_path / "b/x_train.npy").read_bytes()


# ------------------------------------------------------------------------- download


def test_download_from_mirror_with_checksums(tmp_path: Path, http_server: tuple[str, Path]) -> None:
    url, www = http_server
    md5 = write_idx_set(www)
    sums = write_checksums(tmp_path / "md5.txt", md5)
    manifest = stages.download.run(params_for(source="download", mirror=url, checksums=str(sums)), tmp_path / "raw")
    assert manifest["counts"] == {"train": 60, "test": 20}
    assert manifest["files_md5"] == md5
    assert not (tmp_path / "raw" / "downloads").exists()  # only the parsed arrays are kept


def test_download_rejects_files_that_fail_official_checksums(tmp_path: Path, http_server: tuple[str, Path]) -> None:
    url, www = http_server
    write_idx_set(www)
    with pytest.raises(data.DataError, match="checksum mismatch for .*train-images-idx3-ubyte.gz"):
        stages.download.run(params_for(source="download", mirror=url), tmp_path / "raw")
    assert [p.name for p in tmp_path.iterdir()] == ["www"]  # no output, no temporary leftovers


def test_download_of_a_corrupted_file_fails_cleanly(tmp_path: Path, http_server: tuple[str, Path]) -> None:
    url, www = http_server
    md5 = write_idx_set(www)
    sums = write_checksums(tmp_path / "md5.txt", md5)
    blob = (www / NAMES[2]).read_bytes()
    (www / NAMES[2]).write_bytes(blob[: len(blob) // 2])  # truncated in transit
    with pytest.raises(data.DataError, match="checksum mismatch.*t10k-images"):
        stages.download.run(params_for(source="download", mirror=url, checksums=str(sums)), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_download_unreachable_mirror_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(data.DataError, match=r"(?s)could not download .*Connection refused.*data.mirror"):
        stages.download.run(params_for(source="download", mirror="http://127.0.0.1:9/"), tmp_path / "raw")


# ---------------------------------------------------------------------------- local


def test_local_idx_folder(tmp_path: Path) -> None:
    md5 = write_idx_set(tmp_path / "idx")
    sums = write_checksums(tmp_path / "md5.txt", md5)
    manifest = stages.download.run(params_for(source="local", path=str(tmp_path / "idx"), checksums=str(sums)),
                               tmp_path / "raw")
    assert manifest["official_test_split"] is True


def test_known_rebuild_is_accepted_whole_and_only_for_its_dataset(tmp_path: Path, monkeypatch) -> None:
    """Files matching a named repackaging (e.g. Debian's recompressed Fashion-MNIST) pass without
    data.checksums; one changed file, or the same files named as another dataset, do not."""
    md5 = write_idx_set(tmp_path / "idx")
    monkeypatch.setattr(data, "KNOWN_REBUILDS", {"mnist": {"a test rebuild": md5}})
    local = {"source": "local", "path": str(tmp_path / "idx")}
    manifest = stages.download.run(params_for(**local), tmp_path / "raw")
    assert manifest["official_test_split"] is True
    with pytest.raises(data.DataError, match="checksum mismatch for .*train-images"):
        stages.download.run(params_for(dataset="fashion-mnist", **local), tmp_path / "raw2")
    (tmp_path / "idx" / NAMES[3]).write_bytes(idx_bytes(np.zeros(20)))  # one file differs
    with pytest.raises(data.DataError, match="checksum mismatch for .*train-images"):
        stages.download.run(params_for(**local), tmp_path / "raw3")
    assert not (tmp_path / "raw2").exists() and not (tmp_path / "raw3").exists()


DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist (.ci/run does)")
def test_debian_fashion_mnist_package_is_the_full_set(tmp_path: Path) -> None:
    """The README's recipe: data.source local on the Debian package gives 60,000 / 10,000 images."""
    raw = data.acquire(data.DataConfig(dataset="fashion-mnist", source="local", path=str(DEBIAN_FASHION)), tmp_path)
    assert raw.x_train.shape == (60_000, 28, 28) and raw.x_test.shape == (10_000, 28, 28)
    assert sorted(np.bincount(raw.y_train)) == [6000] * 10 and sorted(np.bincount(raw.y_test)) == [1000] * 10


def test_local_missing_file_is_named(tmp_path: Path) -> None:
    write_idx_set(tmp_path / "idx")
    (tmp_path / "idx" / NAMES[1]).unlink()
    with pytest.raises(data.DataError, match="missing file .*train-labels-idx1-ubyte.gz"):
        stages.download.run(params_for(source="local", path=str(tmp_path / "idx")), tmp_path / "raw")


def test_local_bad_idx_content_is_named(tmp_path: Path) -> None:
    md5 = write_idx_set(tmp_path / "idx")
    (tmp_path / "idx" / NAMES[0]).write_bytes(gzip.compress(b"not an idx file"))
    md5[NAMES[0]] = hashlib.md5((tmp_path / "idx" / NAMES[0]).read_bytes()).hexdigest()
    sums = write_checksums(tmp_path / "md5.txt", md5)
    with pytest.raises(data.DataError, match="cannot parse .*train-images"):
        stages.download.run(params_for(source="local", path=str(tmp_path / "idx"), checksums=str(sums)),
                        tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_custom_image_folder_with_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for cls in ("circle", "cross"):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (40, 32, 3), dtype=np.uint8)).save(tmp_path / "img" / cls / f"{i}.png")
    stages.download.run(params_for(dataset="custom", source="local", path=str(tmp_path / "img")), tmp_path / "raw")
    raw = data.RawData.load(tmp_path / "raw")
    assert raw.x_train.shape == (12, 28, 28) and sorted(set(raw.y_train.tolist())) == [0, 1]


def test_custom_empty_and_unreadable_images(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match="no .png/.jpg/.jpeg images found"):
        stages.download.run(params_for(dataset="custom", source="local", path=str(tmp_path / "empty")), tmp_path / "r1")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(data.DataError, match="cannot read image .*broken.png"):
        stages.download.run(params_for(dataset="custom", source="local", path=str(tmp_path / "bad")), tmp_path / "r2")
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_custom_needs_local_source() -> None:
    with pytest.raises(ConfigError, match="custom"):
        stages.download.run(params_for(dataset="custom", source="download"), Path("/nonexistent"))


# ---------------------------------------------------------------------------- split


def _rows(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in x}


def test_split_is_stratified_disjoint_and_seeded(tmp_path: Path) -> None:
    params = tiny_params()
    stages.download.run(params, tmp_path / "raw")
    info = stages.split.run(params, tmp_path / "raw", tmp_path / "s1")
    stages.split.run(params, tmp_path / "raw", tmp_path / "s2")
    assert info["counts"] == {"train": 3600, "val": 400, "test": 1000}
    parts = {n: data.load_split(tmp_path / "s1", n) for n in ("train", "val", "test")}
    for name, (x, y) in parts.items():
        assert np.bincount(y.numpy()).min() >= 0.09 * len(y), name  # every class ~10%
        x2, _ = data.load_split(tmp_path / "s2", name)
        assert np.array_equal(x.numpy(), x2.numpy())  # same seed, same split
    index = {n: set(np.flatnonzero(np.ones(len(x)))) for n, (x, _) in parts.items()}
    assert sum(map(len, index.values())) == 5000
    # No image in two splits: the test set never leaks into training or validation.
    test_rows = _rows(parts["test"][0].numpy())
    assert not test_rows & _rows(parts["train"][0].numpy())
    assert not test_rows & _rows(parts["val"][0].numpy())


def test_official_test_set_stays_the_test_set(tmp_path: Path) -> None:
    md5 = write_idx_set(tmp_path / "idx", n_train=100, n_test=30)
    sums = write_checksums(tmp_path / "md5.txt", md5)
    params = params_for(source="local", path=str(tmp_path / "idx"), checksums=str(sums))
    stages.download.run(params, tmp_path / "raw")
    info = stages.split.run(params, tmp_path / "raw", tmp_path / "split")
    raw = data.RawData.load(tmp_path / "raw")
    x_test, _ = data.load_split(tmp_path / "split", "test")
    assert info["counts"]["test"] == 30 and np.array_equal(x_test.numpy(), raw.x_test)


def test_fixed_binarization_is_one_seeded_sample(tmp_path: Path) -> None:
    params = tiny_params(**{"split.binarization": "fixed"})
    stages.download.run(params, tmp_path / "raw")
    stages.split.run(params, tmp_path / "raw", tmp_path / "a")
    stages.split.run(params, tmp_path / "raw", tmp_path / "b")
    xa, _ = data.load_split(tmp_path / "a", "test")
    xb, _ = data.load_split(tmp_path / "b", "test")
    assert set(np.unique(xa.numpy())) <= {0, 255} and np.array_equal(xa.numpy(), xb.numpy())


def test_split_bad_fraction_is_rejected() -> None:
    with pytest.raises(ConfigError, match="split.val_fraction"):
        stages.split.run(tiny_params(**{"split.val_fraction": 1.5}), Path("x"), Path("y"))
