"""Runs inside the RKNN toolkit's own environment (``rwkvprobe toolkit install``), never imported by
rwkvprobe itself: rknn-toolkit2 pins numpy, onnx and protobuf versions that clash with the core.

    python rknn_worker.py REQUEST.json RESPONSE.json

For each job: ONNX -> .rknn for the target with ``build(verbose)`` (its C++ per-layer cycle table goes
to the process's stdout, captured at the file-descriptor level into the job's log), export, then run
the model in the toolkit's simulator and compare its output with a float64 reference computed from
the ONNX weight. Simulator times are never recorded: they are host CPU times, meaningless for the NPU.

With ``"mode": "board"`` in the request, each job instead loads a built ``.rknn`` and runs it on a
board over adb (``init_runtime(target, device_id, perf_debug=True, core_mask)``): one output checked
against the float64 reference, the host's wall time of ``inference`` calls (adb transport included),
and ``eval_perf(is_print=True, fix_freq=True)`` with what it prints captured into the job's log. The
adb server the toolkit starts is stopped at the end (``adb kill-server`` with the wheel's adb), also
when a job fails; one that was already running is left alone.
Only the standard library, numpy, onnx, psutil and rknn are used here.
"""

import json
import os
import sys
import tempfile
import time
import traceback


def _checked_inference(rk, job: dict):
    """One inference on the job's seeded activation, checked against the float64 reference of its ONNX
    model: ({rel_err, finite} or None when the runtime returned nothing, the activation)."""
    import numpy as np

    a = _activation(job["m"], job["k"], job.get("seed", 7))
    result = rk.inference(inputs=[a])
    if not result:
        return None, a
    got = np.asarray(result[0], dtype=np.float64).reshape(job["m"], job["n"])
    ref = _reference(job["onnx"], a)
    return {"rel_err": float(np.max(np.abs(got - ref)) / (np.max(np.abs(ref)) or 1.0)),
            "finite": bool(np.isfinite(got).all())}, a


def _reference(onnx_path, a):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(onnx_path)
    w = numpy_helper.to_array(model.graph.initializer[0])
    return a.astype(np.float64) @ w.astype(np.float64)


def _activation(m, k, seed):
    import numpy as np

    return np.random.default_rng(seed).standard_normal((m, k)).astype(np.float32)


def _calibration(job, folder):
    """A dataset file of seeded random activations (.npy), for int8 (w8a8) quantization."""
    import numpy as np

    paths = []
    for i in range(job.get("calibration_samples", 8)):
        p = os.path.join(folder, f"calib_{i}.npy")
        np.save(p, _activation(job["m"], job["k"], 1000 + i))
        paths.append(p)
    listing = os.path.join(folder, "dataset.txt")
    with open(listing, "w") as f:
        f.write("\n".join(paths) + "\n")
    return listing


class _CaptureStdout:
    """Redirect file descriptor 1 (where the toolkit's C++ code prints), or ``fds``, into a file."""

    def __init__(self, path, fds=(1,)):
        self.path = path
        self.fds = fds

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = [os.dup(fd) for fd in self.fds]
        self.file = open(self.path, "w")
        for fd in self.fds:
            os.dup2(self.file.fileno(), fd)
        return self

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip(self.fds, self.saved):
            os.dup2(saved, fd)
            os.close(saved)
        self.file.close()
        return False


def _graph_check(rk, job):
    """A multi-input graph (a whole RWKV block): the inputs and expected outputs (onnxruntime, fp32) come in an
    .npz from rwkvprobe; each output's error relative to its largest value, and the worst of them."""
    import numpy as np

    data = np.load(job["check_npz"])
    inputs = [data["in:" + n] for n in job["input_names"]]
    # 4-D inputs are NCHW here (the toolkit assumes NHWC unless told)
    fmt = {"data_format": "nchw"} if all(a.ndim == 4 for a in inputs) else {}
    result = rk.inference(inputs=inputs, **fmt)
    if not result or len(result) != len(job["output_names"]):
        return None
    per, finite = {}, True
    for name, got in zip(job["output_names"], result):
        ref = data["out:" + name].astype(np.float64)
        got = np.asarray(got, dtype=np.float64).reshape(ref.shape)
        finite = finite and bool(np.isfinite(got).all())
        per[name] = float(np.max(np.abs(got - ref)) / (np.max(np.abs(ref)) or 1.0))
    return {"rel_err": max(per.values()), "per_output": per, "finite": finite}


