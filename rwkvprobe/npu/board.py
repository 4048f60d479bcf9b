"""Host-driven board runs with rknn-toolkit2 (the ``rknn`` series), one series per core mask (npu/cores.py).

``analyze --backends rknn [--device-id ID]`` drives an RK3588 from this machine over adb with
rknn-toolkit2 in its own environment (``rwkvprobe toolkit install``): the worker
(``rknn_worker.py``, mode ``board``) loads each ``.rknn`` (from ``--rknn DIR`` or converted on the fly),
``init_runtime(target='rk3588', device_id=..., perf_debug=True, core_mask=...)``, checks one
``inference`` against a float64 reference, times ``inference`` calls with the host's wall clock (adb
transport and copies included: kept beside the board time, never used for the verdict) and reads
the board's own time with ``eval_perf(is_print=True, fix_freq=True)``: the per-layer table and
"Total Operator Elapsed Per Frame Time(us)", stored with the source label "board, eval_perf". The
adb server the toolkit starts is stopped afterwards (``adb kill-server`` with the wheel's own adb),
also when the run fails. Simulator times are never recorded.
"""

from __future__ import annotations

import os
from pathlib import Path

from rwkvprobe.backends import Backend, Workload, get_backend, onnxgen
from rwkvprobe.backends.rknnlite_backend import read_convert_manifest
from rwkvprobe.errors import InputError
from rwkvprobe.fsutil import ensure_writable_dir
from rwkvprobe.measure.points import onnx_cache_dir, summarize_ceilings
from rwkvprobe.measure.timing import summarize
from rwkvprobe.npu import adb, toolkit
from rwkvprobe.npu.cores import BACKEND, CORE_MASKS, TARGET, split_label
from rwkvprobe.npu.evalperf import EVAL_PERF_DETAIL, EVAL_PERF_SOURCE, WALL_SOURCE, eval_perf_problem, parse_eval_perf

#: wall-clock calls and eval_perf repeats per point (quick / full)
CALLS = {True: 5, False: 20}
PERF_REPEATS = {True: 1, False: 3}


# ------------------------------------------------------------------------------------------------
# Core masks and series labels


def instantiate(label: str, settings):
    """The in-process backend of a series label, with its core mask and .rknn folder set."""

    base, mask = split_label(label)
    backend = get_backend(base, settings.threads)
    if base == "rknnlite":
        backend.rknn_dir = settings.rknn_dir
        backend.core_mask = mask
        backend.name = label  # measure_point labels its points with the series
    return backend


# ------------------------------------------------------------------------------------------------
# eval_perf's table


# ------------------------------------------------------------------------------------------------
# adb: find the wheel's own, see whose server runs, stop ours


# ------------------------------------------------------------------------------------------------
# The backend as analyze plans it (its work runs in the toolkit worker, not in this process)


class RknnBoardBackend(Backend):
    """rknn-toolkit2 driving an RK3588 over adb: planned like a backend, run by :func:`run_series`."""

    name = BACKEND
    dtypes = ("fp16", "int8")
    default_dtypes = ("fp16",)
    formats = {"int8": "rknn8"}  # w8a8, as rknnlite
    notes = {"fp16": "the NPU computes in fp16; the board's eval_perf time per frame (host adb wall time beside it)",
             "int8": "w8a8 (activations quantized too); the board's eval_perf time per frame"}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if not toolkit.installed():
            return (f"the RKNN toolkit environment is not installed ({toolkit.toolkit_dir()}): run "
                    "'rwkvprobe toolkit install'")
        return None


def check_ready(settings) -> None:
    """Refuse in one line, before anything is written: no toolkit environment, or no board over adb."""

    toolkit.require_toolkit()
    adb.probe_board(getattr(settings, "device_id", None))


def describe(pairs: list[tuple[str, str]], settings) -> dict:
    out = {}
    for label in dict.fromkeys(b for b, _ in pairs):
        _, mask = split_label(label)
        out[label] = {"name": label, "rknn-toolkit2": toolkit.TOOLKIT_VERSION, "target": TARGET,
                      "device_id": getattr(settings, "device_id", None), "core_mask": mask,
                      "rknn_dir": str(settings.rknn_dir) if settings.rknn_dir else "converted on the fly",
                      "timing": f"{EVAL_PERF_SOURCE}; {WALL_SOURCE} kept beside it"}
    return out


# ------------------------------------------------------------------------------------------------
# The run


