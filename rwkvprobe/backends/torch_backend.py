"""torch: ``torch.matmul(..., out=)`` on the CPU (fp32, fp16, bf16) or on a CUDA GPU when present.

Weights are stored [K, N] (``x @ W``, as BlinkDL's reference keeps RWKV-7). ``torch-linear`` (opt-in)
stores them [N, K] and multiplies by the transposed view, the layout of ``nn.Linear`` / ``F.linear`` and of
the reference's RWKV-4/5/6 on a CPU: for M = 1 it is a different GEMV kernel, about a quarter slower here.

On the CPU, quantized weights use torch's own weight-only kernels with fp32 activations, when this
torch has them and they compute right here (probed once on a tiny matrix; otherwise the dtype is
reported unavailable, never run as something else):

- ``int8``: ``aten._weight_int8pack_mm``, int8 W^T [N,K], symmetric, one fp32 scale per column.
- ``int4``: ``aten._weight_int4pack_mm_for_cpu``, W^T packed two per byte by
  ``_convert_weight_to_int4pack_for_cpu``, fp32 scale and zero per group of 32 (block_size) of K:
  w = (q - 8) * scale + zero. K must be a multiple of the group.
"""

from __future__ import annotations

import functools
import importlib.util

import numpy as np

from rwkvprobe.backends import Backend, UnavailableDtype, Workload, activation, base_weight, check_runner, copy_scale
from rwkvprobe.model.quant import dequantize_int4_groups, quantize_int4_groups, quantize_int8_per_channel

_TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
#: the aten op each quantized dtype needs
_QUANT_OPS = {"int8": ("_weight_int8pack_mm",),
              "int4": ("_weight_int4pack_mm_for_cpu", "_convert_weight_to_int4pack_for_cpu")}


#: where a torch-linear CPU weight starts within its page: where the reference package keeps RWKV-4/5/6 weights on a
#: CPU (the tensors it was handed, allocated as a process starts: glibc serves blocks that large from a mapping of
#: their own, 16 bytes of header, and torch aligns to 64 bytes; every one of them starts 64 bytes into a page). A
#: weight allocated late in a long analyze run came from the heap instead (glibc's mmap threshold rises once a large
#: block is freed), at any multiple of 64: 1024x1024 fp32 GEMVs of [N, K] weights (rows of exactly 4 KiB) took 247 us
#: at this offset, 230 at 0 and 266-277 at 1-2 KiB, and analyze's 0.4B torch-linear points read 13-19% above the real
#: pass's. The torch series ([K, N]) keeps torch's own allocation: the reference copies RWKV-7's weights into [K, N]
#: as it loads them, late enough to land on the heap at scattered offsets (64, 320, 1152, 2816, ...), and with weights
#: placed at this offset analyze's RWKV-7 0.4B points read 0.83-0.86 of its real pass where they had read 0.93-1.02
WEIGHT_PAGE_OFFSET = 64


def _fresh_cpu_tensor(torch, shape: tuple, dtype):
    """An empty CPU tensor in a mapping of its own, WEIGHT_PAGE_OFFSET bytes into its first page. It keeps the
    mapping alive (torch.from_numpy holds the array, and the array the mapping), and the mapping goes back to the
    system with it."""
    import mmap

    nbytes = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
    raw = np.frombuffer(mmap.mmap(-1, nbytes + WEIGHT_PAGE_OFFSET), dtype=np.uint8, count=nbytes,
                        offset=WEIGHT_PAGE_OFFSET)
    return torch.from_numpy(raw).view(dtype).view(shape)


