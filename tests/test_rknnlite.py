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
from rwkvprobe.errors import InputError
from rwkvprobe.measure import measure_point
from rwkvprobe.onnxgen import weight_matrix
from rwkvprobe.timing import TimingPolicy

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


@pytest.mark.parametrize("situation, words", [
    ("no-lite", "pip install 'rwkvprobe[npu]'"),
    ("no-device-tree", "rockchip,rk3588"),
    ("no-runtime", "librknnrt.so is missing"),
    ("corrupt-runtime", "looks damaged"),
    ("ok", None),
])
def test_missing_runtime_messages(monkeypatch, tmp_path, fake_lite, situation, words):
    monkeypatch.setattr(rb.platform, "machine", lambda: "aarch64")
    dt = tmp_path / "compatible"
    dt.write_bytes(b"rockchip,rk3588-orangepi-5\0rockchip,rk3588\0")
    runtime = tmp_path / "librknnrt.so"
    runtime.write_bytes(b"\0" * (2 * 1024 * 1024))
    monkeypatch.setattr(rb, "DEVICE_TREE", str(dt))
    monkeypatch.setattr(rb, "RUNTIME_PATHS", (str(runtime),))
    if situation == "no-lite":
        monkeypatch.setattr(rb.importlib.util, "find_spec", lambda name: None)
    elif situation == "no-device-tree":
        dt.unlink()
    elif situation == "no-runtime":
        runtime.unlink()
    elif situation == "corrupt-runtime":
        runtime.write_bytes(b"short")
    reason = rb.missing_runtime()
    if words is None:
        assert reason is None
    else:
        assert words in reason and "\n" not in reason
    if situation == "no-runtime":
        assert "2.5.0" in reason and "/usr/lib" in reason


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


def test_init_runtime_failure_is_one_line(as_on_board, tmp_path, monkeypatch):
    folder = _fake_convert_dir(tmp_path, [(1, 64, 96)])
    monkeypatch.setitem(as_on_board.FAKE_STATE, "init_ok", False)
    with pytest.raises(InputError, match="init_runtime returned -1.*librknnrt.so 2.5.0"):
        rb.RknnLiteBackend(1, rknn_dir=folder).prepare(Workload(1, 64, 96, "fp16"), 1)


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
    params = inspect.signature(cls.init_runtime).parameters
    assert list(params)[1:] == ["target", "device_id", "async_mode", "core_mask"]
    assert cls().load_rknn("/nonexistent.rknn") == -1
    assert cls().inference(inputs=[np.zeros((1, 4))]) is None  # before init_runtime: None, no exception
    assert set(rb.CORE_MASKS.values()) <= {n for n in dir(cls) if n.startswith("NPU_CORE")}
