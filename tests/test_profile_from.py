"""`rwkvprobe profile from`: profiles from checkpoints, safetensors headers and config.json files.

Round trips: a state dict generated from a shipped profile (``state_dict_shapes``), saved as a .pth or
a safetensors file, must give back the same layer list and parameter count, for every version. The
version detection is checked against BlinkDL's reference package on the same files.
"""

import fractions
import json
import math
import os
import struct
import subprocess
import sys
import textwrap

import pytest
import yaml
from conftest import PROFILES, ROOT

from rwkvprobe.errors import InputError
from rwkvprobe.model.importer import detect_version, profile_from, profile_yaml
from rwkvprobe.model.profile import (
    default_dim_ffn,
    layer_list,
    load_profile,
    parse_profile,
    shipped_profiles,
    state_dict_shapes,
)

#: one small shipped profile per version
STEMS = {4: "rwkv4-169m", 5: "rwkv5-0b4", 6: "rwkv6-1b5", 7: "rwkv-0b1"}
RWKV_PROFILES = [p for p in shipped_profiles() if load_profile(p).version is not None]


def small(stem, **changes):
    """The shipped profile scaled down (3 layers, n_embd 128, vocab 300, low ranks / 8)."""
    data = yaml.safe_load((PROFILES / f"{stem}.yaml").read_text())
    data.update(n_layer=3, n_embd=128, vocab_size=300)
    if data["version"] >= 5:
        data["head_size"] = 32
    if "lora" in data:
        data["lora"] = {k: max(1, r // 8) for k, r in data["lora"].items()}
    data.update(changes)
    return parse_profile(data, f"{stem}-small")


def _torch():
    """torch, or a skip: it is the dev extra's, not a core dependency (safetensors and config.json
    files are read without it)."""
    return pytest.importorskip("torch")


def save(obj, path):
    _torch().save(obj, path)
    return path


def tensors(profile, meta=False):
    torch = _torch()
    torch.manual_seed(0)
    shapes = state_dict_shapes(profile)
    if meta:  # full-size checkpoints without the memory: meta tensors save as shapes only
        return {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    return {k: torch.rand(s) * 0.2 - 0.1 for k, s in shapes.items()}


def write_safetensors(path, shapes, sparse=False, dtype="F32"):
    """A safetensors file written by hand: 8-byte little-endian header length, JSON header, data.
    ``sparse``: the data is a hole in the file (only the header is ever read)."""
    item = {"F32": 4, "BF16": 2}[dtype]
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for key, shape in shapes.items():
        size = math.prod(shape) * item
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        if sparse:
            f.truncate(8 + len(raw) + offset)
        else:
            f.write(bytes(offset))
    return path


def write_model(tmp_path, profile, fmt, name="model"):
    if fmt == "pth":
        return save(tensors(profile), tmp_path / f"{name}.pth")
    return write_safetensors(tmp_path / f"{name}.safetensors", state_dict_shapes(profile))


def assert_same_model(original, imported):
    a, b = layer_list(original), layer_list(imported)
    assert b.layers == a.layers
    assert (b.embedding_rows, b.embedding_dim, b.other_params) == (a.embedding_rows, a.embedding_dim, a.other_params)
    assert b.total_params == a.total_params
    for key in ("version", "n_layer", "n_embd", "vocab_size", "head_size", "dim_ffn", "lora"):
        assert getattr(imported, key) == getattr(original, key), key


def one_error_line(cli, *args):
    code, out, err = cli("profile", "from", *args)
    assert code == 2, (out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rwkvprobe: error: ") and "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
@pytest.mark.parametrize("version", sorted(STEMS))
def test_round_trip_every_version_through_the_cli(cli, tmp_path, version, fmt):
    original = small(STEMS[version])
    path = write_model(tmp_path, original, fmt)
    out = tmp_path / "profiles" / "imported.yaml"
    out.parent.mkdir()
    code, stdout, err = cli("profile", "from", path, "--out", out)
    assert code == 0, err
    assert stdout == ""
    imported = load_profile(out)
    assert_same_model(original, imported)
    summary = err.strip().splitlines()
    assert len(summary) == 1
    assert f"RWKV-{version}" in summary[0] and f"{layer_list(original).total_params:,} parameters" in summary[0]
    assert f"{original.n_layer} layers" in summary[0]

    code, stdout, _ = cli("profile", "from", path)  # without --out: the YAML on stdout
    assert code == 0
    assert stdout == out.read_text()
    assert_same_model(original, parse_profile(yaml.safe_load(stdout)))


@pytest.mark.parametrize("path", RWKV_PROFILES, ids=lambda p: p.stem)
def test_round_trip_every_shipped_profile_at_full_size(tmp_path, path):
    """Full-size shapes cost nothing: meta tensors in the .pth, a sparse file behind the safetensors header."""
    original = load_profile(path)
    pth = save(tensors(original, meta=True), tmp_path / "full.pth")
    st = write_safetensors(tmp_path / "full.safetensors", state_dict_shapes(original), sparse=True, dtype="BF16")
    for model in (pth, st):
        text = profile_yaml(profile_from(model))
        assert_same_model(original, parse_profile(yaml.safe_load(text), str(model)))


def test_output_has_the_keys_and_layout_of_the_shipped_profiles(tmp_path):
    shipped = yaml.safe_load((PROFILES / "rwkv-0b1.yaml").read_text())
    path = save(tensors(load_profile(PROFILES / "rwkv-0b1.yaml"), meta=True), tmp_path / "RWKV-x070-World-0.1B.pth")
    data = profile_from(path)
    text = profile_yaml(data)
    assert list(yaml.safe_load(text)) == list(shipped)
    assert list(data) == list(shipped)
    assert data["name"] == "RWKV-x070-World-0.1B"
    assert "# dim_ffn defaults to 4 * n_embd: 3072" in text
    assert text.startswith("# RWKV-7, 12 layers, n_embd 768")
    assert "RWKV-x070-World-0.1B.pth" in data["source"]


@pytest.mark.parametrize("version", sorted(STEMS))
def test_non_default_ffn_width_is_written(tmp_path, version):
    original = small(STEMS[version], dim_ffn=200)
    assert original.dim_ffn != default_dim_ffn(version, original.n_embd)
    data = profile_from(write_model(tmp_path, original, "safetensors"))
    assert data["dim_ffn"] == 200
    assert "dim_ffn: 200" in profile_yaml(data)
    assert_same_model(original, parse_profile(data))


def test_name_option_and_vector_shapes(cli, tmp_path):
    """Checkpoints store vectors as (C,) or (1, 1, C): both are the same layout."""
    original = small("rwkv6-1b5")
    sd = {k: (t.flatten() if t.dim() == 3 and t.shape[0] == 1 else t) for k, t in tensors(original).items()}
    path = save(sd, tmp_path / "flat.pth")
    code, out, err = cli("profile", "from", path, "--name", "My  Finch")
    assert code == 0, err
    profile = parse_profile(yaml.safe_load(out))
    assert profile.name == "My Finch"
    assert_same_model(original, profile)


def test_legacy_non_zip_checkpoint(tmp_path):
    """Checkpoints from before torch 1.6 cannot be memory-mapped; weights_only still applies."""
    torch = _torch()
    original = small("rwkv5-0b4")
    path = tmp_path / "old.pth"
    torch.save(tensors(original), path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:1] == b"\x80"
    assert_same_model(original, parse_profile(profile_from(path)))


def test_without_torch_a_checkpoint_names_the_extra(cli, tmp_path, monkeypatch):
    path = _valid_pth(tmp_path)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    line = one_error_line(cli, path)
    assert "needs the 'torch' package" in line and "pip install 'rwkvprobe[torch]'" in line
    safetensors = write_model(tmp_path, small("rwkv-0b1"), "safetensors")
    assert parse_profile(profile_from(safetensors)).version == 7  # the header needs no torch


def test_folder_with_config_json_and_directory_without(cli, tmp_path):
    folder = tmp_path / "rwkv7-0.4B-world"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(FLA_RWKV7_0B4))
    data = profile_from(folder)
    assert data["name"] == "rwkv7-0.4B-world"
    assert "rwkv7-0.4B-world/config.json" in data["source"]
    assert "config.json" in one_error_line(cli, tmp_path)


# --------------------------------------------------------------------------------------------
# Prefixes and other names for the same tensors


def test_common_prefix_is_stripped(tmp_path):
    original = small("rwkv-0b1")
    shapes = {f"model.{k}": s for k, s in state_dict_shapes(original).items()}
    assert_same_model(original, parse_profile(profile_from(write_safetensors(tmp_path / "m.safetensors", shapes))))


def _transformers_name(name):
    """BlinkDL -> Hugging Face transformers names, as its convert_rwkv_checkpoint_to_hf.py renames them."""
    import re

    if name.startswith("emb."):
        name = name.replace("emb.", "embeddings.")
    if name.startswith("blocks.0.ln0"):
        name = name.replace("blocks.0.ln0", "blocks.0.pre_ln")
    name = re.sub(r"blocks\.(\d+)\.att", r"blocks.\1.attention", name)
    name = re.sub(r"blocks\.(\d+)\.ffn", r"blocks.\1.feed_forward", name)
    for short, long in (("k", "key"), ("v", "value"), ("r", "receptance")):
        if name.endswith(f".time_mix_{short}"):
            name = name[: -len(short)] + long
    return name if name == "head.weight" else "rwkv." + name


@pytest.mark.parametrize("stem", ["rwkv4-169m", "rwkv6-1b5"])
def test_transformers_names(tmp_path, stem):
    original = small(stem)
    sd = {_transformers_name(k): t for k, t in tensors(original).items()}
    assert "rwkv.blocks.0.attention.key.weight" in sd and "rwkv.embeddings.weight" in sd
    path = save(sd, tmp_path / "pytorch_model.bin")
    data = profile_from(path)
    assert "transformers names" in data["source"]
    assert_same_model(original, parse_profile(data))


def _fla_shapes(profile):
    """An RWKV-7 of flash-linear-attention (fla-hub): nn.Linear [out, in], LoRA as lora.0 / lora.2,
    no v_lora in layer 0."""
    C, F, V, lo = profile.n_embd, profile.dim_ffn, profile.vocab_size, profile.lora
    H, S = C // profile.head_size, profile.head_size
    sd = {"model.embeddings.weight": (V, C), "model.norm.weight": (C,), "model.norm.bias": (C,),
          "lm_head.weight": (V, C)}
    for i in range(profile.n_layer):
        b = f"model.layers.{i}."
        if i == 0:
            sd[b + "pre_norm.weight"] = sd[b + "pre_norm.bias"] = (C,)
        for n in ("attn_norm", "ffn_norm", "attn.g_norm"):
            sd[f"{b}{n}.weight"] = sd[f"{b}{n}.bias"] = (C,)
        for m in "rwkvag":
            sd[f"{b}attn.x_{m}"] = (1, 1, C)
        sd[b + "attn.k_k"] = sd[b + "attn.k_a"] = (C,)
        sd[b + "attn.r_k"] = (H, S)
        for proj in ("r_proj", "k_proj", "v_proj", "o_proj"):
            sd[f"{b}attn.{proj}.weight"] = (C, C)
        for lora, rank, bias in (("w_lora", "decay", True), ("a_lora", "aaa", True), ("v_lora", "mv", True),
                                 ("g_lora", "gate", False)):
            if lora == "v_lora" and i == 0:
                continue
            sd[f"{b}attn.{lora}.lora.0.weight"] = (lo[rank], C)
            sd[f"{b}attn.{lora}.lora.2.weight"] = (C, lo[rank])
            if bias:
                sd[f"{b}attn.{lora}.lora.2.bias"] = (C,)
        sd[b + "ffn.x_k"] = (C,)
        sd[b + "ffn.key.weight"] = (F, C)
        sd[b + "ffn.value.weight"] = (C, F)
    return sd


def test_flash_linear_attention_rwkv7_names(tmp_path):
    original = small("rwkv-1b5")
    data = profile_from(write_safetensors(tmp_path / "model.safetensors", _fla_shapes(original)))
    assert "flash-linear-attention" in data["source"]
    assert_same_model(original, parse_profile(data))


# --------------------------------------------------------------------------------------------
# Version detection agrees with BlinkDL's reference package


REFERENCE_SCRIPT = textwrap.dedent("""
    import importlib, json, os, sys
    os.environ["RWKV_JIT_ON"] = "0"
    os.environ["RWKV_CUDA_ON"] = "0"
    os.environ.pop("RWKV_V7_ON", None)
    import rwkv.model
    found = {}
    for path in sys.argv[1:]:
        if path.endswith("v7.pth"):  # the package picks its RWKV-7 class at import time
            os.environ["RWKV_V7_ON"] = "1"
            importlib.reload(rwkv.model)
            m = rwkv.model.RWKV(model=path[:-4], strategy="cpu fp32")
            found[path] = {"version": 7.0, "n_layer": m.n_layer, "n_embd": m.n_embd, "head_size": int(m.head_size)}
        else:
            m = rwkv.model.RWKV(model=path[:-4], strategy="cpu fp32", verbose=False)
            found[path] = {"version": float(m.version), "n_layer": m.args.n_layer, "n_embd": m.args.n_embd}
    print(json.dumps(found))
""")


def _reference(paths):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", REFERENCE_SCRIPT, *map(str, paths)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # one subprocess importing torch and the reference package: about 5 s
def test_version_detection_agrees_with_the_reference_package(tmp_path):
    pytest.importorskip("rwkv")
    torch = _torch()
    paths = {version: save(tensors(small(STEMS[version])), tmp_path / f"v{version}.pth") for version in (4, 5, 6, 7)}
    # RWKV-5.1: one decay and one bonus per head. The reference runs it; profiles do not describe it.
    v51 = tensors(small("rwkv5-0b4"))
    heads = 128 // 32
    for k in list(v51):
        if k.endswith(("att.time_decay", "att.time_faaaa")):
            v51[k] = torch.rand(heads)
    paths[5.1] = save(v51, tmp_path / "v51.pth")

    ref = _reference([paths[v] for v in (4, 5, 6, 5.1, 7)])
    expected_ref_version = {4: 4.0, 5: 5.2, 6: 6.0, 7: 7.0, 5.1: 5.1}
    for version, path in paths.items():
        seen = ref[str(path)]
        assert seen["version"] == expected_ref_version[version]
        shapes = {k: tuple(t.shape) for k, t in torch.load(path, weights_only=True).items()}
        assert detect_version(shapes) == seen["version"]
        if version == 5.1:
            with pytest.raises(InputError, match="RWKV-5.1 checkpoint"):
                profile_from(path)
            continue
        profile = parse_profile(profile_from(path))
        assert profile.version == int(seen["version"])
        assert (profile.n_layer, profile.n_embd) == (seen["n_layer"], seen["n_embd"])
        if version == 7:
            assert profile.head_size == seen["head_size"]


# --------------------------------------------------------------------------------------------
# Hugging Face config.json (values as published on the Hub)

HF_RWKV4_169M_PILE = {"architectures": ["RwkvForCausalLM"], "attention_hidden_size": 768, "bos_token_id": 0,
                      "context_length": 1024, "eos_token_id": 0, "hidden_size": 768, "intermediate_size": 3072,
                      "layer_norm_epsilon": 1e-05, "model_type": "rwkv", "num_hidden_layers": 12,
                      "rescale_every": 6, "tie_word_embeddings": False, "use_cache": True, "vocab_size": 50277}
HF_RWKV5_1B5 = {"architectures": ["Rwkv5ForCausalLM"], "attention_hidden_size": 2048, "head_size": 64,
                "hidden_size": 2048, "intermediate_size": None, "layer_norm_epsilon": 1e-05,
                "model_type": "rwkv5", "num_attention_heads": 32, "num_hidden_layers": 24, "vocab_size": 65536}
HF_RWKV6_1B6 = {"architectures": ["Rwkv6ForCausalLM"], "attention_hidden_size": 2048, "head_size": 64,
                "hidden_size": 2048, "intermediate_size": None, "model_type": "rwkv6", "num_hidden_layers": 24,
                "vocab_size": 65536}
FLA_RWKV7_0B4 = {"a_low_rank_dim": 64, "architectures": ["RWKV7ForCausalLM"], "attn": None, "attn_mode": "chunk",
                 "decay_low_rank_dim": 64, "gate_low_rank_dim": 128, "head_dim": 64, "hidden_act": "sqrelu",
                 "hidden_ratio": 4.0, "hidden_size": 1024, "intermediate_size": 4096, "model_type": "rwkv7",
                 "num_heads": None, "num_hidden_layers": 24, "v_low_rank_dim": 32, "value_dim": [1024] * 24,
                 "vocab_size": 65536}
FLA_RWKV7_1B5 = {"a_low_rank_dim": 96, "attn": None, "decay_low_rank_dim": 96, "gate_low_rank_dim": 256,
                 "head_dim": 64, "hidden_ratio": 4.0, "hidden_size": 2048, "intermediate_size": 8192,
                 "model_type": "rwkv7", "num_heads": None, "num_hidden_layers": 24, "v_low_rank_dim": 64,
                 "vocab_size": 65536}


@pytest.mark.parametrize("config, stem", [
    (HF_RWKV4_169M_PILE, "rwkv4-169m"),
    (HF_RWKV5_1B5, "rwkv5-1b5"),
    (HF_RWKV6_1B6, "rwkv6-1b5"),
    ({**HF_RWKV6_1B6, "hidden_size": 4096, "attention_hidden_size": 4096, "num_hidden_layers": 32}, "rwkv6-7b"),
    (FLA_RWKV7_0B4, "rwkv-0b4"),
    (FLA_RWKV7_1B5, "rwkv-1b5"),
    ({**FLA_RWKV7_1B5, "intermediate_size": None, "head_dim": None, "num_heads": 32}, "rwkv-1b5"),
], ids=["rwkv4", "rwkv5", "rwkv6", "rwkv6-7b", "rwkv7-0b4", "rwkv7-1b5", "rwkv7-defaults"])
def test_config_json_matches_the_shipped_profile(cli, tmp_path, config, stem):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config, indent=2))
    code, out, err = cli("profile", "from", path)
    assert code == 0, err
    assert_same_model(load_profile(PROFILES / f"{stem}.yaml"), parse_profile(yaml.safe_load(out)))


@pytest.mark.parametrize("config, words", [
    ({"model_type": "llama", "hidden_size": 4096}, "model_type 'llama' is not an RWKV model"),
    ({"foo": 1}, "without model_type"),
    ({**FLA_RWKV7_0B4, "attn": {"layers": [1], "num_heads": 8}}, "hybrid"),
    ({k: v for k, v in FLA_RWKV7_0B4.items() if k != "v_low_rank_dim"}, "key 'v_low_rank_dim'"),
    ({**HF_RWKV4_169M_PILE, "attention_hidden_size": 512}, "attention_hidden_size 512"),
    ({**HF_RWKV4_169M_PILE, "num_hidden_layers": "12"}, "key 'num_hidden_layers'"),
    ([1, 2, 3], "not a config.json"),
])
def test_bad_config_json(cli, tmp_path, config, words):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert words in one_error_line(cli, path)


# --------------------------------------------------------------------------------------------
# Not a model, truncated, unknown layout: one line, exit 2


def _valid_pth(tmp_path):
    return save(tensors(small("rwkv-0b1")), tmp_path / "ok.pth")


def _cut(path, keep, name):
    data = path.read_bytes()
    out = path.with_name(name)
    out.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])
    return out


