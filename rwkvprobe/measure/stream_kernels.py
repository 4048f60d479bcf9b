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
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

_OPTIONS = dict(nogil=True, cache=True, boundscheck=False)


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
    try:
        from numba import njit
    except Exception:  # numba missing, or broken for this Python/numpy
        return None
    plain = {"copy": copy, "scale": scale, "add": add, "triad": triad}
    kernels = {name: njit(**_OPTIONS)(fn) for name, fn in plain.items()}
    kernels["read"] = njit(fastmath=True, **_OPTIONS)(read)
    return SimpleNamespace(**kernels)
