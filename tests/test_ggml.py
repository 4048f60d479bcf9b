"""The ggml backend (ggml-python): every format against float64, ggml's byte counts, and its plumbing.

Needs the optional extra (pip install '.[ggml]'); skipped without it, unless RWKVPROBE_REQUIRE_GGML=1 (CI),
where a missing ggml-python fails these tests instead. The plumbing tests at the end need no ggml.
"""

import ctypes
import importlib.util
import os
import re

import numpy as np
import pytest
from conftest import PROFILES, run_module

from rwkvprobe.backends import TOLERANCE, UnavailableDtype, backend_class, check_runner
from rwkvprobe.errors import InputError, MissingExtra
from rwkvprobe.model.profile import layer_list, load_profile
from rwkvprobe.model.quant import FORMATS, GGML_DTYPES

HAVE_GGML = importlib.util.find_spec("ggml") is not None
REQUIRED = os.environ.get("RWKVPROBE_REQUIRE_GGML") == "1"
needs_ggml = pytest.mark.skipif(not HAVE_GGML and not REQUIRED,
                                reason="ggml-python is not installed (pip install -e '.[ggml]'); "
                                       "RWKVPROBE_REQUIRE_GGML=1 makes this a failure")
ALL = ("fp32", "fp16", "bf16") + GGML_DTYPES
#: every unique shape of RWKV-7 0.1B but the 768x65536 head (its float64 reference alone takes seconds here)
RWKV_SHAPES = [s for s in layer_list(load_profile(PROFILES / "rwkv-0b1.yaml")).unique_shapes() if s[1] < 65536]


def _backend(threads=1):
    from rwkvprobe.backends import get_backend

    return get_backend("ggml", threads)


def _check(dtype, m, k, n, copies=2, threads=1):
    b = _backend(threads)
    w = b.workload(m, k, n, dtype)
    runner = b.prepare(w, copies)
    try:
        return w, check_runner(w, runner)
    finally:
        runner.close()


def test_required_means_installed():
    if REQUIRED:
        assert HAVE_GGML, "RWKVPROBE_REQUIRE_GGML=1 but ggml-python is not installed: pip install -e '.[ggml]'"


@needs_ggml
def test_every_format_is_usable_here():
    cls = backend_class("ggml")
    assert cls.unavailable_reason() is None
    assert {d: cls.dtype_unavailable(d) for d in ALL} == {d: None for d in ALL}


@needs_ggml
@pytest.mark.parametrize("dtype", GGML_DTYPES)
def test_bytes_per_weight_are_ggmls_type_traits(dtype):
    import ggml

    from rwkvprobe.backends.ggml_backend import GGML_TYPES

    t = getattr(ggml, f"GGML_TYPE_{GGML_TYPES[dtype]}")
    fmt = FORMATS[dtype]
    assert (fmt.fixed_block, fmt.block_bytes) == (ggml.ggml_blck_size(t), ggml.ggml_type_size(t))
    w = backend_class("ggml").workload(1, 512, 48, dtype)
    assert w.weight_bytes == ggml.ggml_row_size(t, 512) * 48  # what ggml really stores, scales included
    assert w.bytes_per_weight == pytest.approx(ggml.ggml_type_size(t) / ggml.ggml_blck_size(t))
    assert w.bytes_per_weight == {"q8_0": 34 / 32, "q5_1": 24 / 32, "q4_0": 18 / 32, "q4_k": 144 / 256}[dtype]


@needs_ggml
@pytest.mark.parametrize("dtype", ALL)
def test_format_correct_on_rwkv_shapes(dtype):
    for k, n in RWKV_SHAPES:
        blck = FORMATS[dtype].fixed_block if dtype in GGML_DTYPES else 1
        if k % blck:  # the 0.1B LoRA inputs (K=32, 64) are not whole Q4_K super-blocks: refused, tested below
            continue
        for m in (1, 3):
            w, result = _check(dtype, m, k, n)
            assert result["ok"], (dtype, m, k, n, result)
            assert result["rel_err"] <= TOLERANCE[dtype]
            if dtype in GGML_DTYPES:  # the format's own noise is far larger than the kernel's error
                assert result["quantization_rel_err"] > 10 * result["rel_err"]


