"""layerpass: RWKV-4/5.2/6/7's non-matmul work timed in a forward pass's structure."""

import statistics
import subprocess
import sys

import pytest
import reference_ops

from rwkvprobe.model.profile import layer_list, parse_profile

torch = pytest.importorskip("torch")

from rwkvprobe.measure import layerpass, nonmatmul  # noqa: E402
from rwkvprobe.measure.profiling import KINETO_NOISE  # noqa: E402
from rwkvprobe.measure.timing import LLC_FACTOR  # noqa: E402

TINY = {
    4: {"version": 4, "n_layer": 3, "n_embd": 128, "vocab_size": 256},
    5: {"version": 5, "n_layer": 3, "n_embd": 128, "vocab_size": 256, "head_size": 64},
    6: {"version": 6, "n_layer": 3, "n_embd": 128, "vocab_size": 256, "head_size": 64, "lora": {"mix": 32, "decay": 64}},
    7: {"version": 7, "n_layer": 3, "n_embd": 128, "vocab_size": 256, "head_size": 64,
        "lora": {"decay": 16, "aaa": 16, "mv": 8, "gate": 32}},
}


def tiny(version: int, **over):
    return parse_profile({"name": "t", "source": "t", **TINY[version], **over})


OP_COUNTS = reference_ops.HEAD + r"""
from rwkvprobe.measure import layerpass
fns = layerpass.functions()
(layer,) = layerpass.build_ring(p, "torch-linear", "fp32", 1)
x = torch.rand(p.n_embd)
with torch.no_grad():
    for _ in range(4):
        layerpass.run_layer(p, fns, layer, x)
    with profile(activities=[ProfilerActivity.CPU]) as pr:
        layerpass.run_layer(p, fns, layer, x)
print(json.dumps({"reference_layer": dict(three - two), "ours": dict(top_level_ops(pr))}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("version", [4, 5, 6])
def test_a_layer_runs_exactly_the_reference_layers_operations(version):
    """One more layer in the reference's real decode adds exactly the ATen calls of our layer, weight matmuls,
    casts and state update included (the structure whose overhead is timed)."""
    pytest.importorskip("rwkv")
    r = reference_ops.run(OP_COUNTS, {"name": "t", "source": "t", **TINY[version]})
    assert r["ours"] == r["reference_layer"]
    assert r["ours"]["aten::layer_norm"] == 2 and r["ours"]["aten::matmul"] >= 7


OP_COUNTS_7 = reference_ops.HEAD + r"""
from rwkvprobe.measure import layerpass
fns = layerpass.functions()
def ours(n):  # what a pass over n layers of the ring calls
    z, st = layerpass.as_model(layerpass.build_ring(p, "torch", "fp32", n))
    x = torch.rand(p.n_embd)
    with torch.no_grad():
        for _ in range(4):
            _, st = fns[3](x, z, st, n, p.n_embd // p.head_size, p.head_size)
        with profile(activities=[ProfilerActivity.CPU]) as pr:
            fns[3](x, z, st, n, p.n_embd // p.head_size, p.head_size)
    return top_level_ops(pr)
print(json.dumps({"reference_layer": dict(three - two), "ours": dict(ours(3) - ours(2))}))
"""


@pytest.mark.slow
def test_an_rwkv7_layer_of_the_pass_runs_exactly_the_reference_layers_operations():
    """RWKV-7: one more layer of the reference's real decode adds exactly the ATen calls that one more layer of
    the scripted pass adds (a layer after the first: the value-residual path included)."""
    pytest.importorskip("rwkv")
    r = reference_ops.run(OP_COUNTS_7, {"name": "t", "source": "t", **TINY[7], "n_layer": 2})
    assert r["ours"] == r["reference_layer"]
    assert r["ours"]["aten::layer_norm"] == 2 and r["ours"]["aten::matmul"] >= 14


TAIL_OPS = reference_ops.HEAD + r"""
from collections import Counter
from rwkvprobe.measure import layerpass
fns = layerpass.functions()
outside = Counter({op: two[op] - 2 * (three[op] - two[op]) for op in set(two) | set(three)})
tail = layerpass.build_tail(p, "torch" if p.version == 7 else "torch-linear", "fp32")
x = torch.rand(p.n_embd)
def counted(run):
    with torch.no_grad():
        for _ in range(4):
            run()
        with profile(activities=[ProfilerActivity.CPU]) as pr:
            run()
    return top_level_ops(pr)
if p.version == 7:
    z, st = layerpass.as_model(layerpass.build_ring(p, "torch", "fp32", 2))
    z.update(tail)
    H, S = p.n_embd // p.head_size, p.head_size
    layers = counted(lambda: fns[3](x, z, st, 2, H, S, False))  # the reference's two layers' calls, as tested above
    outside = Counter({op: two[op] - layers[op] for op in set(two) | set(layers)})  # (its first layer differs)
    ours = counted(lambda: fns[3](x, z, st, 2, H, S, True)) - layers
else:
    ours = counted(lambda: layerpass.run_tail(tail, x))
print(json.dumps({"outside_layers": {k: v for k, v in outside.items() if v}, "ours": dict(ours)}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("version", [4, 6, 7])
def test_the_tail_runs_the_reference_tokens_operations_outside_its_layers(version):
    """What the reference's decoded token calls outside its layers (its calls with 2 layers less twice what a third
    layer adds; RWKV-7, whose first layer differs: less our pass of 2 layers) is the tail's calls plus the embedding
    row's lookup: the output norm, the head's matmul, the casts."""
    pytest.importorskip("rwkv")
    r = reference_ops.run(TAIL_OPS, {"name": "t", "source": "t", **TINY[version], "n_layer": 2})
    lookup = {"aten::select": 1}  # the embedding row (v7's v_first buffer is in the pass already)
    ref = {k: v - lookup.get(k, 0) for k, v in r["outside_layers"].items() if v - lookup.get(k, 0)}
    assert r["ours"] == ref
    assert r["ours"]["aten::layer_norm"] == 1 and r["ours"]["aten::matmul"] == 1


@pytest.mark.parametrize("backend", ["torch", "torch-linear"])
def test_the_rwkv7_pass_carries_its_state_and_keeps_the_series_layout(backend):
    p = tiny(7)
    z, state = layerpass.as_model(layerpass.build_ring(p, backend, "bf16", 2))
    w = z["blocks.1.key"]
    assert w.dtype == torch.bfloat16 and w.shape == (128, 128) and w.is_contiguous() is (backend == "torch")
    assert z["blocks.0.w1"].shape == (128, 16) and z["blocks.1.ffn_key"].shape == (128, p.dim_ffn)
    x = torch.rand(128).to(torch.bfloat16)
    with torch.no_grad():
        out, after = layerpass.functions()[3](x, z, state, 2, 2, 64)
    assert out.dtype == torch.bfloat16 and out.shape == (128,) and torch.isfinite(out.float()).all()
    assert len(after) == 6 and all(a.dtype == b.dtype and a.shape == b.shape for a, b in zip(after, state))
    assert after[1].dtype == torch.float32 and not torch.equal(after[1], state[1]) and not torch.equal(after[4], state[4])
    # the attention's shift is the layer-normed input of the first layer
    assert torch.equal(after[0], torch.nn.functional.layer_norm(x, (128,), z["blocks.0.ln1_w"], z["blocks.0.ln1_b"]))


@pytest.mark.parametrize("version", [4, 5, 6])
@pytest.mark.parametrize("backend", ["torch", "torch-linear"])
def test_layers_carry_their_state_and_keep_the_series_layout(version, backend):
    p = tiny(version)
    (d,) = layerpass.build_ring(p, backend, "bf16", 1)
    w = d["att_w"][0]
    assert w.dtype == torch.bfloat16 and w.shape == (128, 128)
    assert w.is_contiguous() is (backend == "torch")  # torch-linear: nn.Linear's [N, K], used transposed
    assert all(t.is_contiguous() for t in d.get("low", []))  # low-rank matrices are stored [K, N] either way
    before = [t.clone() for t in d["state"]] if version == 4 else d["state"].clone()
    x = torch.rand(128).to(torch.bfloat16)
    with torch.no_grad():
        out = layerpass.run_layer(p, layerpass.functions(), d, x)
    assert out.dtype == torch.bfloat16 and out.shape == (128,) and torch.isfinite(out.float()).all()
    after = d["state"]
    if version == 4:
        assert all(t.dtype == torch.float32 for t in after) and not torch.equal(after[0], before[0])
    else:
        assert after.dtype == torch.float32 and after.shape == (2, 64, 64) and not torch.equal(after, before)
    assert torch.equal(d["x_prev_att"], torch.nn.functional.layer_norm(x, (128,), *d["att"][:2]))


def test_the_ring_covers_the_cache_and_stays_within_the_model():
    p = tiny(4, n_layer=24)
    per_layer = layerpass.layer_bytes(p, "fp32")
    ll = layer_list(p)
    assert per_layer == sum(x.k * x.n * x.count * 4 for x in ll.layers if x.kind != "head") // 24
    n = layerpass.ring_size(p, "fp32", 1 << 20)
    assert n * per_layer >= LLC_FACTOR * (1 << 20) and (n - 1) * per_layer < LLC_FACTOR * (1 << 20)
    assert layerpass.ring_size(p, "fp32", 1 << 40) == 24  # never more layers than the model has
    assert layerpass.ring_size(p, "fp32", 1) == 2  # another layer's weights evict a layer's vectors


@pytest.mark.parametrize("version", [4, 6, 7])
def test_measure_splits_off_every_weight_matmul_of_a_layer(version):
    p = tiny(version)
    r = layerpass.measure(p, "torch-linear", "fp32", 0.05, 1 << 20)
    per_layer = sum(x.count for x in layer_list(p).layers if x.kind != "head") / p.n_layer
    # v6: the five token-shift matrices in one bmm count 5; v7: the first layer skips its value-residual pair
    assert r["weight_matmuls_per_layer"] == pytest.approx(per_layer)
    assert r["method"] == "layer-pass" and r["ring_layers"] == 3 and len(r["rounds"]) >= layerpass.FEWEST_ROUNDS
    for x in r["rounds"]:
        assert 0 < x["weight_matmul_seconds"] and x["non_matmul_seconds"] == pytest.approx(
            max(0.0, x["layer_seconds"] - x["weight_matmul_seconds"]))
    # every other round ends with the tail: its rest beyond the ring round before it, per token
    rounds = r["rounds"]
    assert [bool(x.get("tail")) for x in rounds] == [i % 2 == 1 for i in range(len(rounds))]
    assert r["seconds_per_block"] == pytest.approx(statistics.median(x["non_matmul_seconds"] for x in rounds[::2]))
    for x in rounds[1::2]:
        assert x["tail_seconds"] == pytest.approx(3 * (x["layer_seconds"] - x["weight_matmul_seconds"] - r["seconds_per_block"]))
    assert r["tail_seconds"] == pytest.approx(max(0.0, statistics.median(x["tail_seconds"] for x in rounds[1::2])))
    assert r["seconds_per_token"] == pytest.approx(r["seconds_per_block"] * 3 + r["tail_seconds"]) and r["seconds_per_block"] > 0


@pytest.mark.parametrize("version", [4, 7])
def test_a_later_window_times_as_many_rounds_without_the_tail_and_splits_over_both(version):
    """measure(keep=...) hands over its Rounds without the tail; later_window() times as many rounds again as the
    first window had without the tail, all marked window 1, and the split is over every window's rounds, with each
    window's median beside it."""
    import gc
    import weakref

    p = tiny(version)
    keep: list = []
    first = layerpass.measure(p, "torch", "fp32", 1.0, 1 << 20, keep)  # a budget the compiling passes always fit
    (r,) = keep
    n0, before = sum(1 for x in first["rounds"] if not x.get("tail")), len(first["rounds"])
    assert "windows" not in first and not any("window" in x for x in first["rounds"])
    assert layerpass.later_window_seconds(r) == pytest.approx(layerpass.LATER_WINDOW_MARGIN * sum(r.round_seconds))
    both = layerpass.later_window(r)
    later = both["rounds"][before:]
    assert len(later) == n0 and all(x["window"] == 1 and not x.get("tail") for x in later)
    plain = [x["non_matmul_seconds"] for x in both["rounds"] if not x.get("tail")]
    assert len(plain) == 2 * n0 and both["seconds_per_block"] == pytest.approx(statistics.median(plain))
    assert both["windows"] == pytest.approx([statistics.median(plain[:n0]), statistics.median(plain[n0:])])
    tails = [x for x in both["rounds"] if x.get("tail")]
    assert tails and all(x["tail_seconds"] == pytest.approx(
        3 * (x["layer_seconds"] - x["weight_matmul_seconds"] - both["seconds_per_block"])) for x in tails)
    assert both["seconds_per_token"] == pytest.approx(both["seconds_per_block"] * 3 + both["tail_seconds"])
    assert "two windows" in both["what"]
    # the tail's weights (the head: 0.5 GB in fp32 on a 1.5B) go once dropped, RWKV-7's model dict included
    r2 = layerpass.Rounds(p, "torch", "fp32", 1 << 20)
    assert r2.start(1.0)
    r2.round(), r2.round()  # the second round has the tail
    refs = [weakref.ref(t) for t in r2.tail.values() if isinstance(t, torch.Tensor)]
    assert refs
    r2.drop_tail()
    gc.collect()
    assert all(ref() is None for ref in refs)
    r2.round(), r2.round()
    assert not any(x.get("tail") for x in r2.rounds[2:])


def test_the_torch_series_are_timed_in_layers_the_stand_in_as_a_block():
    for version in (4, 5, 6, 7):
        p = tiny(version)
        for b in nonmatmul.BACKENDS:
            assert nonmatmul.measure_series(p, b, "fp32", 0.05, 1 << 20, True)["method"] == "layer-pass"
        assert "method" not in nonmatmul.measure_series(p, "ggml", "fp32", 0.05, 1 << 20, True, threads=1)
        assert "method" not in nonmatmul.measure_series(p, "torch", "fp32", 0.05, 1 << 20, False)  # warm: block


def test_a_series_too_slow_for_its_budget_falls_back_to_the_bare_block_and_says_so():
    """A budget no pass fits (TOO_SLOW): measure gives None, and the series' entry is the bare block, labelled."""
    p = tiny(7)
    assert layerpass.measure(p, "torch", "fp32", 1e-9, 1 << 20) is None
    entry = nonmatmul.measure_series(p, "torch", "fp32", 1e-9, 1 << 20, True)
    assert "method" not in entry and entry["seconds_per_token"] > 0
    assert entry["layer_pass_skipped"].startswith("a pass of whole layers is too slow for a 1e-09 s budget at torch fp32")
    assert "layer_pass_skipped" not in nonmatmul.measure_series(p, "torch", "fp32", 0.05, 1 << 20, True)


def test_a_results_file_with_a_layer_pass_entry_loads_and_is_checked(tmp_path):
    """The layer-pass entry (rounds, ring, split) passes the results file's record check; a damaged one is named."""
    from roofline_fixtures import make_results

    from rwkvprobe.results import load_results, save_results

    p = tiny(4)
    results = make_results(layer_list(p), backend="torch-linear")
    results["bandwidth"]["array_bytes"] = 10**9  # the fixture writes a float where a file holds an integer
    results["nonmatmul"] = [nonmatmul.measure_series(p, "torch-linear", "fp32", 0.05, 1 << 20, True)]
    save_results(tmp_path / "results.json", results)
    back = load_results(tmp_path / "results.json", kinds=("analyze",))
    assert back["nonmatmul"][0]["method"] == "layer-pass" and back["nonmatmul"][0]["rounds"]
    back["nonmatmul"][0]["rounds"][0]["layer_seconds"] = "slow"
    save_results(tmp_path / "bad.json", back)
    from rwkvprobe.errors import InputError

    with pytest.raises(InputError, match=r"nonmatmul\[0\]\.rounds\[0\]\.layer_seconds"):
        load_results(tmp_path / "bad.json", kinds=("analyze",))


DRIVER_READS = r"""
import json, os, sys
data = json.loads(sys.argv[1])
os.environ["RWKV_V7_ON"] = "0"
from collections import Counter
import torch
from rwkvprobe.measure import forward_worker as fw, layerpass
from rwkvprobe.model.profile import parse_profile, state_dict_shapes

reads = Counter()
plain = torch.jit.ScriptModule.__getattr__
def counting(self, name):  # a ScriptModule's settings and methods are not in its __dict__: every read comes here
    reads[name] += 1
    return plain(self, name)

def reference_reads(n_layer):
    p = parse_profile({**data, "n_layer": n_layer})
    m = fw.load_reference(fw.random_state_dict(state_dict_shapes(p), 0), p.version, "fp32")
    with torch.no_grad():
        _, st = m.forward([1, 2], None)
        reads.clear()
        torch.jit.ScriptModule.__getattr__ = counting
        try:
            m.forward([3], st)
        finally:
            torch.jit.ScriptModule.__getattr__ = plain
    return Counter(reads), p

two, _ = reference_reads(2)
three, p = reference_reads(3)
(d,) = layerpass.build_ring(p, "torch-linear", "fp32", 1)
driver = layerpass.make_driver(p.version)
torch.jit.ScriptModule.__getattr__ = counting
reads.clear()
layerpass.drive_layer(driver, d["named"], d["index"], p.version)
torch.jit.ScriptModule.__getattr__ = plain
print(json.dumps({"reference_layer": dict(three - two), "ours": dict(reads)}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("version", [4, 5, 6])
def test_the_driver_reads_as_many_module_attributes_a_layer_as_the_reference(version):
    """The reference's per-layer Python (layerpass.DRIVER_WORK): one more layer of its decode reads its TorchScript
    module's settings and layer functions as many times as drive_layer reads the driver's (each such read costs
    about 50 times a Python attribute's, and ten a layer were a tenth of the non-matmul time of rwkv4-169m)."""
    pytest.importorskip("rwkv")
    r = reference_ops.run(DRIVER_READS, {"name": "t", "source": "t", **TINY[version]})
    methods = {"att_one", "att_one_v5_1", "att_one_v6_0", "ffn_one", "ffn_one_v6"}
    ref_settings = sum(n for name, n in r["reference_layer"].items() if name not in methods)
    ref_methods = sum(n for name, n in r["reference_layer"].items() if name in methods)
    assert ref_settings == layerpass.DRIVER_WORK[version][0] == r["ours"]["version"], r
    assert ref_methods == layerpass.DRIVER_WORK[version][1] == r["ours"]["time_mix"] + r["ours"]["channel_mix"], r
    assert set(r["ours"]) == {"version", "time_mix", "channel_mix"}


def test_the_driver_looks_up_every_name_it_builds():
    for version in (4, 5, 6):
        p = tiny(version)
        ring = layerpass.build_ring(p, "torch", "fp32", 2)
        for d in ring:
            assert len(d["named"]) == layerpass.DRIVER_WORK[version][2]
            assert all(name.startswith(f"blocks.{d['index']}.") for name in d["named"])
            layerpass.drive_layer(layerpass.make_driver(version), d["named"], d["index"], version)  # no KeyError


# --------------------------------------------------------------------------------------------
# Prefill: the same layers over a chunk of tokens (measure_chunk)

CHUNK = [3, 4, 5, 6, 7]  # the reference's chunk (its forward(tokens) with more than one token)
CHUNK_OP_COUNTS = OP_COUNTS.replace("_, st = m.forward([3], st)", f"_, st = m.forward({CHUNK}, st)").replace(
    "m.forward([3], st)\n    return", f"m.forward({CHUNK}, st)\n    return").replace(
    "fns = layerpass.functions()", "fns = layerpass.chunk_functions()").replace(
    "x = torch.rand(p.n_embd)", f"x = torch.rand({len(CHUNK)}, p.n_embd)")


@pytest.mark.slow
@pytest.mark.parametrize("version", [4, 5, 6])
def test_a_chunk_layer_runs_exactly_the_reference_layers_operations(version):
    """One more layer in the reference's real 5-token chunk adds exactly the ATen calls of our chunk layer: the
    weight matmuls at M = 5, the token shift over the chunk, the per-token state loop, the casts."""
    pytest.importorskip("rwkv")
    assert "chunk_functions" in CHUNK_OP_COUNTS and f"forward({CHUNK}, st)\n    return" in CHUNK_OP_COUNTS
    r = reference_ops.run(CHUNK_OP_COUNTS, {"name": "t", "source": "t", **TINY[version]})
    assert r["ours"] == r["reference_layer"]
    assert r["ours"]["aten::layer_norm"] == 2 and r["ours"]["aten::matmul"] >= 7 + len(CHUNK) * (version > 4)


CHUNK_OP_COUNTS_7 = OP_COUNTS_7.replace("_, st = m.forward([3], st)", f"_, st = m.forward({CHUNK}, st)").replace(
    "m.forward([3], st)\n    return", f"m.forward({CHUNK}, st)\n    return").replace(
    "fns = layerpass.functions()", "fns = layerpass.chunk_functions()").replace(
    "x = torch.rand(p.n_embd)", f"x = torch.rand({len(CHUNK)}, p.n_embd)")


@pytest.mark.slow
def test_an_rwkv7_chunk_layer_runs_exactly_the_reference_layers_operations():
    pytest.importorskip("rwkv")
    assert "chunk_functions" in CHUNK_OP_COUNTS_7 and f"forward({CHUNK}, st)\n    return" in CHUNK_OP_COUNTS_7
    r = reference_ops.run(CHUNK_OP_COUNTS_7, {"name": "t", "source": "t", **TINY[7], "n_layer": 2})
    assert r["ours"] == r["reference_layer"]
    assert r["ours"]["aten::layer_norm"] == 2 and r["ours"]["aten::matmul"] >= 14 + 3 * len(CHUNK)


def _copied(ring):
    import copy

    return copy.deepcopy(ring)


@pytest.mark.parametrize("version", [4, 5, 6])
def test_a_chunk_layer_computes_what_its_tokens_decoded_one_by_one_compute(version):
    """The chunk form of a layer (token shift over the chunk, the state loop) gives, row for row, the outputs and
    the final state of the decode layer run token by token from the same state, to float64-checked precision."""
    p = tiny(version)
    (d,) = layerpass.build_ring(p, "torch-linear", "fp32", 1)
    one = _copied([d])[0]
    x = torch.rand(6, 128, generator=torch.Generator().manual_seed(3), dtype=torch.float32) * 2 - 1
    with torch.no_grad():
        chunk = layerpass.run_layer(p, layerpass.chunk_functions(), d, x)
        rows = torch.stack([layerpass.run_layer(p, layerpass.functions(), one, x[t]) for t in range(6)])
    assert chunk.shape == (6, 128) and torch.allclose(chunk, rows, rtol=1e-4, atol=1e-5)
    for key in ("x_prev_att", "x_prev_ffn"):
        assert torch.allclose(d[key], one[key], rtol=1e-5, atol=1e-6)
    states = zip(d["state"], one["state"]) if version == 4 else [(d["state"], one["state"])]
    for a, b in states:
        assert a.dtype == torch.float32 and torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    # and it is a real recurrence: the last row and the state depend on the first token (bit for bit otherwise)
    (e,) = layerpass.build_ring(p, "torch-linear", "fp32", 1)
    y = x.clone()
    y[0] += 1.0
    with torch.no_grad():
        other = layerpass.run_layer(p, layerpass.chunk_functions(), e, y)
    assert not torch.equal(other[-1], chunk[-1])
    assert not torch.equal(e["state"][0] if version == 4 else e["state"], d["state"][0] if version == 4 else d["state"])


def test_an_rwkv7_chunk_pass_computes_what_its_tokens_decoded_one_by_one_compute():
    p = tiny(7)
    z, state = layerpass.as_model(layerpass.build_ring(p, "torch", "fp32", 2))
    one = [t.clone() for t in state]
    x = torch.rand(5, 128, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        out, after = layerpass.chunk_functions()[3](x, z, state, 2, 2, 64)
        rows = []
        for t in range(5):
            row, one = layerpass.functions()[3](x[t], z, one, 2, 2, 64)
            rows.append(row)
    assert out.shape == (5, 128) and torch.allclose(out, torch.stack(rows), rtol=1e-4, atol=1e-4)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(after, one))


@pytest.mark.parametrize("version", [4, 6, 7])
def test_measure_chunk_splits_off_every_weight_matmul_of_a_layer(version):
    p = tiny(version)
    r = layerpass.measure_chunk(p, "torch-linear", "fp32", 8, 0.5, 1 << 20)
    per_layer = sum(x.count for x in layer_list(p).layers if x.kind != "head") / p.n_layer
    assert r["weight_matmuls_per_layer"] == pytest.approx(per_layer)  # the state loop's products are not weights
    assert r["method"] == "layer-pass" and r["chunk"] == 8 and len(r["rounds"]) >= layerpass.FEWEST_ROUNDS
    # no tail (a chunk runs it once, on its last token): every round is the ring's
    assert not any(x.get("tail") for x in r["rounds"]) and "tail_seconds" not in r
    assert r["seconds_per_chunk"] == pytest.approx(r["seconds_per_block"] * 3)
    assert r["seconds_per_block"] == pytest.approx(statistics.median(x["non_matmul_seconds"] for x in r["rounds"]))
    with pytest.raises(ValueError, match="a chunk is 2 tokens or more"):
        layerpass.measure_chunk(p, "torch-linear", "fp32", 1, 0.5, 1 << 20)


def test_the_torch_series_time_a_chunk_in_layers_and_the_rest_as_a_block():
    """analyze's --tokens 64: the torch series time the chunk's rest in layers (measure_chunk); a warm run, or a
    series too slow for a layer pass, the bare sequential block (measure_seq)."""
    p = tiny(5)
    entry = nonmatmul.measure_series(p, "torch", "fp32", 0.3, 1 << 20, True, chunks=(1, 8))
    assert set(entry["seq"]) == {"8"} and entry["seq"]["8"]["method"] == "layer-pass"
    warm = nonmatmul.measure_series(p, "torch", "fp32", 0.3, 1 << 20, False, chunks=(8,))
    assert "method" not in warm["seq"]["8"] and warm["seq"]["8"]["timing"]["samples"]
    slow = nonmatmul.measure_series(p, "torch", "fp32", 1e-9, 1 << 20, True, chunks=(8,))
    assert "method" not in slow["seq"]["8"] and slow["layer_pass_skipped"]


@pytest.mark.parametrize("tokens", [1, 6])
def test_the_matmul_split_read_from_raw_events_equals_the_profilers_own_self_times(tokens):
    """weight_matmul_us reads the profiler's raw events (fast on a chunk's thousands of ops); what it finds, weight
    matmuls by shape and the other matmul-family ops, equals what the profiler's key_averages reports as self time."""
    from rwkvprobe.measure.profiling import MATMUL_OPS, cpu_profile, weight_matmul_us, weight_shapes

    p = tiny(6)
    shapes, batched = weight_shapes([(x.k, x.n, x.count) for x in layer_list(p).layers], p.n_layer)
    ring = layerpass.build_ring(p, "torch-linear", "fp32", 2)
    one, _ = layerpass._pass_runner(p, "torch-linear", "fp32", ring, tokens,
                                    layerpass.build_tail(p, "torch-linear", "fp32"))
    with torch.no_grad():
        for _ in range(3):
            one(True)
        with cpu_profile() as prof:
            one(True)
    per: dict = {}
    weights, other = weight_matmul_us(prof, shapes, batched, per)
    groups = [e for e in prof.key_averages(group_by_input_shape=True) if e.key in MATMUL_OPS]
    total = sum(e.self_cpu_time_total for e in groups)
    assert weights > 0 and other > 0  # the state loop's products (and v6's low-rank ones) are not weights
    assert weights + other == pytest.approx(total, rel=1e-6)
    # every weight matrix of the ring's two layers (and the head), each counted once, v6's five-in-one bmm as five
    assert sum(d["calls"] for d in per.values()) == 2 * sum(x.count for x in layer_list(p).layers if x.kind != "head") / 3 + 1
    head = [e for e in groups if [list(s) for s in e.input_shapes if s][1:2] == [[128, 256]]]
    assert per["128x256"]["us"] == pytest.approx(sum(e.self_cpu_time_total for e in head), rel=1e-6)


def test_a_profile_holds_back_kinetos_start_and_stop_lines_and_passes_the_rest_on():
    """torch 2.13's kineto writes "USDT:... profiler_start" and "... profiler_stop" to stderr around every profile,
    whatever its log level: cpu_profile keeps them off the user's console; anything else written to stderr during
    the profile still gets there, and the profile still records the ops."""
    body = ("import os, torch\n"
            "from rwkvprobe.measure.profiling import cpu_profile, matmul_events\n"
            "{enter}\n"
            "    torch.ones(1, 8) @ torch.ones(8, 4)\n"
            "    os.write(2, b'kept line\\n')\n"
            "print(sorted({{name for name, _, _ in matmul_events(prof)}}))\n")
    ours = subprocess.run([sys.executable, "-c", body.format(enter="with cpu_profile() as prof:")],
                          capture_output=True, text=True, timeout=300)
    assert ours.returncode == 0, ours.stderr
    assert "aten::mm" in ours.stdout
    assert ours.stderr.splitlines() == ["kept line"]
    plain = subprocess.run([sys.executable, "-c", body.format(
        enter="from torch.autograd.profiler import profile\nwith profile(record_shapes=True) as prof:")],
        capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr
    noise = [line for line in plain.stderr.splitlines() if line != "kept line"]
    # what the filter takes out, where this torch writes it (torch 2.13 does: two lines)
    assert all(KINETO_NOISE.match(line) for line in noise), noise
