"""The rknnlite (NPU) backend: refusals on machines without the NPU, and its plumbing with a fake
RKNNLite that reproduces the real library's signatures and return conventions. The fake times
nothing of an NPU: these tests check the code paths only, never a figure."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from rwkvprobe.backends import Workload, check_runner
from rwkvprobe.backends import rknnlite_backend as rb
from rwkvprobe.backends.onnxgen import weight_matrix
from rwkvprobe.errors import InputError
from rwkvprobe.measure.points import measure_point
from rwkvprobe.measure.timing import TimingPolicy

FAKE = Path(__file__).parent / "fake_rknnlite"


@pytest.fixture
def fake_lite(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKE))
    for name in [m for m in sys.modules if m.startswith("rknnlite")]:
        monkeypatch.delitem(sys.modules, name)
    import rknnlite.api as api

    monkeypatch.setitem(api.FAKE_STATE, "init_ok", True)
    monkeypatch.setitem(api.FAKE_STATE, "inference_ok", True)
    return api


@pytest.fixture
def as_on_board(fake_lite, monkeypatch):
    """The fake library, and the board checks answered as on an RK3588 with its runtime."""
    monkeypatch.setattr(rb, "missing_runtime", lambda: None)
    return fake_lite


def _fake_convert_dir(tmp_path, shapes, dtype="fp16"):
    """A folder like 'rwkvprobe convert' writes, whose .rknn files the fake reads (fp16 weights)."""
    models = []
    for m, k, n in shapes:
        name = f"matmul_m{m}_k{k}_n{n}_{dtype}.rknn"
        with open(tmp_path / name, "wb") as f:
            np.save(f, weight_matrix(k, n, "fp16"))
        models.append({"dtype": dtype, "m": m, "k": k, "n": n, "file": name, "ok": True})
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": 1, "kind": "rknn-convert", "models": models}))
    return tmp_path


def test_refuses_on_this_x86_machine_with_one_line():
    import platform

    if platform.machine() == "aarch64":
        pytest.skip("runs on an aarch64 machine")
    reason = rb.RknnLiteBackend.unavailable_reason()
    assert "aarch64" in reason and "\n" not in reason


def test_cli_refuses_rknnlite_here(cli, tmp_path):
    prof = tmp_path / "p.yaml"
    prof.write_text("name: x\nsource: t\nlayers:\n  - {name: a, k: 64, n: 64, count: 1}\n")
    code, out, err = cli("analyze", prof, "--backends", "rknnlite", "--out", tmp_path / "r")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "rknnlite" in err
    assert not (tmp_path / "r").exists()


def elf(machine=183, load_bytes=1000):
    """A 64-bit little-endian ELF shared object's headers: one PT_LOAD segment of ``load_bytes`` from 0."""
    import struct

    header = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + struct.pack("<HHIQQQIHHHHHH", 3, machine, 1, 0, 64, 0, 0, 64,
                                                                 56, 1, 64, 0, 0)
    return header + struct.pack("<IIQQQQQQ", 1, 5, 0, 0, 0, load_bytes, load_bytes, 0x1000)


