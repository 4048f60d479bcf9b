"""torch: ``torch.matmul(..., out=)`` on the CPU (fp32, fp16, bf16) or on a CUDA GPU when present."""

from __future__ import annotations

import importlib.util

import numpy as np

from rwkvprobe.backends import Backend, Workload, activation, base_weight, copy_scale

_TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class TorchRunner:
    def __init__(self, workload: Workload, copies: int, device: str):
        import torch

        self.torch = torch
        self.device = device
        dt = getattr(torch, _TORCH_DTYPES[workload.dtype])
        base = base_weight(workload.k, workload.n)
        self.weights = [torch.from_numpy(base * np.float32(copy_scale(i))).to(device=device, dtype=dt).contiguous()
                        for i in range(copies)]
        del base
        self.a = torch.from_numpy(activation(workload.m, workload.k)).to(device=device, dtype=dt)
        self.outs = [torch.empty((workload.m, workload.n), dtype=dt, device=device) for _ in range(copies)]
        self.copies = copies
        self.sync = torch.cuda.synchronize if device == "cuda" else None

    def run(self, i: int) -> None:
        self.torch.matmul(self.a, self.weights[i], out=self.outs[i])
        if self.sync:
            self.sync()  # a GPU call counts until its result is there

    def output(self, i: int) -> np.ndarray:
        return self.outs[i].to(device="cpu", dtype=self.torch.float64).numpy()

    def scale(self, i: int) -> float:
        return copy_scale(i)

    def inputs(self):
        t = self.torch

        def host(x):  # numpy has no bfloat16: widen it to fp32, which is exact
            x = x.to(device="cpu")
            return (x.float() if x.dtype == t.bfloat16 else x).numpy()

        return host(self.a), host(self.weights[0])

    def close(self) -> None:
        self.weights, self.outs = [], []
        if self.device == "cuda":
            self.torch.cuda.empty_cache()


class TorchBackend(Backend):
    name = "torch"
    dtypes = ("fp32", "fp16", "bf16")
    default_dtypes = ("fp32", "fp16")
    module = "torch"
    extra = "torch"
    device = "cpu"

    def __init__(self, threads: int):
        super().__init__(threads)
        import torch

        torch.set_num_threads(threads)
        self.torch = torch

    def prepare(self, workload: Workload, copies: int, onnx_dir=None) -> TorchRunner:
        return TorchRunner(workload, copies, self.device)

    def describe(self) -> dict:
        t = self.torch
        info = {"name": self.name, "threads": t.get_num_threads(), "torch": t.__version__, "device": self.device}
        if self.device == "cpu":
            info["cpu_capability"] = getattr(t.backends.cpu, "get_cpu_capability", lambda: None)()
        else:
            info["gpu"] = t.cuda.get_device_name(0)
        return info


class TorchCudaBackend(TorchBackend):
    name = "torch-cuda"
    device = "cuda"
    default_dtypes = ("fp32", "fp16")

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if importlib.util.find_spec("torch") is None:
            return "'torch' is not installed (pip install 'rwkvprobe[torch]')"
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU is present"
        return None