def _models(analysis, dtypes: list[str], progress) -> tuple[Path, dict]:
    """(folder, {(dtype, m, k, n): manifest entry}) of the .rknn models: --rknn DIR, or converted now."""

    s = analysis.settings
    if s.rknn_dir is not None:
        folder = Path(s.rknn_dir)
        manifest = read_convert_manifest(folder)
        if manifest.get("target", TARGET) != TARGET:
            raise InputError(f"{folder}: converted for {manifest.get('target')}, not {TARGET}")
    else:
        folder = onnx_cache_dir().parent / f"rknn-board-{TARGET}"
        progress.stage(f"board: converting the models for {TARGET} (reused when already there)")
        manifest = toolkit.convert(analysis.layers, folder, dtypes, s.tokens, TARGET, simulate=False,
                                   progress=progress.note, with_ceilings=True)
    return folder, {(e["dtype"], e["m"], e["k"], e["n"]): e for e in manifest["models"]}


def _onnx_for(folder: Path, entry: dict, onnx_dir: Path) -> Path:
    """The ONNX model a .rknn was converted from (its float64 reference), regenerated if it is gone."""

    if entry.get("onnx") and (folder / entry["onnx"]).is_file():
        return folder / entry["onnx"]
    spec = onnxgen.ModelSpec(entry["m"], entry["k"], entry["n"], "fp32")
    path = Path(onnx_dir) / spec.filename
    if not path.is_file():
        onnxgen.write_model(spec, Path(onnx_dir), onnxgen.DEFAULT_OPSET)
    return path


def run_jobs(jobs: list[dict], device_id: str | None, log_dir: Path) -> dict:
    """Run the board jobs in the toolkit worker; the adb server it starts is stopped whatever happens.

    InputError (one line) when no job reached the board: no board, or the runtime did not start.
    """

    py = toolkit.require_toolkit()
    adb_exe = adb.adb_path()
    before = adb.adb_servers()
    try:
        response = toolkit.run_worker(py, {"mode": "board", "target": TARGET, "device_id": device_id,
                                            "log_dir": str(log_dir), "jobs": jobs})
    finally:
        response_adb = adb.stop_adb(adb_exe, before)  # the worker stops its own; this is the safety net
    response["adb_host_check"] = response_adb
    if jobs and not any(j.get("ok") for j in response.get("jobs", [])):
        first = next((j for j in response.get("jobs", []) if j.get("error")), None)
        if response.get("no_board") or (first and first.get("runtime_failed") and not first.get("devices")):
            raise InputError(adb.NO_BOARD)
        why = (first or {}).get("error") or response.get("error") or "no result"
        raise InputError(f"the board run failed: {str(why).splitlines()[0][:300]}")
    return response


def _point(job: dict, res: dict | None, out_dir: Path, tolerance: dict, toolkit_version: str | None = None) -> dict:
    w = Workload(job["m"], job["k"], job["n"], job["dtype"], scheme="rknn8" if job["dtype"] == "int8" else "")
    point = {"backend": job["label"], "dtype": job["dtype"], "m": job["m"], "k": job["k"], "n": job["n"],
             "flops": w.flops, "bytes": w.bytes_moved, "bytes_per_weight": w.bytes_per_weight, "format": w.label,
             "rotation": {"copies": 1, "note": "one loaded model on the board; the NPU reads its weights from "
                                               "DRAM every run (no host cache in the way)"},
             "check": None, "timing": None, "error": None, "source": EVAL_PERF_SOURCE}
    if res is None:
        point["error"] = job.get("error") or "not run"
        return point
    if res.get("check"):
        tol = tolerance[job["dtype"]]
        c = res["check"]
        ok = bool(c.get("finite")) and c.get("rel_err") is not None and c["rel_err"] <= tol
        point["check"] = {"ok": ok, "rel_err": c.get("rel_err"), "tolerance": tol, "where": "board",
                          "detail": "" if ok else ("non-finite output" if not c.get("finite")
                                                   else f"relative error {c['rel_err']:.2e} > {tol:.0e}")}
    if not res.get("ok"):
        point["error"] = str(res.get("error") or "failed").splitlines()[0][:300]
        return point
    if res.get("wall_seconds"):
        point["host_wall"] = {**summarize(res["wall_seconds"]), "samples": res["wall_seconds"], "source": WALL_SOURCE}
    perfs, logs, problems = [], [], []
    for rep in res.get("eval_perf", []):
        log = Path(rep["log"]) if rep.get("log") else None
        if log is not None:
            logs.append(os.path.relpath(log, out_dir))
        text = rep.get("returned") or ""
        parsed = parse_eval_perf(text)
        if parsed["total_us"] is None and log is not None and log.is_file():
            text = log.read_text(errors="replace") + "\n" + text
            parsed = parse_eval_perf(text)
        if parsed["total_us"] and not rep.get("error"):
            perfs.append(parsed)
            continue
        problems.append(eval_perf_problem((rep.get("traceback") or "") + "\n" + text, toolkit_version, rep.get("error"))
                        or f"rknn-toolkit2 {toolkit_version}: eval_perf printed a zero time")
    if not perfs:
        where = ", ".join(logs) or "the worker log"
        point["error"] = (problems[0] if problems else "eval_perf was not run") + f" (see {where})"
        return point
    if point["check"] and point["check"]["ok"]:
        samples = [p["total_us"] * 1e-6 for p in perfs]
        point["timing"] = {**summarize(samples), "samples": samples, "source": EVAL_PERF_SOURCE,
                           "detail": EVAL_PERF_DETAIL}
    last = perfs[-1]
    point["eval_perf"] = {"total_us": [p["total_us"] for p in perfs], "total_from": last["total_from"],
                          "npu_us": last["npu_us"], "rw_kb": last["rw_kb"], "rw_mb": last["rw_mb"],
                          "format": last["format"], "frequencies": last["frequencies"],
                          "layers": last["layers"], "logs": logs}
    return point


