"""rwkvprobe validate: the real forward pass (reference package), its per-shape matmul accounting, the
comparison arithmetic, the report section, and one-line errors for what it cannot do."""

import json
import os
import subprocess
import sys
from collections import Counter

import pytest
from conftest import PROFILES, ROOT

from rwkvprobe.model.profile import layer_list, load_profile, parse_profile, profile_json

torch = pytest.importorskip("torch") if os.environ.get("RWKVPROBE_REQUIRE_REFERENCE") != "1" else __import__("torch")
if os.environ.get("RWKVPROBE_REQUIRE_REFERENCE") != "1":
    pytest.importorskip("rwkv")

TINY = {
    4: {"version": 4, "n_layer": 2, "n_embd": 128, "vocab_size": 512},
    5: {"version": 5, "n_layer": 2, "n_embd": 128, "vocab_size": 512, "head_size": 64},
    6: {"version": 6, "n_layer": 2, "n_embd": 128, "vocab_size": 512, "head_size": 64,
        "lora": {"mix": 32, "decay": 64}},
    7: {"version": 7, "n_layer": 2, "n_embd": 128, "vocab_size": 512, "head_size": 64,
        "lora": {"decay": 16, "aaa": 16, "mv": 8, "gate": 32}},
}


def tiny(version):
    return layer_list(parse_profile({"name": f"tiny v{version}", "source": "test", **TINY[version]}))


def tiny_yaml(tmp_path, version):
    import yaml

    path = tmp_path / f"tiny{version}.yaml"
    path.write_text(yaml.safe_dump({"name": f"tiny v{version}", "source": "test", **TINY[version]}))
    return path


# ------------------------------------------------------------------------------------------------
# The real forward pass


