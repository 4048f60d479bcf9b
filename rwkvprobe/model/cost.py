"""The one roofline cost model every part uses: a call takes t0 + max(F/P, B/W).

F FLOPs at a peak of P FLOP/s, B bytes at W bytes/s, plus a fixed per-call overhead t0. analyze projects a
point's time with it (to fit the budget), the verdict judges each layer against it, and the sweep fits its
three parameters to measured points. A ceiling of None, 0 or inf contributes nothing (an unconstrained
rate). Works on floats and on numpy arrays alike.
"""

from __future__ import annotations

import math

import numpy as np


def _inverse(rate):
    if rate is None or (np.ndim(rate) == 0 and (not rate or not math.isfinite(rate))):
        return 0.0
    return 1.0 / np.asarray(rate, float) if np.ndim(rate) else 1.0 / rate


def roofline_seconds(flops, nbytes, peak_flops: float | None, bandwidth_bps: float | None, overhead: float = 0.0):
    """t0 + max(F/P, B/W), in seconds; a float for float inputs, an array for arrays."""
    compute = flops * _inverse(peak_flops)
    memory = nbytes * _inverse(bandwidth_bps)
    if np.ndim(compute) or np.ndim(memory):
        return overhead + np.maximum(compute, memory)
    return overhead + max(compute, memory)
