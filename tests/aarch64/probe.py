"""CI probe on emulated linux/aarch64, against the real rknn-toolkit-lite2 (issue 9).

Run by ``.ci/aarch64.sh`` inside an arm64 chroot, with the venv where ``pip install "/src[npu]"`` ran:

    /opt/venv/bin/python /src/tests/aarch64/probe.py

It needs to be root in that chroot with a writable ``/proc`` (the script mounts a tmpfs there, linking
to the real proc): it arranges each situation itself by writing ``/proc/device-tree/compatible`` and
``/usr/lib/librknnrt.so``, and removes both again at the end. It checks:

1. the install: aarch64, the real rknn-toolkit-lite2, and rwkvprobe installed from this source tree;
2. conformance: the signatures of ``RKNNLite.__init__``, ``load_rknn``, ``init_runtime``, ``inference``
   and ``release`` and the ``NPU_CORE_*`` constants of the real class equal those of the x86 fake in
   ``tests/fake_rknnlite`` (any difference fails); every library method the backend calls accepts the
   arguments the backend passes, and every ``--npu-cores`` constant exists;
3. the situations: ``rwkvprobe analyze profiles/rwkv-0b1.yaml --backends rknnlite --quick`` ends with exit
   2 and our one line naming what is missing and how to fix it, and nothing else on stderr (with
   ``--verbose`` too, ending in the same line); and the backend's own path through the real library
   (``RknnLiteRunner``: load_rknn + init_runtime) gives the same line, keeps the library's traceback off
   the terminal, and shows it with ``--verbose``. A librknnrt.so of another version than
   rknn-toolkit-lite2 (a whole aarch64 library that names itself "librknnrt version: 1.4.0 ...") is
   refused with the line naming the file to replace, before anything tries to load it.

Prints one line per check; exits 1 on the first failure class with every difference listed.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

SRC = Path(__file__).resolve().parents[2]
PROFILE = SRC / "profiles" / "rwkv-0b1.yaml"
FAKE_API = SRC / "tests" / "fake_rknnlite" / "rknnlite" / "api" / "__init__.py"
METHODS = ("__init__", "load_rknn", "init_runtime", "inference", "release")
DEVICE_TREE = Path("/proc/device-tree")
RUNTIME = Path("/usr/lib/librknnrt.so")
RK3588_DT = b"rockchip,rk3588-evb1-lp4-v10\0rockchip,rk3588\0"
#: the version a stand-in librknnrt.so names itself with: another one than the installed rknn-toolkit-lite2
OTHER_RUNTIME = "1.4.0 (a1b2c3d4e@2022-08-31T10:00:00)"
#: what only the library prints (its log lines, tracebacks); none of it may reach the user without --verbose
NOISE = re.compile(r"^(?:[EWID] |Traceback|  File |\w*(?:Error|Exception): )|Catch exception|acuityLogger", re.M)

failures: list[str] = []
passed: list[str] = []


def ok(text: str) -> None:
    passed.append(text)
    print(f"  ok: {text}", flush=True)


def fail(text: str) -> None:
    failures.append(text)
    print(f"  FAIL: {text}", flush=True)


def check(cond: bool, text: str, detail: str = "") -> bool:
    if cond:
        ok(text)
    else:
        fail(f"{text}{': ' + detail if detail else ''}")
    return cond


@contextmanager
def terminal():
    """What a user would see: file descriptors 1 and 2 into one temporary file, read back on exit."""
    seen = {"text": ""}
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as tmp:
        saved = {fd: os.dup(fd) for fd in (1, 2)}
        for fd in saved:
            os.dup2(tmp.fileno(), fd)
        try:
            yield seen
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, old in saved.items():
                os.dup2(old, fd)
                os.close(old)
            tmp.seek(0)
            seen["text"] = tmp.read().decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------------
# 1. the install

def check_install() -> str:
    import platform
    from importlib.metadata import version

    import rwkvprobe
    from rwkvprobe.backends import rknnlite_backend

    print(f"1. install: Python {platform.python_version()} on {platform.machine()}, "
          f"rknn-toolkit-lite2 {version('rknn-toolkit-lite2')}, rwkvprobe {rwkvprobe.__version__}", flush=True)
    check(platform.machine() == "aarch64", "running on (emulated) aarch64", platform.machine())
    installed = Path(rknnlite_backend.__file__)
    check(SRC not in installed.parents, "rwkvprobe imported from the venv, not from the source tree", str(installed))
    same = all((SRC / "rwkvprobe" / rel).read_bytes() == (installed.parents[1] / rel).read_bytes()
               for rel in ("backends/rknnlite_backend.py", "cli/app.py"))
    check(same, "the installed rwkvprobe is this source tree (reinstalled on this run)")
    return version("rknn-toolkit-lite2")


# ---------------------------------------------------------------------------------------------------
# 2. conformance: real RKNNLite == tests/fake_rknnlite, and what the backend uses exists

def _load_fake():
    spec = importlib.util.spec_from_file_location("fake_rknnlite_api", FAKE_API)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RKNNLite


def _constants(cls) -> dict:
    return {n: getattr(cls, n) for n in dir(cls) if n.startswith("NPU_CORE")}


def _backend_calls() -> list[tuple[str, int, list[str], int]]:
    """(method, positional argument count, keyword names, line) of each call the backend makes on RKNNLite
    objects: ``RKNNLite(...)`` and ``<x>.<method>(...)`` for the methods compared here."""
    from rwkvprobe.backends import rknnlite_backend

    tree = ast.parse(Path(rknnlite_backend.__file__).read_text())
    calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id == "RKNNLite":
            method = "__init__"
        elif isinstance(f, ast.Attribute) and f.attr in METHODS[1:]:
            method = f.attr
        else:
            continue
        calls.append((method, len(node.args), [k.arg for k in node.keywords], node.lineno))
    return calls


def check_conformance() -> None:
    import numpy as np
    from rknnlite.api import RKNNLite as Real

    from rwkvprobe.backends import rknnlite_backend as rb

    print("2. conformance: the real RKNNLite against tests/fake_rknnlite and the backend", flush=True)
    Fake = _load_fake()
    for name in METHODS:
        real, fake = inspect.signature(getattr(Real, name)), inspect.signature(getattr(Fake, name))
        check(str(real) == str(fake), f"RKNNLite.{name}{real}", f"the fake has {name}{fake}")
    real_c, fake_c = _constants(Real), _constants(Fake)
    check(real_c == fake_c, f"NPU_CORE_* constants {real_c}", f"the fake has {fake_c}")
    missing = sorted(set(rb.CORE_MASKS.values()) - set(real_c))
    check(not missing, f"--npu-cores constants exist: {', '.join(sorted(set(rb.CORE_MASKS.values())))}",
          f"missing in the real class: {missing}")
    calls = _backend_calls()
    check({c[0] for c in calls} >= set(METHODS), "the backend's calls found: " +
          ", ".join(sorted({c[0] for c in calls})), f"expected all of {METHODS}")
    for method, npos, keywords, line in calls:
        try:
            inspect.signature(getattr(Real, method)).bind(None, *[None] * npos, **{k: None for k in keywords})
        except TypeError as e:
            fail(f"rknnlite_backend.py line {line}: {method}({npos} positional, {keywords}) does not fit the real "
                 f"signature: {e}")
    ok(f"the real signatures accept each of the backend's {len(calls)} calls")
    # the return conventions the backend relies on: -1 and None, logged, never raised
    with rb.library_output("conformance") as log:
        conventions = (Real().load_rknn("/nonexistent.rknn"), Real().inference(inputs=[np.zeros((1, 4), np.float32)]),
                       Real().init_runtime())
    check(conventions == (-1, None, -1), "load_rknn(missing) -> -1, inference() before init -> None, "
          "init_runtime() before load -> -1; nothing raised", repr(conventions))
    check("Invalid RKNN model path" in log.text, "the library logs its errors (acuityLogger), kept aside",
          log.text[-300:])


# ---------------------------------------------------------------------------------------------------
# 3. the situations a board without a working NPU runtime is in

def arrange(compatible: bytes | None, runtime: bytes | None) -> None:
    if compatible is None:
        if DEVICE_TREE.is_dir():
            (DEVICE_TREE / "compatible").unlink(missing_ok=True)
            DEVICE_TREE.rmdir()
    else:
        DEVICE_TREE.mkdir(exist_ok=True)
        (DEVICE_TREE / "compatible").write_bytes(compatible)
    if runtime is None:
        RUNTIME.unlink(missing_ok=True)
    else:
        RUNTIME.write_bytes(runtime)


def _cli(verbose: bool, out: Path) -> subprocess.Popen:
    args = [str(Path(sys.executable).with_name("rwkvprobe")), "analyze", str(PROFILE), "--backends", "rknnlite",
            "--quick", "--out", str(out)] + (["--verbose"] if verbose else [])
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def check_cli(name: str, expected: str, work: Path) -> str | None:
    """The CLI, quiet and --verbose side by side (two cores): exit 2, our one line last, no library noise."""
    want = f"rwkvprobe: error: backend 'rknnlite' cannot run here: {expected}"
    t0 = time.monotonic()
    runs = {v: (_cli(v, work / f"out-{v}"), work / f"out-{v}") for v in (False, True)}
    results = {v: (p.communicate(timeout=300), p.returncode, out) for v, (p, out) in runs.items()}
    line = None
    for verbose, ((stdout, stderr), code, out) in results.items():
        label = "analyze --verbose" if verbose else "analyze"
        lines = stderr.strip().splitlines()
        last = lines[-1] if lines else ""
        good = code == 2 and re.fullmatch(want, last) is not None and not out.exists()
        if not verbose:
            good = good and len(lines) == 1 and not NOISE.search(stderr) and stdout == ""
            line = last
        check(good, f"{name}: {label} -> exit {code}, last line: {last}",
              f"expected exit 2, {'exactly ' if not verbose else ''}the line matching {want!r} "
              f"and no {out}; stderr was:\n{stderr}")
    print(f"     ({time.monotonic() - t0:.1f} s)", flush=True)
    return line


def check_library_path(name: str, expected: str, library_says: str, work: Path) -> None:
    """The backend's own calls into the real library (past the checks, as if they had missed it): init_runtime
    fails, our line names the same fix, the library's traceback stays off the terminal unless --verbose."""
    from rwkvprobe.backends import Workload
    from rwkvprobe.backends import rknnlite_backend as rb
    from rwkvprobe.errors import InputError

    model = work / "dummy.rknn"
    model.write_bytes(b"not a model: init_runtime fails before reading it")
    seen = {}
    for verbose in (False, True):
        rb.show_library_log(verbose)
        error = None
        with terminal() as term:
            try:
                rb.RknnLiteRunner(Workload(1, 64, 64, "fp16"), 1, model, "auto").close()
            except InputError as e:
                error = str(e)
        seen[verbose] = (error, term["text"])
    rb.show_library_log(False)
    (quiet_error, quiet_text), (loud_error, loud_text) = seen[False], seen[True]
    want = f"backend 'rknnlite' cannot run here: {expected}"
    check(quiet_error is not None and re.fullmatch(want, quiet_error) is not None,
          f"{name}: the real init_runtime fails and the backend says: {quiet_error}", f"expected {want!r}")
    check(quiet_text == "", f"{name}: nothing of the library's on the terminal without --verbose", repr(quiet_text))
    check(loud_error == quiet_error and re.search(library_says, loud_text) is not None,
          f"{name}: with --verbose the library's own log is shown: "
          f"{next((ln for ln in loud_text.splitlines() if re.search(library_says, ln)), '?').strip()}",
          f"expected /{library_says}/ in:\n{loud_text}")