def _own_copy(torch, base: np.ndarray, scale: float, device: str, dtype, placed: bool = False):
    """``base`` times ``scale`` in a tensor of its own (copy 0, scale 1, without a scaled temporary: the 0.5 GB fp32
    head of rwkv-1b5 otherwise held three copies at once); ``placed`` (CPU only): in a mapping of its own,
    WEIGHT_PAGE_OFFSET bytes into a page, else in torch's own allocation."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a read-only base: it is copied before any use
        src = torch.from_numpy(base if scale == 1.0 else base * np.float32(scale))
    if device != "cpu" or not placed:
        return src.to(device=device, dtype=dtype).clone()
    return _fresh_cpu_tensor(torch, tuple(base.shape), dtype).copy_(src)


class TorchRunner:
    def __init__(self, workload: Workload, copies: int, device: str, layout: str = "kn"):
        import torch

        self.torch = torch
        self.device = device
        dt = getattr(torch, _TORCH_DTYPES[workload.dtype])
        base = base_weight(workload.k, workload.n)
        if layout == "nk":  # stored [N, K], used through its transposed view (no copy)
            base = np.ascontiguousarray(base.T)
        # copied: the weights live in torch's own allocation (torch) or a mapping placed as the reference keeps
        # RWKV-4/5/6 weights (torch-linear: WEIGHT_PAGE_OFFSET), never in numpy's buffer, which numpy may back with
        # huge pages: a few percent faster to stream than what torch users get
        stored = [_own_copy(torch, base, copy_scale(i), device, dt, placed=layout == "nk") for i in range(copies)]
        self.weights = [w.t() for w in stored] if layout == "nk" else stored
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


class TorchQuantRunner:
    """Weight-only int8/int4 on the CPU: every copy has its own packed integers (cold-cache rotation)
    and its scales (and zeros) times copy_scale(i), a power of two: W_i = scale(i) * W_0 exactly."""

    def __init__(self, workload: Workload, copies: int):
        import torch

        self.torch = torch
        w_t = np.ascontiguousarray(base_weight(workload.k, workload.n).T)  # [N, K]
        self.int4 = workload.dtype == "int4"
        if self.int4:
            g = workload.block_size
            if workload.k % g:
                raise UnavailableDtype(f"K={workload.k} is not a multiple of the int4 group size {g}: "
                                 "torch's CPU int4 kernel needs whole groups")
            q, scales, zeros = quantize_int4_groups(w_t, g)
            del w_t
            self.w0 = dequantize_int4_groups(q, scales, zeros, g)
            q = torch.from_numpy(q)
            sz = torch.from_numpy(np.ascontiguousarray(np.stack([scales.T, zeros.T], axis=-1)))  # [K/g, N, 2]
            self.group = g
            self.weights = [(torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1),
                             (sz * copy_scale(i)).contiguous()) for i in range(copies)]
        else:
            q, scales = quantize_int8_per_channel(w_t)
            del w_t
            self.w0 = np.ascontiguousarray((q.astype(np.float32) * scales[:, None]).T)
            q = torch.from_numpy(q)
            s = torch.from_numpy(scales)
            self.weights = [(q.clone(), (s * copy_scale(i)).contiguous()) for i in range(copies)]
        del q
        self.a = torch.from_numpy(activation(workload.m, workload.k))
        self.outs: list = [None] * copies
        self.copies = copies

    def run(self, i: int) -> None:
        w, s = self.weights[i]
        if self.int4:
            self.outs[i] = self.torch.ops.aten._weight_int4pack_mm_for_cpu(self.a, w, self.group, s)
        else:
            self.outs[i] = self.torch.ops.aten._weight_int8pack_mm(self.a, w, s)

    def output(self, i: int) -> np.ndarray:
        return self.outs[i].to(dtype=self.torch.float64).numpy()

    def scale(self, i: int) -> float:
        return copy_scale(i)

    def inputs(self):
        return self.a.numpy(), self.w0

    def close(self) -> None:
        self.weights, self.outs, self.w0 = [], [], None


@functools.lru_cache(maxsize=None)
def _probe(dtype: str) -> str | None:
    """None when this torch runs the ``dtype`` weight-only kernel right on this CPU, else why not."""
    import torch


    missing = [op for op in _QUANT_OPS[dtype] if not hasattr(torch.ops.aten, op)]
    if missing:
        return f"torch {torch.__version__} has no {', '.join(missing)}"
    w = TorchBackend.workload(2, 64, 16, dtype)
    try:
        runner = TorchQuantRunner(w, 2)
        try:
            result = check_runner(w, runner)
        finally:
            runner.close()
    except Exception as e:
        return f"torch's {w.label} fails here: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    if not result["ok"]:
        return f"torch's {w.label} gives wrong results here ({result['detail']})"
    return None


class TorchBackend(Backend):
    name = "torch"
    dtypes = ("fp32", "fp16", "bf16", "int8", "int4")
    default_dtypes = ("fp32", "fp16")
    module = "torch"
    extra = "torch"
    device = "cpu"
    formats = {"int8": "int8pack", "int4": "int4pack"}

    @classmethod
    def dtype_unavailable(cls, dtype: str) -> str | None:
        reason = super().dtype_unavailable(dtype)
        if reason or dtype not in cls.formats:
            return reason
        return _probe(dtype)

    def __init__(self, threads: int):
        super().__init__(threads)
        import torch

        torch.set_num_threads(threads)
        self.torch = torch

    layout = "kn"

    def prepare(self, workload: Workload, copies: int, onnx_dir=None) -> TorchRunner | TorchQuantRunner:
        if workload.quantized:
            return TorchQuantRunner(workload, copies)
        return TorchRunner(workload, copies, self.device, self.layout)

    def describe(self) -> dict:
        t = self.torch
        info = {"name": self.name, "threads": t.get_num_threads(), "torch": t.__version__, "device": self.device,
                "weight_layout": "[N, K], used transposed (nn.Linear)" if self.layout == "nk" else "[K, N]"}
        if self.device == "cpu":
            info["cpu_capability"] = getattr(t.backends.cpu, "get_cpu_capability", lambda: None)()
        else:
            info["gpu"] = t.cuda.get_device_name(0)
        return info


class TorchLinearBackend(TorchBackend):
    """torch on the CPU with weights in nn.Linear's [N, K] layout (opt-in: ``--backends torch-linear``)."""

    name = "torch-linear"
    layout = "nk"
    dtypes = ("fp32", "fp16", "bf16")
    default_dtypes = ("fp32",)
    formats = {}
    opt_in = True


class TorchCudaBackend(TorchBackend):
    name = "torch-cuda"
    device = "cuda"
    dtypes = ("fp32", "fp16", "bf16")  # the int4/int8 weight packs above are the CPU layouts
    default_dtypes = ("fp32", "fp16")
    formats = {}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if importlib.util.find_spec("torch") is None:
            return "'torch' is not installed (pip install 'rwkvprobe[torch]')"
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU is present"
        return None