@pytest.mark.parametrize("situation, words", [
    ("no-lite", "pip install 'rwkvprobe[npu]'"),
    ("no-device-tree", "compatible does not exist"),
    ("other-soc", "names rockchip,rk3399-rockpro64, rockchip,rk3399, not rockchip,rk3588"),
    ("no-runtime", "librknnrt.so is missing: install librknnrt.so 2.5.0"),
    ("runtime-in-lib64", "but rknn-toolkit-lite2 loads only"),
    ("corrupt-runtime", "is not a shared library: 54 bytes without an ELF header (a web page saved in its place"),
    ("short-runtime", "is not a shared library: 5 bytes without an ELF header"),
    ("truncated-runtime", "is cut short: 1,000 bytes where its own headers need 7,000,000"),
    ("x86-runtime", "is the x86-64 build, not the aarch64 one"),
    ("unloadable-runtime", "cannot be loaded (libstdc++.so.6: cannot open shared object file"),
    ("ok", None),
])
def test_missing_runtime_messages(monkeypatch, tmp_path, fake_lite, situation, words):
    """The situations the real library meets (checked on emulated aarch64 by tests/aarch64/probe.py),
    each named in one line with the fix."""
    monkeypatch.setattr(rb.platform, "machine", lambda: "aarch64")
    dt = tmp_path / "compatible"
    dt.write_bytes(b"rockchip,rk3588-orangepi-5\0rockchip,rk3588\0")
    runtime = tmp_path / "librknnrt.so"
    runtime.write_bytes(elf().ljust(1000, b"\0"))
    lib64 = tmp_path / "lib64-librknnrt.so"
    monkeypatch.setattr(rb, "DEVICE_TREE", str(dt))
    monkeypatch.setattr(rb, "RUNTIME_PATH", str(runtime))
    monkeypatch.setattr(rb, "STRAY_RUNTIME_PATHS", (str(lib64),))
    monkeypatch.setattr(rb, "_load_error", lambda path: None)  # this x86 machine cannot load an aarch64 library
    if situation == "no-lite":
        monkeypatch.setattr(rb.importlib.util, "find_spec", lambda name: None)
    elif situation == "no-device-tree":
        dt.unlink()
    elif situation == "other-soc":
        dt.write_bytes(b"rockchip,rk3399-rockpro64\0rockchip,rk3399\0")
    elif situation == "no-runtime":
        runtime.unlink()
    elif situation == "runtime-in-lib64":
        runtime.rename(lib64)
    elif situation == "corrupt-runtime":
        runtime.write_bytes(b"<!DOCTYPE html>\n<html><body>librknnrt.so</body></html>")
    elif situation == "short-runtime":
        runtime.write_bytes(b"\x00\x01\x02\x03\x04")
    elif situation == "truncated-runtime":
        runtime.write_bytes(elf(load_bytes=7_000_000).ljust(1000, b"\0"))
    elif situation == "x86-runtime":
        runtime.write_bytes(elf(machine=62).ljust(1000, b"\0"))
    elif situation == "unloadable-runtime":
        monkeypatch.setattr(rb, "_load_error", lambda path: "libstdc++.so.6: cannot open shared object file: "
                                                           "No such file or directory")
    reason = rb.missing_runtime()
    if words is None:
        assert reason is None
        return
    assert words in reason and "\n" not in reason
    if "runtime" in situation:  # which file, where from, which version
        assert str(runtime) in reason and "2.5.0" in reason and "rknn-toolkit-lite2" in reason
        assert "airockchip/rknn-toolkit2 (rknpu2/runtime/Linux/librknn_api/aarch64/librknnrt.so)" in reason


# ------------------------------------------------------------------------------------------------
# The runtime's version, read from the file (never by loading it)

#: the text a real librknnrt.so carries, as found in airockchip/rknn-toolkit2's armhf librknnrt.so 1.6.0
REAL_TAG = b"librknnrt version: 1.6.0 (9a7b5d24c@2023-12-13T17:32:13)"


def _runtime_of_version(path, tag=REAL_TAG):
    """A whole aarch64 ELF (headers only) with the runtime's version string among its bytes, as a real one has."""
    body = elf().ljust(1000, b"\0") + b"RKNN Runtime Information, %s\0\0" + tag + b"\0\0\0"
    path.write_bytes(body)
    return path


def test_runtime_version_read_from_the_bytes(tmp_path):
    lib = _runtime_of_version(tmp_path / "librknnrt.so")
    assert rb.runtime_version(str(lib)) == "1.6.0 (9a7b5d24c@2023-12-13T17:32:13)"
    # a format string before the real text is passed over; no text at all, or no file, is None
    lib.write_bytes(elf() + b"\0librknnrt version: %s\0" + REAL_TAG.replace(b"1.6.0", b"2.3.2") + b"\0")
    assert rb.runtime_version(str(lib)) == "2.3.2 (9a7b5d24c@2023-12-13T17:32:13)"
    lib.write_bytes(elf().ljust(1000, b"\0"))
    assert rb.runtime_version(str(lib)) is None
    lib.write_bytes(b"")
    assert rb.runtime_version(str(lib)) is None
    assert rb.runtime_version(str(tmp_path / "none.so")) is None
    assert [rb.release(v) for v in ("1.6.0 (9a7b5d24c@x)", "1.5.0+1fa95b5c", "2.0.0b0+9bab5682", "x", None)] == [
        "1.6.0", "1.5.0", "2.0.0b0", None, None]


