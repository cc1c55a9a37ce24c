"""Where training runs: the device ``train.device`` names, and whether bfloat16 autocast pays."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from rnngen.config import ConfigError


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """``auto`` (CUDA when present), ``cpu`` or ``cuda[:N]``; a CUDA name without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError([f"{key}: {name!r} but no CUDA device is available; use auto or cpu"])
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bfloat16 GEMMs natively (AVX512-BF16 or AMX-BF16), where bf16
    autocast pays; elsewhere oneDNN emulates bf16 and it is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: trust oneDNN's own check
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_enabled(amp: bool, device: torch.device) -> bool:
    """``train.amp`` on this device: always on CUDA, on CPU only with native bfloat16."""
    if not amp:
        return False
    if device.type == "cpu" and not cpu_has_native_bf16():
        print("train.amp: this CPU has no native bfloat16 (AVX512-BF16/AMX); training in fp32", flush=True)
        return False
    return True


@contextlib.contextmanager
def tf32_under_amp(amp: bool, device: torch.device) -> Iterator[None]:
    """With ``train.amp`` on CUDA, TF32 for the GEMMs autocast leaves in fp32, for the ``with``
    block only: no process-wide setting is left behind."""
    precision = torch.get_float32_matmul_precision()
    if amp and device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
