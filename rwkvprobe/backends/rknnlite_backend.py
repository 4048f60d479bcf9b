"""rknnlite: the RK3588 NPU through rknn-toolkit-lite2, on the board (Linux aarch64 + librknnrt.so).

It runs the ``.rknn`` files that ``rwkvprobe convert`` writes on a PC (``--rknn DIR``). Times are host
wall time per ``inference()`` call, input and output copies included: what a Python program sees.
The API as rknn-toolkit-lite2 2.5.0 has it (nothing raises to the caller; CI compares these signatures
with the real wheel on emulated aarch64, ``.ci/aarch64.sh``):
``RKNNLite(verbose=False, verbose_file=None)``, ``load_rknn(path, key_path=None) -> 0 | -1``,
``init_runtime(target=None, device_id=None, async_mode=False, core_mask=NPU_CORE_AUTO) -> 0 | -1``,
``inference(inputs, data_type=None, data_format=None, ...) -> list | None``, ``release()``.

What the library itself reads on the board: the SoC from ``/proc/device-tree/compatible`` and the
runtime from ``/usr/lib/librknnrt.so`` (no other path). The runtime's version is read from the library
file's bytes ("librknnrt version: X", :func:`runtime_version`) without loading it, and compared with
rknn-toolkit-lite2's and with the rknn-toolkit2 recorded in the --rknn folder's manifest. When the SoC
or the runtime is missing or the runtime is damaged, ``init_runtime`` returns -1 after logging a traceback through the Python logger ``acuityLogger``
on stderr. rwkvprobe checks the same things first and says what is missing in one line; around the
library's own calls it keeps the library's output (logger, tracebacks, the C runtime's prints on fds 1
and 2) aside and shows it only with ``--verbose`` (:func:`show_library_log`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import platform
import re
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np

from rwkvprobe.backends import Backend, Workload, activation, base_weight
from rwkvprobe.errors import InputError

#: where rknn-toolkit-lite2 (2.5.0) loads the runtime from on the board: this one path only
RUNTIME_PATH = "/usr/lib/librknnrt.so"
#: places a copy of the runtime ends up that the library does not look at (named in the message)
STRAY_RUNTIME_PATHS = ("/usr/lib64/librknnrt.so", "/usr/local/lib/librknnrt.so",
                       "/usr/lib/aarch64-linux-gnu/librknnrt.so")
RUNTIME_SOURCE = "airockchip/rknn-toolkit2 (rknpu2/runtime/Linux/librknn_api/aarch64/librknnrt.so)"
#: where the library reads which SoC this is
DEVICE_TREE = "/proc/device-tree/compatible"
#: the version these tests and messages were checked against (used when the installed one is unknown)
TOOLKIT_LITE_VERSION = "2.5.0"
#: the Python logger rknn-toolkit-lite2 writes its log to (a StreamHandler on stderr)
LIBRARY_LOGGER = "acuityLogger"
#: --npu-cores value -> RKNNLite constant name
CORE_MASKS = {"auto": "NPU_CORE_AUTO", "0": "NPU_CORE_0", "1": "NPU_CORE_1", "2": "NPU_CORE_2",
              "0_1": "NPU_CORE_0_1", "0_1_2": "NPU_CORE_0_1_2", "all": "NPU_CORE_ALL"}
#: the NPU output against the float64 reference of the fp32 graph: fp16 rounding; w8a8 quantization
NPU_TOLERANCE = {"fp16": 5e-3, "int8": 6e-2}
_ELF_MACHINES = {183: "aarch64", 40: "32-bit ARM", 62: "x86-64", 3: "32-bit x86"}

_show_log = False


def show_library_log(on: bool) -> None:
    """``--verbose``: pass rknn-toolkit-lite2's own output (its log, tracebacks, runtime prints) on to stderr."""
    global _show_log
    _show_log = bool(on)


