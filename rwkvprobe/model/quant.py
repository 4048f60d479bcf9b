"""Quantized weight formats: what each stores per weight (its real bytes), and how to read it back.

A quantized workload keeps fp32 activations and stores W[K,N] in a *weight format*: b-bit integers
plus a scale (and maybe a zero point) per group of weights. The group is a block of ``block_size``
consecutive K rows of one output column (blockwise), one whole column (per-channel) or the whole
matrix (per-tensor). The bytes a format really moves include its scales and zero points, and the
padding of K up to whole blocks where the kernel stores it:

    nbits4    onnxruntime MatMulNBits 4-bit: 0.5 B + fp32 scale/32 + 4-bit zero point/32 = 0.640625 B/weight
    nbits8    onnxruntime MatMulNBits 8-bit: 1 B + fp32 scale/32 + 8-bit zero point/32    = 1.15625 B/weight
    nbits4a8, nbits8a8: the same weights, computed with int8 activations (accuracy_level 4)
    dynamic8  onnxruntime MatMulInteger (quantize_dynamic): 1 B + one fp32 scale and int8 zero point
    int8pack  torch _weight_int8pack_mm: 1 B + fp32 scale per output column (symmetric)
    int4pack  torch _weight_int4pack_mm_for_cpu: 0.5 B + fp32 scale and fp32 zero per group of 32

(block 32; for K=768, N=3072). The numpy helpers here turn each format back into the fp32 weight it
stands for, and replay the activation quantization of the formats that quantize A inside the call,
so a kernel's output can be checked tightly against A' x dequantized(W) in float64; the error
against the original fp32 A x W is quantization noise and is recorded apart, for information.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: weight dtypes stored as integers; activations and outputs stay fp32 (int8-dyn, int8-a8 and
#: int4-a8 quantize A to 8 bits inside the call)
QUANT_DTYPES = ("int8", "int4", "int8-dyn", "int8-a8", "int4-a8")
#: ggml's block formats (rwkv.cpp, llama.cpp), each its own dtype: fp32 activations, which ggml's mat-vec
#: quantizes itself to its vec_dot type (q8_0, q8_1 or q8_K) inside the call
GGML_DTYPES = ("q8_0", "q5_1", "q4_0", "q4_k")
QUANT_DTYPES += GGML_DTYPES
#: how the whatif_missing of a --quick run that measures quantized series in full begins (analyze.plan_whatif: the
#: onnxruntime what-if left out), then what it measures
QUICK_WHATIF_LEFT_OUT = "--quick measures "
#: bytes per activation/output element of a quantized workload (fp32)
ACTIVATION_BYTES = 4
#: weights per scale of a blockwise format, unless a workload says otherwise (``--block-size``)
DEFAULT_BLOCK_SIZE = 32


@dataclass(frozen=True)
class WeightFormat:
    """How a kernel stores a quantized W[K,N]: what decides its real bytes per weight."""

    name: str  # short id, used in file names and results: "nbits4"
    dtype: str  # the rwkvprobe dtype it implements: "int4"
    bits: int  # bits per stored weight
    grouping: str  # "block" (block_size rows of K per scale), "channel" (one per column), "tensor" (one)
    scale_bytes: int  # bytes of one scale
    zero_bits: int  # bits of one stored zero point; 0 = symmetric, none stored
    op: str  # the kernel
    pad_k: bool = False  # K is stored padded up to whole blocks
    #: how the kernel quantizes the fp32 activations inside the call: "" (it does not),
    #: ACT_TENSOR_U8 (DynamicQuantizeLinear) or ACT_BLOCK_S8 (symmetric int8 per block of K)
    activations: str = ""
    accuracy_level: int = 0  # MatMulNBits compute type: 1 fp32, 4 int8 activations
    block_sizes: tuple[int, ...] = ()  # block sizes the kernel accepts (blockwise formats)
    detail: str = ""
    #: formats with a fixed block layout (ggml): weights per block and bytes per block (scales included),
    #: as ggml's type traits give them (ggml_blck_size, ggml_type_size); K must be whole blocks
    fixed_block: int = 0
    block_bytes: int = 0

    @property
    def blockwise(self) -> bool:
        return self.grouping == "block"

    def groups(self, k: int, n: int, block_size: int) -> tuple[int, int]:
        """(scales per column, columns): the layout of the scales."""
        if self.fixed_block:
            return math.ceil(k / self.fixed_block), n
        if self.grouping == "block":
            return math.ceil(k / block_size), n
        if self.grouping == "channel":
            return 1, n
        return 1, 1

    def weight_bytes(self, k: int, n: int, block_size: int = DEFAULT_BLOCK_SIZE) -> int:
        """Exact bytes of W[K,N] in this format: packed integers, scales and zero points."""
        if self.fixed_block:
            return math.ceil(k / self.fixed_block) * self.block_bytes * n
        per_col, cols = self.groups(k, n, block_size)
        rows = per_col * block_size if (self.blockwise and self.pad_k) else k
        data = math.ceil(rows * self.bits / 8) * n
        scales = per_col * cols * self.scale_bytes
        zeros = math.ceil(per_col * self.zero_bits / 8) * cols  # packed per column, as the kernels do
        return data + scales + zeros

    def label(self, block_size: int = DEFAULT_BLOCK_SIZE) -> str:
        """e.g. ``int4 (MatMulNBits, block 32)``."""
        if self.fixed_block:
            return f"{self.dtype} ({self.op}, block {self.fixed_block}, {self.block_bytes / self.fixed_block:.4g} B/weight)"
        if self.grouping == "block":
            where = f"block {block_size}"
        elif self.grouping == "channel":
            where = "per-channel"
        else:
            where = "per-tensor"
        extra = f", {self.activations} activations" if self.activations else ""
        return f"{self.dtype} ({self.op}, {where}{extra})"

    def check_block_size(self, block_size: int) -> None:
        if self.fixed_block:  # ggml's blocks are fixed: --block-size does not apply
            return
        if self.blockwise and block_size not in self.block_sizes:
            raise ValueError(f"{self.label(block_size)}: block size {block_size} is not supported "
                             f"(expected one of {', '.join(map(str, self.block_sizes))})")


ACT_TENSOR_U8 = "uint8 per-tensor"
ACT_BLOCK_S8 = "int8 per-block"
_NBITS_BLOCKS = (16, 32, 64, 128, 256)

FORMATS: dict[str, WeightFormat] = {f.name: f for f in (
    WeightFormat("nbits4", "int4", 4, "block", 4, 4, "MatMulNBits", pad_k=True, accuracy_level=1,
                 block_sizes=_NBITS_BLOCKS,
                 detail="onnxruntime blockwise weight-only 4-bit, asymmetric (uint4 zero point per block), "
                        "fp32 compute (accuracy_level 1)"),
    WeightFormat("nbits8", "int8", 8, "block", 4, 8, "MatMulNBits", pad_k=True, accuracy_level=1,
                 block_sizes=_NBITS_BLOCKS,
                 detail="onnxruntime blockwise weight-only 8-bit, asymmetric (uint8 zero point per block), "
                        "fp32 compute (accuracy_level 1)"),
    WeightFormat("nbits4a8", "int4-a8", 4, "block", 4, 4, "MatMulNBits", pad_k=True, accuracy_level=4,
                 activations=ACT_BLOCK_S8, block_sizes=_NBITS_BLOCKS,
                 detail="the nbits4 weights computed with A quantized to int8 per block (accuracy_level 4)"),
    WeightFormat("nbits8a8", "int8-a8", 8, "block", 4, 8, "MatMulNBits", pad_k=True, accuracy_level=4,
                 activations=ACT_BLOCK_S8, block_sizes=_NBITS_BLOCKS,
                 detail="the nbits8 weights computed with A quantized to int8 per block (accuracy_level 4)"),
    WeightFormat("dynamic8", "int8-dyn", 8, "tensor", 4, 8, "MatMulInteger", activations=ACT_TENSOR_U8,
                 detail="onnxruntime quantize_dynamic: int8 weight with one scale, activations quantized to "
                        "uint8 per call (DynamicQuantizeLinear), int32 accumulation"),
    WeightFormat("rknn8", "int8", 8, "channel", 4, 0, "RKNN NPU", activations="int8 per-tensor",
                 detail="RK3588 NPU w8a8 (rknnlite): bytes modelled as int8 weights plus one fp32 scale per "
                        "output column; the .rknn layout is not read back"),
    WeightFormat("int8pack", "int8", 8, "channel", 4, 0, "torch _weight_int8pack_mm",
                 detail="torch weight-only int8, symmetric, one fp32 scale per output column, fp32 activations"),
    WeightFormat("int4pack", "int4", 4, "block", 4, 32, "torch _weight_int4pack_mm_for_cpu",
                 block_sizes=(32, 64, 128, 256),
                 detail="torch weight-only int4, fp32 scale and fp32 zero per group, w = (q - 8) * scale + zero"),
)}

# ggml's formats (ggml-common.h): the layout is ggml's, the byte counts are checked against ggml's type
# traits by the ggml backend before it runs anything (and by tests/test_ggml.py).
FORMATS.update({f.name: f for f in (
    WeightFormat("q8_0", "q8_0", 8, "block", 2, 0, "ggml Q8_0", fixed_block=32, block_bytes=34,
                 activations="q8_0 per-block",
                 detail="ggml Q8_0: blocks of 32 int8 with one fp16 scale (34 B / 32 weights); the mat-vec "
                        "quantizes A to q8_0 itself"),
    WeightFormat("q5_1", "q5_1", 5, "block", 2, 16, "ggml Q5_1", fixed_block=32, block_bytes=24,
                 activations="q8_1 per-block",
                 detail="ggml Q5_1: blocks of 32 5-bit weights with fp16 scale and fp16 minimum (24 B / 32); "
                        "A quantized to q8_1 inside the call"),
    WeightFormat("q4_0", "q4_0", 4, "block", 2, 0, "ggml Q4_0", fixed_block=32, block_bytes=18,
                 activations="q8_0 per-block",
                 detail="ggml Q4_0: blocks of 32 4-bit weights with one fp16 scale (18 B / 32); A quantized "
                        "to q8_0 inside the call"),
    WeightFormat("q4_k", "q4_k", 4, "block", 2, 0, "ggml Q4_K", fixed_block=256, block_bytes=144,
                 activations="q8_K per-block",
                 detail="ggml Q4_K: super-blocks of 256 4-bit weights in 8 sub-blocks with 6-bit scales and "
                        "minimums, fp16 super-scale and super-minimum (144 B / 256); A quantized to q8_K"),
)})

#: the format a quantized dtype means unless a backend stores it differently (Backend.formats)
DEFAULT_FORMATS = {"int4": "nbits4", "int8": "nbits8", "int8-dyn": "dynamic8", "int8-a8": "nbits8a8",
                   "int4-a8": "nbits4a8", **{d: d for d in GGML_DTYPES}}


# ------------------------------------------------------------------------------------------------
# Reading formats back (numpy): every helper returns the fp32 weight W[K,N] the kernel stands for.
# Each product (q - z) * s is rounded to fp32 once, as the kernels do: 2^-24 relative, far below the
# tolerances.

_COLUMN_CHUNK = 4096


def unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    """uint8 [..., B] -> uint8 [..., 2B]: low nibble first (onnxruntime's and torch's CPU order)."""
    out = np.empty(packed.shape[:-1] + (packed.shape[-1] * 2,), dtype=np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out


def dequantize_nbits(packed: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, bits: int,
                     block_size: int, k: int, n: int) -> np.ndarray:
    """MatMulNBits B [N, k_blocks, blob] (+ scales [N*k_blocks], packed zero points) -> fp32 W[K,N].

    Without zero points the kernel uses the midpoint 2^(bits-1).
    """
    kb = math.ceil(k / block_size)
    packed = packed.reshape(n, kb, -1)
    scales = np.asarray(scales, dtype=np.float32).reshape(n, kb)
    if zero_points is not None:
        zero_points = np.asarray(zero_points, dtype=np.uint8).reshape(n, -1)
    w = np.empty((k, n), dtype=np.float32)
    for j in range(0, n, _COLUMN_CHUNK):
        sl = slice(j, min(n, j + _COLUMN_CHUNK))
        q = unpack_nibbles(packed[sl]) if bits == 4 else packed[sl]
        if zero_points is None:
            z = np.full((q.shape[0], kb), 1 << (bits - 1), dtype=np.float32)
        else:
            z = (unpack_nibbles(zero_points[sl]) if bits == 4 else zero_points[sl])[:, :kb].astype(np.float32)
        cols = (q.astype(np.float32) - z[..., None]) * scales[sl][..., None]
        w[:, sl] = cols.reshape(cols.shape[0], -1)[:, :k].T
    return w


def dequantize_per_tensor(q: np.ndarray, scale, zero_point) -> np.ndarray:
    """MatMulInteger's B (int8/uint8 [K,N]) with one scale and zero point -> fp32 W[K,N]."""
    return (q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)


