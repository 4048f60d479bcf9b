"""onnxruntime (CPU): runs the very ONNX files that ``rwkvprobe onnx`` writes, one session per copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rwkvprobe.backends import Backend, Workload, activation, base_weight
from rwkvprobe.onnxgen import NP_DTYPES, ModelSpec


class OrtRunner:
    def __init__(self, workload: Workload, copies: int, path: Path, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Each session holds its own copy of the weight: the cold-cache rotation.
        self.sessions = [ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
                         for _ in range(copies)]
        self.dtype = NP_DTYPES[workload.dtype]
        self.a = activation(workload.m, workload.k).astype(self.dtype)
        self.feeds = {"A": self.a}
        self.outs: list[np.ndarray | None] = [None] * copies
        self.copies = copies
        self.k, self.n = workload.k, workload.n

    def run(self, i: int) -> None:
        self.outs[i] = self.sessions[i].run(None, self.feeds)[0]

    def output(self, i: int) -> np.ndarray:
        return np.asarray(self.outs[i], dtype=np.float64)

    def scale(self, i: int) -> float:
        return 1.0

    def inputs(self):
        return self.a, base_weight(self.k, self.n).astype(self.dtype)

    def close(self) -> None:
        self.sessions, self.outs = [], []


class OrtBackend(Backend):
    name = "onnxruntime"
    dtypes = ("fp32", "fp16")
    default_dtypes = ("fp32", "fp16")
    module = "onnxruntime"
    extra = "onnxruntime"

    def prepare(self, workload: Workload, copies: int, onnx_dir=None) -> OrtRunner:
        from rwkvprobe.onnxgen import DEFAULT_OPSET, write_model

        if onnx_dir is None:
            raise ValueError("the onnxruntime backend needs a folder for its ONNX models")
        folder = Path(onnx_dir)
        folder.mkdir(parents=True, exist_ok=True)
        spec = ModelSpec(workload.m, workload.k, workload.n, workload.dtype)
        if not (folder / spec.filename).is_file():  # normally written beforehand by onnxgen.generate
            write_model(spec, folder, DEFAULT_OPSET)
        return OrtRunner(workload, copies, folder / spec.filename, self.threads)

    def describe(self) -> dict:
        import onnxruntime as ort

        return {"name": self.name, "threads": self.threads, "onnxruntime": ort.__version__,
                "providers": ["CPUExecutionProvider"]}