def lite_version() -> str | None:
    """The installed rknn-toolkit-lite2's version, None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rknn-toolkit-lite2")
    except PackageNotFoundError:
        return None


def runtime_hint() -> str:
    """How to put the right runtime in place: which file, from where, which version."""
    installed = lite_version()
    v = installed or TOOLKIT_LITE_VERSION
    same = f"the installed rknn-toolkit-lite2 {v}" if installed else f"rknn-toolkit-lite2 (pip install 'rknn-toolkit-lite2=={v}')"
    return f"install librknnrt.so {v}, the same version as {same}, from {RUNTIME_SOURCE} as {RUNTIME_PATH}"


def _device_tree_problem() -> str | None:
    try:
        raw = Path(DEVICE_TREE).read_bytes()
    except FileNotFoundError:
        where = (f"in a container, pass the board's in: -v {DEVICE_TREE}:{DEVICE_TREE}" if Path("/.dockerenv").exists()
                 else "run on the RK3588 board's own Linux")
        return (f"no RK3588 NPU found: {DEVICE_TREE} does not exist (rknn-toolkit-lite2 reads the SoC from it; "
                f"{where})")
    except OSError as e:
        return f"no RK3588 NPU found: {DEVICE_TREE} cannot be read ({e.strerror})"
    if b"rockchip,rk3588" not in raw:
        names = [s for s in raw.decode("ascii", "replace").split("\0") if s.strip()][:3]
        return (f"no RK3588 NPU here: {DEVICE_TREE} names {', '.join(names) or 'nothing'}, not rockchip,rk3588 "
                "(the rknnlite backend measures the RK3588 NPU)")
    return None


def _elf_problem(path: str) -> str | None:
    """Why ``path`` is not a whole aarch64 shared library, read from its ELF headers without loading it
    (a cut-short library can kill the process that loads it with SIGBUS); None when it looks whole."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF":
                page = head.lstrip()[:1] == b"<"
                return (f"is not a shared library: {size} bytes without an ELF header"
                        + (" (a web page saved in its place: download the raw file)" if page else ""))
            if len(head) < 20:
                return f"is cut short: {size} bytes, less than an ELF header"
            order = "<" if head[5] == 1 else ">"
            machine = struct.unpack_from(order + "H", head, 18)[0]
            if head[4] != 2 or machine != 183:
                return f"is the {_ELF_MACHINES.get(machine, f'ELF machine {machine}')} build, not the aarch64 one"
            if len(head) < 64:
                return f"is cut short: {size} bytes, less than an ELF header"
            phoff, shoff = struct.unpack_from(order + "QQ", head, 32)
            phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", head, 54)
            need = max(phoff + phnum * phentsize, shoff + shnum * shentsize if shoff else 0)
            if need <= size and phentsize >= 56:
                f.seek(phoff)
                table = f.read(phnum * phentsize)
                for i in range(phnum):
                    p_type, _, p_offset = struct.unpack_from(order + "IIQ", table, i * phentsize)
                    p_filesz = struct.unpack_from(order + "Q", table, i * phentsize + 32)[0]
                    if p_type == 1:  # PT_LOAD: mapped from the file
                        need = max(need, p_offset + p_filesz)
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    except struct.error:
        return f"is damaged: {size} bytes with unreadable ELF headers"
    if need > size:
        return f"is cut short: {size:,} bytes where its own headers need {need:,} (an incomplete download?)"
    return None


_LOADED: dict = {}


def _load_error(path: str) -> str | None:
    """What the dynamic loader says of ``path`` (loaded as the library loads it, with ctypes), None when it
    loads. In a child process: a broken library must not take this one down."""
    try:
        st = os.stat(path)
    except OSError as e:
        return e.strerror
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _LOADED:
        import subprocess

        try:
            done = subprocess.run([sys.executable, "-c", "import ctypes, sys; ctypes.CDLL(sys.argv[1])", path],
                                  capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            return f"could not be tried ({e})"
        if done.returncode == 0:
            _LOADED[key] = None
        elif done.returncode < 0:
            _LOADED[key] = f"loading it kills the process with signal {-done.returncode}"
        else:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            _LOADED[key] = re.sub(r"^OSError: ", "", last).replace(f"{path}: ", "")
    return _LOADED[key]


def _runtime_problem(path: str) -> str | None:
    """Why ``path`` is not a usable aarch64 librknnrt.so, in a few words; None when it is."""
    problem = _elf_problem(path)
    if problem:
        return problem
    why = _load_error(path)
    return f"cannot be loaded ({why})" if why else None


# ---------------------------------------------------------------------------------------------------
# Which runtime version: read from the library file, never by loading it

#: how the runtime names itself ("I RKNN: [..] RKNN Runtime Information: librknnrt version: 1.6.0
#: (9a7b5d24c@2023-12-13T17:32:13)"): the same text is one NUL-terminated string in the library file
#: (seen in airockchip/rknn-toolkit2's rknpu2/runtime/Linux/librknn_api/armhf/librknnrt.so 1.6.0)
RUNTIME_VERSION_TAG = b"librknnrt version: "
_RELEASE = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:(a|b|rc)(\d+))?")


def runtime_version(path: str) -> str | None:
    """'1.6.0 (9a7b5d24c@2023-12-13T17:32:13)': the version text a librknnrt.so carries, found in its bytes
    (memory-mapped, not loaded); None when the file holds none or cannot be read."""
    import mmap

    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return None
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                at = mm.find(RUNTIME_VERSION_TAG)
                while at >= 0:
                    start = at + len(RUNTIME_VERSION_TAG)
                    end = mm.find(b"\0", start, start + 200)
                    text = mm[start:end if end >= 0 else start + 200].decode("ascii", "replace").strip()
                    if release(text):  # not a format string such as "librknnrt version: %s"
                        return text
                    at = mm.find(RUNTIME_VERSION_TAG, start)
    except (OSError, ValueError):
        return None
    return None


