"""Model profiles (YAML) -> validated Profile -> the list of weight matmuls one token runs.

A profile is either an RWKV model described by its hyper-parameters (``version`` 4, 5, 6 or 7 with
``n_layer``, ``n_embd``, ...) or any matmul-bound model described by an explicit ``layers:`` list.

Shape convention everywhere in rwkvprobe: A[M,K] x B[K,N] -> C[M,N]; M = tokens in flight, K = input
features, N = output features, B is the weight. (PyTorch ``nn.Linear`` stores its weight as [N, K].)

Two descriptions of each RWKV version live here, written independently of each other:
``layer_list`` (the matmuls a token runs, plus the embedding and the count of non-matmul parameters)
and ``state_dict_shapes`` (every tensor of a checkpoint, named as BlinkDL's reference ``rwkv``
package expects). The tests load the second into the reference implementation and check that both
give the same parameter count, so a wrong shape in either fails a test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rwkvprobe.errors import InputError
from rwkvprobe.fsutil import read_input_text
from rwkvprobe.model.quant import FORMATS, GGML_DTYPES

#: Bytes per weight at each storage type. int4 is the nominal half byte: block scales and zero points
#: are not counted here (the quantized backends report their real bytes per weight).
DTYPE_BYTES: dict[str, float] = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}

RWKV_VERSIONS = (4, 5, 6, 7)


def weight_bytes_of(dtype: str) -> float:
    """Nominal bytes per weight of a storage type; quantized variants (``int8-a8``, ``int4-a8``,
    ``int8-dyn``) by their bit width. Measured points carry their format's real bytes instead."""
    if dtype in DTYPE_BYTES:
        return DTYPE_BYTES[dtype]
    for base in ("int8", "int4"):
        if dtype.startswith(base):
            return DTYPE_BYTES[base]

    if dtype in GGML_DTYPES:  # ggml's block formats: their real bytes, scales included (fixed layout)
        fmt = FORMATS[dtype]
        return fmt.block_bytes / fmt.fixed_block
    raise KeyError(dtype)


def activation_bytes_of(dtype: str) -> float:
    """Bytes per activation element: quantized-weight formats take fp32 activations."""
    return DTYPE_BYTES[dtype] if dtype in ("fp32", "fp16", "bf16") else 4.0

# Upper bounds that no real model reaches; anything above is a typo, not a model.
_MAX = {
    "n_layer": 1024,
    "n_embd": 65536,
    "vocab_size": 1 << 22,
    "head_size": 1024,
    "dim_ffn": 1 << 20,
    "lora": 1 << 16,
    "k": 1 << 20,
    "n": 1 << 22,
    "count": 1 << 20,
}

_COMMON_KEYS = {"name": str, "source": str, "description": str}
_RWKV_KEYS = {"version", "n_layer", "n_embd", "vocab_size", "head_size", "dim_ffn", "lora"}
_LORA_KEYS = {6: ("mix", "decay"), 7: ("decay", "aaa", "mv", "gate")}
_LAYER_KEYS = ("name", "k", "n", "count")


@dataclass(frozen=True)
class Profile:
    """A validated model profile. ``version`` is 4..7, or None for an explicit ``layers:`` profile."""

    name: str
    source: str
    path: str = ""
    description: str = ""
    version: int | None = None
    n_layer: int = 0
    n_embd: int = 0
    vocab_size: int = 0
    head_size: int = 0
    dim_ffn: int = 0
    lora: dict[str, int] = field(default_factory=dict)
    layers: tuple["Layer", ...] = ()

    @property
    def stem(self) -> str:
        return Path(self.path).stem if self.path else self.name


#: layer kinds a prefill chunk runs once, for its last token (the logits), not for every token of the chunk
LAST_TOKEN_ONLY = ("head",)