def run_job(job, target, simulate):
    from rknn.api import RKNN

    out = {"id": job["id"], "ok": False, "error": None, "log": job["log"], "rknn": job["rknn"]}
    rknn = RKNN(verbose=True)
    try:
        rknn.config(target_platform=target)
        if rknn.load_onnx(model=job["onnx"]) != 0:
            out["error"] = "load_onnx failed"
            return out
        with tempfile.TemporaryDirectory() as tmp:
            quant = job["dtype"] == "int8"
            kwargs = {"do_quantization": quant}
            if quant:
                kwargs["dataset"] = job["dataset"] if job.get("dataset") else _calibration(job, tmp)
            t0 = time.perf_counter()
            with _CaptureStdout(job["log"]):
                ret = rknn.build(**kwargs)
            out["build_seconds"] = time.perf_counter() - t0
            if ret != 0:
                out["error"] = f"build returned {ret}"
                return out
        if rknn.export_rknn(job["rknn"]) != 0:
            out["error"] = "export_rknn failed"
            return out
        out["rknn_bytes"] = os.path.getsize(job["rknn"])
        if simulate:
            if rknn.init_runtime() != 0:
                out["error"] = "init_runtime (simulator) failed"
                return out
            check = _graph_check(rknn, job) if job.get("check_npz") else _checked_inference(rknn, job)[0]
            if check is None:
                out["error"] = "simulator inference returned nothing"
                return out
            out["simulator"] = check
        out["ok"] = True
        return out
    except Exception as e:  # reported per job; the other jobs go on
        out["error"] = f"{type(e).__name__}: {e}"
        out["traceback"] = traceback.format_exc()[-2000:]
        return out
    finally:
        rknn.release()


# ------------------------------------------------------------------------------------------------
# Board runs over adb


def _last_line(e):
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    return f"{type(e).__name__}: {lines[-1] if lines else ''}"


def _adb_path():
    """The adb the toolkit uses (its bundled one), else PATH's."""
    try:
        from rknn.api import rknn_platform

        path = rknn_platform.get_adb_path()
        if path and os.path.isfile(path):
            return path
    except Exception:
        pass
    import glob
    import shutil

    import rknn

    found = sorted(glob.glob(os.path.join(os.path.dirname(rknn.__file__), "3rdparty", "platform-tools", "adb",
                                          "*", "adb")))
    return found[0] if found else shutil.which("adb")


def _adb_servers():
    try:
        import psutil
    except ImportError:
        return set()
    pids = set()
    for p in psutil.process_iter(["name", "cmdline", "status"]):
        try:
            cmd = p.info["cmdline"] or []
            if p.info["status"] != psutil.STATUS_ZOMBIE and "fork-server" in cmd and (
                    p.info["name"] == "adb" or os.path.basename(cmd[0]) == "adb"):
                pids.add(p.pid)
        except Exception:
            continue
    return pids


def _stop_adb(adb, before):
    """adb kill-server when the toolkit started a server (one running before is left alone)."""
    import subprocess

    ours = _adb_servers() - before
    note = {"adb": adb, "started": sorted(ours), "stopped": not ours}
    if ours and adb:
        try:
            subprocess.run([adb, "kill-server"], capture_output=True, timeout=15)
        except Exception as e:
            note["error"] = _last_line(e)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _adb_servers() & ours:
            time.sleep(0.1)
        note["stopped"] = not (_adb_servers() & ours)
    return note


