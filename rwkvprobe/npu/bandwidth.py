"""The NPU side of ``rwkvprobe bandwidth --npu``: graphs that only move memory, through the RKNN compiler.

Three graphs, each far larger than any on-chip buffer: an elementwise Add of two inputs, a copy (a Mul by
1: RKNN has no plain copy op) and a GEMV (M=1) whose weight is 64 MB in fp16. Each is converted for the target
with rknn-toolkit2 and checked in its simulator (correctness only). Without a board the figure is the
compiler's own: the bytes its per-op table says an op reads and writes (``RW(KB)``) over its DDR cycles at
the device profile's NPU clock, labelled "RKNN compiler estimate". The compiler gives elementwise ops no
cycles at all (0/0/0 in rknn-toolkit2 2.5.0), so for those it says "no estimate". On a board, the same
``.rknn`` files would be timed with ``eval_perf`` (not wired here: nobody on the team has a board).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rwkvprobe.backends.onnxgen import ModelSpec, weight_matrix, write_model
from rwkvprobe.errors import InputError
from rwkvprobe.fsutil import atomic_write_text, ensure_writable_dir
from rwkvprobe.measure.points import onnx_cache_dir
from rwkvprobe.npu import toolkit
from rwkvprobe.npu.device import load_device

#: elementwise tensors: 8.4 M values, 16 MB each in fp16 (the NPU's dtype), 32 MB in the fp32 graph
ELEMENTWISE_SHAPE = (1, 32, 512, 512)
#: the GEMV: 4096 x 8192 weight, 64 MB in fp16
GEMV_K, GEMV_N = 4096, 8192
OPSET = 14
RESULT = "npu-bandwidth.json"


def _save(model, path: Path) -> None:
    import onnx

    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def _model(name, nodes, ins, outs, inits=()):
    from onnx import helper

    graph = helper.make_graph(nodes, name, ins, outs, initializer=list(inits))
    opsets = [helper.make_opsetid("", OPSET)]
    model = helper.make_model(graph, producer_name="rwkvprobe", opset_imports=opsets)
    model.ir_version = helper.find_min_ir_version_for(opsets)
    return model


def write_graphs(folder: Path) -> list[dict]:
    """The memory-only ONNX graphs, their seeded inputs and expected outputs (.npz for the simulator check)."""
    from onnx import TensorProto, helper, numpy_helper


    F = TensorProto.FLOAT
    shape = list(ELEMENTWISE_SHAPE)
    g = np.random.default_rng(11)
    a = g.uniform(-1, 1, shape).astype(np.float32)
    b = g.uniform(-1, 1, shape).astype(np.float32)
    vi = helper.make_tensor_value_info
    out = []
    add = _model("npu_bw_add", [helper.make_node("Add", ["A", "B"], ["C"])], [vi("A", F, shape), vi("B", F, shape)],
                 [vi("C", F, shape)])
    _save(add, folder / "npu_bw_add.onnx")
    np.savez(folder / "npu_bw_add.npz", **{"in:A": a, "in:B": b, "out:C": a + b})
    out.append({"graph": "add", "file": "npu_bw_add.onnx", "check_npz": "npu_bw_add.npz", "inputs": ["A", "B"],
                "outputs": ["C"], "what": f"C = A + B, {'x'.join(map(str, shape))} (3 tensors moved)"})
    copy = _model("npu_bw_copy", [helper.make_node("Mul", ["A", "one"], ["C"])], [vi("A", F, shape)], [vi("C", F, shape)],
                  [numpy_helper.from_array(np.ones([1], np.float32), "one")])
    _save(copy, folder / "npu_bw_copy.onnx")
    np.savez(folder / "npu_bw_copy.npz", **{"in:A": a, "out:C": a})
    out.append({"graph": "copy", "file": "npu_bw_copy.onnx", "check_npz": "npu_bw_copy.npz", "inputs": ["A"],
                "outputs": ["C"], "what": f"C = A x 1, {'x'.join(map(str, shape))} (2 tensors moved)"})
    spec = ModelSpec(1, GEMV_K, GEMV_N, "fp32")
    write_model(spec, folder, OPSET)
    x = g.standard_normal((1, GEMV_K)).astype(np.float32)
    np.savez(folder / "npu_bw_gemv.npz", **{"in:A": x, "out:C": (x.astype(np.float64) @ weight_matrix(GEMV_K, GEMV_N).astype(np.float64))})
    out.append({"graph": "gemv", "file": spec.filename, "check_npz": "npu_bw_gemv.npz", "inputs": ["A"], "outputs": ["C"],
                "what": f"GEMV M=1, {GEMV_K}x{GEMV_N} weight ({GEMV_K * GEMV_N * 2 / 1e6:.0f} MB in fp16)"})
    return out


def compiler_bandwidth(cycles: dict, clock_hz: float) -> dict:
    """Bytes the compiler's table says the ops with DDR cycles move, over those cycles at the clock."""
    ops = [o for o in cycles.get("ops", []) if o["ddr_cycles"] > 0]
    moved = sum(o["rw_kb"] for o in ops) * 1024
    ddr = sum(o["ddr_cycles"] for o in ops)
    all_rw = sum(o["rw_kb"] for o in cycles.get("ops", [])) * 1024
    if not ddr:
        return {"gbps": None, "bytes": all_rw, "ddr_cycles": 0,
                "note": "no estimate: the compiler gives these ops no DDR cycles (elementwise ops get 0/0/0)"}
    return {"gbps": moved / (ddr / clock_hz) / 1e9, "bytes": moved, "ddr_cycles": ddr, "seconds": ddr / clock_hz,
            "note": None}


