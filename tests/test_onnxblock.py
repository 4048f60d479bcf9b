"""Whole-block ONNX graphs: the reference's decode step, op for op, and their onnxruntime timing plumbing."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from rwkvprobe.backends.ort_backend import session_options
from rwkvprobe.measure import onnxblock
from rwkvprobe.model.profile import parse_profile
from rwkvprobe.report import sections
from rwkvprobe.verdict import blocks

ort = pytest.importorskip("onnxruntime")

TINY = {"name": "t", "source": "t", "version": 7, "n_layer": 2, "n_embd": 128, "vocab_size": 256, "head_size": 64,
        "lora": {"decay": 16, "aaa": 16, "mv": 8, "gate": 32}}
TINY4 = {"name": "t4", "source": "t", "version": 4, "n_layer": 2, "n_embd": 128, "vocab_size": 256}
TINY_YAML = """name: tiny7
source: test
version: 7
n_layer: 2
n_embd: 128
vocab_size: 256
head_size: 64
lora: {decay: 16, aaa: 16, mv: 8, gate: 32}
"""

#: the reference's forward step (BlinkDL rwkv 0.8.32, RWKV_V7_ON) on the checkpoint and state the graphs use
REFERENCE = r"""
import json, os, sys
data = json.loads(sys.argv[1])
os.environ["RWKV_V7_ON"] = "1" if data["version"] == 7 else "0"
import numpy as np, torch
from rwkvprobe.measure import forward_worker as fw
from rwkvprobe.measure import onnxblock as ob
from rwkvprobe.model.profile import parse_profile
p = parse_profile(data)
m = fw.load_reference({k: torch.from_numpy(v) for k, v in ob.checkpoint_weights(p, 0).items()}, p.version, "fp32")
emb = (m.z if p.version == 7 else m.w)["emb.weight"]
token = 5
feeds = ob.graph_inputs(p, "model", "fp32", 1)
parts = ob.state_parts(p)
state = []
for i in range(p.n_layer):
    for part in parts:
        t = feeds[f"state{i}_{part}"]
        state.append(torch.from_numpy((t if part == "wkv" else t[0]).copy()))
with torch.no_grad():
    logits, new = m.forward([token], state)
res = {"x": emb[token].numpy()[None, :], "logits": logits.numpy()[None, :]}
for i in range(p.n_layer):
    for j, part in enumerate(parts):
        t = new[len(parts) * i + j].numpy()
        res[f"new_state{i}_{part}"] = t if part == "wkv" else t[None, :]
np.savez(sys.argv[2], **res)
"""


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), sess_options=session_options(), providers=["CPUExecutionProvider"])


def _run(profile, kind, feeds, dtype="fp32"):
    s = _session(onnxblock.build_graph(profile, kind, dtype))
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


@pytest.fixture(scope="module", params=[7, 4], ids=["rwkv7", "rwkv4"])
def reference(request, tmp_path_factory):
    pytest.importorskip("rwkv")
    pytest.importorskip("torch")
    data = TINY if request.param == 7 else TINY4
    out = tmp_path_factory.mktemp("ref") / "ref.npz"
    proc = subprocess.run([sys.executable, "-c", REFERENCE, json.dumps(data), str(out)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return parse_profile(data), dict(np.load(out))


def _close(got, ref):
    """fp32 tolerance relative to the largest value of the reference tensor."""
    assert got.shape == ref.shape
    err = np.max(np.abs(got.astype(np.float64) - ref)) / np.max(np.abs(ref))
    assert err < 1e-5, err


def test_full_model_graph_matches_the_reference_forward_step(reference):
    p, ref = reference
    feeds = onnxblock.graph_inputs(p, "model", "fp32", 1)
    feeds["x"] = ref["x"]
    out = _run(p, "model", feeds)
    parts = onnxblock.state_parts(p)
    assert set(out) == {"logits"} | {f"new_state{i}_{s}" for i in range(2) for s in parts}
    for name, r in ref.items():
        if name != "x":
            _close(out[name], r)
    # the state really changed, so matching it is not trivial
    moved = "wkv" if p.version == 7 else "aa"
    assert np.max(np.abs(ref[f"new_state1_{moved}"] - feeds[f"state1_{moved}"])) > 0.1


def test_block_graphs_chained_match_the_reference(reference):
    """block0 (layer 0) -> block (layer 1; RWKV-7 with v_first) -> head is the 2-layer reference's decode step."""
    p, ref = reference
    st = onnxblock.graph_inputs(p, "model", "fp32", 1)
    b0 = _run(p, "block0", {"x": ref["x"], **{k: v for k, v in st.items() if k.startswith("state0_")}})
    extra = {"v_first": b0["v_first"]} if p.version == 7 else {}
    b1 = _run(p, "block", {"x": b0["x_out"], **extra, **{k: v for k, v in st.items() if k.startswith("state1_")}})
    head = _run(p, "head", {"x": b1["x_out"]})
    _close(head["logits"], ref["logits"])
    for i, out in ((0, b0), (1, b1)):
        for s in onnxblock.state_parts(p):
            _close(out[f"new_state{i}_{s}"], ref[f"new_state{i}_{s}"])