def _on_board_with(monkeypatch, tmp_path, fake_lite, lite):
    monkeypatch.setattr(rb.platform, "machine", lambda: "aarch64")
    dt = tmp_path / "compatible"
    dt.write_bytes(b"rockchip,rk3588-orangepi-5\0rockchip,rk3588\0")
    monkeypatch.setattr(rb, "DEVICE_TREE", str(dt))
    runtime = _runtime_of_version(tmp_path / "librknnrt.so")
    monkeypatch.setattr(rb, "RUNTIME_PATH", str(runtime))
    monkeypatch.setattr(rb, "lite_version", lambda: lite)
    return runtime


def test_runtime_of_another_version_refused_before_it_is_loaded(monkeypatch, tmp_path, fake_lite):
    runtime = _on_board_with(monkeypatch, tmp_path, fake_lite, "2.3.2")

    def never(path):
        raise AssertionError("the library was about to be loaded")

    monkeypatch.setattr(rb, "_load_error", never)
    assert rb.missing_runtime() == (
        f"the NPU runtime {runtime} is librknnrt 1.6.0 but rknn-toolkit-lite2 is 2.3.2: replace {runtime} with "
        "librknnrt.so 2.3.2 from airockchip/rknn-toolkit2 (rknpu2/runtime/Linux/librknn_api/aarch64/librknnrt.so) "
        "(or pip install 'rknn-toolkit-lite2==1.6.0')")


def test_runtime_of_the_same_version_goes_on_to_the_load_check(monkeypatch, tmp_path, fake_lite):
    _on_board_with(monkeypatch, tmp_path, fake_lite, "1.6.0")
    tried = []
    monkeypatch.setattr(rb, "_load_error", lambda path: tried.append(path))
    assert rb.missing_runtime() is None and tried == [rb.RUNTIME_PATH]


@pytest.mark.parametrize("built, refused", [("2.3.2+abc", True), ("1.6.0", False), ("1.5.0+1fa95b5c", False),
                                            ("2.0.0b0+9bab5682", True), (None, False)])
def test_models_from_a_newer_toolkit_than_the_runtime_refused(monkeypatch, tmp_path, built, refused):
    runtime = _runtime_of_version(tmp_path / "librknnrt.so")
    folder = tmp_path / "rknn"
    folder.mkdir()
    manifest = {"schema": 1, "kind": "rknn-convert", "models": []}
    if built:
        manifest["toolkit"] = {"rknn-toolkit2": built}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    if not refused:
        rb.check_models_runtime(folder, str(runtime))
        return
    with pytest.raises(InputError) as e:
        rb.check_models_runtime(folder, str(runtime))
    b = rb.release(built)
    assert str(e.value) == (
        f"{folder}: converted with rknn-toolkit2 {b}, newer than the NPU runtime {runtime} (librknnrt 1.6.0): "
        f"replace {runtime} with librknnrt.so {b} from airockchip/rknn-toolkit2 "
        f"(rknpu2/runtime/Linux/librknn_api/aarch64/librknnrt.so) (and rknn-toolkit-lite2 with {b}), or convert "
        "again with rknn-toolkit2 1.6.0")


def test_cli_refuses_models_newer_than_the_runtime(as_on_board, cli, monkeypatch, tmp_path):
    """analyze --backends rknnlite --rknn DIR: one line, exit 2, nothing written."""
    runtime = _runtime_of_version(tmp_path / "librknnrt.so")
    monkeypatch.setattr(rb, "RUNTIME_PATH", str(runtime))
    folder = _fake_convert_dir(tmp_path, [(1, 64, 64)])
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "toolkit": {"rknn-toolkit2": "2.5.0"}}))
    prof = tmp_path / "p.yaml"
    prof.write_text("name: x\nsource: t\nlayers:\n  - {name: a, k: 64, n: 64, count: 1}\n")
    code, out, err = cli("analyze", prof, "--backends", "rknnlite", "--rknn", folder, "--out", tmp_path / "r")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "converted with rknn-toolkit2 2.5.0, newer than the NPU runtime" in err and "librknnrt 1.6.0" in err
    assert not (tmp_path / "r").exists()


def test_runtime_hint_names_the_installed_toolkit_version(monkeypatch):
    monkeypatch.setattr(rb, "lite_version", lambda: "2.3.2")
    hint = rb.runtime_hint()
    assert "librknnrt.so 2.3.2, the same version as the installed rknn-toolkit-lite2 2.3.2" in hint
    assert hint.endswith("as /usr/lib/librknnrt.so")


