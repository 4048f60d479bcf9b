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

from rwkvprobe.errors import InputError
from rwkvprobe.fsutil import run_json_worker

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
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rwkvprobe" / f"rknn-toolkit2-{TOOLKIT_VERSION}"


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
    from rwkvprobe.measure import COMPUTE_SHAPES, GEMV_SHAPE, OVERHEAD_SHAPE

    return [OVERHEAD_SHAPE, *COMPUTE_SHAPES, GEMV_SHAPE]


def convert(layers, out: Path, dtypes: list[str], tokens: list[int], target: str = "rk3588",
            simulate: bool = True, progress=print, with_ceilings: bool = False) -> dict:
    """ONNX models of every unique shape -> .rknn in ``out`` with simulator checks and cycle tables.

    ``with_ceilings`` adds the ceiling shapes that ``analyze --backends rknnlite`` measures on the board.
    """
    from rwkvprobe import onnxgen
    from rwkvprobe.fsutil import atomic_write_text, ensure_writable_dir

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
    response = _run_worker(py, {"target": target, "simulate": simulate, "jobs": jobs}) if jobs else {"jobs": []}
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


def _run_worker(py: Path, request: dict) -> dict:
    # in a temporary cwd: the toolkit drops check*.onnx files into the working folder
    response, tail = run_json_worker([str(py), str(WORKER)], request)
    if response is None:
        raise InputError(f"the RKNN toolkit worker failed: {tail[:300]}")
    return response


def read_convert_manifest(folder: Path) -> dict:
    try:
        data = json.loads((Path(folder) / "manifest.json").read_text())
    except (OSError, ValueError):
        raise InputError(f"{folder}: no RKNN manifest.json (write one with 'rwkvprobe convert')") from None
    if not isinstance(data, dict) or data.get("kind") != "rknn-convert":
        raise InputError(f"{folder}/manifest.json: not an RKNN conversion manifest")
    return data
