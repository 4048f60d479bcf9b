"""ONNX MatMul generation: checked models, correct results in onnxruntime, reuse and refusals."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import PROFILES

from rwkvprobe.backends import onnxgen
from rwkvprobe.backends.ort_backend import session_options
from rwkvprobe.errors import InputError
from rwkvprobe.model.profile import layer_list, load_profile, parse_profile

SMALL = parse_profile({"name": "small", "source": "test", "layers": [
    {"name": "a", "k": 64, "n": 96, "count": 3},
    {"name": "b", "k": 96, "n": 64, "count": 3},
    {"name": "c", "k": 64, "n": 96, "count": 1},  # same shape as a: one model
]})


def _run(path, a):
    sess = ort.InferenceSession(str(path), sess_options=session_options(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"A": a})[0]


@pytest.mark.parametrize("dtype, rtol", [("fp32", 1e-5), ("fp16", 2e-3)])
def test_models_match_float64_reference(tmp_path, dtype, rtol):
    ll = layer_list(SMALL)
    manifest = onnxgen.generate(ll, tmp_path, tokens=[1, 5], dtypes=[dtype], opset=14)
    assert len(manifest["models"]) == 4  # 2 unique shapes x 2 token counts
    assert len(manifest["layers"]) == 6
    rng = np.random.default_rng(1)
    for entry in manifest["models"]:
        path = tmp_path / entry["file"]
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [14]
        assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [entry["m"], entry["k"]]
        a = rng.standard_normal((entry["m"], entry["k"])).astype(onnxgen.NP_DTYPES[dtype])
        b = onnxgen.weight_matrix(entry["k"], entry["n"], dtype)
        ref = a.astype(np.float64) @ b.astype(np.float64)
        out = _run(path, a)
        assert out.shape == (entry["m"], entry["n"]) and out.dtype == onnxgen.NP_DTYPES[dtype]
        err = np.abs(out.astype(np.float64) - ref).max() / np.abs(ref).max()
        assert err < rtol, err


def test_weights_are_seeded_by_shape():
    a, b = onnxgen.weight_matrix(32, 48), onnxgen.weight_matrix(32, 48)
    assert np.array_equal(a, b)
    assert not np.array_equal(onnxgen.weight_matrix(48, 32).T, a)
    assert onnxgen.weight_matrix(32, 48, "fp16").dtype == np.float16


def test_manifest_maps_every_layer_and_reuses_files(tmp_path):
    ll = layer_list(SMALL)
    first = onnxgen.generate(ll, tmp_path, [1], ["fp32"])
    assert first["reused"] == 0
    files = {e["file"] for e in first["models"]}
    assert {lay["file"] for lay in first["layers"]} == files
    assert all((tmp_path / f).is_file() for f in files)
    stamp = {f: (tmp_path / f).stat().st_mtime_ns for f in files}
    second = onnxgen.generate(ll, tmp_path, [1], ["fp32"])
    assert second["reused"] == len(files)
    assert {f: (tmp_path / f).stat().st_mtime_ns for f in files} == stamp
    # a damaged file is rewritten, not reused
    victim = sorted(files)[0]
    (tmp_path / victim).write_bytes(b"garbage")
    third = onnxgen.generate(ll, tmp_path, [1], ["fp32"])
    assert third["reused"] == len(files) - 1
    onnx.checker.check_model(onnx.load(str(tmp_path / victim)))
    assert json.loads((tmp_path / "manifest.json").read_text())["models"] == third["models"]


def test_external_data_for_large_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(onnxgen, "EXTERNAL_DATA_THRESHOLD", 1000)
    ll = layer_list(SMALL)
    manifest = onnxgen.generate(ll, tmp_path, [2], ["fp32"])
    for entry in manifest["models"]:
        assert entry["external_data"] and (tmp_path / entry["external_data"]).stat().st_size >= entry["k"] * entry["n"] * 4
        a = np.ones((2, entry["k"]), np.float32)
        np.testing.assert_allclose(_run(tmp_path / entry["file"], a), a @ onnxgen.weight_matrix(entry["k"], entry["n"]),
                                   rtol=1e-5, atol=1e-5)


def test_refuses_when_disk_would_not_fit(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 100, 100))
    with pytest.raises(InputError, match="GB of disk"):
        onnxgen.generate(layer_list(SMALL), tmp_path / "out", [1], ["fp32"])
    assert not list((tmp_path / "out").glob("*.onnx"))


def test_refuses_when_memory_would_not_fit(tmp_path, monkeypatch):
    import psutil

    class VM:
        available = 1000

    monkeypatch.setattr(psutil, "virtual_memory", lambda: VM)
    with pytest.raises(InputError, match="GB of memory"):
        onnxgen.generate(layer_list(SMALL), tmp_path, [1], ["fp32"])
    assert not list(tmp_path.glob("*.onnx"))


@pytest.mark.parametrize("opset", [3, 999])
def test_bad_opset(tmp_path, opset):
    with pytest.raises(InputError, match="--opset"):
        onnxgen.generate(layer_list(SMALL), tmp_path, [1], ["fp32"], opset=opset)


def test_shipped_profile_plan_is_unique_shapes():
    ll = layer_list(load_profile(PROFILES / "rwkv-1b5.yaml"))
    specs = onnxgen.plan(ll, [1, 64], ["fp32", "fp16"])
    # a chunk of 64 runs the head for its last token only: no M=64 head model
    assert len(specs) == len(set(specs)) == 2 * (len(ll.unique_shapes()) + len(ll.unique_shapes(64)))
    assert len(ll.unique_shapes()) == 10 and len(ll.unique_shapes(64)) == 9
    assert onnxgen.ModelSpec(64, 2048, 65536, "fp32") not in specs