@needs_ggml
@pytest.mark.parametrize("dtype", ALL)
def test_format_correct_on_odd_shapes_with_two_threads(dtype):
    blck = FORMATS[dtype].fixed_block if dtype in GGML_DTYPES else 1
    for m, k, n in ((1, blck * 3, 7), (5, blck * 2, 33), (2, max(blck, 32) * 9, 1)):
        w, result = _check(dtype, m, k, n, copies=3, threads=2)
        assert result["ok"], (dtype, m, k, n, result)
    if blck == 1:  # float rows take any K
        _, result = _check(dtype, 2, 77, 13)
        assert result["ok"], result


@needs_ggml
@pytest.mark.parametrize("dtype, k", [("q8_0", 48), ("q5_1", 100), ("q4_0", 33), ("q4_k", 96), ("q4_k", 768 + 128)])
def test_k_not_whole_blocks_is_refused_with_one_line(dtype, k):
    b = _backend()
    with pytest.raises(UnavailableDtype) as e:
        b.prepare(b.workload(1, k, 16, dtype), 1)
    msg = str(e.value)
    assert "\n" not in msg and f"K={k} is not a multiple of {FORMATS[dtype].fixed_block}" in msg


@needs_ggml
def test_measure_point_records_the_refusal_and_goes_on():
    from rwkvprobe.measure.points import measure_point
    from rwkvprobe.measure.timing import TimingPolicy

    b = _backend()
    point = measure_point(b, b.workload(1, 96, 16, "q4_k"), None, TimingPolicy(budget_seconds=0.02))
    assert point["timing"] is None and point["error"].startswith("UnavailableDtype: ggml Q4_K stores rows in blocks of 256")
    point = measure_point(b, b.workload(1, 256, 16, "q4_k"), None, TimingPolicy(budget_seconds=0.02))
    assert point["check"]["ok"] and point["timing"] and point["bytes_per_weight"] == 144 / 256
    assert point["format"] == "q4_k (ggml Q4_K, block 256, 0.5625 B/weight)"


@needs_ggml
def test_check_fails_when_a_weight_copy_is_corrupted():
    """The float64 check is tight enough to see one wrong block scale in one copy."""
    b = _backend()
    w = b.workload(1, 256, 8, "q4_0")
    runner = b.prepare(w, 2)
    try:
        import ggml

        data = ggml.ggml_get_data(runner.weights[1])
        scale = (ctypes.c_uint16 * 1).from_address(data)  # the first block's fp16 scale
        scale[0] = np.float16(np.frombuffer(bytes(scale), np.float16)[0] * 1.5).view(np.uint16)
        result = check_runner(w, runner)
    finally:
        runner.close()
    assert not result["ok"] and "relative error" in result["detail"]


@needs_ggml
def test_activation_is_replayed_as_the_q8_0_kernel_quantizes_it():
    """q4_0 and q8_0 multiply A quantized to q8_0 blocks (d = max|a|/127, q = round(a/d), d stored in fp16):
    the reference sees exactly that, independently recomputed here."""
    from rwkvprobe.backends.ggml_backend import activation_as_seen

    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 64)).astype(np.float32)
    seen = activation_as_seen("q4_0", a)
    blocks = a.reshape(2, 2, 32)
    d = (np.abs(blocks).max(axis=-1, keepdims=True) / np.float32(127)).astype(np.float32)
    expect = (np.round(blocks / d) * d.astype(np.float16).astype(np.float32)).reshape(2, 64)
    assert np.abs(seen - expect).max() <= 1e-6 * np.abs(a).max()
    assert np.abs(seen - a).max() > 1e-4  # really quantized
    assert np.array_equal(activation_as_seen("fp32", a), a)


