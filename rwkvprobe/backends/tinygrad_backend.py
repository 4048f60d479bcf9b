"""tinygrad (optional, as the seed article compared it): a realized matmul on its default CPU device."""

from __future__ import annotations

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


class TinygradBackend(Backend):
    name = "tinygrad"
    dtypes = ("fp32", "fp16")
    default_dtypes = ("fp32",)
    module = "tinygrad"
    extra = "tinygrad"

    def prepare(self, workload: Workload, copies: int, onnx_dir=None) -> TinygradRunner:
        return TinygradRunner(workload, copies)