def board_job(RKNN, job, request, state):
    out = {"id": job["id"], "ok": False, "error": None}
    rk = RKNN(verbose=False)
    try:
        if rk.load_rknn(job["rknn"]) != 0:
            out["error"] = "load_rknn failed"
            return out
        try:
            ret = rk.init_runtime(target=request.get("target", "rk3588"), device_id=request.get("device_id"),
                                  perf_debug=True, core_mask=getattr(RKNN, job.get("core_mask", "NPU_CORE_AUTO")))
            why = f"init_runtime returned {ret}"
        except Exception as e:  # without a board, 2.5.0 raises (its message is a traceback)
            ret, why = -1, f"init_runtime failed: {_last_line(e)}"
        if ret != 0:
            out.update(error=why, runtime_failed=True)
            try:
                out["devices"] = list(rk.list_devices()[0])
            except Exception:
                out["devices"] = None
            return out
        if state.get("sdk_version") is None:
            try:
                state["sdk_version"] = str(rk.get_sdk_version())
            except Exception as e:
                state["sdk_version"] = f"unknown ({_last_line(e)})"
        check, a = _checked_inference(rk, job)
        if check is None:
            out["error"] = "inference returned nothing"
            return out
        out["check"] = check
        for _ in range(job.get("warmup", 2)):
            rk.inference(inputs=[a])
        samples = []
        for _ in range(job.get("calls", 10)):  # host wall clock: the adb round trip is in every sample
            t0 = time.perf_counter()
            rk.inference(inputs=[a])
            samples.append(time.perf_counter() - t0)
        out["wall_seconds"] = samples
        out["eval_perf"] = []
        for i in range(job.get("perf_repeats", 1)):
            log = os.path.join(request["log_dir"], f"{job['id']}.eval_perf{i}.log")
            try:  # a toolkit can fail inside its own eval_perf (1.5.0: format_perf_detail): kept per repeat
                with _CaptureStdout(log, fds=(1, 2)):
                    ret = rk.eval_perf(is_print=True, fix_freq=True)
            except (Exception, SystemExit) as e:  # 2.x's error decorator may end in exit(): not the whole job
                out["eval_perf"].append({"log": log, "returned": None, "error": _last_line(e),
                                         "traceback": traceback.format_exc()[-3000:]})
                continue
            out["eval_perf"].append({"log": log, "returned": ret if isinstance(ret, str) else
                                     (None if ret is None else repr(ret))})
        out["ok"] = True
        return out
    except Exception as e:  # reported per job; the other jobs go on
        out["error"] = _last_line(e)
        out["traceback"] = traceback.format_exc()[-2000:]
        return out
    finally:
        rk.release()


def board_main(request):
    adb = None
    before = _adb_servers()
    state = {"jobs": [], "sdk_version": None, "no_board": False, "error": None}
    try:
        from rknn.api import RKNN

        adb = _adb_path()
        os.makedirs(request["log_dir"], exist_ok=True)
        for job in request["jobs"]:
            res = board_job(RKNN, job, request, state)
            state["jobs"].append(res)
            if res.get("runtime_failed") and not any(j.get("ok") for j in state["jobs"]):
                # the first model could not start on the board: the others would fail the same way
                state["no_board"] = not res.get("devices")
                state["error"] = res["error"]
                break
    except Exception as e:
        state["error"] = _last_line(e)
    finally:
        state["adb"] = _stop_adb(adb or _adb_path_quiet(), before)
    return state


def _adb_path_quiet():
    try:
        return _adb_path()
    except Exception:
        return None


def main():
    with open(sys.argv[1]) as f:
        request = json.load(f)
    versions = {}
    try:
        from importlib.metadata import version

        for name in ("rknn-toolkit2", "numpy", "onnx", "protobuf", "torch"):
            try:
                versions[name] = version(name)
            except Exception:
                versions[name] = None
    except ImportError:
        pass
    if request.get("mode") == "board":
        response = board_main(request)
    else:
        response = {"jobs": [run_job(job, request.get("target", "rk3588"), request.get("simulate", True))
                             for job in request["jobs"]]}
    response["versions"] = versions
    with open(sys.argv[2], "w") as f:
        json.dump(response, f)


if __name__ == "__main__":
    main()