@needs_ggml
def test_describe_names_the_build_and_the_rule():
    d = _backend(2).describe()
    assert d["name"] == "ggml" and d["threads"] == 2 and d["ggml-python"]
    assert d["types"]["q4_0"]["vec_dot_type"] == "q8_0" and d["types"]["q4_k"]["block"] == 256
    assert d["quantize_kinds"] == ["att", "ffn", "custom"] and d["float_dtype"] == "fp16"
    assert "avx2" in d["cpu_features"] or "neon" in d["cpu_features"]


@needs_ggml
@pytest.mark.slow
def test_analyze_ggml_end_to_end(tmp_path):
    """`analyze --backends ggml --dtypes f16,q8_0,q4_0`: measured decode per format, the f16 -> q4_0
    speed-up, the head and LoRA matrices kept f16 and never measured at q4_0, the block's ggml graph."""
    import json

    prof = tmp_path / "tiny.yaml"
    prof.write_text("name: tiny7\nsource: test\nversion: 7\nn_layer: 2\nn_embd: 256\nvocab_size: 2048\nhead_size: 64\n"
                    "lora: {decay: 32, aaa: 32, mv: 32, gate: 64}\n")
    out = tmp_path / "out"
    p = run_module("analyze", prof, "--quick", "--backends", "ggml", "--dtypes", "f16,q8_0,q4_0", "--threads", "1",
                   "--budget", "22", "--out", out)  # room for the block's later window on a VM slow to first-touch
    assert p.returncode == 0, p.stderr
    assert "ggml fp16 -> q4_0:" in p.stdout and "decode as measured: fp16" in p.stdout
    r = json.loads((out / "results.json").read_text())
    measured = {(m["dtype"], m["k"], m["n"]) for m in r["measurements"] if m["timing"]}
    assert ("fp16", 256, 2048) in measured and ("q4_0", 256, 1024) in measured
    assert not any(d == "q4_0" and n == 2048 for d, _, n in measured)  # the head stays f16
    assert not any(d == "q8_0" and k == 256 and n == 32 for d, k, n in measured)  # so do the LoRA matrices
    [block] = r["nonmatmul"]  # RWKV-7 with heads of 64: one block as a ggml graph, checked, then timed
    assert (block["backend"], block["dtype"], block["engine"]) == ("ggml", "fp32", "ggml") and block["check"]["ok"]
    assert "is measured as a ggml graph" in p.stdout
    # timed again halfway through the layer points (and after them where the budget's end has room): the fastest kept
    assert len(block["windows"]) >= 2 and block["seconds_per_block"] == min(block["windows"])
    assert block["seconds_per_token"] == pytest.approx(2 * block["seconds_per_block"])
    report = (out / "report.md").read_text()
    assert f"the ggml block graph was timed {len(block['windows'])} times" in report
    assert "head, lora and the embedding stayed fp16 (rwkv.cpp's rule)" in report
    assert "| ggml q4_0 |" in report and "†" not in report


# ------------------------------------------------------------------------------------------------
# Plumbing: no ggml needed


def test_missing_ggml_names_the_extra(monkeypatch, cli):
    import rwkvprobe.backends as backends

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ggml" else real(name, *a))
    monkeypatch.setattr(backends.importlib.util, "find_spec",
                        lambda name, *a: None if name == "ggml" else real(name, *a))
    with pytest.raises(MissingExtra, match=r"pip install 'rwkvprobe\[ggml\]'"):
        backends.get_backend("ggml", 1)
    code, out, err = cli("analyze", PROFILES / "rwkv-0b1.yaml", "--quick", "--backends", "ggml")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("rwkvprobe: error: backend 'ggml' needs the 'ggml' package") and "rwkvprobe[ggml]" in err


