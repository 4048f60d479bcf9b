"""The command line: output, exit codes, and one-line errors for bad input."""

import re

import pytest
from conftest import PROFILES, run_module

from rwkvprobe import __version__
from rwkvprobe.backends.ort_backend import session_options
from rwkvprobe.model.profile import layer_list, load_profile


def test_version(cli):
    code, out, _ = cli("--version")
    assert code == 0 and out.strip() == f"rwkvprobe {__version__}"


def test_python_dash_m_entry_point():
    proc = run_module("--version")
    assert proc.returncode == 0 and __version__ in proc.stdout


def test_profile_list_shows_every_shipped_profile(cli):
    code, out, _ = cli("profile", "list")
    assert code == 0
    for stem in ("rwkv-1b5", "rwkv4-169m", "rwkv6-3b", "example-layers"):
        assert f"{stem}.yaml" in out
    assert "1,527,668,736" in out


def test_profile_show_total_matches_layer_list(cli):
    code, out, _ = cli("profile", "show", PROFILES / "rwkv-1b5.yaml")
    assert code == 0
    ll = layer_list(load_profile(PROFILES / "rwkv-1b5.yaml"))
    assert f"{ll.total_params:,} parameters" in out
    for name in ("att.receptance", "att.g2", "ffn.value", "head", "emb (row lookup)"):
        assert name in out
    assert "15 matmuls, 10 unique shapes" in out


BAD_CASES = [
    ("n_embd: 0", "key 'n_embd': expected a positive integer, got 0"),
    ("version: 9", "key 'version': expected an RWKV version 4, 5, 6 or 7, got 9"),
    ("colour: blue", "key 'colour'"),
    ("n_layer: 1.5", "key 'n_layer': expected a positive integer, got 1.5"),
]


@pytest.mark.parametrize("change, words", BAD_CASES)
def test_bad_profile_exit_2_one_line_subprocess(tmp_path, change, words):
    text = (PROFILES / "rwkv-0b1.yaml").read_text()
    key = change.split(":")[0]
    text = "\n".join(line for line in text.splitlines() if not line.startswith(key + ":")) + "\n" + change + "\n"
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    for args in (("profile", "show", path), ("onnx", path, "--out", tmp_path / "m")):
        proc = run_module(*args)
        assert proc.returncode == 2
        assert proc.stdout == ""
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0] == f"rwkvprobe: error: {path}: {words}" or words in lines[0]
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("args, words", [
    (("profile", "show", "/nonexistent/x.yaml"), "no such profile file"),
    (("onnx", PROFILES / "rwkv-0b1.yaml", "--out", "/proc/forbidden"), "/proc/forbidden"),
    (("onnx", PROFILES / "rwkv-0b1.yaml", "--out", "OUT", "--tokens", "0"), "--tokens"),
    (("onnx", PROFILES / "rwkv-0b1.yaml", "--out", "OUT", "--tokens", "a,b"), "--tokens"),
    (("onnx", PROFILES / "rwkv-0b1.yaml", "--out", "OUT", "--dtype", "int3"), "--dtype"),
    (("onnx", PROFILES / "rwkv-0b1.yaml", "--out", "OUT", "--opset", "2"), "--opset"),
    (("onnx", PROFILES / "rwkv-0b1.yaml"), "--out"),
    (("frobnicate",), "No such command"),
    (("profile", "show", "--bogus"), "--bogus"),
])
def test_bad_usage_exit_2_one_line(cli, tmp_path, args, words):
    args = [str(a).replace("OUT", str(tmp_path / "m")) for a in args]
    code, out, err = cli(*args)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rwkvprobe: error: ") and words in lines[0]
    assert not (tmp_path / "m").exists() or not list((tmp_path / "m").glob("*.onnx"))


def test_onnx_command_writes_models_and_reuses(cli, tmp_path):
    prof = tmp_path / "p.yaml"
    prof.write_text("name: x\nsource: test\nlayers:\n  - {name: a, k: 32, n: 64, count: 2}\n  - {name: b, k: 64, n: 32, count: 2}\n")
    code, out, err = cli("onnx", prof, "--out", tmp_path / "m", "--tokens", "1,4", "--dtype", "fp32,fp16")
    assert code == 0, err
    assert re.search(r"8 models \(8 written, 0 reused", out)
    code, out, err = cli("onnx", prof, "--out", tmp_path / "m", "--tokens", "1,4", "--dtype", "fp32,fp16")
    assert code == 0 and re.search(r"8 models \(0 written, 8 reused", out)


@pytest.mark.slow
def test_headline_onnx_command_rwkv_1b5(tmp_path):
    """The foundation's 'done when': rwkv-1b5 models, opset 14, checked and run in onnxruntime."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from rwkvprobe.backends.onnxgen import weight_matrix

    proc = run_module("onnx", PROFILES / "rwkv-1b5.yaml", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    models = sorted(tmp_path.glob("*.onnx"))
    assert len(models) == 10
    for path in models[:3] + [tmp_path / "matmul_m1_k2048_n65536_fp32.onnx"]:
        model = onnx.load(str(path), load_external_data=False)
        assert model.opset_import[0].version == 14
        k = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
        n = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
        a = np.random.default_rng(0).standard_normal((1, k)).astype(np.float32)
        out = ort.InferenceSession(str(path), sess_options=session_options(), providers=["CPUExecutionProvider"]).run(None, {"A": a})[0]
        ref = a.astype(np.float64) @ weight_matrix(k, n).astype(np.float64)
        assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-5


def test_an_internal_error_with_a_multi_line_message_is_one_line_naming_what_failed(cli, monkeypatch):
    """A failure the CLI did not foresee (here TorchScript's kind: its own traceback, then the error) ends in
    one line on stderr, exit 1, with the message's last line, what failed."""
    from rwkvprobe.cli import profile as profile_cli

    def boom(*args, **kwargs):
        raise RuntimeError("The following operation failed in the TorchScript interpreter.\nTraceback of "
                           "TorchScript (most recent call last):\n  File x, line 1\n\nRuntimeError: mixed dtype (CPU)")

    monkeypatch.delenv("RWKVPROBE_DEBUG", raising=False)
    monkeypatch.setattr(profile_cli, "load_profile", boom)
    code, out, err = cli("profile", "show", PROFILES / "rwkv-1b5.yaml")
    assert code == 1
    assert err.strip().splitlines() == ["rwkvprobe: error: internal error: RuntimeError: RuntimeError: mixed dtype "
                                        "(CPU) (set RWKVPROBE_DEBUG=1 for the traceback)"]