@pytest.mark.parametrize("data", [TINY, TINY4], ids=["rwkv7", "rwkv4"])
def test_fp16_graph_follows_the_fp32_graph(data):
    p = parse_profile(data)
    f32 = _run(p, "model", onnxblock.graph_inputs(p, "model", "fp32"))
    f16 = _run(p, "model", onnxblock.graph_inputs(p, "model", "fp16"), "fp16")
    for name, ref in f32.items():
        assert f16[name].dtype == np.float16
        err = np.max(np.abs(f16[name].astype(np.float64) - ref)) / np.max(np.abs(ref))
        assert err < 2e-2, (name, err)


def test_block_graphs_use_each_layers_own_weights_only():
    p = parse_profile({**TINY, "n_layer": 3})
    names = {i.name for i in onnxblock.build_graph(p, "block", "fp32").graph.initializer}
    assert "blocks.1.att.key.weight" in names and "blocks.1.att.v1" in names
    assert not any(n.startswith(("blocks.0.", "blocks.2.", "emb", "head")) for n in names)
    b0 = {i.name for i in onnxblock.build_graph(p, "block0", "fp32").graph.initializer}
    assert "blocks.0.att.v1" not in b0  # the reference skips block 0's value-residual matrices
    assert onnxblock.weight_bytes(p, "model", "fp16") * 2 == onnxblock.weight_bytes(p, "model", "fp32")


def test_onnx_block_cli_writes_and_reuses(cli, write_yaml, tmp_path):
    prof = write_yaml(TINY_YAML)
    out = tmp_path / "blk"
    code, stdout, err = cli("onnx", prof, "--out", out, "--block", "--dtype", "fp32,fp16")
    assert code == 0, err
    assert "8 block graphs" in stdout
    manifest = json.loads((out / "blocks.json").read_text())
    assert sorted((g["kind"], g["dtype"]) for g in manifest["graphs"]) == sorted(
        (k, d) for k in onnxblock.KINDS for d in ("fp32", "fp16"))
    assert manifest["graphs"][0]["inputs"] == ["x", "state0_att_x", "state0_wkv", "state0_ffn_x"]
    mtime = (out / "rwkv7_model_fp32.onnx").stat().st_mtime_ns
    code, _, err = cli("onnx", prof, "--out", out, "--block")
    assert code == 0 and "reused rwkv7_model_fp32.onnx" in err
    assert (out / "rwkv7_model_fp32.onnx").stat().st_mtime_ns == mtime
    # a request for fewer graphs keeps the others listed
    assert len(json.loads((out / "blocks.json").read_text())["graphs"]) == 8