def test_dtype_spellings_of_ggml_are_accepted():
    from rwkvprobe.measure.analyze import check_dtypes

    assert check_dtypes(["f16", "q8_0", "q4_K", "fp16"]) == ["fp16", "q8_0", "q4_k"]
    assert check_dtypes(None) is None
    with pytest.raises(InputError, match="--dtypes: unknown dtype 'q3_x'"):
        check_dtypes(["q3_x"])


def test_ggml_formats_bytes_without_ggml():
    """Reports render anywhere: the formats' bytes are known without the library."""
    from rwkvprobe.backends import Workload
    from rwkvprobe.model.profile import weight_bytes_of

    assert Workload(1, 2048, 2048, "q4_0").weight_bytes == 2048 // 32 * 18 * 2048
    assert Workload(1, 2048, 2048, "q4_0", block_size=128).weight_bytes == 2048 // 32 * 18 * 2048  # fixed blocks
    assert weight_bytes_of("q8_0") == 34 / 32 and weight_bytes_of("q4_k") == 144 / 256


def _ggml_results(layers, times):
    """A results file with ggml fp16/q4_0 points (seconds per call by dtype), q4_0 measured on att/ffn only."""
    from rwkvprobe.model.profile import profile_json
    from rwkvprobe.results import new_results

    r = new_results("analyze", settings={"tokens": [1], "quantize": None})
    r["profile"] = profile_json(layers)
    r["bandwidth"] = {"runs": [{"kernels": {"read": {"best_gbps": 10.0}}}]}
    r["backends"] = {"ggml": {"name": "ggml", "threads": 1, "quantize_kinds": ["att", "ffn", "custom"],
                              "float_dtype": "fp16", "quantize_rule": "rwkv.cpp: the head and LoRA stay f16"}}
    ceil = {"backend": "ggml", "peak_gflops": 1000.0, "overhead_seconds": 1e-7, "gemv_gbps": 9.0}
    r["ceilings"] = [dict(ceil, dtype="fp16"), dict(ceil, dtype="q4_0")]
    r["measurements"] = []
    for layer in layers.layers:
        for dtype, bpw in (("fp16", 2.0), ("q4_0", 0.5625)):
            if dtype == "q4_0" and layer.kind not in ("att", "ffn"):
                continue
            r["measurements"].append({
                "backend": "ggml", "dtype": dtype, "m": 1, "k": layer.k, "n": layer.n, "flops": 2.0 * layer.k * layer.n,
                "bytes": layer.k * layer.n * bpw + 4 * (layer.k + layer.n), "bytes_per_weight": bpw,
                "format": f"{dtype} (test)", "check": {"ok": True}, "timing": {"median_seconds": times[dtype]},
                "error": None})
    return r


def test_quantized_ggml_series_takes_kept_matrices_from_its_f16_series():
    from roofline_fixtures import RWKV7_SMALL, layers_of

    from rwkvprobe.report.markdown import verdict_sentences
    from rwkvprobe.verdict.roofline import build_verdict, quant_comparison

    layers = layers_of(RWKV7_SMALL)
    r = _ggml_results(layers, {"fp16": 1e-3, "q4_0": 0.4e-3})
    v = build_verdict(r, layers)
    q = next(s for s in v["series"] if s["dtype"] == "q4_0")
    rows = {x["layer"]: x for x in q["rows"]}
    assert rows["head"]["stored_as"] == "fp16" and rows["head"]["measured"] and rows["head"]["seconds"] == 1e-3
    lora = [x for x in q["rows"] if x["kind"] == "lora"]
    assert lora and all(x["stored_as"] == "fp16" and x["measured"] for x in lora)
    assert "stored_as" not in rows["ffn.key"] and rows["ffn.key"]["seconds"] == 0.4e-3
    d = q["model"]["decode"]
    assert d["fully_measured"]
    expected = sum(x.count * x.k * x.n * (0.5625 if x.kind in ("att", "ffn") else 2.0) for x in layers.layers)
    assert d["weight_bytes_per_token"] == pytest.approx(expected + layers.embedding_bytes_per_token("fp16"))
    [c] = quant_comparison(v, r)
    assert c["baseline"] == "fp16" and c["float_kinds"] == ["head", "lora"]
    f16 = next(s for s in v["series"] if s["dtype"] == "fp16")["model"]["decode"]
    assert c["measured_seconds"] - f16["non_matmul_seconds"] == pytest.approx(d["matmul_seconds"])
    text = " ".join(verdict_sentences(v, layers, r))
    assert "ggml fp16 -> q4_0:" in text and "head, lora and the embedding stayed fp16 (rwkv.cpp's rule)" in text