@pytest.mark.slow
@pytest.mark.parametrize("version", [4, 5, 6, 7])
def test_forward_pass_runs_every_weight_matmul_the_layer_list_counts(version):
    """The profiler, inside the reference's real decode, sees each layer shape exactly as often per token as
    our layer list says (the per-shape split of validate rests on this)."""
    from rwkvprobe.measure.validate import run_forward

    ll = tiny(version)
    real = run_forward(ll, "fp32", threads=1, tokens=5, chunk=4, cpus=None)
    assert len(real["decode"]["samples"]) == 5 and real["decode"]["median"] > 0
    assert real["logits_finite"]
    from rwkvprobe.measure.forward_worker import PREFILL_MAX_ROUNDS

    # a chunk of 4 tokens takes milliseconds: as many rounds as PREFILL_SECONDS allows, PREFILL_MAX_ROUNDS at most
    assert real["prefill"]["chunk"] == 4 and len(real["prefill"]["samples"]) == PREFILL_MAX_ROUNDS
    expected = Counter()
    for layer in ll.layers:
        expected[f"{layer.k}x{layer.n}"] += layer.count
    seen = {f"{x['k']}x{x['n']}": x["calls_per_token"] for x in real["profiled"]["by_shape"]}
    assert seen == dict(expected)
    # the chunk runs the same weight matmuls once each, the head too (for its last token only: Layer.chunk_rows)
    assert {f"{x['k']}x{x['n']}": x["calls_per_chunk"] for x in real["prefill"]["by_shape"]} == dict(expected)
    assert 0 < real["prefill"]["matmul_share"] < 1
    prof = real["profiled"]
    assert 0 < prof["weight_matmul_seconds_per_token"] < real["decode"]["median"] * 3
    # the machine's speed: before the first of every CANARY_EVERY timed tokens, and before each profiled round
    from rwkvprobe.measure.forward_worker import CANARY_EVERY

    assert len(real["canary_seconds"]) == -(-5 // CANARY_EVERY) + len(prof["rounds"])
    assert all(0 < x < 0.5 for x in real["canary_seconds"])
    assert [r["canary_seconds"] for r in prof["rounds"]] == real["canary_seconds"][-len(prof["rounds"]):]


PATCHED_VS_FILE = r"""
import json, os, sys
version = int(sys.argv[1])
os.environ["RWKV_V7_ON"] = "1" if version == 7 else "0"
import torch
from rwkvprobe.measure import forward_worker as fw
from rwkvprobe.model.profile import parse_profile, state_dict_shapes
profile = parse_profile(json.loads(sys.argv[2]))
sd = fw.random_state_dict(state_dict_shapes(profile), 3)
path = os.path.join(sys.argv[3], "model.pth")
torch.save({k: v.clone() for k, v in sd.items()}, path)
import rwkv.model as reference
kw = {} if version == 7 else {"verbose": False}
from_file = reference.RWKV(model=path[:-4], strategy="cpu fp32", **kw)
patched = fw.load_reference(sd, version, "fp32")
with torch.no_grad():
    a, _ = from_file.forward([1, 2, 3], None)
    b, _ = patched.forward([1, 2, 3], None)
print(json.dumps({"max_abs": float((a - b).abs().max()), "finite": bool(torch.isfinite(a).all()), "std": float(a.std())}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("version", [4, 7])
def test_in_memory_weights_give_the_reference_its_usual_model(version, tmp_path):
    """validate hands the reference its state dict in memory: the logits equal those of the same weights
    loaded from a .pth file the package's usual way."""
    data = {"name": "t", "source": "test", **TINY[version]}
    proc = subprocess.run([sys.executable, "-c", PATCHED_VS_FILE, str(version), json.dumps(data), str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["finite"] and r["std"] > 0
    assert r["max_abs"] == 0.0


def test_random_weights_are_seeded_and_scaled_by_fan_in():
    from rwkvprobe.measure.forward_worker import random_state_dict
    from rwkvprobe.model.profile import state_dict_shapes

    shapes = state_dict_shapes(tiny(7).profile)
    a, b = random_state_dict(shapes, 1), random_state_dict(shapes, 1)
    assert all(torch.equal(a[k], b[k]) for k in shapes)
    assert set(a) == set(shapes) and all(tuple(a[k].shape) == shapes[k] for k in shapes)
    w = a["blocks.0.ffn.value.weight"]  # [C, F]: fan-in F = 512
    assert float(w.abs().max()) <= (3 / 512) ** 0.5 / 2 + 1e-7
    low = a["blocks.0.att.w1"]  # [C, r]: fan-in C = 128
    assert float(low.abs().max()) <= (3 / 128) ** 0.5 / 2 + 1e-7


# ------------------------------------------------------------------------------------------------
# The comparison


def _fake_prediction():
    return {"decode_seconds": 0.040, "matmul_seconds": 0.0398, "non_matmul_seconds": 0.0002,
            "fully_measured": True, "per_call": {"128x512": 1e-4, "512x128": 2e-4}, "prefill": {}}


def _fake_real(median=0.050):
    return {"decode": {"samples": [median] * 4, "median": median, "min": median, "q1": median, "q3": median},
            "logits_finite": True, "reference": "rwkv 0.8.32", "torch": "x", "load_seconds": 1.0,
            "profiled": {"weight_matmul_seconds_per_token": 0.044, "other_matmul_seconds_per_token": 0.001,
                         "by_shape": [{"k": 128, "n": 512, "calls_per_token": 2, "seconds_per_call": 1.25e-4},
                                      {"k": 512, "n": 128, "calls_per_token": 2, "seconds_per_call": 2e-4}]}}


def test_compare_ratio_target_and_gap_split_add_up():
    from rwkvprobe.verdict.validation import compare, summary_lines

    v = compare(_fake_prediction(), _fake_real(0.050), chunk=0)
    assert v["predicted_over_measured"] == pytest.approx(0.8)
    assert not v["within_target"]  # 0.8 is 20% off
    s = v["split"]
    gap = 0.050 - 0.040
    assert (s["matmul_forward_seconds"] - s["matmul_predicted_seconds"]) + \
           (s["rest_forward_seconds"] - s["rest_predicted_seconds"]) == pytest.approx(gap)
    assert {x["shape"]: x["ratio"] for x in v["by_shape"]} == {"128x512": pytest.approx(0.8), "512x128": 1.0}
    v.update(backend="torch", dtype="fp32", threads=2)
    lines = summary_lines(v, "tiny")
    assert "predicted 40.0 ms/token, measured 50.0 ms/token" in lines[0]
    assert "predicted/measured 0.80, OUTSIDE the 15% target" in lines[0]
    assert "weight matmuls +4.2 ms" in lines[1] and "everything else +5.8 ms" in lines[1]
    assert compare(_fake_prediction(), _fake_real(0.042), chunk=0)["within_target"]
    assert not any("Warning" in x for x in lines)
    noisy = _fake_real(0.050)
    noisy["decode"].update(q1=0.040, q3=0.060)
    v = compare(_fake_prediction(), noisy, chunk=0)
    v.update(backend="torch", dtype="fp32", threads=2)
    assert any(x.startswith("Warning: the decoded tokens' times spread 40%") for x in summary_lines(v, "tiny"))


def test_compare_takes_the_rounds_tokens_and_keeps_the_back_to_back_ones_beside_them():
    """With the profiled rounds' unprofiled tokens (forward_worker.profile_decode's plain), the ratio, the target and
    the split are taken against their median, timed in the phases of the split's share; the tokens timed back to back
    before the rounds are kept and named beside it. Without them (an older worker), the back-to-back tokens count."""
    from rwkvprobe.verdict.validation import compare, summary_lines

    real = _fake_real(0.060)  # back to back: 60 ms, outside 15% of the 40 ms predicted
    real["profiled"]["matmul_share"] = 0.8
    real["profiled"]["plain"] = {"samples": [0.044, 0.045, 0.046] * 2, "median": 0.045, "min": 0.044, "q1": 0.044,
                                 "q3": 0.046}
    v = compare(_fake_prediction(), real, chunk=0)
    assert v["measured"]["decode"]["median"] == 0.045 and v["measured"]["decode"]["timed"] == "rounds"
    assert v["measured"]["decode_back_to_back"]["median"] == 0.060
    assert v["predicted_over_measured"] == pytest.approx(0.040 / 0.045) and v["within_target"]
    s = v["split"]
    assert s["matmul_forward_seconds"] == pytest.approx(0.8 * 0.045)
    assert s["matmul_forward_seconds"] + s["rest_forward_seconds"] == pytest.approx(0.045)
    v.update(backend="torch", dtype="fp32", threads=2)
    line = summary_lines(v, "tiny")[0]
    assert "measured 45.0 ms/token (median of 6 tokens, the unprofiled ones of the rounds that give the split below" in line
    assert "IQR 44.0-46.0; 60.0 ms/token back to back, 4 tokens before the rounds)" in line
    assert "timed between the prediction's rounds" not in line  # no interleaved prediction here
    v["split"]["matmul_separate_seconds"] = 0.039
    assert "timed between the prediction's rounds" in summary_lines(v, "tiny")[0]
    del real["profiled"]["plain"]
    old = compare(_fake_prediction(), real, chunk=0)
    assert old["measured"]["decode"]["median"] == 0.060 and old["measured"]["decode"]["timed"] == "back to back"
    assert "decode_back_to_back" not in old["measured"] and not old["within_target"]


def test_a_real_pass_timed_in_another_bandwidth_phase_is_named_first():
    """The DRAM bandwidth around the real pass 40% below the analyze run's: the summary notes that the two were
    timed in different phases of the machine; 10% apart, or no probes (an older validation), it does not."""
    from rwkvprobe.verdict.validation import PHASE_APART, compare, phase_apart, summary_lines

    v = compare(_fake_prediction(), _fake_real(0.050), chunk=0)
    v.update(backend="torch", dtype="fp32", threads=2)
    assert phase_apart(v) is None and not any("DRAM bandwidth" in x for x in summary_lines(v, "tiny"))
    v["bandwidth"] = {"real_pass_gbps": [35.0, 37.0], "analyze_gbps": 60.0}
    assert phase_apart(v) == pytest.approx(36.0 / 60.0 - 1) and abs(phase_apart(v)) > PHASE_APART
    (w,) = [x for x in summary_lines(v, "tiny") if x.startswith("Note: the machine's DRAM bandwidth")]
    assert "35.0-37.0 GB/s around the real pass against 60.0 GB/s" in w and "-40%" in w
    v["bandwidth"] = {"real_pass_gbps": [54.0], "analyze_gbps": 60.0}
    assert not any("DRAM bandwidth" in x for x in summary_lines(v, "tiny"))


def test_sides_timed_while_the_machine_ran_at_two_speeds_are_named():
    """The one-thread canary beside the real pass 1.5x its median beside the prediction's rounds: the comparison
    records both medians and the ratio, and the summary notes it; 1.1x apart, or a side without canaries (an older
    file), it does not."""
    from rwkvprobe.verdict.validation import MACHINE_APART, compare, machine_speeds, summary_lines

    pred, real = _fake_prediction(), _fake_real(0.050)
    pred["canary_seconds"] = [1.0e-4, 1.2e-4, 1.1e-4]
    real["canary_seconds"] = [1.6e-4, 1.7e-4, 1.4e-4, 1.65e-4]
    v = compare(pred, real, chunk=0)
    v.update(backend="torch", dtype="fp32", threads=2)
    m = v["machine"]
    assert m["prediction_seconds"] == pytest.approx(1.1e-4) and m["real_pass_seconds"] == pytest.approx(1.625e-4)
    assert m["ratio"] == pytest.approx(1.625 / 1.1) and m["ratio"] - 1 > MACHINE_APART
    (w,) = [x for x in summary_lines(v, "tiny") if x.startswith("Note: the machine's own speed")]
    assert "162 us during the real pass against 110 us during the prediction's timed rounds (medians), 1.48x" in w
    assert machine_speeds([1e-4], [1.1e-4])["ratio"] == pytest.approx(1.1)
    real["canary_seconds"] = [1.2e-4]
    v = compare(pred, real, chunk=0)
    v.update(backend="torch", dtype="fp32", threads=2)
    assert not any("own speed" in x for x in summary_lines(v, "tiny"))
    assert machine_speeds(None, [1e-4]) is None and machine_speeds([1e-4], []) is None
    assert compare(_fake_prediction(), _fake_real(0.050), chunk=0)["machine"] is None


def test_ggml_check_says_the_real_pass_is_not_a_ggml_engine(cli, tmp_path):
    from rwkvprobe.results import save_results
    from rwkvprobe.verdict.validation import compare, summary_lines

    v = compare(_fake_prediction(), _fake_real(0.050), chunk=0)
    v.update(backend="ggml", dtype="fp16", threads=2)
    assert any("not a ggml engine such as rwkv.cpp" in x for x in summary_lines(v, "tiny"))
    v.update(backend="torch")
    assert not any("ggml" in x for x in summary_lines(v, "tiny"))
    # the ggml prediction comes from the ggml series, never from torch's
    path = tmp_path / "torch.json"
    save_results(path, _results_for(layer_list(load_profile(PROFILES / "rwkv-0b1.yaml"))))
    code, _, err = cli("validate", PROFILES / "rwkv-0b1.yaml", "--results", path, "--backend", "ggml", "--dtype", "fp32")
    assert code == 2 and "has no measured ggml fp32 decode" in err and "--backends ggml" in err


def test_record_replaces_the_same_backend_and_dtype():
    from rwkvprobe.measure.validate import record

    results = {}
    record(results, {"backend": "torch", "dtype": "fp32", "n": 1})
    record(results, {"backend": "torch", "dtype": "bf16", "n": 2})
    record(results, {"backend": "torch", "dtype": "fp32", "n": 3})
    assert [(x["dtype"], x["n"]) for x in results["validation"]] == [("bf16", 2), ("fp32", 3)]


# ------------------------------------------------------------------------------------------------
# One-line errors (exit 2)


@pytest.mark.parametrize("args, message", [
    (["--backend", "numpy"], "validate checks the torch or the ggml prediction"),
    (["--backend", "ggml", "--dtype", "q4_0"], "no ggml RWKV forward pass exists in rwkvprobe to check a quantized"),
    (["--dtype", "int8"], "--dtype int8: expected one of fp32, bf16, fp16"),
    (["--tokens", "0"], "--tokens 0: expected between 1 and 100000"),
    (["--chunk", "-1"], "--chunk -1: expected a prefill chunk of 0 (none) to 4096 tokens"),
])
def test_bad_options_end_in_one_line(cli, args, message):
    code, out, err = cli("validate", PROFILES / "rwkv-0b1.yaml", *args)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [f"rwkvprobe: error: {err.strip().split('error: ', 1)[1]}"]
    assert message in err


def test_layers_profile_is_refused(cli):
    code, _, err = cli("validate", PROFILES / "example-layers.yaml")
    assert code == 2 and "a 'layers:' profile has no RWKV model to run" in err


def test_missing_reference_names_the_extra(cli, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "rwkv" else real(name, *a))
    code, _, err = cli("validate", PROFILES / "rwkv-0b1.yaml")
    assert code == 2 and "pip install 'rwkvprobe[validate]'" in err and len(err.strip().splitlines()) == 1


def _results_for(ll, series=(("torch", "fp32"),), threads=2):
    """A minimal analyze results dict: measured layer times for the given series (plumbing only)."""
    meas, ceil = [], []
    for backend, dtype in series:
        ceil.append({"backend": backend, "dtype": dtype, "peak_gflops": 100.0, "overhead_seconds": 5e-6})
        for k, n in ll.unique_shapes():
            meas.append({"backend": backend, "dtype": dtype, "m": 1, "k": k, "n": n, "flops": 2 * k * n,
                         "bytes": 4 * k * n, "timing": {"median_seconds": 1e-4, "samples": [1e-4]},
                         "check": {"ok": True}})
    return {"schema": "rwkvprobe-results", "schema_version": 1, "kind": "analyze", "profile": profile_json(ll),
            "settings": {"tokens": [1], "threads": threads}, "ceilings": ceil, "measurements": meas,
            "bandwidth": {"runs": [{"kernels": {"read": {"best_gbps": 20.0}}}]}}


def test_results_of_another_profile_or_backend_are_refused(cli, tmp_path):
    from rwkvprobe.results import save_results

    other = tmp_path / "other.json"
    save_results(other, _results_for(layer_list(load_profile(PROFILES / "rwkv-0b4.yaml"))))
    code, _, err = cli("validate", PROFILES / "rwkv-0b1.yaml", "--results", other)
    assert code == 2 and "whose layers differ" in err

    no_torch = tmp_path / "numpy.json"
    save_results(no_torch, _results_for(layer_list(load_profile(PROFILES / "rwkv-0b1.yaml")), (("numpy", "fp32"),)))
    before = no_torch.read_bytes()
    code, _, err = cli("validate", PROFILES / "rwkv-0b1.yaml", "--results", no_torch)
    assert code == 2 and "has no measured torch fp32 decode" in err
    code, _, err = cli("validate", PROFILES / "rwkv-0b1.yaml", "--results", no_torch, "--dtype", "bf16")
    assert code == 2 and "torch bf16" in err
    assert no_torch.read_bytes() == before  # a refused run leaves the results file alone


def test_rwkv4_prediction_needs_the_reference_weight_layout(cli, tmp_path):
    """The reference keeps RWKV-4/5/6 weights [N, K] on a CPU: their prediction is the torch-linear series."""
    from rwkvprobe.results import save_results

    path = tmp_path / "r.json"
    save_results(path, _results_for(layer_list(load_profile(PROFILES / "rwkv4-169m.yaml"))))  # torch only
    code, _, err = cli("validate", PROFILES / "rwkv4-169m.yaml", "--results", path)
    assert code == 2 and "no measured torch-linear fp32 decode" in err and "--backends torch-linear" in err


def test_threads_must_match_the_results(cli, tmp_path):
    from rwkvprobe.results import save_results

    path = tmp_path / "r.json"
    save_results(path, _results_for(layer_list(load_profile(PROFILES / "rwkv-0b1.yaml")), threads=2))
    code, _, err = cli("validate", PROFILES / "rwkv-0b1.yaml", "--results", path, "--threads", "1")
    assert code == 2 and "measured with 2 threads" in err


# ------------------------------------------------------------------------------------------------
# End to end (small profile): analyze's prediction, the real pass, results.json and report.md


@pytest.mark.slow
def test_validate_end_to_end_writes_the_comparison_into_results_and_report(cli, tmp_path):
    profile = tiny_yaml(tmp_path, 7)
    out = tmp_path / "run"
    code, stdout, err = cli("validate", profile, "--out", out, "--tokens", "8", "--chunk", "8", "--threads", "1")
    assert code == 0, err
    assert "predicted/measured" in stdout and "ms/token" in stdout
    data = json.loads((out / "results.json").read_text())
    (v,) = data["validation"]
    assert (v["backend"], v["dtype"], v["threads"], v["tokens"]) == ("torch", "fp32", 1, 8)
    # the tokens compared with are the profiled rounds' unprofiled ones (PROFILE_TOKENS in each of PROFILE_ROUNDS), in
    # the same phases as the split and the prediction's rounds; the --tokens ones, timed back to back, beside them
    from rwkvprobe.measure.forward_worker import PROFILE_ROUNDS, PROFILE_TOKENS

    assert len(v["measured"]["decode"]["samples"]) == PROFILE_ROUNDS * PROFILE_TOKENS
    assert v["measured"]["decode"]["timed"] == "rounds" and len(v["measured"]["decode_back_to_back"]["samples"]) == 8
    assert f"median of {PROFILE_ROUNDS * PROFILE_TOKENS} tokens, the unprofiled ones of the rounds" in stdout
    assert "back to back, 8 tokens before the rounds" in stdout
    (nm,) = data["nonmatmul"]  # the prediction's non-matmul part is the timed block, not the bytes model
    assert (nm["backend"], nm["dtype"], nm["blocks"]) == ("torch", "fp32", 2)
    # timed for validate's longer budget (the quick run's 0.3 s left six rounds), the token's tail included
    from rwkvprobe.measure import analyze
    from rwkvprobe.measure.validate import NONMATMUL_SECONDS

    assert data["settings"]["nonmatmul_seconds"] == NONMATMUL_SECONDS > analyze.NONMATMUL_SECONDS[False]
    assert nm["method"] == "layer-pass" and nm["seconds_per_token"] == pytest.approx(
        nm["seconds_per_block"] * 2 + nm["tail_seconds"])
    assert v["predicted"]["non_matmul_measured"] and v["split"]["rest_predicted_seconds"] == nm["seconds_per_token"]
    # the machine's speed beside both sides: every layer-pass round, and the real pass's tokens and rounds
    assert all(r["canary_seconds"] > 0 for r in nm["rounds"])
    assert v["predicted"]["canary_seconds"] == [r["canary_seconds"] for r in nm["rounds"]]
    assert v["machine"]["ratio"] == pytest.approx(v["machine"]["real_pass_seconds"] / v["machine"]["prediction_seconds"])
    assert v["predicted_over_measured"] == pytest.approx(v["predicted"]["decode_seconds"] / v["measured"]["decode"]["median"])
    # measuring its own prediction, validate timed the layer pass again between the real pass's profiled rounds (one
    # round each) and predicts with that; what analyze's own layer pass had given is kept beside it
    assert len(nm["rounds"]) == PROFILE_ROUNDS and nm["interleaved"]["with"] == "the real pass's profiled rounds"
    # so its analyze run leaves out the layer pass's second window (layerpass.later_window)
    assert data["settings"]["later_window"] is False and "windows" not in nm["interleaved"]["separate"]
    assert v["split"]["rest_separate_seconds"] == nm["interleaved"]["separate"]["seconds_per_token"] > 0
    assert "timed between the real pass's profiled rounds" in stdout
    # and the chunk's sequential part between the real pass's prefill rounds (CHUNK_ROUNDS_BETWEEN before each), the
    # chunk's prediction made with it; analyze's own figure kept beside it
    from rwkvprobe.measure.forward_worker import CHUNK_ROUNDS_BETWEEN

    seq = nm["seq"]["8"]
    from rwkvprobe.measure.forward_worker import PREFILL_MAX_ROUNDS

    # a chunk of 8 tokens takes milliseconds: the real pass times PREFILL_MAX_ROUNDS rounds within PREFILL_SECONDS
    assert v["prefill"]["measured_rounds"] == PREFILL_MAX_ROUNDS
    assert seq["chunk"] == 8 and seq["method"] == "layer-pass"
    assert len(seq["rounds"]) == CHUNK_ROUNDS_BETWEEN * PREFILL_MAX_ROUNDS
    assert seq["interleaved"]["with"] == "the real pass's prefill rounds" and seq["seconds_per_chunk"] > 0
    assert v["prefill"]["predicted_state_seconds"] == seq["seconds_per_chunk"]
    assert v["prefill"]["state_separate_seconds"] == seq["interleaved"]["separate"]["seconds_per_chunk"] > 0
    assert "timed between the real pass's prefill rounds" in stdout
    # and its weight matmuls: analyze's points timed again between the real pass's rounds (POINT_CALLS_DECODE calls of
    # each before every profiled round, POINT_CALLS_CHUNK of the chunk's before every prefill round), the prediction
    # made with them, analyze's own figure kept beside it
    from rwkvprobe.measure.validate import POINT_CALLS_CHUNK, POINT_CALLS_DECODE

    between = v["points_between"]
    assert ({(x["m"], x["k"], x["n"]) for x in between["decode"] + between["chunk"]}
            == {(p["m"], p["k"], p["n"]) for p in data["measurements"]})
    assert {x["calls"] for x in between["decode"]} == {PROFILE_ROUNDS * POINT_CALLS_DECODE}
    assert {x["calls"] for x in between["chunk"]} == {PREFILL_MAX_ROUNDS * POINT_CALLS_CHUNK}
    timed = {(x["m"], x["k"], x["n"]): x["median_seconds"] for x in between["decode"] + between["chunk"]}
    rows = [r for r in v["predicted"]["rows"] if r["m"] == 1]
    assert v["split"]["matmul_predicted_seconds"] == pytest.approx(sum(timed[1, r["k"], r["n"]] * r["count"] for r in rows))
    assert v["split"]["matmul_separate_seconds"] == pytest.approx(sum(r["seconds"] * r["count"] for r in rows))
    assert v["prefill"]["matmul_separate_seconds"] > 0
    assert "its points timed again between the real pass's profiled rounds" in stdout
    report = (out / "report.md").read_text()
    assert "## Prediction checked" in report and f"{v['predicted_over_measured']:.2f}" in report
    # re-rendering the results elsewhere keeps the section
    code, _, err = cli("report", out / "results.json", "--out", tmp_path / "again")
    assert code == 0, err
    assert "## Prediction checked" in (tmp_path / "again" / "report.md").read_text()

    # an older results file without the timed non-matmul block: validate times it and stores it
    del data["nonmatmul"], data["validation"]
    (out / "results.json").write_text(json.dumps(data))
    code, stdout, err = cli("validate", profile, "--results", out / "results.json", "--tokens", "4", "--chunk", "0")
    assert code == 0, err
    again = json.loads((out / "results.json").read_text())
    assert [x["backend"] for x in again["nonmatmul"]] == ["torch"]
    assert again["validation"][0]["predicted"]["non_matmul_measured"] and "prefill" not in again["validation"][0]
    # a prediction read from --results is checked as it is: its non-matmul part not timed again beside the real pass
    assert "interleaved" not in again["nonmatmul"][0] and "rest_separate_seconds" not in again["validation"][0]["split"]
    assert "points_between" not in again["validation"][0] and "matmul_separate_seconds" not in again["validation"][0]["split"]
    assert not any("interleaved" in x for x in again["nonmatmul"][0].get("seq", {}).values())


def test_prefill_with_the_state_update_is_checked_against_the_target():
    from rwkvprobe.verdict.validation import compare, summary_lines

    pred = _fake_prediction()
    pred["prefill"] = {64: {"chunk": 64, "tokens_per_second": 640.0, "matmul_seconds": 0.08, "state_seconds": 0.02,
                            "with_state": True, "modelled": False}}
    real = _fake_real(0.042)
    real["prefill"] = {"chunk": 64, "median": 0.11, "tokens_per_second": 64 / 0.11, "samples": [0.11]}
    v = compare(pred, real, chunk=64)
    pre = v["prefill"]
    assert pre["predicted_over_measured"] == pytest.approx(0.1 / 0.11) and pre["within_target"]
    v.update(backend="torch", dtype="fp32", threads=2)
    line = next(x for x in summary_lines(v, "tiny") if x.startswith("Prefill"))
    assert "sequential state update 20.0 ms" in line and "within the 15% target" in line and "upper bound" not in line
    real["prefill"] = {"chunk": 64, "median": 0.2, "tokens_per_second": 64 / 0.2, "samples": [0.2]}
    assert not compare(pred, real, chunk=64)["prefill"]["within_target"]
    pred["prefill"][64]["with_state"] = False  # matmuls only: an upper bound, never 'within'
    v = compare(pred, real, chunk=64)
    v.update(backend="torch", dtype="fp32", threads=2)
    assert not v["prefill"]["within_target"]
    assert any("an upper bound" in x for x in summary_lines(v, "tiny"))


def test_split_uses_the_matmul_share_paired_in_time():
    from rwkvprobe.verdict.validation import compare

    real = _fake_real(0.050)
    real["profiled"]["matmul_share"] = 0.8
    v = compare(_fake_prediction(), real, chunk=0)
    assert v["split"]["matmul_forward_seconds"] == pytest.approx(0.040)
    assert v["split"]["rest_forward_seconds"] == pytest.approx(0.010)


def test_a_split_with_nothing_left_outside_the_matmuls_is_flagged():
    from rwkvprobe.verdict.validation import compare, summary_lines

    real = _fake_real(0.050)
    real["profiled"]["matmul_share"] = 1.0  # clipped: profiled matmuls took longer than the plain token
    v = compare(_fake_prediction(), real, chunk=0)
    v.update(backend="torch", dtype="fp32", threads=2)
    assert any(x.startswith("Warning: the profiled weight matmuls took (almost) the whole token")
               for x in summary_lines(v, "tiny"))
    real["profiled"]["matmul_share"] = 0.8
    v = compare(_fake_prediction(), real, chunk=0)
    v.update(backend="torch", dtype="fp32", threads=2)
    assert not any("whole token" in x for x in summary_lines(v, "tiny"))


def test_prefill_rounds_start_after_the_slow_first_chunks():
    """The first chunks of a fresh process run slow (the reference's first seven chunks of 64 tokens took 162-207 ms,
    then 144-157): profile_prefill runs PREFILL_WARMUP untimed chunks first, so no slow chunk is among the timed
    ones (plumbing: a fake model, slow for exactly those chunks)."""
    torch = pytest.importorskip("torch")
    import time

    from rwkvprobe.measure import forward_worker as fw

    calls = []

    class Model:
        def forward(self, ids, state):
            calls.append(len(ids))
            time.sleep(0.03 if len(calls) <= fw.PREFILL_WARMUP else 0.003)
            return None, state

    out = fw.profile_prefill(Model(), [torch.zeros(4)], list(range(8)), [(4, 4, 1)], 1, repeats=3)
    assert len(calls) == fw.PREFILL_WARMUP + 2 * 3 and set(calls) == {8}
    assert max(out["samples"]) < 0.02 and out["chunk"] == 8
    # validate's prediction of the chunk's sequential part: ``between`` before each round (plain chunk, profiled one)
    calls.clear()
    fw.profile_prefill(Model(), [torch.zeros(4)], list(range(8)), [(4, 4, 1)], 1, repeats=3,
                       between=lambda: calls.append("between"))
    assert calls == [8] * fw.PREFILL_WARMUP + ["between", 8, 8] * 3
    # with ``seconds``: more rounds while they have taken less, at most PREFILL_MAX_ROUNDS (3 ms chunks: 6 ms a round)
    calls.clear()
    out = fw.profile_prefill(Model(), [torch.zeros(4)], list(range(8)), [(4, 4, 1)], 1, repeats=3, seconds=0.05)
    assert 3 < len(out["samples"]) < fw.PREFILL_MAX_ROUNDS and len(calls) == fw.PREFILL_WARMUP + 2 * len(out["samples"])
    assert out["by_shape"] == [] or all(d["calls_per_chunk"] == d["calls"] / len(out["samples"]) for d in out["by_shape"])
    calls.clear()
    out = fw.profile_prefill(Model(), [torch.zeros(4)], list(range(8)), [(4, 4, 1)], 1, repeats=3, seconds=60)
    assert len(out["samples"]) == fw.PREFILL_MAX_ROUNDS


def test_a_layer_pass_round_runs_before_each_profiled_round_of_the_real_pass():
    """validate's prediction of the part outside the matmuls and the real pass's split share the machine's phases:
    profile_decode calls ``between`` (one layer-pass round) before each of its rounds, then an untimed token as after
    a profiled round, then its plain and profiled tokens (plumbing: a fake model)."""
    torch = pytest.importorskip("torch")
    from rwkvprobe.measure import forward_worker as fw

    events = []

    class Model:
        def forward(self, ids, state):
            events.append("token")
            return torch.zeros(4), state

    fw.profile_decode(Model(), None, 0, 2, [(4, 4, 1)], 1, rounds=3, between=lambda: events.append("between"))
    one = ["between"] + ["token"] * (fw.AFTER_PROFILER + 2 * 2)
    assert events == one * 3
    events.clear()
    fw.profile_decode(Model(), None, 0, 2, [(4, 4, 1)], 1, rounds=3)  # without: no untimed token before round 1
    assert events == ["token"] * (4 + 2 * (fw.AFTER_PROFILER + 4))


def test_the_rounds_unprofiled_tokens_are_kept_for_the_comparison(monkeypatch):
    """profile_decode keeps every unprofiled token of its rounds, in order, with their median and quartiles (the
    decode time validate compares with), and nothing of the untimed or profiled ones (a fake model whose tokens take
    the times a fake clock gives them: plain tokens 10, 20, 30 ... ms, the others 1 s)."""
    torch = pytest.importorskip("torch")
    from rwkvprobe.measure import forward_worker as fw

    clock = {"t": 0.0, "plain": 0}
    monkeypatch.setattr(fw.time, "perf_counter", lambda: clock["t"])
    monkeypatch.setattr(fw.contention, "torch_canary", lambda: 1e-4)
    profiled = {"on": False}

    class Prof:
        def __enter__(self):
            profiled["on"] = True
            return self

        def __exit__(self, *a):
            profiled["on"] = False

    monkeypatch.setattr(fw, "cpu_profile", Prof)
    monkeypatch.setattr(fw, "weight_matmul_us", lambda *a: (0.0, 0.0))
    untimed = {"left": 0}

    class Model:
        def forward(self, ids, state):
            if profiled["on"] or untimed["left"]:
                untimed["left"] = max(0, untimed["left"] - 1)
                clock["t"] += 1.0
            else:
                clock["plain"] += 1
                clock["t"] += 0.01 * clock["plain"]
            return torch.zeros(4), state

    def between():
        untimed["left"] = fw.AFTER_PROFILER

    out = fw.profile_decode(Model(), None, 0, 2, [(4, 4, 1)], 1, rounds=3, between=between)
    plain = out["plain"]
    assert plain["samples"] == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
    assert plain["median"] == pytest.approx(0.035) and plain["min"] == pytest.approx(0.01)
    assert plain["q1"] < plain["median"] < plain["q3"]
    assert [r["token_seconds"] for r in out["rounds"]] == pytest.approx([0.015, 0.035, 0.055])


def test_the_interleaved_layer_pass_replaces_the_prediction_and_keeps_what_analyze_had():
    from rwkvprobe.measure.validate import take_interleaved

    seq = {"64": {"chunk": 64, "seconds_per_block": 1e-3, "seconds_per_chunk": 2e-3}}
    data = {"nonmatmul": [
        {"backend": "torch", "dtype": "fp32", "method": "layer-pass", "seconds_per_token": 6e-3,
         "seconds_per_block": 5e-4, "tail_seconds": 4e-4, "rounds": [{"non_matmul_seconds": 5e-4}], "seq": seq,
         "what": "a", "windows": [4e-4, 6e-4]},
        {"backend": "numpy", "dtype": "fp32", "seconds_per_token": 1e-3, "what": "bare"}]}
    passes = {"method": "layer-pass", "seconds_per_token": 7e-3, "seconds_per_block": 6e-4, "tail_seconds": 3e-4,
              "rounds": [{"non_matmul_seconds": 6e-4}] * 2, "what": "b"}
    take_interleaved(data, "torch", "fp32", passes)
    entry, other = data["nonmatmul"]
    assert entry["seconds_per_token"] == 7e-3 and len(entry["rounds"]) == 2 and entry["seq"] is seq
    assert entry["what"].startswith("b (validate: its rounds ran between the real pass's profiled rounds")
    # analyze's two windows of rounds (layerpass.later_window) go with its figure: they are not these rounds'
    assert entry["interleaved"]["separate"] == {"seconds_per_token": 6e-3, "seconds_per_block": 5e-4,
                                                "tail_seconds": 4e-4, "windows": [4e-4, 6e-4]}
    assert "windows" not in entry
    # a series analyze timed as the bare block (its layer pass too slow) keeps its prediction
    bare = {"nonmatmul": [{"backend": "torch", "dtype": "fp32", "seconds_per_token": 1e-3, "what": "bare"}]}
    take_interleaved(bare, "torch", "fp32", passes)
    assert bare["nonmatmul"][0] == {"backend": "torch", "dtype": "fp32", "seconds_per_token": 1e-3, "what": "bare"}


def test_the_interleaved_chunk_pass_replaces_the_chunks_prediction_and_keeps_what_analyze_had():
    from rwkvprobe.measure.validate import take_interleaved_chunk

    def data():
        return {"nonmatmul": [
            {"backend": "torch", "dtype": "fp32", "method": "layer-pass", "seconds_per_token": 6e-3,
             "seq": {"64": {"chunk": 64, "method": "layer-pass", "seconds_per_block": 1e-3, "seconds_per_chunk": 2e-3,
                            "rounds": [], "what": "a"},
                     "8": {"chunk": 8, "method": "layer-pass", "seconds_per_block": 1e-4, "seconds_per_chunk": 2e-4}}}]}
    passes = {"chunk": 64, "method": "layer-pass", "seconds_per_block": 3e-3, "seconds_per_chunk": 6e-3,
              "rounds": [{"non_matmul_seconds": 3e-3}] * 4, "what": "b"}
    d = data()
    assert take_interleaved_chunk(d, "torch", "fp32", passes)
    seq = d["nonmatmul"][0]["seq"]
    assert seq["64"]["seconds_per_chunk"] == 6e-3 and len(seq["64"]["rounds"]) == 4
    assert seq["64"]["what"].startswith("b (validate: its rounds ran between the real pass's prefill rounds")
    assert seq["64"]["interleaved"] == {"with": "the real pass's prefill rounds",
                                        "separate": {"seconds_per_chunk": 2e-3, "seconds_per_block": 1e-3}}
    assert seq["8"] == data()["nonmatmul"][0]["seq"]["8"]  # another chunk length stays as analyze timed it
    # where the chunk was timed as the bare block, or not timed, or the series is not the layer pass's: it stays
    for change in ({"method": "block"}, None):
        d = data()
        if change is None:
            del d["nonmatmul"][0]["seq"]["64"]
        else:
            d["nonmatmul"][0]["seq"]["64"].update(change)
        before = json.dumps(d)
        assert not take_interleaved_chunk(d, "torch", "fp32", passes) and json.dumps(d) == before
    d = data()
    assert not take_interleaved_chunk(d, "torch-linear", "fp32", passes) and d == data()


def test_memory_check_counts_the_interleaved_ring_and_head(monkeypatch):
    """The real pass's process holds the layer pass's ring and head too when validate times its prediction there:
    memory enough for the two copies of the model alone is refused with one line, naming what it needs."""
    import psutil

    from rwkvprobe.errors import InputError
    from rwkvprobe.measure import layerpass, validate

    ll = layer_list(load_profile(PROFILES / "rwkv-0b4.yaml"))
    lp = validate.interleaved_layer_pass(ll, "torch", "fp32")
    assert lp == {"backend": "torch", "dtype": "fp32", "budget_seconds": validate.NONMATMUL_SECONDS}
    models = ll.model_bytes("fp32") * 2
    extra = (layerpass.ring_size(ll.profile, "fp32", validate.cachesize.usable_llc_bytes()) * layerpass.layer_bytes(ll.profile, "fp32")
             + 1024 * 65536 * 4)

    class Mem:
        available = models + extra / 2

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Mem)
    validate.check_memory(ll, "fp32")  # the two models fit
    with pytest.raises(InputError, match=f"needs about {(models + extra) / 1e9:.1f} GB of free memory"):
        validate.check_memory(ll, "fp32", lp)
    assert validate.interleaved_layer_pass(ll, "numpy", "fp32") is None  # a series analyze does not time in layers


# ------------------------------------------------------------------------------------------------
# The prediction's points, timed again between the real pass's rounds


def test_point_rounds_time_each_call_cold_as_analyze_timed_the_point():
    """PointRounds calls every copy once untimed, then per timed call: the eviction, an untimed call on the copy
    timed last (timing.measure's REWARM), the timed call on the next copy; a point with one copy and no eviction is
    called alone. Its figure is the median of its timed calls (plumbing: a fake backend)."""
    from rwkvprobe.measure.points import PointRounds

    events = []

    class Runner:
        def __init__(self, key):
            self.key = key

        def run(self, i):
            events.append((self.key, i))

        def close(self):
            events.append((self.key, "closed"))

    class Backend:
        @staticmethod
        def workload(m, k, n, dtype):
            return (m, k, n, dtype)

        def prepare(self, w, copies):
            return Runner(w[1])

    import rwkvprobe.measure.points as points

    flushed = []
    real_eviction = points.eviction
    points.eviction = lambda b: (lambda: events.append(("evict", b)) or flushed.append(b)) if b else None
    try:
        pr = PointRounds(Backend(), [{"m": 1, "k": 8, "n": 8, "dtype": "fp32", "copies": 3, "flush_bytes": 100},
                                     {"m": 1, "k": 9, "n": 9, "dtype": "fp32", "copies": 1, "flush_bytes": 0}])
    finally:
        points.eviction = real_eviction
    assert events == [(8, 0), (8, 1), (8, 2), (9, 0)]
    events.clear()
    pr.round(2)
    assert events == [("evict", 100), (8, 2), (8, 0), ("evict", 100), (8, 0), (8, 1), (9, 0), (9, 0)]
    pr.round(1)
    res = pr.result()
    assert [(x["k"], x["calls"]) for x in res] == [(8, 3), (9, 3)]
    assert all(x["median_seconds"] > 0 and x["m"] == 1 and x["dtype"] == "fp32" for x in res)
    events.clear()
    pr.close()
    assert events == [(8, "closed"), (9, "closed")]


def test_point_rounds_on_torch_time_real_matmuls():
    from rwkvprobe.backends import backend_class
    from rwkvprobe.measure.points import PointRounds

    pr = PointRounds(backend_class("torch-linear")(1),
                     [{"m": 1, "k": 256, "n": 512, "dtype": "fp32", "copies": 2, "flush_bytes": 1 << 20},
                      {"m": 4, "k": 64, "n": 64, "dtype": "fp32", "copies": 1, "flush_bytes": 0}])
    for _ in range(3):
        pr.round(2)
    res = pr.result()
    pr.close()
    assert [(x["m"], x["k"], x["n"], x["calls"]) for x in res] == [(1, 256, 512, 6), (4, 64, 64, 6)]
    assert all(0 < x["median_seconds"] < 1 for x in res)


def _results_with_points():
    def point(m, k, n, ok=True, backend="torch", dtype="fp32", t=1e-3):
        return {"backend": backend, "dtype": dtype, "m": m, "k": k, "n": n, "rotation": {"copies": 4, "flush_bytes": 8},
                "check": {"ok": ok}, "timing": {"median_seconds": t}}
    return {"measurements": [point(1, 8, 8), point(1, 8, 16), point(1, 8, 16, ok=False), point(1, 16, 8),
                             point(64, 8, 8), point(1, 8, 8, backend="numpy"), point(1, 32, 8, dtype="bf16"),
                             point(1, 8, 32, ok=False)]}


def test_interleaved_points_are_the_series_checked_points_with_their_rotation():
    from rwkvprobe.measure.validate import POINT_CALLS_CHUNK, POINT_CALLS_DECODE, interleaved_points

    data = _results_with_points()
    p = interleaved_points(data, "torch", "fp32", 64)
    # 8x16's last point (the one the verdict uses) failed its check: not timed again; nor another backend or dtype
    assert [(x["m"], x["k"], x["n"]) for x in p["decode"]] == [(1, 8, 8), (1, 16, 8)]
    assert [(x["m"], x["k"], x["n"]) for x in p["chunk"]] == [(64, 8, 8)]
    assert p["decode"][0] == {"m": 1, "k": 8, "n": 8, "dtype": "fp32", "copies": 4, "flush_bytes": 8}
    assert (p["backend"], p["calls_decode"], p["calls_chunk"]) == ("torch", POINT_CALLS_DECODE, POINT_CALLS_CHUNK)
    assert interleaved_points(data, "torch", "fp32", 0)["chunk"] == []  # no chunk
    assert interleaved_points(data, "torch", "fp32", 32)["chunk"] == []  # no point of that chunk
    assert interleaved_points(data, "ggml", "fp32", 64) is None  # the worker runs torch alone
    assert interleaved_points(data, "torch", "fp16", 64) is None  # nothing timed


def _prediction_with_rows():
    rows = [{"layer": "att.key", "m": 1, "k": 8, "n": 8, "count": 2, "seconds": 1e-3},
            {"layer": "att.value", "m": 1, "k": 8, "n": 8, "count": 2, "seconds": 1e-3},
            {"layer": "ffn.key", "m": 1, "k": 8, "n": 32, "count": 2, "seconds": 3e-3},
            {"layer": "lora", "m": 1, "k": 8, "n": 16, "count": 2, "seconds": 2e-3, "batch": 4},
            {"layer": "head", "m": 1, "k": 8, "n": 512, "count": 1, "seconds": 10e-3},
            {"layer": "att.key", "m": 64, "k": 8, "n": 8, "count": 2, "seconds": 5e-3},
            {"layer": "att.value", "m": 64, "k": 8, "n": 8, "count": 2, "seconds": 5e-3},
            {"layer": "ffn.key", "m": 64, "k": 8, "n": 32, "count": 2, "seconds": 9e-3}]
    decode_mm = sum(r["seconds"] * r["count"] for r in rows if r["m"] == 1)
    chunk_mm = sum(r["seconds"] * r["count"] for r in rows if r["m"] == 64) + 10e-3
    return {"decode_seconds": decode_mm + 4e-3, "matmul_seconds": decode_mm, "non_matmul_seconds": 4e-3,
            "per_call": {"8x8": 1e-3, "8x32": 3e-3, "8x4": 0.5e-3, "8x512": 10e-3},
            "prefill": {64: {"chunk": 64, "matmul_seconds": chunk_mm, "seconds": chunk_mm + 20e-3,
                             "tokens_per_second": 64 / (chunk_mm + 20e-3), "state_seconds": 20e-3, "once": ["head"],
                             "with_state": True, "modelled": False},
                        32: {"chunk": 32, "matmul_seconds": 0.1, "seconds": 0.1, "tokens_per_second": 320.0,
                             "once": []}},
            "rows": rows}


def test_points_timed_beside_the_real_pass_move_the_prediction_by_their_difference():
    from rwkvprobe.verdict.validation import with_timed_matmuls

    pred = _prediction_with_rows()
    before = json.dumps(pred, sort_keys=True)
    timed = [{"m": 1, "k": 8, "n": 8, "median_seconds": 1.5e-3}, {"m": 1, "k": 8, "n": 512, "median_seconds": 8e-3},
             {"m": 1, "k": 8, "n": 16, "median_seconds": 4e-3}, {"m": 64, "k": 8, "n": 32, "median_seconds": 7e-3},
             {"m": 1, "k": 99, "n": 99, "median_seconds": 1.0}]  # a shape the prediction has no row of: ignored
    out = with_timed_matmuls(pred, timed)
    assert json.dumps(pred, sort_keys=True) == before  # the prediction given is left as it was
    # decode: 8x8 four calls +0.5 ms each, the head -2 ms, the batched low-rank call two calls +2 ms; 8x32 untimed
    delta = 4 * 0.5e-3 - 2e-3 + 2 * 2e-3
    assert out["matmul_separate_seconds"] == pred["matmul_seconds"]
    assert out["matmul_seconds"] == pytest.approx(pred["matmul_seconds"] + delta)
    assert out["decode_seconds"] == pytest.approx(pred["decode_seconds"] + delta)
    assert out["non_matmul_seconds"] == pred["non_matmul_seconds"]
    # per weight matrix, as the real pass's profile counts them: the batched call's figure over its batch
    assert out["per_call"] == {"8x8": 1.5e-3, "8x32": 3e-3, "8x4": 1e-3, "8x512": 8e-3}
    # the chunk of 64: ffn.key at M = 64 two calls -2 ms each, and the head, run once for its last token, -2 ms
    pre = out["prefill"][64]
    chunk_delta = 2 * -2e-3 - 2e-3
    assert pre["matmul_separate_seconds"] == pred["prefill"][64]["matmul_seconds"]
    assert pre["matmul_seconds"] == pytest.approx(pred["prefill"][64]["matmul_seconds"] + chunk_delta)
    assert pre["seconds"] == pytest.approx(pred["prefill"][64]["seconds"] + chunk_delta)
    assert pre["tokens_per_second"] == pytest.approx(64 / pre["seconds"])
    assert out["prefill"][32] == pred["prefill"][32]  # no row of it timed again: as analyze had it
    # nothing timed: the prediction unchanged, no separate figure
    assert with_timed_matmuls(pred, []) == pred


def test_validation_records_and_says_what_analyze_had_for_the_matmuls():
    from rwkvprobe.verdict.validation import compare, summary_lines, with_timed_matmuls

    pred = with_timed_matmuls(_prediction_with_rows(), [{"m": 1, "k": 8, "n": 8, "median_seconds": 2e-3},
                                                        {"m": 64, "k": 8, "n": 8, "median_seconds": 6e-3}])
    pred.update(non_matmul_measured=True, canary_seconds=[])
    prof = {"matmul_share": 0.8, "by_shape": [], "other_matmul_seconds_per_token": 0.0}
    real = {"decode": {"median": 0.03, "q1": 0.029, "q3": 0.031, "samples": [0.03] * 8}, "profiled": prof,
            "prefill": {"median": 0.1, "tokens_per_second": 640.0, "matmul_share": 0.5, "samples": [0.1] * 5}}
    v = compare(pred, real, 64)
    v.update(backend="torch", dtype="fp32", threads=2, reference="rwkv test")
    assert v["split"]["matmul_predicted_seconds"] == pred["matmul_seconds"]
    assert v["split"]["matmul_separate_seconds"] == pred["matmul_separate_seconds"]
    assert v["prefill"]["matmul_separate_seconds"] == pred["prefill"][64]["matmul_separate_seconds"]
    text = "\n".join(summary_lines(v, "tiny"))
    assert (f"its points timed again between the real pass's profiled rounds "
            f"({pred['matmul_separate_seconds'] * 1e3:.1f} ms as analyze timed them before the real pass)") in text
    assert (f"with the points timed between the real pass's prefill rounds "
            f"({pred['prefill'][64]['matmul_separate_seconds'] * 1e3:.1f} ms as analyze timed them)") in text


def test_betweens_run_each_given_call_in_turn():
    from rwkvprobe.measure.forward_worker import _betweens

    seen = []
    assert _betweens(None, None) is None
    both = _betweens(lambda: seen.append("layer pass"), None, lambda: seen.append("points"))
    both()
    both()
    assert seen == ["layer pass", "points"] * 2


def test_memory_check_counts_the_interleaved_points(monkeypatch):
    """With the points timed in the real pass's process too, memory enough for the models alone is refused."""
    import psutil

    from rwkvprobe.errors import InputError
    from rwkvprobe.measure import validate

    ll = layer_list(load_profile(PROFILES / "rwkv-0b4.yaml"))
    models = ll.model_bytes("fp32") * 2
    extra = validate.points_bytes(ll, "fp32")
    # every decode shape's copies at least: the head (1024 x 65536, fp32) once, the 1024x1024 matrices' rotation
    assert extra >= 1024 * 65536 * 4 + 1024 * 1024 * 4 * 2

    class Mem:
        available = models + extra / 2

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Mem)
    validate.check_memory(ll, "fp32")
    with pytest.raises(InputError, match=f"needs about {(models + extra) / 1e9:.1f} GB of free memory"):
        validate.check_memory(ll, "fp32", points=True)


def test_points_that_cannot_be_built_beside_the_real_pass_leave_analyzes_figures_and_say_why(monkeypatch):
    from rwkvprobe.measure import forward_worker as fw
    from rwkvprobe.verdict.validation import compare, summary_lines

    def fail(*a, **k):
        raise MemoryError("no room for the copies")

    monkeypatch.setattr(fw, "PointRounds", fail)
    out: dict = {}
    cfg = {"threads": 1, "points": {"backend": "torch", "decode": [{"m": 1}], "chunk": []}}
    assert fw._prediction_points(cfg, "decode", out) is None
    assert out == {"points_skipped": {"decode": "MemoryError: no room for the copies"}}
    assert fw._prediction_points(cfg, "chunk", out) is None and "chunk" not in out["points_skipped"]  # none asked
    assert fw._prediction_points({"threads": 1}, "decode", {}) is None
    pred = _prediction_with_rows()
    pred.update(non_matmul_measured=True)
    real = {"decode": {"median": 0.03, "q1": 0.029, "q3": 0.031, "samples": [0.03] * 8},
            "profiled": {"matmul_share": 0.8, "by_shape": []}}
    v = compare(pred, real, 0)
    v.update(backend="torch", dtype="fp32", threads=2, reference="rwkv test", points_skipped=out["points_skipped"])
    text = "\n".join(summary_lines(v, "tiny"))
    assert ("analyze's points could not be timed again beside the real pass (decode: MemoryError: no room for the "
            "copies): the matmul prediction there is analyze's own") in text


@pytest.mark.parametrize("version", [4, 7])
def test_rwkv7s_prediction_layer_pass_is_built_before_the_reference_model(monkeypatch, version):
    """The worker builds validate's RWKV-7 layer pass for a token before it loads the reference model (built after it,
    its part outside the matmuls read several percent slower in that process), RWKV-4/5.2/6's after it (they did not
    gain); plumbing: fakes record the order."""
    from rwkvprobe.measure import forward_worker as fw

    events = []
    monkeypatch.setattr(fw, "_prediction_rounds", lambda profile, lp, tokens: events.append(("layer pass", tokens)))

    def load(*a):
        events.append("reference model")
        raise RuntimeError("stop here")

    monkeypatch.setattr(fw, "load_reference", load)
    cfg = {"profile": profile_json(tiny(version)), "threads": 1, "dtype": "fp32", "tokens": 1,
           "layer_pass": {"backend": "torch", "dtype": "fp32", "budget_seconds": 1.0}}
    with pytest.raises(RuntimeError, match="stop here"):
        fw.run(cfg)
    assert events == ([("layer pass", 1), "reference model"] if version == 7 else ["reference model"])
    assert fw.RING_FIRST == (7,)