@pytest.mark.parametrize("args,message", [
    (["profiles/rwkv6-1b5.yaml", "--block"],
     "rwkvprobe: error: --block: whole-block graphs are written for RWKV-4/7; profiles/rwkv6-1b5.yaml is RWKV-6\n"),
    (["profiles/example-layers.yaml", "--block"],
     "rwkvprobe: error: --block: whole-block graphs are written for RWKV-4/7; profiles/example-layers.yaml is a layers: profile\n"),
    (["profiles/rwkv-0b1.yaml", "--block", "--tokens", "1,64"],
     "rwkvprobe: error: --block: the block graphs are one decode step (--tokens 1)\n"),
    (["profiles/rwkv-0b1.yaml", "--block", "--opset", "13"],
     "rwkvprobe: error: --block: the block graphs use opset 14; leave --opset out\n"),
])
def test_onnx_block_cli_refuses(cli, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(ROOT)
    code, _, err = cli("onnx", *args, "--out", tmp_path / "x")
    assert code == 2 and err == message
    assert not (tmp_path / "x" / "blocks.json").exists()


def test_measure_graphs_times_every_graph_and_chains_them(tmp_path):
    from rwkvprobe.measure.timing import TimingPolicy

    p = parse_profile(TINY)
    r = onnxblock.measure_graphs(p, tmp_path, "fp32", 1, TimingPolicy(budget_seconds=0.05, min_samples=3), 1 << 20)
    g = r["graphs"]
    assert set(g) == set(onnxblock.KINDS)
    for kind in onnxblock.KINDS:
        assert 0 < g[kind]["seconds"] < 1 and g[kind]["timing"]["n"] >= 3
        assert g[kind]["rotation"]["copies"] >= 1 and g[kind]["rotation"]["cold"]
    assert r["chained_seconds_per_token"] == pytest.approx(g["block0"]["seconds"] + g["block"]["seconds"] + g["head"]["seconds"])


def test_block_comparison_sums_the_series_matmuls_and_non_matmul_share():
    """Plumbing: the 'sum' column is the series' per-call times (v1/v2 not in block 0) plus non-matmul / n_layer."""
    rows = [{"layer": n, "kind": k, "m": 1, "count": c, "measured": True, "seconds": s}
            for n, k, c, s in (("att.key", "att", 2, 1e-3), ("att.v1", "lora", 1, 2e-4), ("ffn.key", "ffn", 2, 3e-3),
                               ("head", "head", 1, 5e-3))]
    verdict = {"series": [{"backend": "onnxruntime", "dtype": "fp32", "rows": rows,
                           "model": {"decode": {"non_matmul_seconds": 4e-4, "non_matmul_measured": False,
                                                "seconds_per_token": 0.0146, "fully_measured": True}}}]}
    results = {"block_graphs": [{"backend": "onnxruntime", "dtype": "fp32", "n_layer": 2, "chained_seconds_per_token": 0.0073,
                                 "graphs": {"block0": {"seconds": 2e-3}, "block": {"seconds": 3e-3},
                                            "head": {"seconds": 4e-3}, "model": {"skipped": "too big"}}}]}
    got = {r["kind"]: r for r in blocks.block_comparison(results, verdict)}
    assert got["block0"]["sum_seconds"] == pytest.approx(1e-3 + 3e-3 + 2e-4)
    assert got["block"]["sum_seconds"] == pytest.approx(1e-3 + 2e-4 + 3e-3 + 2e-4)
    assert got["block"]["ratio"] == pytest.approx(3e-3 / 4.4e-3)
    assert got["head"]["sum_seconds"] == pytest.approx(5e-3) and not got["head"]["sum_partly_modelled"]
    assert got["model"]["graph_seconds"] is None and got["model"]["status"] == "too big"
    assert got["block"]["sum_partly_modelled"]  # the non-matmul share is modelled for onnxruntime
    md = "\n".join(sections.block_graph_section(results, verdict))
    assert "| onnxruntime fp32 | block | 3.000 | 4.400* | 0.68 |" in md
    assert "| onnxruntime fp32 | model | too big | 14.600* | - |" in md


@pytest.mark.slow
def test_analyze_reports_the_block_measured_as_one_graph(cli, write_yaml, tmp_path):
    prof = write_yaml(TINY_YAML)
    code, _, err = cli("analyze", prof, "--quick", "--backends", "onnxruntime", "--dtypes", "fp32", "--out", tmp_path / "a")
    assert code == 0, err
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    (series,) = results["block_graphs"]
    assert series["backend"] == "onnxruntime" and series["dtype"] == "fp32" and series["n_layer"] == 2
    assert set(series["graphs"]) == {"block"}  # --quick times one later block only
    assert series["graphs"]["block"]["seconds"] > 0
    report = (tmp_path / "a" / "report.md").read_text()
    assert "## Block measured as one graph" in report
    assert "| onnxruntime fp32 | block |" in report and "chained" not in report


def test_block_comparison_marks_only_the_graphs_with_a_modelled_part():
    rows = [{"layer": "att.key", "kind": "att", "m": 1, "count": 2, "measured": False, "seconds": None, "model_seconds": 1e-3},
            {"layer": "head", "kind": "head", "m": 1, "count": 1, "measured": True, "seconds": 5e-3}]
    verdict = {"series": [{"backend": "onnxruntime", "dtype": "fp32", "rows": rows,
                           "model": {"decode": {"non_matmul_seconds": 0.0, "non_matmul_measured": True,
                                                "seconds_per_token": 7e-3, "fully_measured": False}}}]}
    results = {"block_graphs": [{"backend": "onnxruntime", "dtype": "fp32", "n_layer": 2,
                                 "graphs": {k: {"seconds": 1e-3} for k in onnxblock.KINDS}}]}
    got = {r["kind"]: r for r in blocks.block_comparison(results, verdict)}
    assert got["block"]["sum_partly_modelled"] and got["model"]["sum_partly_modelled"]
    assert not got["head"]["sum_partly_modelled"]
    assert got["block"]["sum_seconds"] == pytest.approx(1e-3)  # the unmeasured layer's modelled time


def test_graphs_too_big_to_time_are_not_even_written(tmp_path, monkeypatch):
    from rwkvprobe.measure.timing import TimingPolicy

    p = parse_profile(TINY)
    monkeypatch.setattr(onnxblock, "MAX_TIMED_BYTES", onnxblock.weight_bytes(p, "block", "fp32"))
    r = onnxblock.measure_graphs(p, tmp_path, "fp32", 1, TimingPolicy(budget_seconds=0.02, min_samples=3), 1 << 20)
    assert r["graphs"]["model"]["skipped"].startswith("weights ") and "not timed" in r["graphs"]["model"]["skipped"]
    assert r["graphs"]["block"]["seconds"] > 0
    assert not (tmp_path / "rwkv7_model_fp32.onnx").exists()