@pytest.mark.parametrize("float_first", [True, False])
def test_kept_rows_are_judged_on_the_f16_series_overhead_as_it_holds_it(float_first):
    """Seen on a Zen 3 VM: ggml fp16's LoRA rows ran faster than its measured per-call overhead allows, so the fp16
    series lowered its overhead with a warning; the q8_0 and q4_0 series, which keep those rows at fp16, judged them
    on the overhead as first measured and showed them at 107% of their roofline with no warning of their own."""
    from roofline_fixtures import RWKV7_SMALL, layers_of

    from rwkvprobe.verdict.roofline import CEILING_TOLERANCE, build_verdict

    layers = layers_of(RWKV7_SMALL)
    r = _ggml_results(layers, {"fp16": 1e-3, "q4_0": 0.4e-3})
    fp16, q4 = r["ceilings"]
    fp16["overhead_seconds"] = 2e-3  # measured above what every fp16 row took: hold_ceilings lowers it
    r["ceilings"] = [fp16, q4] if float_first else [q4, fp16]
    v = build_verdict(r, layers)
    assert [s["dtype"] for s in v["series"]] == [c["dtype"] for c in r["ceilings"]]  # the results' order
    f16 = next(s for s in v["series"] if s["dtype"] == "fp16")
    assert f16["overhead_seconds"] < 1e-3 and any("fp16" in w and "overhead" in w for w in v["ceiling_warnings"])
    q = next(s for s in v["series"] if s["dtype"] == "q4_0")
    kept = [x for x in q["rows"] if x.get("stored_as") == "fp16"]
    assert kept and all(x["measured"] for x in kept)
    for x in kept:
        assert x["roofline_fraction"] <= CEILING_TOLERANCE, x
        twin = next(y for y in f16["rows"] if (y["layer"], y["m"]) == (x["layer"], x["m"]))
        assert x["roofline_fraction"] == pytest.approx(twin["roofline_fraction"])


def test_quantize_option_overrides_the_ggml_rule():
    from roofline_fixtures import RWKV7_SMALL, layers_of

    from rwkvprobe.verdict.roofline import build_verdict

    layers = layers_of(RWKV7_SMALL)
    r = _ggml_results(layers, {"fp16": 1e-3, "q4_0": 0.4e-3})
    r["settings"]["quantize"] = ["att", "ffn", "lora", "head"]
    q = next(s for s in build_verdict(r, layers)["series"] if s["dtype"] == "q4_0")
    head = next(x for x in q["rows"] if x["layer"] == "head")
    assert "stored_as" not in head and not head["measured"]  # asked quantized, never measured at q4_0: modelled


def test_non_matmul_stand_in_is_labelled():
    """Where no ggml graph of the block exists (RWKV-4/5/6, odd head sizes) the torch block stands in, labelled."""
    from rwkvprobe.measure import nonmatmul

    assert nonmatmul.block_dtype("q4_0", "ggml") == "fp32" and nonmatmul.block_dtype("fp16", "ggml") == "fp32"
    assert nonmatmul.block_dtype("fp16", "torch") == "fp16"
    assert "not a ggml graph" in nonmatmul.STAND_IN_NOTE