def dynamic_quantize_linear(a: np.ndarray) -> tuple[np.ndarray, np.float32, np.float32]:
    """ONNX DynamicQuantizeLinear of fp32 A: (uint8 q, fp32 scale, zero point), bit for bit.

    scale = (max(0, max A) - min(0, min A)) / 255 in fp32; zero point and q rounded half to even.
    """
    a = np.asarray(a, dtype=np.float32)
    hi = np.float32(max(0.0, float(a.max())))
    lo = np.float32(min(0.0, float(a.min())))
    scale = np.float32((hi - lo) / np.float32(255)) if hi != lo else np.float32(1)
    zp = np.float32(np.clip(np.round(np.float32(0) - lo / scale), 0, 255))
    q = np.clip(np.round(a / scale) + zp, 0, 255).astype(np.uint8)
    return q, scale, zp


def dynamic_activation(a: np.ndarray) -> np.ndarray:
    """A as MatMulInteger sees it after DynamicQuantizeLinear, in float64: (q - zp) * scale."""
    q, scale, zp = dynamic_quantize_linear(a)
    return (q.astype(np.float64) - float(zp)) * float(scale)


def block_int8_activation(a: np.ndarray, block_size: int) -> np.ndarray:
    """A as MatMulNBits sees it at accuracy_level 4, in float64: each row quantized to int8 per block
    of K, symmetric, scale = max|a| / 127, rounded half to even (MLAS's QuantizeARow_CompInt8)."""
    a = np.asarray(a, dtype=np.float32)
    m, k = a.shape
    kb = math.ceil(k / block_size)
    padded = np.zeros((m, kb * block_size), dtype=np.float32)
    padded[:, :k] = a
    g = padded.reshape(m, kb, block_size)
    scale = (np.abs(g).max(axis=-1) / np.float32(127)).astype(np.float32)
    safe = np.where(scale != 0, scale, np.float32(1))
    inv = np.where(scale != 0, np.float32(1) / safe, np.float32(0)).astype(np.float32)
    q = np.clip(np.rint(g * inv[..., None]), -127, 127)
    return (q * scale[..., None].astype(np.float64)).reshape(m, -1)[:, :k]


