"""numpy: ``np.matmul`` into a preallocated output, BLAS threads limited with threadpoolctl."""

from __future__ import annotations

import numpy as np

from rwkvprobe.backends import Backend, Workload, activation, base_weight, copy_scale


class NumpyRunner:
    def __init__(self, workload: Workload, copies: int):
        dt = np.float32 if workload.dtype == "fp32" else np.float16
        base = base_weight(workload.k, workload.n)
        # copy 0 at fp32 is the (read-only) base itself: no second copy of a large weight
        self.weights = [base if (i == 0 and dt == np.float32) else (base * np.float32(copy_scale(i))).astype(dt)
                        for i in range(copies)]
        del base
        self.a = activation(workload.m, workload.k).astype(dt)
        self.outs = [np.empty((workload.m, workload.n), dtype=dt) for _ in range(copies)]
        self.copies = copies

    def run(self, i: int) -> None:
        np.matmul(self.a, self.weights[i], out=self.outs[i])

    def output(self, i: int) -> np.ndarray:
        return self.outs[i].astype(np.float64)

    def scale(self, i: int) -> float:
        return copy_scale(i)

    def inputs(self):
        """A and the base weight as this backend rounded them (for the float64 reference)."""
        return self.a, self.weights[0]

    def close(self) -> None:
        self.weights, self.outs = [], []


class NumpyBackend(Backend):
    name = "numpy"
    dtypes = ("fp32", "fp16")
    default_dtypes = ("fp32",)
    notes = {"fp16": "numpy fp16 has no BLAS kernel: a generic C loop, not what a tuned fp16 engine does"}

    def __init__(self, threads: int):
        super().__init__(threads)
        from threadpoolctl import threadpool_limits

        self._limits = threadpool_limits(limits=threads, user_api="blas")

    def prepare(self, workload: Workload, copies: int, onnx_dir=None) -> NumpyRunner:
        return NumpyRunner(workload, copies)

    def describe(self) -> dict:
        from threadpoolctl import threadpool_info

        blas = [{k: i.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                for i in threadpool_info() if i.get("user_api") == "blas"]
        return {"name": self.name, "threads": self.threads, "numpy": np.__version__, "blas": blas}
