"""The bandwidth probe's five STREAM kernels as compiled loops (numba), one fused pass each.

The loops below are plain Python; :func:`compiled` compiles them with numba on first use (importing numba costs a
few tenths of a second, the first compile a second or two; compiled code is cached on disk), so importing this
module costs nothing and works where numba does not. Each function releases the GIL
(``nogil=True``), so the probe's pinned worker threads stream memory in parallel, as OpenMP threads do in
the C reference (``bench/stream_ref.c``). Only the read kernel's sum may be reordered (``fastmath``), so
that LLVM vectorises it as the C reference's ``omp simd reduction`` does; the other kernels are plain
loops without fused multiply-adds, so their values equal numpy's bit for bit.

Why not numpy alone: triad ``a = b + s*c`` has no single numpy call, and two passes over cache-sized blocks
reached only 0.65-0.78 of C on an AVX2-only Zen 3 (issue 14); the fused loop here moves exactly the three
arrays STREAM counts, in one pass.

Vector width: on a CPU with AVX-512, LLVM's default for some of them (AMD Zen 4: ``znver4``) is 512-bit vectors,
and streaming loops over DRAM ran slower that way. On one core of the Zen 4 dev VM, same process, alternating
call by call (134 MB arrays): add and triad moved 27-28 GB/s with 512-bit vectors against 33-35 GB/s with 256-bit
ones, read 29-31 against 34-35; copy was the same. gcc's loops showed the same (``-march=native`` against
``-march=native -mprefer-vector-width=256``). LLVM already prefers 256-bit vectors on Intel's AVX-512 server CPUs
(its ``prefer-256-bit`` tuning); :func:`compiled` asks for it on every x86-64 CPU with AVX-512
(:func:`numba_cpu_features`), unless the user set ``NUMBA_CPU_FEATURES`` or ``NUMBA_CPU_NAME`` themselves.
:func:`vector_tuning` says which width the kernels were compiled for.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
from types import SimpleNamespace

_OPTIONS = dict(nogil=True, cache=True, boundscheck=False)
#: LLVM's tuning feature: vectorise with 256-bit vectors although the CPU has 512-bit ones
PREFER_256 = "+prefer-256-bit"
X86_64 = ("x86_64", "amd64")


def numba_cpu_features(machine: str, host_features: str) -> str | None:
    """``NUMBA_CPU_FEATURES`` for the kernels: the host's own features (LLVM's comma-separated ``+name``/``-name``
    list) with ``+prefer-256-bit`` added, on an x86-64 CPU with AVX-512; None elsewhere (numba's default: an
    AVX2-only or an Arm CPU has no wider vectors to avoid)."""
    features = [f for f in host_features.split(",") if f]
    if machine.lower() not in X86_64 or "+avx512f" not in features or PREFER_256 in features:
        return None
    return ",".join([*features, PREFER_256])


def _ask_for_256_bit_vectors() -> None:
    """Set NUMBA_CPU_FEATURES (see the module's note) before numba is first imported; nothing once numba is
    imported (its configuration is read then) or where the user chose the target themselves."""
    if "numba" in sys.modules or os.environ.get("NUMBA_CPU_FEATURES") or os.environ.get("NUMBA_CPU_NAME"):
        return
    try:
        import llvmlite.binding as llvm

        features = numba_cpu_features(platform.machine(), llvm.get_host_cpu_features().flatten())
    except Exception:  # llvmlite missing or unable to read the host: numba's default target
        return
    if features:
        os.environ["NUMBA_CPU_FEATURES"] = features


def vector_tuning() -> str:
    """What the kernels were compiled for: ``"256-bit vectors (LLVM prefer-256-bit)"`` where that tuning is in effect,
    else ``"numba's default for this CPU"``."""
    numba = sys.modules.get("numba")
    features = getattr(getattr(getattr(numba, "core", None), "config", None), "CPU_FEATURES", None) or ""
    return "256-bit vectors (LLVM prefer-256-bit)" if PREFER_256 in features.split(",") else "numba's default for this CPU"


def copy(a, c):  # compiled by compiled(); plain Python here
    for i in range(a.shape[0]):
        c[i] = a[i]


def scale(c, b, s):  # compiled by compiled(); plain Python here
    for i in range(c.shape[0]):
        b[i] = s * c[i]


def add(a, b, c):  # compiled by compiled(); plain Python here
    for i in range(a.shape[0]):
        c[i] = a[i] + b[i]


def triad(a, b, c, s):  # compiled by compiled(); plain Python here
    for i in range(a.shape[0]):
        a[i] = b[i] + s * c[i]


def read(a):  # compiled by compiled(); plain Python here
    total = 0.0
    for i in range(a.shape[0]):
        total += a[i] * a[i]
    return total


@functools.cache
def compiled() -> SimpleNamespace | None:
    """The five kernels compiled by numba, or None when numba cannot be imported here (the probe then falls
    back to numpy)."""
    _ask_for_256_bit_vectors()
    try:
        from numba import njit
    except Exception:  # numba missing, or broken for this Python/numpy
        return None
    plain = {"copy": copy, "scale": scale, "add": add, "triad": triad}
    kernels = {name: njit(**_OPTIONS)(fn) for name, fn in plain.items()}
    kernels["read"] = njit(fastmath=True, **_OPTIONS)(read)
    return SimpleNamespace(**kernels)
