"""Runs inside the RKNN toolkit's own environment (``rwkvprobe toolkit install``), never imported by
rwkvprobe itself: rknn-toolkit2 pins numpy, onnx and protobuf versions that clash with the core.

    python rknn_worker.py REQUEST.json RESPONSE.json

For each job: ONNX -> .rknn for the target with ``build(verbose)`` (its C++ per-layer cycle table goes
to the process's stdout, captured at the file-descriptor level into the job's log), export, then run
the model in the toolkit's simulator and compare its output with a float64 reference computed from
the ONNX weight. Simulator times are never recorded: they are host CPU times, meaningless for the NPU.
Only the standard library, numpy, onnx and rknn are used here.
"""

import json
import os
import sys
import tempfile
import time
import traceback


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
    """Redirect file descriptor 1 (where the toolkit's C++ code prints) into a file."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        sys.stdout.flush()
        self.saved = os.dup(1)
        self.file = open(self.path, "w")
        os.dup2(self.file.fileno(), 1)
        return self

    def __exit__(self, *exc):
        sys.stdout.flush()
        os.dup2(self.saved, 1)
        os.close(self.saved)
        self.file.close()
        return False


def run_job(job, target, simulate):
    import numpy as np
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
                kwargs["dataset"] = _calibration(job, tmp)
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
            a = _activation(job["m"], job["k"], job.get("seed", 7))
            result = rknn.inference(inputs=[a])
            if not result:
                out["error"] = "simulator inference returned nothing"
                return out
            got = np.asarray(result[0], dtype=np.float64).reshape(job["m"], job["n"])
            ref = _reference(job["onnx"], a)
            err = float(np.max(np.abs(got - ref)) / (np.max(np.abs(ref)) or 1.0))
            out["simulator"] = {"rel_err": err, "finite": bool(np.isfinite(got).all())}
        out["ok"] = True
        return out
    except Exception as e:  # reported per job; the other jobs go on
        out["error"] = f"{type(e).__name__}: {e}"
        out["traceback"] = traceback.format_exc()[-2000:]
        return out
    finally:
        rknn.release()


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
    results = [run_job(job, request.get("target", "rk3588"), request.get("simulate", True)) for job in request["jobs"]]
    with open(sys.argv[2], "w") as f:
        json.dump({"versions": versions, "jobs": results}, f)


if __name__ == "__main__":
    main()