@dataclass(frozen=True)
class Layer:
    """One weight matmul: A[M,K] x W[K,N]. ``count``: runs per token; ``stored``: matrices stored.

    ``stored`` differs from ``count`` only where a checkpoint holds a matrix that decode never uses
    (RWKV-7 keeps value-residual LoRA matrices in block 0, which the forward pass skips).
    ``batch``: matrices of this layer the real pass multiplies in one call (RWKV-6's five token-shift
    matrices of a block: one bmm); what is timed is that call (``call_shape``, ``calls``).
    """

    name: str
    kind: str  # att | ffn | lora | head | custom
    k: int
    n: int
    count: int
    stored: int = -1
    batch: int = 1

    def __post_init__(self):
        if self.stored < 0:
            object.__setattr__(self, "stored", self.count)
        if self.batch < 1 or self.count % self.batch:
            raise ValueError(f"layer {self.name}: {self.count} runs a token are not calls of {self.batch}")

    @property
    def call_shape(self) -> tuple[int, int]:
        """(K, N) of the matmul timed for one call of this layer. A batched layer's ``batch`` [K, N] matrices run
        as one call, timed as one [K, batch x N] matmul: the same weight bytes, FLOPs and outputs, one call (the
        bmm's batch x K inputs are one K-row here: a few hundred bytes against its weights' tens of kB).
        Timed as ``batch`` calls of [K, N], RWKV-6 0.1B's bf16 token-shift matrices read 2.9x what the
        reference pass spends on its bmm."""
        return self.k, self.n * self.batch

    @property
    def calls(self) -> int:
        """Calls per token (``count`` matrices, ``batch`` at a time)."""
        return self.count // self.batch

    @property
    def params(self) -> int:
        return self.k * self.n * self.stored

    def flops(self, m: int = 1) -> int:
        """FLOPs of all runs of this layer for ``m`` tokens: 2*M*K*N*count."""
        return 2 * m * self.k * self.n * self.count

    def weight_bytes(self, dtype: str) -> float:
        """Weight bytes read for one token (every run reads its matrix once)."""
        return self.k * self.n * self.count * weight_bytes_of(dtype)

    def chunk_rows(self, m: int) -> int:
        """Rows this layer multiplies when a chunk of ``m`` tokens is read: ``m``, except the head
        (LAST_TOKEN_ONLY), which an engine reading a prompt runs for the chunk's last token only (it needs
        the logits of that token alone; BlinkDL's reference and rwkv.cpp both do so)."""
        return 1 if self.kind in LAST_TOKEN_ONLY else m


@dataclass(frozen=True)
class LayerList:
    """What one token of a model runs: the matmuls, the embedding row and the other parameters."""

    profile: Profile
    layers: tuple[Layer, ...]
    embedding_rows: int = 0  # vocab; the embedding is a row lookup, not a matmul
    embedding_dim: int = 0
    other_params: int = 0  # layer norms, token-shift mixes, decays: vectors, no matmul

    @property
    def matmul_params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def embedding_params(self) -> int:
        return self.embedding_rows * self.embedding_dim

    @property
    def total_params(self) -> int:
        return self.matmul_params + self.embedding_params + self.other_params

    def flops_per_token(self) -> int:
        return sum(layer.flops(1) for layer in self.layers)

    def embedding_bytes_per_token(self, dtype: str) -> float:
        return self.embedding_dim * weight_bytes_of(dtype)

    def weight_bytes_per_token(self, dtype: str) -> float:
        """Bytes of weights read for one decoded token: every matmul weight plus one embedding row."""
        return sum(layer.weight_bytes(dtype) for layer in self.layers) + self.embedding_bytes_per_token(dtype)

    def model_bytes(self, dtype: str) -> float:
        """Bytes to hold every parameter at ``dtype`` (what the weights take in RAM)."""
        return self.total_params * weight_bytes_of(dtype)

    def chunk_layers(self, m: int) -> list[Layer]:
        """The layers a chunk of ``m`` tokens runs at M = ``m`` (the others run at M = 1, see chunk_rows)."""
        return [layer for layer in self.layers if layer.chunk_rows(m) == m]

    def unique_shapes(self, m: int = 1) -> list[tuple[int, int]]:
        """Distinct (K, N) call shapes (Layer.call_shape) run at M = ``m`` (default: decode, every layer), in
        first-seen order."""
        seen: dict[tuple[int, int], None] = {}
        for layer in self.chunk_layers(m):
            seen.setdefault(layer.call_shape, None)
        return list(seen)


# --------------------------------------------------------------------------------------------
# Loading and validation


def _fail(path: str, key: str, expected: str, got: Any = None, show_got: bool = True) -> InputError:
    tail = f", got {got!r}" if show_got else ""
    return InputError(f"{path}: key '{key}': expected {expected}{tail}")


def _pos_int(path: str, key: str, value: Any, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, key, "a positive integer", value)
    if value <= 0:
        raise _fail(path, key, "a positive integer", value)
    if value > limit:
        raise _fail(path, key, f"an integer no larger than {limit}", value)
    return value


