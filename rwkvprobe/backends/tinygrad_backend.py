"""tinygrad (optional, as the seed article compared it): a realized matmul on its default CPU device."""

from __future__ import annotations

import functools

import numpy as np

from rwkvprobe.backends import Backend, Workload, activation, base_weight, copy_scale


class TinygradRunner:
    def __init__(self, workload: Workload, copies: int):
        from tinygrad import Tensor, dtypes

        dt = {"fp32": dtypes.float32, "fp16": dtypes.float16}[workload.dtype]
        npdt = np.float32 if workload.dtype == "fp32" else np.float16
        base = base_weight(workload.k, workload.n)
        self.weights = [Tensor((base * np.float32(copy_scale(i))).astype(npdt), dtype=dt).realize() for i in range(copies)]
        self.a = Tensor(activation(workload.m, workload.k).astype(npdt), dtype=dt).realize()
        self.outs: list = [None] * copies
        self.copies = copies

    def run(self, i: int) -> None:
        self.outs[i] = (self.a @ self.weights[i]).realize()

    def output(self, i: int) -> np.ndarray:
        return self.outs[i].numpy().astype(np.float64)

    def scale(self, i: int) -> float:
        return copy_scale(i)

    def inputs(self):
        return self.a.numpy(), self.weights[0].numpy()

    def close(self) -> None:
        self.weights, self.outs = [], []


@functools.cache
def _device_problem() -> str | None:
    """tinygrad installed but without a usable device (its CPU device compiles with clang)."""
    try:
        from tinygrad import Device, Tensor

        device = Device.DEFAULT
        if device == "PYTHON":  # an emulator: its times would mean nothing
            return "tinygrad's only device here is its PYTHON emulator (its CPU device needs clang)"
        (Tensor(np.ones((1, 4), np.float32)) @ Tensor(np.ones((4, 2), np.float32))).realize()
    except Exception as e:  # no device, no compiler, ...: one line
        return f"tinygrad has no usable device here ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; its CPU device needs clang)"
    return None


class TinygradBackend(Backend):
    name = "tinygrad"
    dtypes = ("fp32", "fp16")
    default_dtypes = ("fp32",)
    module = "tinygrad"
    extra = "tinygrad"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        reason = super().unavailable_reason()
        return reason if reason else _device_problem()

    def prepare(self, workload: Workload, copies: int, onnx_dir=None) -> TinygradRunner:
        return TinygradRunner(workload, copies)