def measure(device: str = "rk3588", out: Path | None = None, simulate: bool = True, progress=print) -> dict:
    """Convert the memory-only graphs and return the compiler's NPU bandwidth figures (no board needed)."""

    dev = load_device(device)
    py = toolkit.require_toolkit()
    folder = ensure_writable_dir(out or onnx_cache_dir().parent / f"npu-bandwidth-{Path(device).stem}")
    graphs = write_graphs(folder)
    target = "rk3588"
    jobs = [{"id": f"npu_bw_{g['graph']}", "onnx": str(folder / g["file"]), "rknn": str(folder / f"npu_bw_{g['graph']}_fp16.rknn"),
             "log": str(folder / f"npu_bw_{g['graph']}_fp16.build.log"), "dtype": "fp16",
             "check_npz": str(folder / g["check_npz"]), "input_names": g["inputs"], "output_names": g["outputs"]}
            for g in graphs]
    progress(f"bandwidth --npu: {len(jobs)} RKNN builds for {target} (memory-only graphs; simulator check: {simulate})")
    response = toolkit.run_worker(py, {"target": target, "simulate": simulate, "jobs": jobs})
    clock = dev["npu_clock_mhz"]["value"] * 1e6
    rows = []
    for g, job, res in zip(graphs, jobs, response["jobs"]):
        log = Path(job["log"])
        cycles = toolkit.parse_cycles(log.read_text(errors="replace")) if log.is_file() else {}
        sim = res.get("simulator")
        ok = res["ok"] and (not sim or (sim["finite"] and sim["rel_err"] <= toolkit.SIM_TOLERANCE["fp16"]))
        rows.append({"graph": g["graph"], "what": g["what"], "ok": ok, "error": res.get("error"),
                     "simulator_rel_err": sim["rel_err"] if sim else None,
                     "compiler": compiler_bandwidth(cycles, clock),
                     "ops": [{k: o[k] for k in ("op", "ddr_cycles", "npu_cycles", "rw_kb")} for o in cycles.get("ops", [])
                             if o["op"] not in ("InputOperator", "OutputOperator")]})
    result = {"label": "RKNN compiler estimate (no board: not a measurement)", "device": dev["name"], "target": target,
            "clock_mhz": dev["npu_clock_mhz"]["value"], "clock_source": dev["npu_clock_mhz"]["source"],
            "toolkit": response.get("versions") or {"rknn-toolkit2": toolkit.TOOLKIT_VERSION}, "folder": str(folder),
            "dram_theoretical_gbps": dev["dram_theoretical_gbps"]["value"],
            "dram_theoretical_source": dev["dram_theoretical_gbps"]["source"], "graphs": rows}
    save(result, folder / RESULT)  # analyze --device picks it up from here
    return result


def cached(device: str = "rk3588", folder: Path | None = None) -> dict | None:
    """The last ``bandwidth --npu`` result for a device (in ``folder``, else the cache), or None."""

    path = (folder or onnx_cache_dir().parent / f"npu-bandwidth-{Path(device).stem}") / RESULT
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("graphs") else None


def save(result: dict, path: Path) -> None:
    try:
        atomic_write_text(path, json.dumps(result, indent=1) + "\n")
    except OSError as e:
        raise InputError(f"{path}: cannot write: {e.strerror or e}") from None
