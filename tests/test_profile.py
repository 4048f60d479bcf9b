"""Profiles: validation of bad input, and the layer list against the checkpoint layout."""

import math
import re

import pytest
from conftest import PROFILES

from rwkvprobe.errors import InputError
from rwkvprobe.model.profile import (
    DTYPE_BYTES,
    count_params,
    default_dim_ffn,
    layer_list,
    load_profile,
    parse_profile,
    shipped_profiles,
    state_dict_shapes,
)

V7 = """name: t
source: test
version: 7
n_layer: 2
n_embd: 128
vocab_size: 300
head_size: 64
lora: {decay: 32, aaa: 16, mv: 48, gate: 64}
"""


def test_every_required_profile_is_shipped():
    names = {p.stem for p in shipped_profiles()}
    required = {"rwkv-0b1", "rwkv-0b4", "rwkv-1b5", "rwkv-3b", "rwkv-7b",
                "rwkv4-169m", "rwkv4-430m", "rwkv4-1b5", "rwkv4-3b", "rwkv4-7b", "rwkv4-14b",
                "rwkv5-1b5", "rwkv5-3b", "rwkv6-1b5", "rwkv6-3b", "example-layers"}
    assert required <= names


@pytest.mark.parametrize("path", shipped_profiles(), ids=lambda p: p.stem)
def test_shipped_profile_param_count_matches_checkpoint_layout(path):
    """The layer list (matmuls x stored + embedding + vectors) counts what a checkpoint holds."""
    ll = layer_list(load_profile(path))
    assert ll.profile.source
    if ll.profile.version is None:
        assert ll.total_params == sum(layer.k * layer.n * layer.count for layer in ll.layers)
        return
    assert ll.total_params == count_params(state_dict_shapes(ll.profile))


def test_headline_profile_is_rwkv7_1b5():
    p = load_profile(PROFILES / "rwkv-1b5.yaml")
    assert (p.version, p.n_layer, p.n_embd, p.vocab_size) == (7, 24, 2048, 65536)


# Published sizes (BlinkDL's model names): a wrong shape shows up here as a wrong size.
@pytest.mark.parametrize("stem, low, high", [
    ("rwkv-0b1", 0.185e9, 0.195e9), ("rwkv-0b4", 0.44e9, 0.46e9), ("rwkv-1b5", 1.50e9, 1.55e9),
    ("rwkv-3b", 2.90e9, 3.0e9), ("rwkv-7b", 7.1e9, 7.3e9),
    ("rwkv4-169m", 0.165e9, 0.172e9), ("rwkv4-430m", 0.425e9, 0.435e9), ("rwkv4-14b", 13.9e9, 14.3e9),
    ("rwkv6-1b5", 1.55e9, 1.65e9), ("rwkv6-3b", 3.0e9, 3.2e9),
])
def test_param_count_near_published_size(stem, low, high):
    assert low <= layer_list(load_profile(PROFILES / f"{stem}.yaml")).total_params <= high


def _matrices_in_state_dict(shapes, layer_name, version):
    """(K, N) of every stored matrix that a layer-list entry stands for, read from the checkpoint layout."""
    kind, _, part = layer_name.partition(".")
    found = []
    for key, shape in shapes.items():
        if layer_name == "head":
            if key == "head.weight":
                found.append((shape[1], shape[0]))
            continue
        m = re.fullmatch(r"blocks\.\d+\.(att|ffn)\.(.+)", key)
        if not m or m.group(1) != kind:
            continue
        name = m.group(2)
        if name == f"{part}.weight":  # nn.Linear: stored [N, K]
            found.append((shape[1], shape[0]))
        elif version == 7 and name == part:  # low-rank: stored [K, N]
            found.append(shape)
        elif version == 6:
            v6 = {"maa_w1": "time_maa_w1", "maa_w2": "time_maa_w2", "decay_w1": "time_decay_w1",
                  "decay_w2": "time_decay_w2"}
            if name == v6.get(part):
                found += [shape[1:]] * shape[0] if len(shape) == 3 else [shape]
    return found


@pytest.mark.parametrize("path", [p for p in shipped_profiles() if p.stem != "example-layers"], ids=lambda p: p.stem)
def test_each_layer_matches_the_checkpoint_tensors(path):
    ll = layer_list(load_profile(path))
    shapes = state_dict_shapes(ll.profile)
    per_block_matrices = 0
    for layer in ll.layers:
        found = _matrices_in_state_dict(shapes, layer.name, ll.profile.version)
        assert found, layer.name
        assert all(tuple(f) == (layer.k, layer.n) for f in found), (layer.name, set(map(tuple, found)))
        # v6 maa_w2 is one [5, mix, C] tensor per block standing for 5 matmuls
        assert len(found) == layer.stored, layer.name
        per_block_matrices += len(found)
    # every 2-D+ tensor except the embedding is accounted for by some layer
    all_matrices = sum((s[0] if len(s) == 3 else 1) for k, s in shapes.items()
                       if len(s) >= 2 and s[0] != 1 and k != "emb.weight" and not k.endswith(("r_k", "time_decay", "time_faaaa")))
    assert per_block_matrices == all_matrices


