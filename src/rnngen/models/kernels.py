"""rnngen's C++ CPU kernels (``csrc/``), compiled on first use with PyTorch's own extension
builder (g++ and ninja; cached per machine under ``$TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``, and rebuilt when the source or the compiler flags change).

Why C++ rather than PyTorch ops: a recurrent step is one GEMM plus a dozen element-wise ops on
small tensors, and on a 2-core CPU those ops, each a separate pass with its own dispatch, cost
more than the GEMM. Fused into one sweep a step costs its GEMM (``bench/pixelrnn_speed.py``).

Where the build fails (no compiler), or with ``RNNGEN_KERNELS=0``, the models run their
PyTorch-op loops instead, which compute the same thing (the tests check both paths against the
plain reference); a warning says so once.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
import warnings
from pathlib import Path

import torch

CSRC = Path(__file__).parent / "csrc"


def enabled() -> bool:
    """False when ``RNNGEN_KERNELS=0``: the PyTorch-op loops run instead."""
    return os.environ.get("RNNGEN_KERNELS", "1") != "0"


@functools.cache
def _load(name: str) -> bool:
    # its import warns that there is no CUDA: irrelevant to a CPU kernel
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    try:  # a private helper, for the message only
        built = Path(cpp_extension._get_build_directory(f"rnngen_{name}", verbose=False)) / f"rnngen_{name}.so"
    except Exception:
        built = None
    if built is not None and not built.exists():
        print(f"rnngen: compiling the C++ kernel {name} (once per machine, about 15 s)", file=sys.stderr, flush=True)
    try:
        cpp_extension.load(
            name=f"rnngen_{name}", sources=[str(CSRC / f"{name}.cpp")], is_python_module=False,
            extra_cflags=["-O3", "-march=native", "-ffast-math", "-fopenmp"], extra_ldflags=["-fopenmp", "-lm"],
            verbose=False,
        )
    except Exception as err:  # no compiler, no ninja, a read-only cache: the op loops still work
        warnings.warn(f"rnngen: could not build the C++ kernel {name} ({type(err).__name__}: {err}); "
                      "using the slower PyTorch-op loop. Install g++ and ninja for the fast one.", stacklevel=3)
        return False
    return True


def ops(name: str, like: torch.Tensor) -> object | None:
    """The C++ ops of ``csrc/<name>.cpp`` (``torch.ops.rnngen_<name>``: ``row_lstm`` and
    ``diagonal_bilstm``, the PixelRNN layers; ``lstm_cell``, the fused cell; ``pixelrnn_sampler``,
    PixelRNN's generation) for ``like``'s device, or None where the PyTorch-op loop must run
    (not a CPU tensor, kernels off, the build failed)."""
    if like.device.type != "cpu" or not enabled() or not _load(name):
        return None
    keep_freed_memory()  # scoring too: a pass over 200 images maps ~1 GB, faulted in afresh each time
    return getattr(torch.ops, f"rnngen_{name}")


@functools.cache
def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks for reuse instead of handing them back to the
    kernel (``mallopt``: mmap threshold 1 GiB, trim threshold 2 GiB). PyTorch's CPU allocator
    does not cache, so by default every training step maps its activations afresh and
    page-faults them in: measured 1.3x images/s for PixelRNN training on 2 cores
    (bench/pixelrnn_speed.py), 2.2x for its teacher-forced scoring of 200 images
    (bench/scoring_speed.py). Every use of a C++ kernel sets it (:func:`ops`), and training
    does for every model.
    The same effect as running under jemalloc or tcmalloc, which PyTorch's CPU tuning guide
    recommends. Process-wide and idempotent; False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 31))
    except (OSError, AttributeError):
        return False
