"""Profiles from real models: ``rwkvprobe profile from PATH``.

Reads the hyper-parameters of an RWKV model from what a user has on disk and writes a profile in the
format of the shipped ones (``profiles/*.yaml``), so that ``analyze``, ``onnx`` and ``profile show``
describe that exact model:

* a BlinkDL ``.pth`` checkpoint, opened with ``torch.load(weights_only=True, mmap=True)``: tensors
  only, never arbitrary pickled objects, and no weight is read (only shapes are used);
* a ``.safetensors`` file: only its header (an 8-byte little-endian length, then JSON) is read;
* a Hugging Face ``config.json`` (``model_type`` rwkv, rwkv5, rwkv6 or rwkv7), or a folder holding one.

The version is told from tensor names the way BlinkDL's ``rwkv`` package (0.8.32, ``RWKV.__init__``)
tells it: ``ln_x`` -> 5, ``gate.weight`` -> 5.1, a ``time_decay`` of shape (heads, head_size) -> 5.2,
``time_maa`` -> 6, else 4; RWKV-7 checkpoints (which the package loads with its separate
``RWKV_x070`` class) are the ones with ``att.r_k``. Profiles describe 4, 5.2, 6 and 7; 5.0 and 5.1
are refused. Every tensor of a BlinkDL-layout file is then checked against
:func:`rwkvprobe.model.profile.state_dict_shapes` of the inferred profile, so the profile's parameter count
is the file's. Tensor names may carry a common prefix (``model.``, ``rwkv.``, ...); the renamed
layout of Hugging Face ``transformers``' RWKV conversion (``embeddings``, ``attention``,
``feed_forward``, ``pre_ln``, ``time_mix_key``) and the RWKV-7 layout of flash-linear-attention
(``layers.N.attn.w_lora.lora.0.weight``, ...) are read too.

Anything else -- not a model, a truncated file, an unknown layout -- is one ``InputError`` line that
names the file and what is wrong.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import struct
from pathlib import Path
from typing import Any, Optional

from rwkvprobe.errors import InputError, MissingExtra
from rwkvprobe.model.profile import default_dim_ffn, parse_profile, state_dict_shapes

Shapes = dict[str, tuple[int, ...]]

EXPECTED = "an RWKV .pth checkpoint, a .safetensors file or a Hugging Face config.json"
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
_MAX_CONFIG = 16 * 1024 * 1024

#: bytes per element of the safetensors dtypes (to check a header against the file size)
_ST_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}

_LORA_COMMENT = {
    6: "low-rank dimensions: token-shift mix (time_maa_w1/w2) and data-dependent decay (time_decay_w1/w2)",
    7: "low-rank dimensions: decay (w1/w2), in-context learning rate (a1/a2), value residual (v1/v2), gate (g1/g2)",
}


# --------------------------------------------------------------------------------------------
# Entry points


def profile_from(path: str | Path, name: Optional[str] = None) -> dict:
    """Profile data (the keys of a shipped profile YAML) for the model at ``path``; InputError if
    the file is not an RWKV model this importer can read. The result passes ``parse_profile``."""
    p = Path(path)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise InputError(f"{p}: is a directory without a config.json; expected {EXPECTED}")
        p = p / "config.json"
    size, head = _peek(p)
    if size == 0:
        raise InputError(f"{p}: is empty; expected {EXPECTED}")
    suffix = p.suffix.lower()
    zipped = head[:4] == b"PK\x03\x04"
    pickled = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    if suffix == ".safetensors" or (not zipped and _looks_like_safetensors(head, size)):
        data = _profile_from_shapes(p, _shapes_from_safetensors(p, size), "safetensors header")
    elif zipped or pickled or suffix in _TORCH_SUFFIXES:
        if not (zipped or pickled):
            raise InputError(f"{p}: not a PyTorch checkpoint (no zip or pickle header); expected {EXPECTED}")
        data = _profile_from_shapes(p, _shapes_from_torch(p, zipped), "tensor shapes of a PyTorch checkpoint")
    elif head.lstrip()[:1] in (b"{", b"[") or suffix == ".json":
        data = _profile_from_config(p, size)
    else:
        raise InputError(f"{p}: not a model file; expected {EXPECTED}")
    if name is not None:
        if not name.strip():
            raise InputError("--name: expected a non-empty name")
        data["name"] = " ".join(name.split())
    parse_profile(data, str(p))  # the same validation as a profile file gets
    return data


def profile_yaml(data: dict) -> str:
    """The profile as YAML in the layout of the shipped profiles (comments included)."""
    v = data["version"]
    lines = [f"# {data['description']}", f"name: {_q(data['name'])}", f"description: {_q(data['description'])}",
             f"version: {v}"]
    for key in ("n_layer", "n_embd", "vocab_size", "head_size"):
        if key in data:
            lines.append(f"{key}: {data[key]}")
    if "dim_ffn" in data:
        lines.append(f"dim_ffn: {data['dim_ffn']}")
    else:
        rule = "4 * n_embd" if v in (4, 7) else "int(3.5 * n_embd) rounded down to a multiple of 32"
        lines.append(f"# dim_ffn defaults to {rule}: {default_dim_ffn(v, data['n_embd'])}")
    if "lora" in data:
        lines.append(f"lora:  # {_LORA_COMMENT[v]}")
        lines += [f"  {k}: {r}" for k, r in data["lora"].items()]
    lines.append(f"source: {_q(data['source'])}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Reading files


def _peek(p: Path) -> tuple[int, bytes]:
    try:
        with open(p, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            return size, f.read(16)
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{p}: is a directory; expected {EXPECTED}") from None
    except OSError as e:
        raise InputError(f"{p}: cannot read: {e.strerror or e}") from None


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if size < 10 or len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def _shapes_from_torch(p: Path, zipped: bool) -> Shapes:
    try:
        import torch
    except ImportError:
        raise MissingExtra("torch", "torch", f"{p}: reading a PyTorch checkpoint") from None
    try:
        # weights_only: tensors and plain containers only, never arbitrary objects. mmap: nothing is
        # read until touched, and only shapes are touched (the old non-zip format cannot be mapped).
        obj = torch.load(str(p), map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e).lower():
            raise InputError(f"{p}: holds Python objects other than tensors; rwkvprobe only loads checkpoints "
                             "with torch.load(weights_only=True) and never unpickles arbitrary objects") from None
        raise InputError(f"{p}: cannot read the PyTorch checkpoint: {_first_sentence(e)} "
                         "(truncated or damaged file?)") from None
    except MemoryError:
        raise
    except Exception as e:  # torch reports a damaged archive as RuntimeError, a short pickle as EOFError
        raise InputError(f"{p}: cannot read the PyTorch checkpoint: {_first_sentence(e)} "
                         "(truncated or damaged file?)") from None
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "module"):  # training checkpoints wrap the weights
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise InputError(f"{p}: holds a {type(obj).__name__}, not a state dict of named tensors")
    if "_strategy" in obj or "_version" in obj and "_rescale_layer" in obj:
        raise InputError(f"{p}: a model converted by rwkv's convert_model (weights transposed or quantized "
                         "for one strategy); use the original .pth checkpoint")
    shapes = {k: tuple(int(d) for d in v.shape) for k, v in obj.items()
              if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not shapes:
        raise InputError(f"{p}: holds no tensors; expected {EXPECTED}")
    return shapes


def _first_sentence(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    cut = text.find(". ")
    if 0 < cut < 200:
        text = text[:cut]
    return text[:200]


def _shapes_from_safetensors(p: Path, size: int) -> Shapes:
    """Shapes from the header alone: 8-byte little-endian header length, JSON, then the data."""
    if size < 8:
        raise InputError(f"{p}: {size} bytes, too short for a safetensors file (truncated?)")
    try:
        with open(p, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise InputError(f"{p}: safetensors header of {n} bytes does not fit in the file "
                                 f"({size} bytes): truncated, or not a safetensors file")
            if n > _MAX_HEADER:
                raise InputError(f"{p}: safetensors header of {n} bytes is larger than the format allows")
            raw = f.read(n)
    except OSError as e:
        raise InputError(f"{p}: cannot read: {e.strerror or e}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InputError(f"{p}: safetensors header is not valid JSON (truncated or damaged file?)") from None
    if not isinstance(header, dict):
        raise InputError(f"{p}: safetensors header is not a JSON object")
    shapes: Shapes = {}
    data_end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        ok = (isinstance(info, dict) and isinstance(info.get("dtype"), str)
              and isinstance(info.get("shape"), list) and isinstance(info.get("data_offsets"), list)
              and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in info["shape"])
              and len(info["data_offsets"]) == 2
              and all(isinstance(o, int) and not isinstance(o, bool) for o in info["data_offsets"]))
        if not ok:
            raise InputError(f"{p}: safetensors header entry {key!r} lacks a dtype, shape or data_offsets")
        begin, end = info["data_offsets"]
        if not 0 <= begin <= end:
            raise InputError(f"{p}: safetensors header entry {key!r} has bad data_offsets {info['data_offsets']}")
        item = _ST_DTYPE_BYTES.get(info["dtype"])
        if item is not None and end - begin != math.prod(info["shape"]) * item:
            raise InputError(f"{p}: safetensors tensor {key!r}: {end - begin} data bytes for shape "
                             f"{tuple(info['shape'])} of {info['dtype']}")
        data_end = max(data_end, end)
        shapes[key] = tuple(info["shape"])
    if 8 + n + data_end > size:
        raise InputError(f"{p}: safetensors data should end at byte {8 + n + data_end}, but the file has "
                         f"{size} bytes: truncated")
    if not shapes:
        raise InputError(f"{p}: safetensors file holds no tensors")
    return shapes


# --------------------------------------------------------------------------------------------
# Tensor shapes -> profile


def _profile_from_shapes(p: Path, shapes: Shapes, what: str) -> dict:
    if any(re.search(r"(^|\.)layers\.\d+\.attn\.", k) for k in shapes):
        return _from_fla_rwkv7(p, shapes, what)
    prefixes = {m.group(1) for k in shapes if (m := re.match(r"^(.*?)blocks\.\d+\.", k))}
    if not prefixes:
        first = ", ".join(repr(k) for k in list(shapes)[:3])
        raise InputError(f"{p}: unknown layout: no RWKV blocks (tensors named 'blocks.N.*') among "
                         f"{len(shapes)} tensors ({first}, ...)")
    if len(prefixes) > 1:
        raise InputError(f"{p}: unknown layout: RWKV blocks under different prefixes "
                         f"({', '.join(repr(x) for x in sorted(prefixes))})")
    prefix = prefixes.pop()
    sd = {(k[len(prefix):] if prefix and k.startswith(prefix) else k): s for k, s in shapes.items()}
    hf = any(".attention." in k or ".feed_forward." in k for k in sd)
    if hf:
        sd = {_from_hf_name(k): s for k, s in sd.items()}
    return _from_blinkdl(p, sd, what + (", Hugging Face transformers names" if hf else ""))


def _from_hf_name(k: str) -> str:
    """transformers' RWKV names -> BlinkDL's (the reverse of its convert_rwkv_checkpoint_to_hf)."""
    if k.startswith("embeddings."):
        k = "emb." + k[len("embeddings."):]
    k = k.replace("blocks.0.pre_ln.", "blocks.0.ln0.")
    k = re.sub(r"^(blocks\.\d+)\.attention\.", r"\1.att.", k)
    k = re.sub(r"^(blocks\.\d+)\.feed_forward\.", r"\1.ffn.", k)
    for long, short in (("key", "k"), ("value", "v"), ("receptance", "r"), ("gate", "g")):
        if k.endswith(f".time_mix_{long}"):
            k = k[: -len(long)] + short
    return k


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def _matrix(p: Path, sd: Shapes, key: str) -> tuple[int, int]:
    if key not in sd:
        raise InputError(f"{p}: unknown layout: tensor {key!r} is missing")
    shape = sd[key]
    if len(shape) != 2:
        raise InputError(f"{p}: tensor {key!r} has shape {shape}, expected a matrix")
    return shape


def _reference_version(sd: Shapes) -> float:
    """The version BlinkDL's rwkv package (0.8.32) detects for a non-RWKV-7 checkpoint, read
    independently of key order."""
    version = 4.0
    if any("ln_x" in k for k in sd):
        version = 5.0
    if any("gate.weight" in k for k in sd):
        version = max(5.1, version)
    if int(version) == 5 and any("att.time_decay" in k and len(s) > 1 and s[1] > 1 for k, s in sd.items()):
        version = 5.2
    if any("time_maa" in k for k in sd):
        version = 6.0
    return version


def detect_version(shapes: Shapes) -> float:
    """4, 5.0, 5.1, 5.2, 6 or 7 for a BlinkDL-layout state dict (names without a prefix)."""
    if any(k.endswith("att.r_k") for k in shapes):
        return 7.0
    return _reference_version(shapes)


def _from_blinkdl(p: Path, sd: Shapes, what: str) -> dict:
    V, C = _matrix(p, sd, "emb.weight")
    ids = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    L = max(ids) + 1
    missing_blocks = sorted(set(range(L)) - ids)
    if missing_blocks:
        raise InputError(f"{p}: block {missing_blocks[0]} of {L} is missing (one shard of a split checkpoint?)")
    found = detect_version(sd)
    if found in (5.0, 5.1):
        raise InputError(f"{p}: an RWKV-{found:.1f} checkpoint (time_decay of one value per head); profiles "
                         "describe RWKV-4, 5.2, 6 and 7")
    v = int(found)
    F = _matrix(p, sd, "blocks.0.ffn.key.weight")[0]
    data: dict[str, Any] = {"name": p.stem, "description": "", "version": v,
                            "n_layer": L, "n_embd": C, "vocab_size": V}
    a = "blocks.0.att."
    if v in (5, 6, 7):
        key = a + ("r_k" if v == 7 else "time_faaaa" if a + "time_faaaa" in sd else "time_decay")
        shape = sd.get(key, ())
        if len(shape) != 2 or shape[0] * shape[1] != C:
            raise InputError(f"{p}: cannot tell the head size: {key!r} has shape {shape}, expected "
                             f"(heads, head_size) with heads * head_size = n_embd ({C})")
        data["head_size"] = shape[1]
    if F != default_dim_ffn(v, C):
        data["dim_ffn"] = F
    if v == 6:
        data["lora"] = {"mix": _matrix(p, sd, a + "time_maa_w1")[1] // 5,
                        "decay": _matrix(p, sd, a + "time_decay_w1")[1]}
    elif v == 7:
        v1 = next((k for k in (f"blocks.{i}.att.v1" for i in range(L)) if k in sd), a + "v1")
        data["lora"] = {"decay": _matrix(p, sd, a + "w1")[1], "aaa": _matrix(p, sd, a + "a1")[1],
                        "mv": _matrix(p, sd, v1)[1], "gate": _matrix(p, sd, a + "g1")[1]}
    label = {4: "RWKV-4", 5: "RWKV-5.2", 6: "RWKV-6", 7: "RWKV-7"}[v]
    _describe(data, p, f"{what}; {label} detected from tensor names as BlinkDL's rwkv package does")
    profile = parse_profile(data, str(p))
    _check_layout(p, sd, state_dict_shapes(profile), label)
    return data


def _check_layout(p: Path, sd: Shapes, expected: Shapes, label: str) -> None:
    """Every tensor of the file is a tensor of the reference layout with the same shape (size-1
    dimensions aside: checkpoints store vectors as (C,) or (1, 1, C))."""
    missing = [k for k in expected if k not in sd]
    extra = [k for k in sd if k not in expected]
    wrong = [k for k in expected if k in sd and _squeezed(sd[k]) != _squeezed(expected[k])]

    def more(items: list) -> str:
        return f" (and {len(items) - 1} more)" if len(items) > 1 else ""

    if wrong:
        k = wrong[0]
        problem = f"{k!r} has shape {sd[k]}, expected {expected[k]}{more(wrong)}"
    elif missing:
        problem = f"{missing[0]!r} is missing{more(missing)}"
    elif extra:
        problem = f"{extra[0]!r} is not part of it{more(extra)}"
    else:
        return
    raise InputError(f"{p}: not the {label} reference layout: {problem}")


def _from_fla_rwkv7(p: Path, shapes: Shapes, what: str) -> dict:
    """flash-linear-attention's RWKV-7 (the Hugging Face fla-hub models): model.layers.N.attn.*.

    Its LoRA blocks store nn.Linear weights, [out, in]: lora.0 is [rank, C]. Block 0 has no v_lora.
    """
    prefixes = {m.group(1) for k in shapes if (m := re.match(r"^(.*?)layers\.\d+\.attn\.", k))}
    if len(prefixes) != 1:
        raise InputError(f"{p}: unknown layout: layers under different prefixes")
    pre = prefixes.pop()
    ids = {int(m.group(1)) for k in shapes if (m := re.match(re.escape(pre) + r"layers\.(\d+)\.", k))}
    L = max(ids) + 1
    if set(range(L)) - ids:
        raise InputError(f"{p}: layer {min(set(range(L)) - ids)} of {L} is missing (one shard of a split checkpoint?)")
    a = f"{pre}layers.0.attn."
    if a + "r_k" not in shapes:
        raise InputError(f"{p}: unknown layout: flash-linear-attention layers without attn.r_k "
                         "(only its RWKV-7 layout is read)")
    V, C = _matrix(p, shapes, pre + "embeddings.weight")
    H_S = shapes[a + "r_k"]
    if len(H_S) != 2 or H_S[0] * H_S[1] != C:
        raise InputError(f"{p}: cannot tell the head size: {a + 'r_k'!r} has shape {H_S}")
    for proj in ("r_proj", "k_proj", "v_proj", "o_proj"):
        if _matrix(p, shapes, a + proj + ".weight") != (C, C):
            raise InputError(f"{p}: {a + proj + '.weight'!r} is not ({C}, {C}): a layout profiles cannot describe")
    if L < 2:
        raise InputError(f"{p}: a one-layer flash-linear-attention RWKV-7 has no v_lora: cannot tell its rank")
    F = _matrix(p, shapes, f"{pre}layers.0.ffn.key.weight")[0]

    def rank(layer: int, lora: str) -> int:
        return _matrix(p, shapes, f"{pre}layers.{layer}.attn.{lora}.lora.0.weight")[0]

    data: dict[str, Any] = {"name": p.stem, "description": "", "version": 7, "n_layer": L, "n_embd": C,
                            "vocab_size": V, "head_size": H_S[1]}
    if F != default_dim_ffn(7, C):
        data["dim_ffn"] = F
    data["lora"] = {"decay": rank(0, "w_lora"), "aaa": rank(0, "a_lora"), "mv": rank(1, "v_lora"),
                    "gate": rank(0, "g_lora")}
    _describe(data, p, f"{what}; RWKV-7 in flash-linear-attention names (counted as BlinkDL's layout, "
                       "which also stores v1/v2 in block 0)")
    return data


# --------------------------------------------------------------------------------------------
# Hugging Face config.json -> profile


def _profile_from_config(p: Path, size: int) -> dict:
    if size > _MAX_CONFIG:
        raise InputError(f"{p}: {size} bytes is too large for a config.json")
    try:
        cfg = json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{p}: not valid JSON ({_first_sentence(e)}); expected {EXPECTED}") from None
    except OSError as e:
        raise InputError(f"{p}: cannot read: {e.strerror or e}") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{p}: not a config.json (a JSON object of settings); expected {EXPECTED}")
    model_type = cfg.get("model_type")
    by_type = {"rwkv": 4, "rwkv5": 5, "rwkv6": 6, "rwkv7": 7, "rwkv7_fla": 7}
    by_arch = {"RwkvForCausalLM": 4, "Rwkv5ForCausalLM": 5, "Rwkv6ForCausalLM": 6, "RWKV7ForCausalLM": 7}
    if model_type in by_type:
        v = by_type[model_type]
    elif model_type is None and isinstance(cfg.get("architectures"), list) and cfg["architectures"] \
            and cfg["architectures"][0] in by_arch:
        v = by_arch[cfg["architectures"][0]]
    elif model_type is None:
        raise InputError(f"{p}: a JSON file without model_type; expected a Hugging Face config.json of an RWKV "
                         f"model ({', '.join(by_type)})")
    else:
        raise InputError(f"{p}: model_type {model_type!r} is not an RWKV model this importer reads "
                         f"({', '.join(by_type)})")

    def integer(key: str, default: Any = None, required: bool = True) -> Any:
        value = cfg.get(key, default)
        if value is None and not required:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            shown = "missing" if key not in cfg else f"got {cfg[key]!r}"
            raise InputError(f"{p}: key '{key}': expected a positive integer ({shown})")
        return value

    C = integer("hidden_size")
    data: dict[str, Any] = {"name": p.parent.name or p.stem, "description": "", "version": v,
                            "n_layer": integer("num_hidden_layers"), "n_embd": C,
                            "vocab_size": integer("vocab_size")}
    if v in (4, 5, 6):
        att = integer("attention_hidden_size", required=False)
        if att is not None and att != C:
            raise InputError(f"{p}: attention_hidden_size {att} differs from hidden_size {C}: "
                             "profiles describe attention of width n_embd")
        if v == 5 and cfg.get("model_version") not in (None, "5_2"):
            raise InputError(f"{p}: model_version {cfg['model_version']!r}: profiles describe RWKV-5.2")
    if v in (5, 6):
        data["head_size"] = integer("head_size")
    F = integer("intermediate_size", required=False)
    if v == 7:
        if cfg.get("attn") is not None:
            raise InputError(f"{p}: a hybrid model (attn: softmax-attention layers): profiles describe pure RWKV-7")
        head = integer("head_dim", required=False)
        if head is None:
            heads = integer("num_heads", required=False)
            if heads is None:
                raise InputError(f"{p}: neither head_dim nor num_heads is given")
            if C % heads:
                raise InputError(f"{p}: num_heads {heads} does not divide hidden_size {C}")
            head = C // heads
        data["head_size"] = head
        value_dim = cfg.get("value_dim")
        if isinstance(value_dim, list) and any(d != C for d in value_dim):
            raise InputError(f"{p}: value_dim differs from hidden_size: profiles describe value width n_embd")
        if F is None:  # flash-linear-attention's default: hidden_ratio (4) * C, rounded up to 32
            ratio = cfg.get("hidden_ratio") or 4
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio <= 0:
                raise InputError(f"{p}: key 'hidden_ratio': expected a positive number, got {ratio!r}")
            F = 32 * -(-int(C * ratio) // 32)
        data["lora"] = {"decay": integer("decay_low_rank_dim"), "aaa": integer("a_low_rank_dim"),
                        "mv": integer("v_low_rank_dim"), "gate": integer("gate_low_rank_dim")}
    elif v == 6:
        big = C == 4096  # transformers' Rwkv6SelfAttention: 64/128 at hidden_size 4096, else 32/64
        data["lora"] = {"mix": 64 if big else 32, "decay": 128 if big else 64}
    if F is not None and F != default_dim_ffn(v, C):
        data["dim_ffn"] = F
    _describe(data, p, f"Hugging Face config.json, model_type {model_type or data['version']!r}")
    return data


# --------------------------------------------------------------------------------------------


def _describe(data: dict, p: Path, how: str) -> None:
    label = {5: "RWKV-5.2"}.get(data["version"], f"RWKV-{data['version']}")
    shown = f"{p.parent.name}/{p.name}" if p.name == "config.json" and p.parent.name else p.name
    data["description"] = f"{label}, {data['n_layer']} layers, n_embd {data['n_embd']} (imported from {shown})"
    lora = data.pop("lora", None)  # keep the key order of the shipped profiles: lora, then source
    if lora is not None:
        data["lora"] = lora
    data["source"] = f"rwkvprobe profile from {shown}: {how}"


def _q(text: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(" ".join(str(text).split()))