def release(version: str | None) -> str | None:
    """'1.6.0' of '1.6.0 (9a7b5d24c@...)', '1.5.0' of '1.5.0+1fa95b5c', '2.0.0b0' of '2.0.0b0+9bab5682'."""
    m = _RELEASE.match((version or "").strip())
    return m.group(0) if m else None


def _release_key(version: str) -> tuple:
    m = _RELEASE.match(version)
    pre = (0, {"a": 0, "b": 1, "rc": 2}[m.group(4)], int(m.group(5))) if m.group(4) else (1, 0, 0)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3)), *pre)


def runtime_mismatch(path: str | None = None) -> str | None:
    """One line when the librknnrt.so at ``path`` is another version than rknn-toolkit-lite2: which file to
    replace and with what; None when they match or either version is unknown."""
    path = path or RUNTIME_PATH
    rt, lite = release(runtime_version(path)), release(lite_version())
    if not rt or not lite or rt == lite:
        return None
    return (f"the NPU runtime {path} is librknnrt {rt} but rknn-toolkit-lite2 is {lite}: replace {path} with "
            f"librknnrt.so {lite} from {RUNTIME_SOURCE} (or pip install 'rknn-toolkit-lite2=={rt}')")


def check_models_runtime(rknn_dir, path: str | None = None) -> None:
    """InputError (one line) when the .rknn models were converted by an rknn-toolkit2 newer than the runtime
    here (it cannot read them): the version recorded in the folder's manifest.json against the library's."""

    path = path or RUNTIME_PATH
    manifest = read_convert_manifest(rknn_dir)
    built = release(str((manifest.get("toolkit") or {}).get("rknn-toolkit2") or ""))
    rt = release(runtime_version(path)) if Path(path).is_file() else None
    if built and rt and _release_key(rt) < _release_key(built):
        raise InputError(f"{rknn_dir}: converted with rknn-toolkit2 {built}, newer than the NPU runtime {path} "
                         f"(librknnrt {rt}): replace {path} with librknnrt.so {built} from {RUNTIME_SOURCE} (and "
                         f"rknn-toolkit-lite2 with {built}), or convert again with rknn-toolkit2 {rt}")


def missing_runtime() -> str | None:
    """What is missing for the NPU here, in one line with the fix; None when everything is in place."""
    machine = platform.machine()
    if machine != "aarch64":
        return f"rknn-toolkit-lite2 runs only on Linux aarch64 boards such as the RK3588 (this machine is {machine})"
    if importlib.util.find_spec("rknnlite") is None:
        return "'rknnlite' is not installed (pip install 'rwkvprobe[npu]')"
    problem = _device_tree_problem()
    if problem:
        return problem
    if not Path(RUNTIME_PATH).is_file():
        stray = next((p for p in STRAY_RUNTIME_PATHS if Path(p).is_file()), None)
        also = f" ({stray} is there, but rknn-toolkit-lite2 loads only {RUNTIME_PATH})" if stray else ""
        return f"the NPU runtime {RUNTIME_PATH} is missing{also}: {runtime_hint()}"
    problem = _elf_problem(RUNTIME_PATH)
    if problem:
        return f"the NPU runtime {RUNTIME_PATH} {problem}: {runtime_hint()}"
    mismatch = runtime_mismatch(RUNTIME_PATH)  # read from the file: refused before anything loads it
    if mismatch:
        return mismatch
    why = _load_error(RUNTIME_PATH)
    if why:
        return f"the NPU runtime {RUNTIME_PATH} cannot be loaded ({why}): {runtime_hint()}"
    return None


# ---------------------------------------------------------------------------------------------------
# The library's own output: kept aside around its calls, shown with --verbose

class LibraryOutput:
    """What the library printed inside :func:`library_output`."""

    def __init__(self) -> None:
        self.text = ""

    def error(self) -> str | None:
        """The library's own last error, in one short line: the exception a traceback ends with, else
        its last ``E`` log line."""
        lines = [ln.strip() for ln in self.text.splitlines() if ln.strip()]
        for ln in reversed(lines):
            m = re.match(r"^(?:[\w.]+Error|Exception|RuntimeError): (.+)", ln)
            if m:
                return m.group(1)[:200]
        for ln in reversed(lines):
            if ln.startswith("E ") and "init_runtime to init it first" not in ln:
                return ln[2:][:200]
        return None


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