def test_load_error_is_the_loader_message_from_a_child_process(tmp_path):
    lib = tmp_path / "librknnrt.so"
    lib.write_bytes(b"\x7fELF")
    assert rb._load_error(str(lib)) == "file too short"
    assert rb._load_error("/nonexistent/librknnrt.so") == "No such file or directory"


def test_plumbing_with_fake_library(as_on_board, tmp_path):
    folder = _fake_convert_dir(tmp_path, [(1, 64, 96), (4, 96, 64)])
    backend = rb.RknnLiteBackend(1, rknn_dir=folder, core_mask="0_1_2")
    for m, k, n in [(1, 64, 96), (4, 96, 64)]:
        w = Workload(m, k, n, "fp16")
        runner = backend.prepare(w, 2)
        assert len(runner.models) == 2  # one loaded model per rotation copy
        result = check_runner(w, runner)
        assert result["ok"] and result["tolerance"] == rb.NPU_TOLERANCE["fp16"]
        runner.close()
        assert runner.models == []
    point = measure_point(backend, Workload(1, 64, 96, "fp16"), None, TimingPolicy(budget_seconds=0.02))
    assert point["check"]["ok"] and point["timing"]["n"] >= 1


def test_init_runtime_failure_is_one_line(as_on_board, tmp_path, monkeypatch, capfd):
    folder = _fake_convert_dir(tmp_path, [(1, 64, 96)])
    monkeypatch.setitem(as_on_board.FAKE_STATE, "init_ok", False)
    with pytest.raises(InputError, match="init_runtime returned -1: Can not find dynamic library on RK3588!; "
                                         "--verbose shows .*librknnrt.so 2.5.0") as e:
        rb.RknnLiteBackend(1, rknn_dir=folder).prepare(Workload(1, 64, 96, "fp16"), 1)
    assert "\n" not in str(e.value)
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # the library's log and traceback stay out of the way


def test_init_failure_names_what_the_checks_find(as_on_board, tmp_path, monkeypatch):
    """When init_runtime fails for a reason the checks know (the runtime went missing after the check),
    the message is the same one line as the check's, not the library's traceback."""
    folder = _fake_convert_dir(tmp_path, [(1, 64, 96)])
    monkeypatch.setitem(as_on_board.FAKE_STATE, "init_ok", False)
    monkeypatch.setattr(rb, "missing_runtime", lambda: "the NPU runtime /usr/lib/librknnrt.so is missing: install ...")
    with pytest.raises(InputError, match=r"^backend 'rknnlite' cannot run here: the NPU runtime /usr/lib/librknnrt.so is missing"):
        rb.RknnLiteRunner(Workload(1, 64, 96, "fp16"), 1, folder / "matmul_m1_k64_n96_fp16.rknn", "auto")


def test_library_output_only_with_verbose(as_on_board, tmp_path, monkeypatch, capfd):
    """The library's log (acuityLogger) and the runtime's prints on fd 1/2: kept aside, replayed with --verbose."""
    folder = _fake_convert_dir(tmp_path, [(1, 64, 96)])
    backend = rb.RknnLiteBackend(1, rknn_dir=folder)
    backend.prepare(Workload(1, 64, 96, "fp16"), 1).close()  # init prints "I RKNN: ..." on fd 1
    assert capfd.readouterr() == ("", "")
    monkeypatch.setattr(rb, "_show_log", False)
    rb.show_library_log(True)
    backend.prepare(Workload(1, 64, 96, "fp16"), 1).close()
    out, err = capfd.readouterr()
    assert out == "" and "--- rknn-toolkit-lite2 log (load_rknn, init_runtime) ---" in err and "I RKNN: fake runtime" in err
    monkeypatch.setitem(as_on_board.FAKE_STATE, "init_ok", False)
    with pytest.raises(InputError, match="init_runtime returned -1"):
        backend.prepare(Workload(1, 64, 96, "fp16"), 1)
    out, err = capfd.readouterr()
    assert "Catch exception when init runtime!" in err and "Exception: Can not find dynamic library on RK3588!" in err