def run_series(analysis, pairs: list[tuple[str, str]], progress) -> None:
    """Measure the ``rknn`` series on the board: the ceiling shapes and every missing layer point."""

    s, r = analysis.settings, analysis.results
    have = {(c["backend"], c["dtype"]) for c in r["ceilings"]}
    done = {(p["backend"], p["dtype"], p["m"], p["k"], p["n"]) for p in r["measurements"]}
    ceiling_shapes = toolkit.ceiling_specs()
    layer_shapes = [(m, k, n) for m in s.tokens for (k, n) in analysis.layers.unique_shapes(m)]
    wanted = []  # (label, dtype, shape, role)
    for label, d in pairs:
        if (label, d) not in have:
            wanted += [(label, d, shape, "ceiling") for shape in ceiling_shapes]
        wanted += [(label, d, shape, "layer") for shape in layer_shapes if (label, d, *shape) not in done]
    if not wanted:
        return
    folder, models = _models(analysis, sorted({d for _, d in pairs}), progress)
    log_dir = ensure_writable_dir(analysis.out_dir / "board")
    quick = bool(s.quick)
    jobs, seen = [], {}
    for label, d, (m, k, n), _role in wanted:
        key = (label, d, m, k, n)
        if key in seen:
            continue
        _, mask = split_label(label)
        job = {"id": f"{label.replace('[', '_').replace(']', '')}_m{m}_k{k}_n{n}_{d}", "label": label, "dtype": d,
               "m": m, "k": k, "n": n, "core_mask": CORE_MASKS[mask], "calls": CALLS[quick],
               "perf_repeats": PERF_REPEATS[quick], "seed": 7}
        entry = models.get((d, m, k, n))
        if entry is None or not entry.get("ok", True) or not (folder / entry["file"]).is_file():
            job["error"] = (f"no {d} .rknn for M={m} {k}x{n} in {folder}" if entry is None
                            else f"its conversion failed: {entry.get('error') or 'see its build log'}")
        else:
            job["rknn"] = str(folder / entry["file"])
            job["onnx"] = str(_onnx_for(folder, entry, s.onnx_dir))
        seen[key] = job
        jobs.append(job)
    runnable = [j for j in jobs if "rknn" in j]
    progress.stage(f"board: {len(runnable)} models on the {TARGET} over adb "
                   f"({', '.join(dict.fromkeys(label for label, _ in pairs))})")
    response = run_jobs(runnable, getattr(s, "device_id", None), log_dir) if runnable else {"jobs": []}
    results = {res["id"]: res for res in response.get("jobs", [])}
    tol = toolkit.SIM_TOLERANCE  # the NPU against float64: fp16 rounding, w8a8 quantization
    version = (response.get("versions") or {}).get("rknn-toolkit2") or toolkit.TOOLKIT_VERSION
    points = {key: _point(job, results.get(job["id"]), analysis.out_dir, tol, version) for key, job in seen.items()}
    r.setdefault("board", {}).update({"device_id": getattr(s, "device_id", None), "target": TARGET,
                                      "sdk_version": response.get("sdk_version"),
                                      "adb": response.get("adb"), "adb_host_check": response.get("adb_host_check")})
    overhead, *compute, gemv = ceiling_shapes
    for label, d in pairs:
        if (label, d) not in have:
            c = {"backend": label, "dtype": d, "source": EVAL_PERF_SOURCE,
                 "overhead": points.get((label, d, *overhead)),
                 "compute": [points[(label, d, *shape)] for shape in compute if (label, d, *shape) in points],
                 "gemv": points.get((label, d, *gemv))}
            c.update(summarize_ceilings(c))
            if not adb.on_board() and c.get("gemv_gbps"):
                # this machine's DRAM is not the board's: the series' W is what the NPU streams on the board
                c["bandwidth_gbps"] = c["gemv_gbps"]
                c["bandwidth_source"] = "the board's cold GEMV (M=1, 4096x8192) on the NPU, eval_perf"
            r["ceilings"].append(c)
    for label, d, shape, role in wanted:
        if role == "layer" and (label, d, *shape) not in done:
            r["measurements"].append(points[(label, d, *shape)])
            done.add((label, d, *shape))
    analysis.save()


# ------------------------------------------------------------------------------------------------
# Report


