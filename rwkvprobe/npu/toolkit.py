"""The RKNN toolkit (rknn-toolkit2) in an environment of its own, and ONNX -> RKNN conversion.

rknn-toolkit2 2.5.0 declares numpy<=1.26.4, onnx<=1.18, protobuf<=4.25.4 and torch<=2.4, which clash
with rwkvprobe's core, and a plain ``pip install rknn-toolkit2`` replaces a CPU torch with a multi-GB
CUDA build. So ``rwkvprobe toolkit install`` builds a separate virtual environment with a set of
versions that works (below), and ``rwkvprobe convert`` talks to a small worker script in it
(``rknn_worker.py``, JSON in, JSON out). Nothing of the toolkit is imported into rwkvprobe.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from rwkvprobe.backends import onnxgen
from rwkvprobe.backends.ort_backend import session_options
from rwkvprobe.backends.rknnlite_backend import read_convert_manifest
from rwkvprobe.errors import InputError
from rwkvprobe.fsutil import atomic_write_text, cache_dir, ensure_writable_dir, run_json_worker
from rwkvprobe.measure import onnxblock
from rwkvprobe.measure.points import COMPUTE_SHAPES, GEMV_SHAPE, OVERHEAD_SHAPE

TOOLKIT_VERSION = "2.5.0"
#: What works with rknn-toolkit2 2.5.0 (installed with --no-deps): onnx>=1.19 removed onnx.mapping
#: (load_onnx breaks), protobuf 7 breaks build, it imports pkg_resources (setuptools<81) and cv2.
TOOLKIT_REQUIREMENTS = [
    "numpy<2.3", "onnx>=1.16.1,<1.19", "protobuf<7", "onnxruntime", "scipy", "psutil", "ruamel.yaml", "tqdm",
    "fast-histogram", "setuptools<81", "opencv-python-headless",
]
#: torch is imported by rknn.api; the CPU build is enough. Override with RWKVPROBE_TOOLKIT_TORCH.
DEFAULT_TORCH_SPEC = "torch==2.13.0"
WORKER = Path(__file__).with_name("rknn_worker.py")
#: Simulator output vs float64 reference (relative to the largest output): fp16 ~5e-4 seen, w8a8 ~2e-2.
SIM_TOLERANCE = {"fp16": 5e-3, "int8": 6e-2}
RKNN_DTYPES = ("fp16", "int8")


def toolkit_dir() -> Path:
    if os.environ.get("RWKVPROBE_TOOLKIT_DIR"):
        return Path(os.environ["RWKVPROBE_TOOLKIT_DIR"])
    return cache_dir() / f"rknn-toolkit2-{TOOLKIT_VERSION}"


def toolkit_python() -> Path:
    return toolkit_dir() / "bin" / "python"


def installed() -> bool:
    py = toolkit_python()
    return py.is_file() and (toolkit_dir() / ".rwkvprobe-complete").is_file()


def require_toolkit() -> Path:
    if not installed():
        raise InputError(f"the RKNN toolkit environment is not installed ({toolkit_dir()}): run "
                         "'rwkvprobe toolkit install' (about 1.5 GB, a minute or two)")
    return toolkit_python()


def install(python: str | None = None, progress=print) -> Path:
    """Create the toolkit venv and install rknn-toolkit2 with the working pins; returns its python."""
    py = python or sys.executable
    ver = subprocess.run([py, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True,
                         text=True)
    if ver.returncode != 0:
        raise InputError(f"--python {py}: cannot run it")
    major, minor = map(int, ver.stdout.strip().split("."))
    if (major, minor) > (3, 12) or (major, minor) < (3, 6):
        raise InputError(f"rknn-toolkit2 {TOOLKIT_VERSION} has wheels for Python 3.6-3.12 only, {py} is {major}.{minor}: "
                         "pass --python with a Python 3.12 or older")
    target = toolkit_dir()
    marker = target / ".rwkvprobe-complete"
    marker.unlink(missing_ok=True)
    steps = [
        ("virtual environment", [py, "-m", "venv", str(target)]),
        ("pip", [str(target / "bin" / "python"), "-m", "pip", "install", "-q", "--upgrade", "pip"]),
        ("torch (CPU)", [str(target / "bin" / "python"), "-m", "pip", "install", "-q",
                         os.environ.get("RWKVPROBE_TOOLKIT_TORCH", DEFAULT_TORCH_SPEC)]),
        (f"rknn-toolkit2 {TOOLKIT_VERSION} (without its pins)",
         [str(target / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", f"rknn-toolkit2=={TOOLKIT_VERSION}"]),
        ("its working dependencies", [str(target / "bin" / "python"), "-m", "pip", "install", "-q", *TOOLKIT_REQUIREMENTS]),
        ("import check", [str(target / "bin" / "python"), "-c", "from rknn.api import RKNN"]),
    ]
    for label, cmd in steps:
        progress(f"toolkit: {label}")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise InputError(f"toolkit install failed at '{label}': {tail[0][:300]}")
    marker.write_text(TOOLKIT_VERSION + "\n")
    return toolkit_python()


# ------------------------------------------------------------------------------------------------
# The compiler's per-layer cycle table

_CYCLE_ROW = re.compile(
    r"^D RKNN: \[[^\]]*\]\s+(?P<id>\d+)\s+(?P<op>\S+)\s+(?P<dtype>\S+)\s+(?P<target>\S+)\s+(?P<inp>\S+)\s+"
    r"(?P<out>\S+)\s+(?P<ddr>\d+)/(?P<npu>\d+)/(?P<total>\d+)\s+(?P<rw>\d+)\s+(?P<name>\S+)")


def parse_cycles(log: str) -> dict:
    """The per-layer ``Cycles(DDR/NPU/Total)`` table that ``build(verbose)`` prints, with totals.

    Each op is DDR-bound when its DDR cycles exceed its NPU cycles (the compiler's own estimate).
    """
    ops = []
    in_table = False
    for line in log.splitlines():
        if "Cycles(DDR/NPU/Total)" in line:
            in_table, ops = True, []
            continue
        if not in_table:
            continue
        m = _CYCLE_ROW.match(line)
        if m:
            ddr, npu, total = int(m["ddr"]), int(m["npu"]), int(m["total"])
            ops.append({"id": int(m["id"]), "op": m["op"], "dtype": m["dtype"], "target": m["target"],
                        "input_shape": m["inp"], "output_shape": m["out"], "ddr_cycles": ddr, "npu_cycles": npu,
                        "total_cycles": total, "rw_kb": int(m["rw"]), "name": m["name"],
                        "bound": "DDR" if ddr > npu else ("NPU" if npu else "-")})
        elif ops and "<<<<<<<< end" in line:
            in_table = False
    ddr = sum(o["ddr_cycles"] for o in ops)
    npu = sum(o["npu_cycles"] for o in ops)
    total = sum(o["total_cycles"] for o in ops)
    return {"ops": ops, "ddr_cycles": ddr, "npu_cycles": npu, "total_cycles": total,
            "bound": "DDR" if ddr > npu else "NPU"}


# ------------------------------------------------------------------------------------------------
# Conversion


def ceiling_specs() -> list[tuple[int, int, int]]:
    """The shapes the measured ceilings use (peak, GEMV, overhead), so an on-board run has them too."""

    return [OVERHEAD_SHAPE, *COMPUTE_SHAPES, GEMV_SHAPE]


def convert(layers, out: Path, dtypes: list[str], tokens: list[int], target: str = "rk3588",
            simulate: bool = True, progress=print, with_ceilings: bool = False) -> dict:
    """ONNX models of every unique shape -> .rknn in ``out`` with simulator checks and cycle tables.

    ``with_ceilings`` adds the ceiling shapes that ``analyze --backends rknnlite`` measures on the board.
    """

    for d in dtypes:
        if d not in RKNN_DTYPES:
            raise InputError(f"--dtype {d}: expected {' or '.join(RKNN_DTYPES)} (the NPU runs fp16 or int8)")
    py = require_toolkit()
    out = ensure_writable_dir(out)
    onnx_dir = out / "onnx"
    progress(f"convert: ONNX models for {len(layers.unique_shapes())} shapes x {len(tokens)} token counts")
    manifest = onnxgen.generate(layers, onnx_dir, tokens, ["fp32"])
    if with_ceilings:
        for m, k, n in ceiling_specs():
            spec = onnxgen.ModelSpec(m, k, n, "fp32")
            if not (onnx_dir / spec.filename).is_file():
                onnxgen.write_model(spec, onnx_dir, onnxgen.DEFAULT_OPSET)
            manifest["models"].append({"file": spec.filename, "m": m, "k": k, "n": n})
    try:  # earlier conversions in this folder with their build log are reused
        earlier = {(x["dtype"], x["m"], x["k"], x["n"]): x for x in read_convert_manifest(out)["models"]
                   if x.get("ok") and x.get("target", target) == target and (out / x["file"]).is_file()
                   and (out / x["log"]).is_file()}
    except InputError:
        earlier = {}
    jobs, reused = [], []
    for e in manifest["models"]:
        for d in dtypes:
            if (d, e["m"], e["k"], e["n"]) in earlier:
                reused.append(earlier[(d, e["m"], e["k"], e["n"])])
                continue
            stem = f"matmul_m{e['m']}_k{e['k']}_n{e['n']}_{d}"
            jobs.append({"id": stem, "onnx": str(onnx_dir / e["file"]), "rknn": str(out / f"{stem}.rknn"),
                         "log": str(out / f"{stem}.build.log"), "dtype": d, "m": e["m"], "k": e["k"], "n": e["n"]})
    progress(f"convert: {len(jobs)} RKNN builds for {target} in the toolkit environment (simulator check: {simulate})"
             + (f", {len(reused)} reused" if reused else ""))
    response = run_worker(py, {"target": target, "simulate": simulate, "jobs": jobs}) if jobs else {"jobs": []}
    models = list(reused)
    for job, res in zip(jobs, response["jobs"]):
        entry = {k: job[k] for k in ("dtype", "m", "k", "n")}
        entry["target"] = target
        entry.update(file=Path(job["rknn"]).name, onnx=str(Path(job["onnx"]).relative_to(out)),
                     log=Path(job["log"]).name, ok=res["ok"], error=res.get("error"),
                     rknn_bytes=res.get("rknn_bytes"), build_seconds=res.get("build_seconds"))
        if res.get("simulator"):
            tol = SIM_TOLERANCE[job["dtype"]]
            sim = res["simulator"]
            entry["simulator"] = {**sim, "tolerance": tol, "ok": sim["finite"] and sim["rel_err"] <= tol,
                                  "note": "correctness only: simulator times are host CPU times, never NPU timings"}
            entry["ok"] = entry["ok"] and entry["simulator"]["ok"]
        log = Path(job["log"])
        entry["cycles"] = parse_cycles(log.read_text(errors="replace")) if log.is_file() else None
        models.append(entry)
    result = {"schema": 1, "kind": "rknn-convert", "target": target,
              "toolkit": response.get("versions") or {"rknn-toolkit2": TOOLKIT_VERSION},
              "profile": layers.profile.name, "tokens": tokens, "dtypes": dtypes, "models": models}
    atomic_write_text(out / "manifest.json", json.dumps(result, indent=1) + "\n")
    return result


def run_worker(py: Path, request: dict) -> dict:
    # in a temporary cwd: the toolkit drops check*.onnx files into the working folder
    response, tail = run_json_worker([str(py), str(WORKER)], request)
    if response is None:
        raise InputError(f"the RKNN toolkit worker failed: {tail[:300]}")
    return response


# ------------------------------------------------------------------------------------------------
# Whole-block graphs (convert --block)

BLOCKS_MANIFEST = "blocks-manifest.json"
#: the full-model graph is converted only up to this many fp32 weight bytes (else the chained blocks stand for it)
MAX_MODEL_GRAPH_BYTES = 256 * 1000**2
CALIBRATION_STEPS = 8


def _chained_inputs(profile, graphs: dict, steps: int) -> dict:
    """Inputs of each graph as the reference's decode step produces them: the block graphs (which a test holds
    equal to the reference's forward step) chained in onnxruntime over ``steps`` tokens from the seeded state."""
    import numpy as np
    import onnxruntime as ort


    opts = session_options()  # the process's one pool, where analyze made one (onnxruntime refuses another then)
    sess = {k: ort.InferenceSession(str(p), sess_options=opts, providers=["CPUExecutionProvider"]) for k, p in graphs.items()}
    state = onnxblock.graph_inputs(profile, "model", "fp32")
    seen: dict = {k: [] for k in graphs}
    for t in range(steps):
        x = onnxblock._rng(f"calib-{t}", 0).uniform(-2, 2, (1, profile.n_embd)).astype(np.float32)
        model_in = {"x": x, **{k: v for k, v in state.items() if k.startswith("state")}}
        b0_in = {"x": x, **{k: v for k, v in state.items() if k.startswith("state0_")}}
        b0 = dict(zip([o.name for o in sess["block0"].get_outputs()], sess["block0"].run(None, b0_in)))
        b1_in = {"x": b0["x_out"], **({"v_first": b0["v_first"]} if "v_first" in b0 else {}),
                 **{k: v for k, v in state.items() if k.startswith("state1_")}}
        b1 = dict(zip([o.name for o in sess["block"].get_outputs()], sess["block"].run(None, b1_in)))
        head_in = {"x": b1["x_out"]}
        for k, feeds in (("block0", b0_in), ("block", b1_in), ("head", head_in), ("model", model_in)):
            if k in seen:
                seen[k].append(feeds)
        if "model" in sess:
            outs = dict(zip([o.name for o in sess["model"].get_outputs()], sess["model"].run(None, model_in)))
            state = {k[4:]: v for k, v in outs.items() if k.startswith("new_state")}
        else:
            state = {**state, **{k[4:]: v for k, v in {**b0, **b1}.items() if k.startswith("new_state")}}
    return seen


def convert_blocks(profile, out: Path, dtypes: list[str], target: str = "rk3588", simulate: bool = True,
                   progress=print) -> dict:
    """The whole-block graphs (onnxblock.py) -> .rknn, each checked in the simulator against onnxruntime's fp32
    output of the same graph (correctness only), with the compiler's per-op cycle table; int8 (w8a8) calibrated
    on the inputs the chained decode step produces. Writes ``blocks-manifest.json``."""
    import numpy as np
    import onnxruntime as ort


    for d in dtypes:
        if d not in RKNN_DTYPES:
            raise InputError(f"--dtype {d}: expected {' or '.join(RKNN_DTYPES)} (the NPU runs fp16 or int8)")
    onnxblock.check_profile(profile)
    py = require_toolkit()
    out = ensure_writable_dir(out)
    kinds = ("block0", "block", "head")
    if onnxblock.weight_bytes(profile, "model", "fp32") <= MAX_MODEL_GRAPH_BYTES:
        kinds += ("model",)
    progress(f"convert --block: ONNX graphs {', '.join(kinds)} of {profile.name}")
    gen = onnxblock.generate(profile, out / "onnx", ["fp32"], kinds)
    paths = {g["kind"]: out / "onnx" / g["file"] for g in gen["graphs"]}
    check_dir = ensure_writable_dir(out / "check")
    calib = _chained_inputs(profile, paths, CALIBRATION_STEPS) if "int8" in dtypes else {}
    jobs = []
    for g in gen["graphs"]:
        kind = g["kind"]
        feeds = onnxblock.graph_inputs(profile, kind, "fp32")
        sess = ort.InferenceSession(str(paths[kind]), sess_options=session_options(), providers=["CPUExecutionProvider"])
        outs = sess.run(None, feeds)
        npz = check_dir / f"{kind}.npz"
        np.savez(npz, **{f"in:{k}": v for k, v in feeds.items()}, **{f"out:{n}": o for n, o in zip(g["outputs"], outs)})
        dataset = None
        if calib:
            lines = []
            for t, sample in enumerate(calib[kind]):
                files = []
                for name in g["inputs"]:
                    f = check_dir / f"calib_{kind}_{t}_{name}.npy"
                    np.save(f, sample[name])
                    files.append(str(f))
                lines.append(" ".join(files))
            dataset = check_dir / f"calib_{kind}.txt"
            dataset.write_text("\n".join(lines) + "\n")
        for d in dtypes:
            stem = f"rwkv{profile.version}_{kind}_{d}"
            jobs.append({"id": stem, "onnx": str(paths[kind]), "rknn": str(out / f"{stem}.rknn"),
                         "log": str(out / f"{stem}.build.log"), "dtype": d, "graph": kind, "check_npz": str(npz),
                         "input_names": g["inputs"], "output_names": g["outputs"],
                         "dataset": str(dataset) if dataset and d == "int8" else None})
    progress(f"convert --block: {len(jobs)} RKNN builds for {target} in the toolkit environment (simulator check: {simulate})")
    response = run_worker(py, {"target": target, "simulate": simulate, "jobs": jobs})
    entries = []
    for job, res in zip(jobs, response["jobs"]):
        entry = {"graph": job["graph"], "dtype": job["dtype"], "target": target, "file": Path(job["rknn"]).name,
                 "onnx": str(Path(job["onnx"]).relative_to(out)), "log": Path(job["log"]).name, "ok": res["ok"],
                 "error": res.get("error"), "rknn_bytes": res.get("rknn_bytes"), "build_seconds": res.get("build_seconds"),
                 "weight_bytes_fp32": onnxblock.weight_bytes(profile, job["graph"], "fp32")}
        if res.get("simulator"):
            tol = SIM_TOLERANCE[job["dtype"]]
            sim = res["simulator"]
            entry["simulator"] = {**sim, "tolerance": tol, "ok": sim["finite"] and sim["rel_err"] <= tol,
                                  "against": "onnxruntime fp32 output of the same graph",
                                  "note": "correctness only: simulator times are host CPU times, never NPU timings"}
            entry["ok"] = entry["ok"] and entry["simulator"]["ok"]
        log = Path(job["log"])
        entry["cycles"] = parse_cycles(log.read_text(errors="replace")) if log.is_file() else None
        entry["cpu_ops"] = sorted({o["op"] for o in (entry["cycles"] or {}).get("ops", [])
                                   if o["target"] == "CPU" and o["op"] not in ("InputOperator", "OutputOperator")})
        entries.append(entry)
    result = {"schema": 1, "kind": "rknn-convert-blocks", "target": target,
              "toolkit": response.get("versions") or {"rknn-toolkit2": TOOLKIT_VERSION},
              "profile": profile.name, "settings": gen["settings"], "n_layer": profile.n_layer, "dtypes": dtypes,
              "graphs": entries}
    atomic_write_text(out / BLOCKS_MANIFEST, json.dumps(result, indent=1) + "\n")
    return result


def read_blocks_manifest(folder: Path) -> dict | None:
    """The ``convert --block`` manifest in a folder, or None when there is none."""
    path = Path(folder) / BLOCKS_MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise InputError(f"{path}: not a readable JSON file") from None
    if not isinstance(data, dict) or data.get("kind") != "rknn-convert-blocks":
        raise InputError(f"{path}: not an RKNN block conversion manifest")
    return data