def test_layer_arithmetic():
    ll = layer_list(parse_profile({"name": "x", "source": "y", "layers": [
        {"name": "a", "k": 3, "n": 5, "count": 2}, {"name": "b", "k": 7, "n": 11, "count": 1}]}))
    assert ll.flops_per_token() == 2 * (3 * 5 * 2 + 7 * 11)
    assert ll.weight_bytes_per_token("fp16") == 2 * (3 * 5 * 2 + 7 * 11)
    assert ll.weight_bytes_per_token("int4") == 0.5 * (3 * 5 * 2 + 7 * 11)
    assert ll.layers[0].flops(m=64) == 2 * 64 * 3 * 5 * 2
    assert ll.unique_shapes() == [(3, 5), (7, 11)]
    assert DTYPE_BYTES["int8"] == 1


def test_v7_block0_skips_value_residual():
    ll = layer_list(parse_profile(__import__("yaml").safe_load(V7)))
    v1 = next(layer for layer in ll.layers if layer.name == "att.v1")
    assert (v1.k, v1.n, v1.count, v1.stored) == (128, 48, 1, 2)


@pytest.mark.parametrize("version, n_embd, expected", [
    (4, 768, 3072), (7, 2048, 8192), (5, 2048, 7168), (6, 2560, 8960), (6, 4096, 14336), (5, 1024, 3584)])
def test_default_ffn_width(version, n_embd, expected):
    assert default_dim_ffn(version, n_embd) == expected


def test_explicit_dim_ffn_overrides_default():
    text = V7.replace("head_size: 64", "head_size: 64\ndim_ffn: 320")
    p = parse_profile(__import__("yaml").safe_load(text))
    assert next(layer for layer in layer_list(p).layers if layer.name == "ffn.key").n == 320


BAD = [
    # (change to the valid V7 profile, key named in the message, words in the message)
    ("foo: 1\n", "foo", "a known key"),
    ("n_layer: twelve\n", "n_layer", "expected a positive integer, got 'twelve'"),
    ("n_embd: 0\n", "n_embd", "expected a positive integer, got 0"),
    ("n_layer: -3\n", "n_layer", "expected a positive integer, got -3"),
    ("n_layer: 12.5\n", "n_layer", "expected a positive integer, got 12.5"),
    ("vocab_size: true\n", "vocab_size", "expected a positive integer, got True"),
    ("n_embd: 1000000000\n", "n_embd", "no larger than"),
    ("version: 8\n", "version", "expected an RWKV version 4, 5, 6 or 7, got 8"),
    ("version: '7'\n", "version", "got '7'"),
    ("head_size: 48\n", "head_size", "a divisor of n_embd"),
    ("lora: {decay: 32, aaa: 16, mv: 48}\n", "lora.gate", "the key is missing"),
    ("lora: {decay: 32, aaa: 16, mv: 48, gate: 64, extra: 3}\n", "lora.extra", "one of decay, aaa, mv, gate"),
    ("lora: {decay: 0, aaa: 16, mv: 48, gate: 64}\n", "lora.decay", "positive integer"),
    ("lora: 5\n", "lora", "a mapping"),
    ("name: ''\n", "name", "a non-empty string"),
    ("dim_ffn: -1\n", "dim_ffn", "positive integer"),
]


def _with(change):
    key = change.split(":")[0]
    kept = [line for line in V7.splitlines() if not line.startswith(key + ":")]
    return "\n".join(kept) + "\n" + change


@pytest.mark.parametrize("change, key, words", BAD)
def test_bad_profile_names_file_key_and_expectation(write_yaml, change, key, words):
    path = write_yaml(_with(change))
    with pytest.raises(InputError) as exc:
        load_profile(path)
    msg = str(exc.value)
    assert msg.startswith(str(path) + ": ")
    assert f"key '{key}'" in msg
    assert words in msg
    assert "\n" not in msg