@needs_ggml
def test_plan_adds_the_f16_series_and_the_default_run_has_ggml():
    from rwkvprobe.measure.analyze import AnalyzeSettings, plan_series

    pairs, _ = plan_series(AnalyzeSettings(backends=["ggml"], dtypes=["q4_0"], tokens=[1], threads=1, cpus=None))
    assert pairs == [("ggml", "fp16"), ("ggml", "q4_0")]
    pairs, _ = plan_series(AnalyzeSettings(backends=None, dtypes=None, tokens=[1], threads=1, cpus=None))
    assert [p for p in pairs if p[0] == "ggml"] == [("ggml", "fp16"), ("ggml", "q8_0"), ("ggml", "q4_0")]


@needs_ggml
def test_default_run_measures_ggml_decode_only_and_skips_kept_f16_shapes_in_quantized_formats(tmp_path):
    from rwkvprobe.measure.analyze import Analysis, AnalyzeSettings

    ll = layer_list(load_profile(PROFILES / "rwkv-0b1.yaml"))
    default = Analysis(ll, AnalyzeSettings(backends=None, dtypes=None, tokens=[1, 64], threads=1, cpus=None), tmp_path)
    named = Analysis(ll, AnalyzeSettings(backends=["ggml"], dtypes=None, tokens=[1, 64], threads=1, cpus=None), tmp_path)
    assert not default._wanted("ggml", "fp16", 64, 768, 768) and named._wanted("ggml", "fp16", 64, 768, 768)
    assert default._wanted("onnxruntime", "fp32", 64, 768, 768)
    assert named._wanted("ggml", "fp16", 1, 768, 65536) and not named._wanted("ggml", "q4_0", 1, 768, 65536)  # head
    assert not named._wanted("ggml", "q8_0", 1, 768, 64) and named._wanted("ggml", "q8_0", 1, 768, 3072)  # LoRA, ffn
    everything = Analysis(ll, AnalyzeSettings(backends=["ggml"], dtypes=None, tokens=[1], threads=1, cpus=None,
                                              quantize=["att", "ffn", "lora", "head"]), tmp_path)
    assert everything._wanted("ggml", "q4_0", 1, 768, 65536)
    from rwkvprobe.measure.points import COMPUTE_SHAPES

    assert default._compute_shapes("ggml") == COMPUTE_SHAPES[:1] and named._compute_shapes("ggml") == COMPUTE_SHAPES
    # a quick run of decode alone leaves out the largest shape (8.6 GFLOP) for every other backend; with a chunk
    # (--quick --tokens 1,64) it keeps them all
    quick = Analysis(ll, AnalyzeSettings(backends=None, dtypes=None, tokens=[1], threads=1, cpus=None, quick=True),
                     tmp_path)
    chunk = Analysis(ll, AnalyzeSettings(backends=None, dtypes=None, tokens=[1, 64], threads=1, cpus=None, quick=True),
                     tmp_path)
    assert quick._compute_shapes("numpy") == COMPUTE_SHAPES[:3] and (512, 2048, 4096) not in quick._compute_shapes("torch")
    assert quick._compute_shapes("ggml") == COMPUTE_SHAPES[:1] and chunk._compute_shapes("onnxruntime") == COMPUTE_SHAPES


# ------------------------------------------------------------------------------------------------
# The non-matmul block as a ggml graph (RWKV-7)


@needs_ggml
def test_ggml_block_graph_matches_the_torch_block_and_carries_its_state():
    torch = pytest.importorskip("torch") if not REQUIRED else __import__("torch")
    from rwkvprobe.measure import ggml_block, nonmatmul

    profile = load_profile(PROFILES / "rwkv-0b1.yaml")
    inputs = ggml_block.block_inputs(profile, seed=1)
    block = ggml_block.GgmlBlock(inputs, 2)
    try:
        check = ggml_block.check_against_torch(inputs, block)
        assert check["ok"] and check["rel_err"] < 1e-5, check
        # a second token starts from the state the first one left: the torch block fed that state agrees
        after_one = block.read("state")
        block.run()
        t = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))  # noqa: E731
        with torch.no_grad():
            _, _, _, state2, _ = nonmatmul.block_function(7)(
                t(inputs["x"]), t(inputs["shift_att"]), t(inputs["shift_ffn"]), t(after_one).view(inputs["state"].shape),
                t(inputs["v_first"]), [t(a) for a in inputs["vec"]], [t(a) for a in inputs["mm"]], inputs["H"], inputs["S"])
        got = block.read("state")
        assert np.abs(got - state2.numpy().ravel()).max() <= 1e-5 * np.abs(got).max()
        assert np.abs(got - after_one).max() > 1e-3  # it really moved on
    finally:
        block.close()