def check_not_loaded(name: str, expected: str) -> None:
    """The version is read from the file's bytes: the refusal comes before any attempt to load the library
    (rknnlite_backend tries a load in a child process and remembers it in _LOADED: none happened)."""
    from rwkvprobe.backends import rknnlite_backend as rb

    rb._LOADED.clear()
    reason = rb.missing_runtime()
    check(reason is not None and re.fullmatch(expected, reason) is not None and not rb._LOADED,
          f"{name}: refused before it is loaded (no load attempted): {reason}",
          f"expected /{expected}/ and no load attempt; loads tried: {list(rb._LOADED)}")


def check_situations(lite: str) -> None:
    v = re.escape(lite)
    fix = (rf"install librknnrt\.so {v}, the same version as the installed rknn-toolkit-lite2 {v}, from "
           r"airockchip/rknn-toolkit2 \(rknpu2/runtime/Linux/librknn_api/aarch64/librknnrt\.so\) as /usr/lib/librknnrt\.so")
    html = b"<!DOCTYPE html>\n<html><head><title>rknn-toolkit2/librknnrt.so at master</title></head></html>\n"
    with open("/usr/lib/aarch64-linux-gnu/libstdc++.so.6", "rb") as f:
        whole = f.read()
    cut = whole[:64 * 1024]  # a real aarch64 library, download interrupted
    # a whole aarch64 library that names itself as another runtime version, as a real librknnrt.so does
    other = whole + b"\0RKNN Runtime Information, %s\0" + f"librknnrt version: {OTHER_RUNTIME}".encode() + b"\0"
    o = re.escape(OTHER_RUNTIME.split()[0])
    situations = [
        # name, /proc/device-tree/compatible, /usr/lib/librknnrt.so, our message, what the library itself says
        ("no device tree", None, None,
         r"no RK3588 NPU found: /proc/device-tree/compatible does not exist \(rknn-toolkit-lite2 reads the SoC from "
         r"it; run on the RK3588 board's own Linux\)", r"Please specify the target in init_runtime"),
        ("RK3588 without librknnrt.so", RK3588_DT, None,
         rf"the NPU runtime /usr/lib/librknnrt\.so is missing: {fix}", r"Can not find dynamic library on RK3588"),
        ("RK3588 with a corrupt librknnrt.so (a web page)", RK3588_DT, html,
         rf"the NPU runtime /usr/lib/librknnrt\.so is not a shared library: {len(html)} bytes without an ELF header "
         rf"\(a web page saved in its place: download the raw file\): {fix}", r"OSError: .*invalid ELF header"),
        ("RK3588 with a cut-short librknnrt.so", RK3588_DT, cut,
         rf"the NPU runtime /usr/lib/librknnrt\.so is cut short: 65,536 bytes where its own headers need [\d,]+ "
         rf"\(an incomplete download\?\): {fix}", None),
        ("RK3588 with a librknnrt.so of another version", RK3588_DT, other,
         rf"the NPU runtime /usr/lib/librknnrt\.so is librknnrt {o} but rknn-toolkit-lite2 is {v}: replace "
         rf"/usr/lib/librknnrt\.so with librknnrt\.so {v} from airockchip/rknn-toolkit2 "
         rf"\(rknpu2/runtime/Linux/librknn_api/aarch64/librknnrt\.so\) \(or pip install 'rknn-toolkit-lite2=={o}'\)",
         None),
    ]
    print(f"3. situations: rwkvprobe analyze {PROFILE.relative_to(SRC)} --backends rknnlite --quick", flush=True)
    if not os.access("/proc", os.W_OK) or Path("/proc/self").resolve().parent == Path("/proc"):
        fail("/proc here is the real proc: run this inside .ci/aarch64.sh's chroot (a tmpfs /proc)")
        return
    try:
        for name, compatible, runtime, expected, library_says in situations:
            arrange(compatible, runtime)
            with tempfile.TemporaryDirectory() as tmp:
                check_cli(name, expected, Path(tmp))
                if library_says is not None:
                    check_library_path(name, expected, library_says, Path(tmp))
                elif runtime is other:
                    check_not_loaded(name, expected)
                else:
                    ok(f"{name}: the library path is not tried (loading a cut-short library can kill the process "
                       "with SIGBUS: the check above stops first, without loading it)")
    finally:
        arrange(None, None)


def main() -> int:
    t0 = time.monotonic()
    lite = check_install()
    check_conformance()
    if not failures:  # the situations rely on the API being the one the backend expects
        check_situations(lite)
    if failures:
        print(f"aarch64 probe FAILED ({len(failures)}):\n  " + "\n  ".join(failures), flush=True)
    print(f"aarch64 probe took {time.monotonic() - t0:.1f} s", flush=True)
    print(f"aarch64: {len(passed)} passed, {len(failures)} failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