def test_cli_shows_the_library_log_only_with_verbose(as_on_board, cli, tmp_path, monkeypatch):
    folder = _fake_convert_dir(tmp_path, [(1, 64, 64)])
    prof = tmp_path / "p.yaml"
    prof.write_text("name: x\nsource: t\nlayers:\n  - {name: a, k: 64, n: 64, count: 1}\n")
    monkeypatch.setitem(as_on_board.FAKE_STATE, "init_ok", False)
    monkeypatch.setattr(rb, "_show_log", False)
    args = ("analyze", prof, "--backends", "rknnlite", "--rknn", folder, "--quick", "--budget", "5")
    code, out, err = cli(*args, "--out", tmp_path / "quiet")
    assert "Catch exception" not in err + out and "Traceback" not in err + out and "rknn-toolkit-lite2 version" not in err
    assert "init_runtime returned -1" in (tmp_path / "quiet" / "report.md").read_text()
    code, out, err = cli(*args, "--out", tmp_path / "verbose", "--verbose")
    assert "E Catch exception when init runtime!" in err and "Exception: Can not find dynamic library on RK3588!" in err


def test_library_output_restores_the_streams(monkeypatch, capfd):
    import logging
    import os

    handler = logging.StreamHandler(sys.stderr)
    logger = logging.getLogger(rb.LIBRARY_LOGGER)
    monkeypatch.setattr(logger, "handlers", [handler])  # the library's own: a stream handler on stderr
    monkeypatch.setattr(logger, "propagate", False)
    streams = sys.stdout, sys.stderr
    with rb.library_output("test") as log:
        os.write(2, b"native noise\n")
        print("python noise")
        logger.error("E logged noise")
    assert (sys.stdout, sys.stderr) == streams and handler.stream is sys.stderr
    assert log.text.splitlines() == ["native noise", "python noise", "E logged noise"]
    assert log.error() == "logged noise"
    print("after")
    os.write(2, b"fd 2 after\n")
    assert capfd.readouterr() == ("after\n", "fd 2 after\n")


def test_inference_none_is_recorded_not_timed(as_on_board, tmp_path, monkeypatch):
    folder = _fake_convert_dir(tmp_path, [(1, 64, 96)])
    monkeypatch.setitem(as_on_board.FAKE_STATE, "inference_ok", False)
    point = measure_point(rb.RknnLiteBackend(1, rknn_dir=folder), Workload(1, 64, 96, "fp16"), None,
                          TimingPolicy(budget_seconds=0.02))
    assert point["timing"] is None and "returned None" in point["error"]


def test_missing_model_and_missing_dir(as_on_board, tmp_path):
    folder = _fake_convert_dir(tmp_path, [(1, 64, 96)])
    with pytest.raises(InputError, match="no fp16 model for M=1 32x32"):
        rb.RknnLiteBackend(1, rknn_dir=folder).prepare(Workload(1, 32, 32, "fp16"), 1)
    with pytest.raises(InputError, match="needs --rknn DIR"):
        rb.RknnLiteBackend(1).prepare(Workload(1, 64, 96, "fp16"), 1)
    (folder / "matmul_m1_k64_n96_fp16.rknn").unlink()
    with pytest.raises(InputError, match="load_rknn returned -1"):
        rb.RknnLiteBackend(1, rknn_dir=folder).prepare(Workload(1, 64, 96, "fp16"), 1)


def test_fake_matches_the_documented_api(fake_lite):
    import inspect

    cls = fake_lite.RKNNLite
    assert (cls.NPU_CORE_AUTO, cls.NPU_CORE_0, cls.NPU_CORE_1, cls.NPU_CORE_2) == (0, 1, 2, 4)
    assert (cls.NPU_CORE_0_1, cls.NPU_CORE_0_1_2, cls.NPU_CORE_ALL) == (3, 7, 0xFFFF)
    def params(method):
        return list(inspect.signature(method).parameters)[1:]

    assert params(cls.__init__) == ["verbose", "verbose_file"]
    assert params(cls.load_rknn) == ["path", "key_path"]
    assert params(cls.init_runtime) == ["target", "device_id", "async_mode", "core_mask"]
    assert params(cls.inference) == ["inputs", "data_type", "data_format", "inputs_pass_through", "get_frame_id",
                                     "reuse_outputs"]
    assert cls().load_rknn("/nonexistent.rknn") == -1
    assert cls().inference(inputs=[np.zeros((1, 4))]) is None  # before init_runtime: None, no exception
    assert set(rb.CORE_MASKS.values()) <= {n for n in dir(cls) if n.startswith("NPU_CORE")}
