"""ONNX MatMul models, one per unique (M, K, N, dtype) of a layer list.

Each model is input A[M,K] x initializer B[K,N] -> output C[M,N], B seeded from its shape so that the
same request always gives the same weights. A ``manifest.json`` maps every layer to its file and
records each file's SHA-256: a repeated request reuses files whose hash still matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rwkvprobe.errors import InputError
from rwkvprobe.fsutil import atomic_write_text, ensure_writable_dir
from rwkvprobe.model.profile import LayerList

ONNX_DTYPES = ("fp32", "fp16")
NP_DTYPES = {"fp32": np.float32, "fp16": np.float16}
DEFAULT_OPSET = 14
MIN_OPSET = 7  # onnxruntime's oldest supported opset
EXTERNAL_DATA_THRESHOLD = 2 * 1000**3 - 64 * 1024**2  # protobuf's 2 GB limit, with room for the graph
MANIFEST = "manifest.json"
MANIFEST_SCHEMA = 1
#: Bumped whenever weight_matrix changes, so no cached model with other weights is ever reused.
WEIGHTS_VERSION = 2


@dataclass(frozen=True)
class ModelSpec:
    m: int
    k: int
    n: int
    dtype: str

    @property
    def filename(self) -> str:
        return f"matmul_m{self.m}_k{self.k}_n{self.n}_{self.dtype}.onnx"

    @property
    def weight_bytes(self) -> int:
        return self.k * self.n * np.dtype(NP_DTYPES[self.dtype]).itemsize

    @property
    def seed(self) -> int:
        """Seed of B: a function of (K, N) alone, so M and dtype variants share the same weights."""
        return int.from_bytes(hashlib.sha256(f"rwkvprobe-weight-v{WEIGHTS_VERSION}-{self.k}x{self.n}".encode()).digest()[:8], "little")


def weight_matrix(k: int, n: int, dtype: str = "fp32") -> np.ndarray:
    """The seeded weight B[K,N] of a generated model: uniform with variance 1/K, so outputs stay O(1)."""
    spec = ModelSpec(1, k, n, dtype)
    rng = np.random.default_rng(spec.seed)
    b = rng.random((k, n), dtype=np.float32)  # [0, 1): several times faster than normal deviates
    b -= np.float32(0.5)
    b *= np.float32(np.sqrt(12.0 / k))
    return b.astype(NP_DTYPES[dtype], copy=False)


def max_opset() -> int:
    import onnx.defs

    return onnx.defs.onnx_opset_version()


def check_opset(opset: int) -> None:
    hi = max_opset()
    if not MIN_OPSET <= opset <= hi:
        raise InputError(f"--opset {opset}: expected an ONNX opset from {MIN_OPSET} to {hi} (RKNN accepts 14)")


def build_model(spec: ModelSpec, opset: int = DEFAULT_OPSET):
    """The ONNX ModelProto of one MatMul (not yet checked or saved)."""
    from onnx import TensorProto, helper, numpy_helper

    elem = TensorProto.FLOAT if spec.dtype == "fp32" else TensorProto.FLOAT16
    b = numpy_helper.from_array(weight_matrix(spec.k, spec.n, spec.dtype), name="B")
    graph = helper.make_graph(
        nodes=[helper.make_node("MatMul", inputs=["A", "B"], outputs=["C"])],
        name=f"matmul_m{spec.m}_k{spec.k}_n{spec.n}",
        inputs=[helper.make_tensor_value_info("A", elem, [spec.m, spec.k])],
        outputs=[helper.make_tensor_value_info("C", elem, [spec.m, spec.n])],
        initializer=[b],
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, producer_name="rwkvprobe", opset_imports=opsets)
    model.ir_version = helper.find_min_ir_version_for(opsets)  # older runtimes (RKNN) accept it
    return model


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_model(spec: ModelSpec, out: Path, opset: int, filename: str | None = None,
                external: bool | None = None) -> dict:
    """Build, check and save one model atomically (as ``filename``, default ``spec.filename``); returns its
    manifest entry. ``external``: the weight in a ``<file>.data`` file beside it (default: only past protobuf's
    2 GB limit)."""
    import onnx

    model = build_model(spec, opset)
    filename = filename or spec.filename
    final = out / filename
    tmp = out / f".{filename}.tmp"
    if external is None:
        external = spec.weight_bytes > EXTERNAL_DATA_THRESHOLD
    entry = {"file": filename, "m": spec.m, "k": spec.k, "n": spec.n, "dtype": spec.dtype,
             "opset": opset, "seed": spec.seed, "external_data": None}
    try:
        if external:
            # both files made in a folder of their own beside the final ones, then moved in, the weights first:
            # another process never finds a model whose weight file is half written
            data_name = filename + ".data"
            staging = Path(tempfile.mkdtemp(prefix=f".{filename}.", dir=out))
            try:
                onnx.save_model(model, str(staging / filename), save_as_external_data=True,
                                all_tensors_to_one_file=True, location=data_name, size_threshold=0)
                del model
                onnx.checker.check_model(str(staging / filename))
                os.replace(staging / data_name, out / data_name)
                os.replace(staging / filename, final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            entry["external_data"] = data_name
        else:
            # serialized once: the checker reads the very bytes that are written and hashed (checking the ModelProto
            # serialized it a second time, and hashing read the file back: a first analyze run writes 1.4 GB)
            data = model.SerializeToString()
            del model
            onnx.checker.check_model(data)
            with open(tmp, "wb") as f:
                f.write(data)
            entry["sha256"] = hashlib.sha256(data).hexdigest()
            del data
            os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    if external:
        entry["sha256"] = _sha256(final)
    entry["bytes"] = final.stat().st_size + ((out / entry["external_data"]).stat().st_size if external else 0)
    return entry


def plan(layers: LayerList, tokens: list[int], dtypes: list[str]) -> list[ModelSpec]:
    specs: dict[ModelSpec, None] = {}
    for m in tokens:
        for dtype in dtypes:
            for k, n in layers.unique_shapes(m):
                specs.setdefault(ModelSpec(m, k, n, dtype), None)
    return list(specs)


def _reusable(entry: dict | None, out: Path, spec: ModelSpec, opset: int) -> bool:
    if not entry or entry.get("opset") != opset or entry.get("seed") != spec.seed:
        return False
    path = out / spec.filename
    if not path.is_file():
        return False
    if entry.get("external_data") and not (out / entry["external_data"]).is_file():
        return False
    return _sha256(path) == entry.get("sha256")


def read_manifest(out: Path) -> dict:
    try:
        data = json.loads((out / MANIFEST).read_text())
        return data if isinstance(data, dict) and data.get("schema") == MANIFEST_SCHEMA else {}
    except (OSError, ValueError):
        return {}


def check_resources(specs: list[ModelSpec], out: Path) -> None:
    """Refuse, before writing anything, a request that would not fit on the disk or in memory."""
    import psutil

    need_disk = sum(s.weight_bytes for s in specs)
    free = shutil.disk_usage(out).free
    if need_disk > free:
        raise InputError(f"{out}: the models need {need_disk / 1e9:.2f} GB of disk, only {free / 1e9:.2f} GB is free")
    # Building the largest model holds the fp32 weights, the cast copy and the serialized bytes.
    biggest = max(specs, key=lambda s: s.k * s.n)
    need_mem = biggest.k * biggest.n * 4 + 2 * biggest.weight_bytes
    avail = psutil.virtual_memory().available
    if need_mem > avail:
        raise InputError(
            f"weight {biggest.k}x{biggest.n} needs {need_mem / 1e9:.2f} GB of memory to generate, "
            f"only {avail / 1e9:.2f} GB is available"
        )


def generate(layers: LayerList, out: Path, tokens: list[int], dtypes: list[str], opset: int = DEFAULT_OPSET,
             progress=None) -> dict:
    """Write the models for every unique shape and a manifest; returns the manifest."""
    for dtype in dtypes:
        if dtype not in ONNX_DTYPES:
            raise InputError(f"--dtype {dtype}: expected one of {', '.join(ONNX_DTYPES)}")
    check_opset(opset)
    out = ensure_writable_dir(out)
    specs = plan(layers, tokens, dtypes)
    old = {e.get("file"): e for e in read_manifest(out).get("models", []) if isinstance(e, dict)}
    todo = [s for s in specs if not _reusable(old.get(s.filename), out, s, opset)]
    if todo:
        check_resources(todo, out)
    entries, reused = [], 0
    for spec in specs:
        if spec in todo:
            entry = write_model(spec, out, opset)
        else:
            entry, reused = old[spec.filename], reused + 1
        entries.append(entry)
        if progress:
            progress(spec, spec not in todo)
    files = {(e["m"], e["k"], e["n"], e["dtype"]): e["file"] for e in entries}
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "profile": layers.profile.name,
        "profile_path": layers.profile.path,
        "opset": opset,
        "tokens": tokens,
        "dtypes": dtypes,
        "models": entries,
        "layers": [
            {"name": layer.name, "k": layer.call_shape[0], "n": layer.call_shape[1], "count": layer.calls, "m": m,
             "dtype": dt, "file": files[(m, layer.call_shape[0], layer.call_shape[1], dt)]}
            for m in tokens for dt in dtypes for layer in layers.layers
        ],
        "reused": reused,
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return manifest