BAD_FILES = {
    "text file": (lambda t: (t / "notes.txt").write_text("hello, not a model\n") and t / "notes.txt",
                  "not a model file"),
    "text named .pth": (lambda t: (t / "x.pth").write_text("hello\n") and t / "x.pth", "not a PyTorch checkpoint"),
    "empty file": (lambda t: (t / "empty.pth").write_bytes(b"") or t / "empty.pth", "is empty"),
    "truncated pth": (lambda t: _cut(_valid_pth(t), -2000, "cut.pth"), "truncated or damaged"),
    "truncated safetensors data": (
        lambda t: _cut(write_model(t, small("rwkv-0b1"), "safetensors"), -100, "cut.safetensors"), "truncated"),
    "truncated safetensors header": (
        lambda t: _cut(write_model(t, small("rwkv-0b1"), "safetensors"), 200, "cut2.safetensors"), "truncated"),
    "safetensors too short": (lambda t: (t / "s.safetensors").write_bytes(b"\x01\x02") and t / "s.safetensors",
                              "too short"),
    "unknown layout": (lambda t: save({"encoder.weight": _torch().zeros(4, 4)}, t / "u.pth"), "unknown layout"),
    "missing tensor": (
        lambda t: save({k: v for k, v in tensors(small("rwkv6-1b5")).items() if k != "blocks.1.att.gate.weight"},
                       t / "m.pth"),
        "'blocks.1.att.gate.weight' is missing"),
    "extra tensor": (
        lambda t: save({**tensors(small("rwkv4-169m")), "blocks.0.att.time_state": _torch().zeros(4)}, t / "e.pth"),
        "'blocks.0.att.time_state' is not part of it"),
    "wrong shape": (
        lambda t: save({**tensors(small("rwkv4-169m")), "blocks.2.ffn.value.weight": _torch().zeros(128, 100)},
                       t / "w.pth"),
        "'blocks.2.ffn.value.weight' has shape (128, 100)"),
    "a block missing": (
        lambda t: save({k: v for k, v in tensors(small("rwkv4-169m")).items() if not k.startswith("blocks.1.")},
                       t / "b.pth"),
        "block 1 of 3 is missing"),
    "pickled object": (lambda t: save({"x": fractions.Fraction(1, 3)}, t / "o.pth"), "weights_only"),
    "a plain tensor": (lambda t: save(_torch().zeros(3), t / "t.pth"), "not a state dict"),
    "no such file": (lambda t: t / "absent.pth", "no such file"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_one_line_exit_2(cli, tmp_path, case):
    make, words = BAD_FILES[case]
    path = make(tmp_path)
    line = one_error_line(cli, path)
    assert str(path) in line
    assert words in line, line


def test_out_in_missing_folder_is_one_line(cli, tmp_path):
    path = _valid_pth(tmp_path)
    line = one_error_line(cli, path, "--out", tmp_path / "nowhere" / "x.yaml")
    assert "cannot write" in line
    assert not (tmp_path / "nowhere").exists()


def test_bad_name_is_one_line(cli, tmp_path):
    assert "--name" in one_error_line(cli, _valid_pth(tmp_path), "--name", "  ")


def test_subprocess_exit_code_and_stderr(tmp_path):
    from conftest import run_module

    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    proc = run_module("profile", "from", path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [f"rwkvprobe: error: {path}: not a model file; expected an RWKV "
                                                ".pth checkpoint, a .safetensors file or a Hugging Face config.json"]