@pytest.mark.parametrize("text, words", [
    ("", "expected a mapping"),
    ("- a\n- b\n", "expected a mapping"),
    ("name: [unclosed\n", "not valid YAML"),
    ("name: x\nversion: 7\n", "key 'source'"),
    ("name: x\nsource: y\n", "key 'version'"),
    ("name: x\nsource: y\nversion: 4\nn_layer: 2\nn_embd: 64\nvocab_size: 10\nhead_size: 64\n", "no head_size for RWKV-4"),
    ("name: x\nsource: y\nversion: 4\nn_layer: 2\nn_embd: 64\nvocab_size: 10\nlora: {mix: 1}\n", "only RWKV-6 and RWKV-7"),
    ("name: x\nsource: y\nversion: 6\nn_layer: 2\nn_embd: 64\nvocab_size: 10\nhead_size: 64\n", "key 'lora'"),
    ("name: x\nsource: y\nlayers: []\n", "key 'layers'"),
    ("name: x\nsource: y\nlayers:\n  - {name: a, k: 0, n: 4, count: 1}\n", "key 'layers[0].k'"),
    ("name: x\nsource: y\nlayers:\n  - {name: a, k: 4, n: 4}\n", "key 'layers[0].count'"),
    ("name: x\nsource: y\nlayers:\n  - {name: a, k: 4, n: 4, count: 1, bias: 1}\n", "key 'layers[0].bias'"),
    ("name: x\nsource: y\nlayers:\n  - {name: a, k: 4, n: 4, count: 1}\n  - {name: a, k: 2, n: 2, count: 1}\n", "not used by another layer"),
    ("name: x\nsource: y\nversion: 7\nlayers:\n  - {name: a, k: 4, n: 4, count: 1}\n", "key 'version'"),
    ("!!python/object/apply:os.system ['echo hi']\n", "not valid YAML"),
])
def test_bad_profile_texts(write_yaml, text, words):
    with pytest.raises(InputError, match=re.escape(words)):
        load_profile(write_yaml(text))


def test_missing_profile_file(tmp_path):
    with pytest.raises(InputError, match="no such profile file"):
        load_profile(tmp_path / "nope.yaml")


def test_layers_profile_round_trip(write_yaml):
    ll = layer_list(load_profile(PROFILES / "example-layers.yaml"))
    assert ll.profile.version is None
    assert [layer.name for layer in ll.layers][-1] == "head"
    assert ll.embedding_rows == 0 and ll.other_params == 0
    assert math.isclose(ll.flops_per_token(), 2 * ll.matmul_params)  # every stored matrix runs once per token


# Exact parameter counts of released checkpoints. 0.4B: RWKV-LM README.md ("450.834432 M", counting the
# unused block-0 v0/v1/v2). The others match the byte sizes of the released .pth files (2 bytes a
# parameter plus ~128 bytes a tensor), checked by hand against their published sizes.
@pytest.mark.parametrize("stem, params", [
    ("rwkv-0b4", 450_834_432),
    ("rwkv-1b5", 1_527_668_736),
    ("rwkv-3b", 2_948_065_280),
    ("rwkv-7b", 7_199_932_416),
    ("rwkv6-1b5", 1_599_873_024),
    ("rwkv6-3b", 3_099_863_040),
    ("rwkv6-7b", 7_635_746_816),
    ("rwkv5-1b5", 1_577_754_624),
    ("rwkv5-3b", 3_062_999_040),
    ("rwkv5-7b", 7_518_044_160),
    ("rwkv4-430m", 430_397_440),
    ("rwkv4-1b5", 1_515_106_304),
    ("rwkv4-3b", 2_984_627_200),
    ("rwkv4-7b", 7_392_649_216),
])
def test_exact_param_count_of_released_checkpoint(stem, params):
    assert layer_list(load_profile(PROFILES / f"{stem}.yaml")).total_params == params


def test_v6_token_shift_matrices_are_one_batched_call():
    """The reference multiplies a block's five [mix, C] token-shift matrices in one bmm: the layer is timed as that
    one call, a [mix, 5C] matmul of the same weight bytes and FLOPs, run once a block."""
    from rwkvprobe.model.profile import Layer, layers_from_json, profile_json

    ll = layer_list(load_profile(PROFILES / "rwkv6-1b5.yaml"))
    p = ll.profile
    w2 = next(x for x in ll.layers if x.name == "att.maa_w2")
    mix, C, L = p.lora["mix"], p.n_embd, p.n_layer
    assert (w2.k, w2.n, w2.count, w2.stored, w2.batch) == (mix, C, 5 * L, 5 * L, 5)
    assert w2.call_shape == (mix, 5 * C) and w2.calls == L
    k, n = w2.call_shape
    assert 2 * k * n * w2.calls == w2.flops(1) and k * n * w2.calls * 2 == w2.weight_bytes("fp16")
    assert (mix, 5 * C) in ll.unique_shapes() and (mix, C) not in ll.unique_shapes()
    assert all(x.batch == 1 and x.call_shape == (x.k, x.n) and x.calls == x.count for x in ll.layers if x is not w2)
    assert layers_from_json(profile_json(ll)).layers == ll.layers  # a results file keeps the batch
    # a results file written before the batch: its layers run one matrix a call
    old = profile_json(ll)
    for x in old["layers"]:
        x.pop("batch", None)
    assert next(x for x in layers_from_json(old).layers if x.name == "att.maa_w2").call_shape == (mix, C)
    with pytest.raises(ValueError, match="not calls of 5"):
        Layer("x", "lora", 2, 3, count=7, batch=5)
