"""rknnlite: the RK3588 NPU through rknn-toolkit-lite2, on the board (Linux aarch64 + librknnrt.so).

It runs the ``.rknn`` files that ``rwkvprobe convert`` writes on a PC (``--rknn DIR``). Times are host
wall time per ``inference()`` call, input and output copies included: what a Python program sees.
The API as rknn-toolkit-lite2 2.5.0 has it (nothing raises to the caller):
``RKNNLite(verbose=False)``, ``load_rknn(path) -> 0 | -1``,
``init_runtime(target=None, device_id=None, async_mode=False, core_mask=NPU_CORE_AUTO) -> 0 | -1``,
``inference(inputs=[...], data_format=None, ...) -> list | None``, ``release()``.
"""

from __future__ import annotations

import importlib.util
import platform
from pathlib import Path

import numpy as np

from rwkvprobe.backends import Backend, Workload, activation, base_weight
from rwkvprobe.errors import InputError

#: where rknn-toolkit-lite2 loads the runtime from
RUNTIME_PATHS = ("/usr/lib/librknnrt.so", "/usr/lib64/librknnrt.so")
DEVICE_TREE = "/proc/device-tree/compatible"
TOOLKIT_LITE_VERSION = "2.5.0"
#: --npu-cores value -> RKNNLite constant name
CORE_MASKS = {"auto": "NPU_CORE_AUTO", "0": "NPU_CORE_0", "1": "NPU_CORE_1", "2": "NPU_CORE_2",
              "0_1": "NPU_CORE_0_1", "0_1_2": "NPU_CORE_0_1_2", "all": "NPU_CORE_ALL"}
#: the NPU output against the float64 reference of the fp32 graph: fp16 rounding; w8a8 quantization
NPU_TOLERANCE = {"fp16": 5e-3, "int8": 6e-2}
RUNTIME_HINT = (f"install librknnrt.so {TOOLKIT_LITE_VERSION} (matching rknn-toolkit-lite2 {TOOLKIT_LITE_VERSION}) "
                "from airockchip/rknn-toolkit2, rknpu2/runtime/Linux/librknn_api/aarch64/, into /usr/lib/")


def _is_rk3588() -> bool:
    try:
        return b"rockchip,rk3588" in Path(DEVICE_TREE).read_bytes()
    except OSError:
        return False


def missing_runtime() -> str | None:
    """What is missing for the NPU here, in one line with the fix; None when everything is in place."""
    machine = platform.machine()
    if machine != "aarch64":
        return f"rknn-toolkit-lite2 runs only on Linux aarch64 boards such as the RK3588 (this machine is {machine})"
    if importlib.util.find_spec("rknnlite") is None:
        return "'rknnlite' is not installed (pip install 'rwkvprobe[npu]')"
    if not _is_rk3588():
        return f"no RK3588 NPU here ({DEVICE_TREE} does not name rockchip,rk3588)"
    runtime = next((p for p in RUNTIME_PATHS if Path(p).is_file()), None)
    if runtime is None:
        return f"the NPU runtime {RUNTIME_PATHS[0]} is missing: {RUNTIME_HINT}"
    if Path(runtime).stat().st_size < 1024 * 1024:
        return f"the NPU runtime {runtime} looks damaged ({Path(runtime).stat().st_size} bytes): {RUNTIME_HINT}"
    return None


class RknnLiteRunner:
    def __init__(self, workload: Workload, copies: int, path: Path, core_mask: str):
        from rknnlite.api import RKNNLite

        mask = getattr(RKNNLite, CORE_MASKS[core_mask])
        self.models = []
        try:
            for _ in range(copies):  # each loaded model holds its own weights: the cold-cache rotation
                rk = RKNNLite(verbose=False)
                self.models.append(rk)
                if rk.load_rknn(str(path)) != 0:
                    raise InputError(f"{path}: the NPU runtime could not load it (load_rknn returned -1)")
                if rk.init_runtime(core_mask=mask) != 0:
                    raise InputError(f"the NPU runtime did not start (init_runtime returned -1): {RUNTIME_HINT}")
        except BaseException:
            self.close()
            raise
        self.a = activation(workload.m, workload.k)
        self.outs: list = [None] * copies
        self.copies = copies
        self.k, self.n, self.m = workload.k, workload.n, workload.m
        self.tolerance = NPU_TOLERANCE[workload.dtype]

    def run(self, i: int) -> None:
        out = self.models[i].inference(inputs=[self.a])
        if out is None:  # the library logs its error and returns None instead of raising
            raise RuntimeError("inference() returned None (see the rknnlite log with --verbose)")
        self.outs[i] = out[0]

    def output(self, i: int) -> np.ndarray:
        return np.asarray(self.outs[i], dtype=np.float64).reshape(self.m, self.n)

    def scale(self, i: int) -> float:
        return 1.0

    def inputs(self):
        return self.a, base_weight(self.k, self.n)

    def close(self) -> None:
        for rk in self.models:
            rk.release()
        self.models, self.outs = [], []


class RknnLiteBackend(Backend):
    name = "rknnlite"
    dtypes = ("fp16", "int8")
    default_dtypes = ("fp16",)
    module = "rknnlite"
    extra = "npu"
    formats = {"int8": "rknn8"}  # w8a8: not the MatMulNBits layout the other backends' int8 means
    notes = {"fp16": "the NPU computes in fp16; host wall time per inference() call, input/output copies included",
             "int8": "w8a8 (activations quantized too); host wall time per inference() call"}

    def __init__(self, threads: int, rknn_dir: Path | None = None, core_mask: str = "auto"):
        super().__init__(threads)
        self.rknn_dir = rknn_dir
        self.core_mask = core_mask
        self._files: dict | None = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return missing_runtime()

    def model_path(self, w: Workload) -> Path:
        from rwkvprobe.toolkit import read_convert_manifest

        if self.rknn_dir is None:
            raise InputError("the rknnlite backend needs --rknn DIR: .rknn models written by 'rwkvprobe convert'")
        if self._files is None:
            manifest = read_convert_manifest(self.rknn_dir)
            self._files = {(e["dtype"], e["m"], e["k"], e["n"]): e for e in manifest["models"]}
        entry = self._files.get((w.dtype, w.m, w.k, w.n))
        if entry is None:
            raise InputError(f"{self.rknn_dir}: no {w.dtype} model for M={w.m} {w.k}x{w.n}: "
                             f"run 'rwkvprobe convert' with --dtype {w.dtype} --tokens {w.m}")
        return Path(self.rknn_dir) / entry["file"]

    def prepare(self, workload: Workload, copies: int, onnx_dir=None) -> RknnLiteRunner:
        return RknnLiteRunner(workload, copies, self.model_path(workload), self.core_mask)

    def describe(self) -> dict:
        from importlib.metadata import PackageNotFoundError, version

        try:
            lite = version("rknn-toolkit-lite2")
        except PackageNotFoundError:
            lite = None
        return {"name": self.name, "rknn-toolkit-lite2": lite, "core_mask": self.core_mask,
                "rknn_dir": str(self.rknn_dir), "timing": "host wall time per inference() call, copies included"}