def activation_as_seen(a: np.ndarray, fmt: WeightFormat, block_size: int) -> np.ndarray:
    """A as a format's kernel multiplies it: itself, or its replayed 8-bit quantization (float64)."""
    if fmt.activations == ACT_TENSOR_U8:
        return dynamic_activation(a)
    if fmt.activations == ACT_BLOCK_S8:
        return block_int8_activation(a, block_size)
    return a


def quantize_int8_per_channel(w_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output column: W^T [N,K] fp32 -> (int8 q [N,K], fp32 scales [N])."""
    amax = np.abs(w_t).max(axis=1)
    scales = (amax / np.float32(127)).astype(np.float32)
    scales[scales == 0] = 1
    q = np.clip(np.rint(w_t / scales[:, None]), -127, 127).astype(np.int8)
    return q, scales


def quantize_int4_groups(w_t: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric 4-bit per group of K (torch's int4 convention, w = (q - 8) * scale + zero).

    W^T [N,K] fp32, K a multiple of ``group`` -> (q int32 [N,K] in 0..15, scales [N,K/g], zeros [N,K/g]).
    """
    n, k = w_t.shape
    g = w_t.reshape(n, k // group, group)
    lo, hi = g.min(axis=-1), g.max(axis=-1)
    scales = ((hi - lo) / np.float32(15)).astype(np.float32)
    scales[scales == 0] = 1
    zeros = (lo + np.float32(8) * scales).astype(np.float32)
    q = np.clip(np.rint((g - lo[..., None]) / scales[..., None]), 0, 15).astype(np.int32).reshape(n, k)
    return q, scales, zeros


def dequantize_int4_groups(q: np.ndarray, scales: np.ndarray, zeros: np.ndarray, group: int) -> np.ndarray:
    """Inverse of :func:`quantize_int4_groups`: fp32 W[K,N]."""
    n, k = q.shape
    g = (q.reshape(n, k // group, group).astype(np.float32) - np.float32(8)) * scales[..., None] + zeros[..., None]
    return np.ascontiguousarray(g.reshape(n, k).T)


#: Which layer kinds a quantized model stores quantized by default: the big block matrices. The head,
#: the low-rank (LoRA) matrices and the embedding stay at the float type, as common runtimes keep them.
DEFAULT_QUANTIZE = ("att", "ffn", "custom")


def quantize_kinds(setting: list[str] | None, backend_desc: dict | None = None) -> set[str]:
    """The layer kinds a quantized series stores quantized: ``--quantize`` when given, else the backend's own
    rule (its description's ``quantize_kinds``: ggml follows rwkv.cpp), else DEFAULT_QUANTIZE."""
    return set(setting or (backend_desc or {}).get("quantize_kinds") or DEFAULT_QUANTIZE)