@needs_ggml
def test_ggml_block_is_timed_only_when_it_matches(monkeypatch):
    pytest.importorskip("torch") if not REQUIRED else None
    from rwkvprobe.measure import ggml_block
    from rwkvprobe.model.profile import parse_profile

    small = parse_profile({"name": "s7", "source": "test", "version": 7, "n_layer": 2, "n_embd": 128,
                           "vocab_size": 512, "head_size": 64, "lora": {"decay": 16, "aaa": 16, "mv": 8, "gate": 32}})
    entry = ggml_block.measure_series(small, 1, 0.05, None, cold=True)
    assert entry["engine"] == "ggml" and entry["check"]["ok"] and entry["seconds_per_token"] > 0
    assert entry["seconds_per_token"] == pytest.approx(2 * entry["seconds_per_block"])
    monkeypatch.setattr(ggml_block, "TOLERANCE", 0.0)
    bad = ggml_block.measure_series(small, 1, 0.05, None, cold=True)
    assert not bad["check"]["ok"] and bad["seconds_per_token"] is None and bad["timing"] is None
    odd = parse_profile({"name": "s7", "source": "test", "version": 7, "n_layer": 2, "n_embd": 128,
                         "vocab_size": 512, "head_size": 32, "lora": {"decay": 16, "aaa": 16, "mv": 8, "gate": 32}})
    assert not ggml_block.supported(odd)  # ggml's wkv7 kernel needs heads of 64: the torch stand-in serves


@pytest.mark.parametrize("k,n", [(1, 1), (15, 7), (16, 33), (37, 5), (64, 2048)])
def test_the_tiled_transpose_is_the_transpose(k, n):
    """ggml stores W^T: the tiled copy quantize_into makes of each chunk equals numpy's own transpose, for row
    counts below, at and past a tile (plumbing: no ggml needed)."""
    from rwkvprobe.backends.ggml_backend import _transposed

    w = np.random.default_rng(k * n).random((k, n), dtype=np.float32)
    t = _transposed(w[:, 1:])
    assert t.flags.c_contiguous and np.array_equal(t, w[:, 1:].T)


@pytest.mark.parametrize("q4_seconds, words", [(0.4e-3, r"ggml fp16 -> q4_0: 1\.\d\dx faster decode as measured"),
                                               (0.97e-3, r"ggml fp16 -> q4_0: tied within noise \(1\.0\dx as measured;"),
                                               (1.5e-3, r"ggml fp16 -> q4_0: 1\.\d\dx slower decode as measured")])
def test_the_ggml_fp16_to_q4_0_sentence_says_tied_within_noise_or_which_way(q4_seconds, words):
    """The sentence comparing ggml fp16 with q4_0 says which is faster only where they differ by more than their
    combined uncertainty (every point's samples spread 5% here); a slower quantized series is called slower."""
    from roofline_fixtures import RWKV7_SMALL, layers_of

    from rwkvprobe.report.markdown import verdict_sentences
    from rwkvprobe.verdict.roofline import build_verdict

    layers = layers_of(RWKV7_SMALL)
    r = _ggml_results(layers, {"fp16": 1e-3, "q4_0": q4_seconds})
    for p in r["measurements"]:
        p["timing"].update(n=20, iqr_seconds=0.05 * p["timing"]["median_seconds"])
    text = " ".join(verdict_sentences(build_verdict(r, layers), layers, r))
    assert re.search(words, text), text
