"""The bandwidth probe's five STREAM kernels as compiled loops (numba), one fused pass each.

Imported lazily by :mod:`rwkvprobe.measure.bandwidth` (importing numba costs a few tenths of a second, the first
compile a second or two; compiled code is cached on disk). Each function releases the GIL
(``nogil=True``), so the probe's pinned worker threads stream memory in parallel, as OpenMP threads do in
the C reference (``bench/stream_ref.c``). Only the read kernel's sum may be reordered (``fastmath``), so
that LLVM vectorises it as the C reference's ``omp simd reduction`` does; the other kernels are plain
loops without fused multiply-adds, so their values equal numpy's bit for bit.

Why not numpy alone: triad ``a = b + s*c`` has no single numpy call, and two passes over cache-sized blocks
reached only 0.65-0.78 of C on an AVX2-only Zen 3 (issue 14); the fused loop here moves exactly the three
arrays STREAM counts, in one pass.
"""

from __future__ import annotations

from numba import njit

_OPTIONS = dict(nogil=True, cache=True, boundscheck=False)


@njit(**_OPTIONS)
def copy(a, c):  # pragma: no cover - compiled
    for i in range(a.shape[0]):
        c[i] = a[i]


@njit(**_OPTIONS)
def scale(c, b, s):  # pragma: no cover - compiled
    for i in range(c.shape[0]):
        b[i] = s * c[i]


@njit(**_OPTIONS)
def add(a, b, c):  # pragma: no cover - compiled
    for i in range(a.shape[0]):
        c[i] = a[i] + b[i]


@njit(**_OPTIONS)
def triad(a, b, c, s):  # pragma: no cover - compiled
    for i in range(a.shape[0]):
        a[i] = b[i] + s * c[i]


@njit(fastmath=True, **_OPTIONS)
def read(a):  # pragma: no cover - compiled
    total = 0.0
    for i in range(a.shape[0]):
        total += a[i] * a[i]
    return total