def default_dim_ffn(version: int, n_embd: int) -> int:
    """FFN width of the released models: 4*C for v4 and v7, int(3.5*C) rounded down to 32 for v5/v6."""
    if version in (5, 6):
        return int((n_embd * 3.5) // 32 * 32)
    return 4 * n_embd


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile file; any problem raises InputError naming the file and key."""
    p = str(path)

    text = read_input_text(path, "profile file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise InputError(f"{p}: not valid YAML{where}: {problem}") from None
    return parse_profile(data, p)


def parse_profile(data: Any, path: str = "<profile>") -> Profile:
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of keys (name, version, n_layer, ...), got {type(data).__name__}")
    for key in data:
        if not isinstance(key, str):
            raise _fail(path, str(key), "string keys only", key, show_got=False)
    common: dict[str, str] = {}
    for key, typ in _COMMON_KEYS.items():
        if key in data:
            if not isinstance(data[key], typ) or not data[key].strip():
                raise _fail(path, key, "a non-empty string", data[key])
            common[key] = data[key].strip()
    for key in ("name", "source"):
        if key not in common:
            raise _fail(path, key, "a non-empty string (the key is missing)", show_got=False)

    if "layers" in data:
        extra = sorted(set(data) - set(_COMMON_KEYS) - {"layers"})
        if extra:
            raise _fail(path, extra[0], "no such key in a 'layers:' profile (allowed: name, source, description, layers)", show_got=False)
        return Profile(path=path, layers=_parse_layers(path, data["layers"]), **common)

    unknown = sorted(set(data) - set(_COMMON_KEYS) - _RWKV_KEYS)
    if unknown:
        allowed = ", ".join(sorted(set(_COMMON_KEYS) | _RWKV_KEYS | {"layers"}))
        raise _fail(path, unknown[0], f"a known key ({allowed})", show_got=False)
    if "version" not in data:
        raise _fail(path, "version", "an RWKV version 4, 5, 6 or 7, or a 'layers:' list (neither is given)", show_got=False)
    version = data["version"]
    if isinstance(version, bool) or version not in RWKV_VERSIONS:
        raise _fail(path, "version", "an RWKV version 4, 5, 6 or 7", version)

    dims = {}
    required = ["n_layer", "n_embd", "vocab_size"] + (["head_size"] if version >= 5 else [])
    for key in required:
        if key not in data:
            raise _fail(path, key, "a positive integer (the key is missing)", show_got=False)
        dims[key] = _pos_int(path, key, data[key], _MAX[key])
    if version == 4 and "head_size" in data:
        raise _fail(path, "head_size", "no head_size for RWKV-4 (it has no heads)", show_got=False)
    if "head_size" in dims and dims["n_embd"] % dims["head_size"]:
        raise _fail(path, "head_size", f"a divisor of n_embd ({dims['n_embd']})", dims["head_size"])
    dim_ffn = default_dim_ffn(version, dims["n_embd"])
    if "dim_ffn" in data:
        dim_ffn = _pos_int(path, "dim_ffn", data["dim_ffn"], _MAX["dim_ffn"])

    lora: dict[str, int] = {}
    if version in _LORA_KEYS:
        want = _LORA_KEYS[version]
        raw = data.get("lora")
        if not isinstance(raw, dict):
            raise _fail(path, "lora", f"a mapping with {', '.join(want)} (low-rank dimensions of RWKV-{version})",
                        raw, show_got="lora" in data)
        for sub in raw:
            if sub not in want:
                raise _fail(path, f"lora.{sub}", f"one of {', '.join(want)}", show_got=False)
        for sub in want:
            if sub not in raw:
                raise _fail(path, f"lora.{sub}", "a positive integer (the key is missing)", show_got=False)
            lora[sub] = _pos_int(path, f"lora.{sub}", raw[sub], _MAX["lora"])
    elif "lora" in data:
        raise _fail(path, "lora", f"no lora for RWKV-{version} (only RWKV-6 and RWKV-7 have low-rank matrices)", show_got=False)

    return Profile(path=path, version=version, dim_ffn=dim_ffn, lora=lora, **dims, **common)


def _parse_layers(path: str, raw: Any) -> tuple[Layer, ...]:
    if not isinstance(raw, list) or not raw:
        raise _fail(path, "layers", "a non-empty list of {name, k, n, count}", raw)
    layers = []
    names = set()
    for i, item in enumerate(raw):
        where = f"layers[{i}]"
        if not isinstance(item, dict):
            raise _fail(path, where, "a mapping with name, k, n, count", item)
        for key in item:
            if key not in _LAYER_KEYS:
                raise _fail(path, f"{where}.{key}", "one of name, k, n, count", show_got=False)
        for key in _LAYER_KEYS:
            if key not in item:
                raise _fail(path, f"{where}.{key}", "a value (the key is missing)", show_got=False)
        name = item["name"]
        if not isinstance(name, str) or not name.strip():
            raise _fail(path, f"{where}.name", "a non-empty string", name)
        if name in names:
            raise _fail(path, f"{where}.name", "a name not used by another layer", name)
        names.add(name)
        k = _pos_int(path, f"{where}.k", item["k"], _MAX["k"])
        n = _pos_int(path, f"{where}.n", item["n"], _MAX["n"])
        count = _pos_int(path, f"{where}.count", item["count"], _MAX["count"])
        layers.append(Layer(name.strip(), "custom", k, n, count))
    return tuple(layers)


# --------------------------------------------------------------------------------------------
# Profile -> layer list (the matmuls of one token)


def layer_list(profile: Profile) -> LayerList:
    """Every weight matmul one token runs, with the embedding and the non-matmul parameter count."""
    if profile.version is None:
        return LayerList(profile, profile.layers)
    v, L, C, V, F = profile.version, profile.n_layer, profile.n_embd, profile.vocab_size, profile.dim_ffn
    lo = profile.lora
    att = [Layer(f"att.{p}", "att", C, C, L) for p in ("receptance", "key", "value")]
    if v in (5, 6):
        att.append(Layer("att.gate", "att", C, C, L))
    att.append(Layer("att.output", "att", C, C, L))
    low: list[Layer] = []
    if v == 6:
        low = [
            Layer("att.maa_w1", "lora", C, 5 * lo["mix"], L),  # token-shift mix, 5 outputs at once
            Layer("att.maa_w2", "lora", lo["mix"], C, 5 * L, batch=5),  # one bmm of 5 [mix, C] matrices
            Layer("att.decay_w1", "lora", C, lo["decay"], L),
            Layer("att.decay_w2", "lora", lo["decay"], C, L),
        ]
    elif v == 7:
        # Block 0 stores v1/v2 but skips them: its value is the one the others mix towards.
        low = [
            Layer("att.w1", "lora", C, lo["decay"], L),
            Layer("att.w2", "lora", lo["decay"], C, L),
            Layer("att.a1", "lora", C, lo["aaa"], L),
            Layer("att.a2", "lora", lo["aaa"], C, L),
            Layer("att.v1", "lora", C, lo["mv"], L - 1, stored=L),
            Layer("att.v2", "lora", lo["mv"], C, L - 1, stored=L),
            Layer("att.g1", "lora", C, lo["gate"], L),
            Layer("att.g2", "lora", lo["gate"], C, L),
        ]
    ffn = [Layer("ffn.key", "ffn", C, F, L)]
    if v != 7:
        ffn.append(Layer("ffn.receptance", "ffn", C, C, L))
    ffn.append(Layer("ffn.value", "ffn", F, C, L))
    head = [Layer("head", "head", C, V, 1)]
    layers = tuple(layer for layer in att + low + ffn + head if layer.stored > 0)
    # Vectors per block: v4 ln1,ln2 (4C) + time_decay, time_first, 3 att mixes, 2 ffn mixes (7C);
    # v5 adds the gate mix and ln_x; v6 has 6 att maa + decay + faaaa + ln_x + 2 ffn maa;
    # v7 has 6 mixes, w0, a0, v0, k_k, k_a, r_k, ln_x (2C), ffn x_k. Plus ln0 and ln_out (4C).
    per_block = {4: 11, 5: 14, 6: 16, 7: 19}[v] * C
    return LayerList(profile, layers, embedding_rows=V, embedding_dim=C, other_params=L * per_block + 4 * C)


# --------------------------------------------------------------------------------------------
# Profile -> checkpoint tensor shapes (as BlinkDL's reference package loads them)


def state_dict_shapes(profile: Profile) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a checkpoint of this model (``nn.Linear`` weights as [N, K])."""
    if profile.version is None:
        raise InputError(f"{profile.path}: a 'layers:' profile has no RWKV checkpoint layout")
    v, L, C, V, F = profile.version, profile.n_layer, profile.n_embd, profile.vocab_size, profile.dim_ffn
    H = C // profile.head_size if v >= 5 else 0
    S = profile.head_size
    lo = profile.lora
    vec = (1, 1, C)
    sd: dict[str, tuple[int, ...]] = {"emb.weight": (V, C)}
    for i in range(L):
        b = f"blocks.{i}."
        if i == 0:
            sd[b + "ln0.weight"] = sd[b + "ln0.bias"] = (C,)
        for ln in ("ln1", "ln2"):
            sd[f"{b}{ln}.weight"] = sd[f"{b}{ln}.bias"] = (C,)
        a, f = b + "att.", b + "ffn."
        if v == 4:
            sd[a + "time_decay"] = sd[a + "time_first"] = (C,)
            for m in "kvr":
                sd[a + f"time_mix_{m}"] = vec
            for m in "kr":
                sd[f + f"time_mix_{m}"] = vec
        elif v == 5:
            for m in "kvrg":
                sd[a + f"time_mix_{m}"] = vec
            sd[a + "time_decay"] = sd[a + "time_faaaa"] = (H, S)
            for m in "kr":
                sd[f + f"time_mix_{m}"] = vec
        elif v == 6:
            for m in "xwkvrg":
                sd[a + f"time_maa_{m}"] = vec
            sd[a + "time_maa_w1"] = (C, 5 * lo["mix"])
            sd[a + "time_maa_w2"] = (5, lo["mix"], C)
            sd[a + "time_decay"] = vec
            sd[a + "time_decay_w1"] = (C, lo["decay"])
            sd[a + "time_decay_w2"] = (lo["decay"], C)
            sd[a + "time_faaaa"] = (H, S)
            for m in "kr":
                sd[f + f"time_maa_{m}"] = vec
        else:
            for m in "rwkvag":
                sd[a + f"x_{m}"] = vec
            for p, r in (("w", "decay"), ("a", "aaa"), ("v", "mv")):
                sd[a + f"{p}0"] = vec
                sd[a + f"{p}1"] = (C, lo[r])
                sd[a + f"{p}2"] = (lo[r], C)
            sd[a + "g1"] = (C, lo["gate"])
            sd[a + "g2"] = (lo["gate"], C)
            sd[a + "k_k"] = sd[a + "k_a"] = vec
            sd[a + "r_k"] = (H, S)
            sd[f + "x_k"] = vec
        for p in ("receptance", "key", "value") + (("gate",) if v in (5, 6) else ()) + ("output",):
            sd[a + f"{p}.weight"] = (C, C)
        if v >= 5:
            sd[a + "ln_x.weight"] = sd[a + "ln_x.bias"] = (C,)
        sd[f + "key.weight"] = (F, C)
        if v != 7:
            sd[f + "receptance.weight"] = (C, C)
        sd[f + "value.weight"] = (C, F)
    sd["ln_out.weight"] = sd["ln_out.bias"] = (C,)
    sd["head.weight"] = (V, C)
    return sd


def count_params(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes.values())


# --------------------------------------------------------------------------------------------
# Shipped profiles


def profiles_dir() -> Path:
    """The folder of shipped profiles: ``profiles/`` of the source tree, or the copy in the package."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package.parent / "profiles", package / "profiles"):
        if candidate.is_dir():
            return candidate
    return package.parent / "profiles"


def shipped_profiles() -> list[Path]:
    return sorted(p for p in profiles_dir().glob("*.yaml"))


def layers_from_json(data: dict) -> LayerList:
    """The LayerList stored in a results file (so reports render without the profile file)."""

    try:
        profile = Profile(name=data["name"], source=data.get("source", ""), path=data.get("path", ""),
                          version=data.get("version"), n_layer=data.get("n_layer", 0), n_embd=data.get("n_embd", 0),
                          vocab_size=data.get("vocab_size", 0), head_size=data.get("head_size", 0),
                          dim_ffn=data.get("dim_ffn", 0), lora=data.get("lora") or {})
        layers = tuple(Layer(x["name"], x["kind"], int(x["k"]), int(x["n"]), int(x["count"]), int(x["stored"]),
                             int(x.get("batch", 1))) for x in data["layers"])
        emb = data.get("embedding") or {}
        return LayerList(profile, layers, emb.get("rows", 0), emb.get("dim", 0), data.get("other_params", 0))
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"results file: the profile block is incomplete ({e})") from None


def profile_json(layers: LayerList) -> dict:
    p = layers.profile
    return {
        "name": p.name, "path": p.path, "source": p.source, "version": p.version, "n_layer": p.n_layer,
        "n_embd": p.n_embd, "vocab_size": p.vocab_size, "head_size": p.head_size, "dim_ffn": p.dim_ffn,
        "lora": p.lora, "total_params": layers.total_params,
        "layers": [{"name": x.name, "kind": x.kind, "k": x.k, "n": x.n, "count": x.count, "stored": x.stored,
                    **({"batch": x.batch} if x.batch != 1 else {})} for x in layers.layers],
        "embedding": {"rows": layers.embedding_rows, "dim": layers.embedding_dim},
        "other_params": layers.other_params,
    }