@contextlib.contextmanager
def library_output(what: str):
    """Run library calls with their output kept aside: file descriptors 1 and 2 (tracebacks and the C
    runtime's prints), ``sys.stdout``/``sys.stderr`` and ``acuityLogger``'s stream handlers all point
    at one temporary file. Yields a :class:`LibraryOutput`; with ``--verbose`` the text is replayed on
    stderr afterwards, otherwise it is dropped (the caller turns failures into its own one-line message)."""
    out = LibraryOutput()
    logger = logging.getLogger(LIBRARY_LOGGER)
    _flush()
    with tempfile.TemporaryFile() as tmp:
        saved_fds = {}
        for fd in (1, 2):
            try:
                saved_fds[fd] = os.dup(fd)
            except OSError:  # not open: nothing to keep aside
                continue
            os.dup2(tmp.fileno(), fd)
        stream = open(os.dup(tmp.fileno()), "w", encoding="utf-8", errors="replace", buffering=1)
        saved_sys = sys.stdout, sys.stderr
        moved = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)
                 and h.stream is not None and h.stream in saved_sys]
        old_streams = [h.setStream(stream) for h in moved]
        sys.stdout = sys.stderr = stream
        try:
            yield out
        finally:
            with contextlib.suppress(Exception):
                stream.flush()
            _flush()
            sys.stdout, sys.stderr = saved_sys
            for h, old in zip(moved, old_streams):
                if h.stream is stream:
                    h.setStream(old)
            for h in logger.handlers:  # a handler the library made inside: back to the real stderr
                if isinstance(h, logging.StreamHandler) and h.stream is stream:
                    h.setStream(saved_sys[1])
            for fd, old in saved_fds.items():
                os.dup2(old, fd)
                os.close(old)
            stream.close()
            tmp.seek(0)
            out.text = tmp.read().decode("utf-8", "replace")
    if _show_log and out.text.strip():
        sys.stderr.write(f"--- rknn-toolkit-lite2 log ({what}) ---\n{out.text.rstrip()}\n--- end of rknn-toolkit-lite2 log ---\n")
        _flush()


class _DropAll(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


def init_failure(log: LibraryOutput) -> str:
    """Our one line for a failed ``init_runtime``: what is missing, from the same checks as before a run."""
    reason = missing_runtime()
    if reason:
        return f"backend 'rknnlite' cannot run here: {reason}"
    said = log.error()
    return (f"the NPU runtime did not start (init_runtime returned -1{': ' + said if said else ''}; --verbose shows "
            f"rknn-toolkit-lite2's log): check the NPU driver (dmesg | grep -i rknpu), and {runtime_hint()}")


class RknnLiteRunner:
    def __init__(self, workload: Workload, copies: int, path: Path, core_mask: str):
        from rknnlite.api import RKNNLite

        mask = getattr(RKNNLite, CORE_MASKS[core_mask])
        self.models = []
        self.outs: list = []
        self._quiet = None
        try:
            for _ in range(copies):  # each loaded model holds its own weights: the cold-cache rotation
                with library_output("load_rknn, init_runtime") as log:
                    rk = RKNNLite(verbose=False)
                    self.models.append(rk)
                    loaded = rk.load_rknn(str(path))
                    started = loaded == 0 and rk.init_runtime(core_mask=mask) == 0
                if loaded != 0:
                    said = log.error()
                    raise InputError(f"{path}: the NPU runtime could not load it (load_rknn returned -1"
                                     f"{': ' + said if said else ''})")
                if not started:
                    raise InputError(init_failure(log))
        except BaseException:
            self.close()
            raise
        if not _show_log:  # a failed inference() logs and returns None: run() reports it, quietly
            self._quiet = _DropAll()
            logging.getLogger(LIBRARY_LOGGER).addFilter(self._quiet)
        self.a = activation(workload.m, workload.k)
        self.outs = [None] * copies
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
        if self.models:
            with library_output("release"):
                for rk in self.models:
                    rk.release()
        if self._quiet is not None:
            logging.getLogger(LIBRARY_LOGGER).removeFilter(self._quiet)
            self._quiet = None
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
        return {"name": self.name, "rknn-toolkit-lite2": lite_version(), "core_mask": self.core_mask,
                "rknn_dir": str(self.rknn_dir), "timing": "host wall time per inference() call, copies included"}


def read_convert_manifest(folder: Path) -> dict:
    try:
        data = json.loads((Path(folder) / "manifest.json").read_text())
    except (OSError, ValueError):
        raise InputError(f"{folder}: no RKNN manifest.json (write one with 'rwkvprobe convert')") from None
    if not isinstance(data, dict) or data.get("kind") != "rknn-convert":
        raise InputError(f"{folder}/manifest.json: not an RKNN conversion manifest")
    return data
