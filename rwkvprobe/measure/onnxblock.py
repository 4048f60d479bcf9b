"""Whole RWKV blocks as ONNX graphs: every op of one decode step, with the RNN state in and out.

``rwkvprobe onnx PROFILE --block`` writes, for RWKV-7 and RWKV-4:

- ``block0``: the first block (layer norms, token shift and mixes, RWKV-7's four low-rank paths, the WKV state
  update, the FFN); for RWKV-7 it also returns ``v_first``, the value the later blocks mix in (value residual);
- ``block``: any later block (RWKV-7: takes ``v_first``); its weights are layer 1's;
- ``head``: the final layer norm and the head matmul;
- ``model``: the full decode step: every block chained, then the head, with every layer's state in and out.

The embedding lookup (one row of the table, already layer-normed by ``ln0`` as the reference pre-computes it)
stays outside the graphs: its input ``x`` is that row. Weights are seeded random numbers in BlinkDL's checkpoint
layout (the same names and shapes the reference package loads; see ``checkpoint_weights``), each tensor seeded
from its name, so a block's graph needs only its own weights; the state is seeded random in sane ranges. The
graph follows the reference's ``RWKV_x070_TMix_one`` / ``CMix_one`` (RWKV-4: ``att_one`` / ``ffn_one``) op for op (a test checks the output and the
new state against the reference's forward step). Layer and group norms are written out
(ReduceMean/Sub/Mul/Sqrt/Div) so the graphs use opset 14, which the RKNN compiler accepts.

fp16 graphs hold every tensor in fp16, the WKV state included (the reference keeps that state in fp32; RWKV-4's
running exponent and sums are fp32 there too).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rwkvprobe.backends.ort_backend import session_options
from rwkvprobe.errors import InputError
from rwkvprobe.fsutil import atomic_write_text, ensure_writable_dir
from rwkvprobe.measure.timing import eviction, measure, plan_rotation
from rwkvprobe.model.profile import Profile, state_dict_shapes

VERSIONS = (4, 7)
KINDS = ("block0", "block", "head", "model")
DTYPES = ("fp32", "fp16")
OPSET = 14
#: bumped whenever the weights, the state or the graph change, so no stale cached graph is reused
GRAPH_VERSION = 2
MANIFEST = "blocks.json"
EXTERNAL_DATA_THRESHOLD = 1_500_000_000  # below protobuf's 2 GB limit, with room for the graph


def _rng(tag: str, seed: int) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(f"rwkvprobe-block-v{GRAPH_VERSION}-{seed}-{tag}".encode())
                                                .digest()[:8], "little"))


def checkpoint_tensor(name: str, shape: tuple, seed: int = 0) -> np.ndarray:
    """One seeded fp32 tensor of the checkpoint, in ranges that keep activations finite through every block:
    linear and low-rank matrices uniform with variance 1/(4 fan-in), the embedding in [-1, 1], norms in
    [0.5, 1.5], biases in [-0.1, 0.1], other vectors (mixes, decays) in [0, 1]."""
    g = _rng(name, seed)
    if name == "emb.weight":
        lo, hi = -1.0, 1.0
    elif len(shape) >= 2 and not name.endswith("r_k"):
        fan_in = shape[1] if name.endswith(".weight") else shape[-2]  # nn.Linear [out, in]; low-rank [in, out]
        hi = float(np.sqrt(3.0 / fan_in) / 2)
        lo = -hi
    elif name.endswith(".bias"):
        lo, hi = -0.1, 0.1
    elif name.endswith(".weight"):  # layer norm scales
        lo, hi = 0.5, 1.5
    else:
        lo, hi = 0.0, 1.0
    t = g.random(shape, dtype=np.float32)
    t *= np.float32(hi - lo)
    t += np.float32(lo)
    return t


def checkpoint_weights(profile: Profile, seed: int = 0, names=None) -> dict[str, np.ndarray]:
    """The seeded checkpoint (the reference package's names and shapes), or the ``names`` of it asked for."""
    shapes = state_dict_shapes(profile)
    return {n: checkpoint_tensor(n, tuple(s), seed) for n, s in shapes.items() if names is None or n in names}


def state_parts(profile: Profile) -> tuple[str, ...]:
    """The names of one layer's state tensors, in the reference's order."""
    return ("att_x", "aa", "bb", "pp", "ffn_x") if profile.version == 4 else ("att_x", "wkv", "ffn_x")


def random_state(profile: Profile, layer: int, seed: int = 1) -> dict[str, np.ndarray]:
    """One layer's seeded decode state: the two token-shift vectors [1, C] (previous normed inputs, in the
    range a layer norm gives) and the WKV state: RWKV-7 [H, S, S] in [-0.1, 0.1]; RWKV-4 its numerator aa in
    [-1, 1], denominator bb in [0.5, 1.5] and running exponent pp in [-2, 2], each [1, C]."""
    C = profile.n_embd
    g = _rng(f"state-{layer}", seed)
    out = {"att_x": g.uniform(-2, 2, (1, C)).astype(np.float32)}
    if profile.version == 4:
        out.update(aa=g.uniform(-1, 1, (1, C)).astype(np.float32), bb=g.uniform(0.5, 1.5, (1, C)).astype(np.float32),
                   pp=g.uniform(-2, 2, (1, C)).astype(np.float32))
    else:
        S = profile.head_size
        out["wkv"] = g.uniform(-0.1, 0.1, (C // S, S, S)).astype(np.float32)
    out["ffn_x"] = g.uniform(-2, 2, (1, C)).astype(np.float32)
    return out


def embedded_input(profile: Profile, seed: int = 1) -> np.ndarray:
    """A seeded stand-in for the embedded token (layer-normed row): [1, C] in [-2, 2]."""
    return _rng("x", seed).uniform(-2, 2, (1, profile.n_embd)).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Graph building


class _Graph:
    """A tiny helper around onnx.helper: named initializers, nodes, fresh value names."""

    def __init__(self, dtype: str):
        from onnx import TensorProto

        self.np = np.float32 if dtype == "fp32" else np.float16
        self.elem = TensorProto.FLOAT if dtype == "fp32" else TensorProto.FLOAT16
        self.nodes: list = []
        self.inits: dict = {}
        self.n = 0

    def w(self, name: str, array: np.ndarray, cast: bool = True) -> str:
        from onnx import numpy_helper

        if name not in self.inits:
            arr = np.asarray(array, dtype=self.np) if cast else np.asarray(array)
            self.inits[name] = numpy_helper.from_array(arr, name=name)
        return name

    def const(self, value: float) -> str:
        return self.w(f"c_{value!r}", np.array(value))

    def shape(self, *dims: int) -> str:
        return self.w("shape_" + "_".join(map(str, dims)), np.array(dims, dtype=np.int64), cast=False)

    def op(self, kind: str, *inputs: str, out: str | None = None, **attrs) -> str:
        from onnx import helper

        self.n += 1
        name = out or f"{kind.lower()}_{self.n}"
        self.nodes.append(helper.make_node(kind, list(inputs), [name], name=f"n{self.n}_{kind}", **attrs))
        return name

    def norm(self, x: str, eps: float) -> str:
        """(x - mean) / sqrt(var + eps) over the last axis."""
        mean = self.op("ReduceMean", x, axes=[-1], keepdims=1)
        d = self.op("Sub", x, mean)
        var = self.op("ReduceMean", self.op("Mul", d, d), axes=[-1], keepdims=1)
        return self.op("Div", d, self.op("Sqrt", self.op("Add", var, self.const(eps))))

    def layer_norm(self, x: str, w: str, b: str, eps: float = 1e-5) -> str:
        return self.op("Add", self.op("Mul", self.norm(x, eps), w), b)


def _v7_block(g: _Graph, z: dict, i: int, x: str, v_first: str | None, att_x: str, wkv: str, ffn_x: str,
              H: int, S: int, outs: dict) -> tuple[str, str | None]:
    """One RWKV-7 block (RWKV_x070_TMix_one + CMix_one as the reference runs them); returns (x, v_first)."""
    C = H * S
    p = f"blocks.{i}."
    a = p + "att."

    def W(name, transpose=False):
        t = z[name]
        t = t.T if transpose else t
        return g.w(name, t.reshape(1, C) if t.ndim == 3 else t)

    h = g.layer_norm(x, W(p + "ln1.weight"), W(p + "ln1.bias"))
    g.op("Identity", h, out=outs["att_x"])
    xx = g.op("Sub", att_x, h)
    mix = {m: g.op("Add", h, g.op("Mul", xx, W(a + f"x_{m}"))) for m in "rwkvag"}
    r = g.op("MatMul", mix["r"], W(a + "receptance.weight", True))
    w = g.op("MatMul", g.op("Tanh", g.op("MatMul", mix["w"], W(a + "w1"))), W(a + "w2"))
    k = g.op("MatMul", mix["k"], W(a + "key.weight", True))
    v = g.op("MatMul", mix["v"], W(a + "value.weight", True))
    aa = g.op("Sigmoid", g.op("Add", W(a + "a0"), g.op("MatMul", g.op("MatMul", mix["a"], W(a + "a1")), W(a + "a2"))))
    gate = g.op("MatMul", g.op("Sigmoid", g.op("MatMul", mix["g"], W(a + "g1"))), W(a + "g2"))
    kk = g.op("Reshape", g.op("Mul", k, W(a + "k_k")), g.shape(H, S))
    kk = g.op("Div", kk, g.op("Max", g.op("Sqrt", g.op("ReduceSumSquare", kk, axes=[-1], keepdims=1)), g.const(1e-12)))
    kk = g.op("Reshape", kk, g.shape(1, C))
    k = g.op("Mul", k, g.op("Add", g.const(1.0), g.op("Mul", g.op("Sub", aa, g.const(1.0)), W(a + "k_a"))))
    if i == 0:
        v_first = v
    else:
        mixv = g.op("Sigmoid", g.op("Add", W(a + "v0"), g.op("MatMul", g.op("MatMul", mix["v"], W(a + "v1")), W(a + "v2"))))
        v = g.op("Add", v, g.op("Mul", g.op("Sub", v_first, v), mixv))
    decay = g.op("Exp", g.op("Mul", g.const(-0.606531), g.op("Sigmoid", g.op("Add", W(a + "w0"), w))))
    vk = g.op("Mul", g.op("Reshape", v, g.shape(H, S, 1)), g.op("Reshape", k, g.shape(H, 1, S)))
    ab = g.op("Mul", g.op("Reshape", g.op("Neg", kk), g.shape(H, S, 1)),
              g.op("Reshape", g.op("Mul", kk, aa), g.shape(H, 1, S)))
    state = g.op("Add", g.op("Add", g.op("Mul", wkv, g.op("Reshape", decay, g.shape(H, 1, S))), g.op("MatMul", wkv, ab)), vk)
    g.op("Identity", state, out=outs["wkv"])
    y = g.op("Reshape", g.op("MatMul", state, g.op("Reshape", r, g.shape(H, S, 1))), g.shape(H, S))
    y = g.op("Reshape", g.norm(y, 64e-5), g.shape(1, C))
    y = g.op("Add", g.op("Mul", y, W(a + "ln_x.weight")), W(a + "ln_x.bias"))
    rk = g.w(a + "r_k", z[a + "r_k"].reshape(1, C))
    rkv = g.op("ReduceSum", g.op("Reshape", g.op("Mul", g.op("Mul", r, k), rk), g.shape(H, S)),
               g.w("axes_last", np.array([-1], dtype=np.int64), cast=False), keepdims=1)
    y = g.op("Add", y, g.op("Reshape", g.op("Mul", rkv, g.op("Reshape", v, g.shape(H, S))), g.shape(1, C)))
    x = g.op("Add", x, g.op("MatMul", g.op("Mul", y, gate), W(a + "output.weight", True)))
    f = p + "ffn."
    h2 = g.layer_norm(x, W(p + "ln2.weight"), W(p + "ln2.bias"))
    g.op("Identity", h2, out=outs["ffn_x"])
    fk = g.op("Add", h2, g.op("Mul", g.op("Sub", ffn_x, h2), W(f + "x_k")))
    act = g.op("Relu", g.op("MatMul", fk, W(f + "key.weight", True)))
    x = g.op("Add", x, g.op("MatMul", g.op("Mul", act, act), W(f + "value.weight", True)))
    return x, v_first


def _v4_block(g: _Graph, z: dict, i: int, x: str, st: dict, outs: dict) -> str:
    """One RWKV-4 block (the reference's att_one + ffn_one); time_decay enters as -exp(time_decay), as the
    reference stores it after loading."""
    C = z[f"blocks.{i}.ln1.weight"].shape[0]
    p = f"blocks.{i}."
    a, f = p + "att.", p + "ffn."

    def W(name, transpose=False):
        t = z[name]
        return g.w(name, (t.T if transpose else t).reshape(1, C) if t.ndim != 2 else (t.T if transpose else t))

    def mix(h, sx, m):
        return g.op("Add", g.op("Mul", h, W(m)), g.op("Mul", sx, g.op("Sub", g.const(1.0), W(m))))

    h = g.layer_norm(x, W(p + "ln1.weight"), W(p + "ln1.bias"))
    g.op("Identity", h, out=outs["att_x"])
    r = g.op("Sigmoid", g.op("MatMul", mix(h, st["att_x"], a + "time_mix_r"), W(a + "receptance.weight", True)))
    k = g.op("MatMul", mix(h, st["att_x"], a + "time_mix_k"), W(a + "key.weight", True))
    v = g.op("MatMul", mix(h, st["att_x"], a + "time_mix_v"), W(a + "value.weight", True))
    decay = g.w(a + "time_decay", -np.exp(z[a + "time_decay"].astype(np.float64)).reshape(1, C))
    aa, bb, pp = st["aa"], st["bb"], st["pp"]
    ww = g.op("Add", W(a + "time_first"), k)
    q = g.op("Max", pp, ww)
    e1, e2 = g.op("Exp", g.op("Sub", pp, q)), g.op("Exp", g.op("Sub", ww, q))
    wkv = g.op("Div", g.op("Add", g.op("Mul", e1, aa), g.op("Mul", e2, v)), g.op("Add", g.op("Mul", e1, bb), e2))
    ww = g.op("Add", decay, pp)
    q = g.op("Max", ww, k, out=outs["pp"])
    e1, e2 = g.op("Exp", g.op("Sub", ww, q)), g.op("Exp", g.op("Sub", k, q))
    g.op("Add", g.op("Mul", e1, aa), g.op("Mul", e2, v), out=outs["aa"])
    g.op("Add", g.op("Mul", e1, bb), e2, out=outs["bb"])
    x = g.op("Add", x, g.op("MatMul", g.op("Mul", r, wkv), W(a + "output.weight", True)))
    h2 = g.layer_norm(x, W(p + "ln2.weight"), W(p + "ln2.bias"))
    g.op("Identity", h2, out=outs["ffn_x"])
    fr = g.op("Sigmoid", g.op("MatMul", mix(h2, st["ffn_x"], f + "time_mix_r"), W(f + "receptance.weight", True)))
    act = g.op("Relu", g.op("MatMul", mix(h2, st["ffn_x"], f + "time_mix_k"), W(f + "key.weight", True)))
    return g.op("Add", x, g.op("Mul", fr, g.op("MatMul", g.op("Mul", act, act), W(f + "value.weight", True))))


def _head(g: _Graph, z: dict, x: str, out: str) -> str:
    y = g.layer_norm(x, g.w("ln_out.weight", z["ln_out.weight"]), g.w("ln_out.bias", z["ln_out.bias"]))
    return g.op("MatMul", y, g.w("head.weight", z["head.weight"].T), out=out)


def _names(profile: Profile, kind: str) -> list[str]:
    shapes = state_dict_shapes(profile)
    if kind == "head":
        return ["ln_out.weight", "ln_out.bias", "head.weight"]
    layers = {"block0": [0], "block": [1], "model": list(range(profile.n_layer))}[kind]
    keep = [n for n in shapes if n.startswith(tuple(f"blocks.{i}." for i in layers)) and ".ln0." not in n]
    if kind == "model":
        keep += ["ln_out.weight", "ln_out.bias", "head.weight"]
    return keep


@dataclass(frozen=True)
class GraphSpec:
    kind: str
    dtype: str
    version: int = 7

    @property
    def filename(self) -> str:
        return f"rwkv{self.version}_{self.kind}_{self.dtype}.onnx"


def check_profile(profile: Profile) -> None:
    if profile.version not in VERSIONS:
        what = "a layers: profile" if profile.version is None else f"RWKV-{profile.version}"
        raise InputError(f"--block: whole-block graphs are written for RWKV-{'/'.join(map(str, VERSIONS))}; "
                         f"{profile.path or profile.name} is {what}")
    if profile.n_layer < 2:
        raise InputError(f"--block: {profile.path or profile.name}: need n_layer >= 2 (block 0 and a later block)")


def graph_io(profile: Profile, kind: str) -> tuple[list, list]:
    """(inputs, outputs) of a graph: [(name, shape)] in order."""
    C, V = profile.n_embd, profile.vocab_size
    shapes = {part: (1, C) for part in state_parts(profile)}
    if profile.version == 7:
        S = profile.head_size
        shapes["wkv"] = (C // S, S, S)

    def st(i):
        return [(f"state{i}_{part}", shapes[part]) for part in state_parts(profile)]

    def new(i):
        return [(f"new_state{i}_{part}", shapes[part]) for part in state_parts(profile)]

    v7 = profile.version == 7
    if kind == "head":
        return [("x", (1, C))], [("logits", (1, V))]
    if kind == "block0":
        return [("x", (1, C))] + st(0), [("x_out", (1, C))] + new(0) + ([("v_first", (1, C))] if v7 else [])
    if kind == "block":
        return [("x", (1, C))] + ([("v_first", (1, C))] if v7 else []) + st(1), [("x_out", (1, C))] + new(1)
    ins, outs = [("x", (1, C))], [("logits", (1, V))]
    for i in range(profile.n_layer):
        ins += st(i)
        outs += new(i)
    return ins, outs


def build_graph(profile: Profile, kind: str, dtype: str = "fp32", seed: int = 0):
    """The ONNX ModelProto of one graph kind (not yet checked or saved)."""
    from onnx import helper

    check_profile(profile)
    if kind not in KINDS:
        raise InputError(f"unknown block graph kind {kind!r}: expected one of {', '.join(KINDS)}")
    z = checkpoint_weights(profile, seed, set(_names(profile, kind)))
    g = _Graph(dtype)
    ins, outs = graph_io(profile, kind)
    v7 = profile.version == 7
    if kind == "head":
        _head(g, z, "x", "logits")
    else:
        layers = {"block0": [0], "block": [1], "model": range(profile.n_layer)}[kind]
        x, v_first = "x", ("v_first" if kind == "block" and v7 else None)
        for i in layers:
            o = {part: f"new_state{i}_{part}" for part in state_parts(profile)}
            st = {part: f"state{i}_{part}" for part in state_parts(profile)}
            if v7:
                S = profile.head_size
                x, v_first = _v7_block(g, z, i, x, v_first, st["att_x"], st["wkv"], st["ffn_x"], profile.n_embd // S, S, o)
            else:
                x = _v4_block(g, z, i, x, st, o)
        if kind == "model":
            _head(g, z, x, "logits")
        else:
            g.op("Identity", x, out="x_out")
            if kind == "block0" and v7:
                g.op("Identity", v_first, out="v_first")
    graph = helper.make_graph(
        g.nodes, f"rwkv{profile.version}_{kind}",
        [helper.make_tensor_value_info(n, g.elem, list(s)) for n, s in ins],
        [helper.make_tensor_value_info(n, g.elem, list(s)) for n, s in outs],
        initializer=list(g.inits.values()))
    opsets = [helper.make_opsetid("", OPSET)]
    model = helper.make_model(graph, producer_name="rwkvprobe", opset_imports=opsets)
    model.ir_version = helper.find_min_ir_version_for(opsets)
    return model


def graph_inputs(profile: Profile, kind: str, dtype: str = "fp32", seed: int = 1) -> dict[str, np.ndarray]:
    """Seeded inputs of a graph: the embedded token (or a block's input), v_first and each layer's state."""
    ins, _ = graph_io(profile, kind)
    dt = np.float32 if dtype == "fp32" else np.float16
    feeds: dict[str, np.ndarray] = {}
    states: dict[int, dict] = {}
    for name, shape in ins:
        if name.startswith("state"):
            i, part = name[5:].split("_", 1)
            states.setdefault(int(i), random_state(profile, int(i), seed))
            feeds[name] = states[int(i)][part].astype(dt)
        elif name == "v_first":
            feeds[name] = _rng("v_first", seed).uniform(-1, 1, shape).astype(dt)
        else:
            feeds[name] = embedded_input(profile, seed).astype(dt)
    return feeds


def weight_bytes(profile: Profile, kind: str, dtype: str) -> int:
    shapes = state_dict_shapes(profile)
    return int(sum(np.prod(shapes[n]) for n in _names(profile, kind))) * (4 if dtype == "fp32" else 2)


def save_graph(model, path: Path) -> dict:
    """Check and save atomically (external data for graphs beyond protobuf's limit); returns file facts."""
    import onnx

    size = sum(len(t.raw_data) for t in model.graph.initializer)
    tmp = path.with_name(f".{path.name}.tmp")
    data_name = None
    try:
        if size > EXTERNAL_DATA_THRESHOLD:
            data_name = path.name + ".data"
            onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
            os.replace(tmp, path)
            onnx.checker.check_model(str(path))
        else:
            onnx.checker.check_model(model)
            tmp.write_bytes(model.SerializeToString())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"file": path.name, "external_data": data_name,
            "bytes": path.stat().st_size + ((path.parent / data_name).stat().st_size if data_name else 0)}


def settings_key(profile: Profile, seed: int) -> str:
    p = profile
    return f"v{GRAPH_VERSION};rwkv{p.version};seed={seed};L={p.n_layer};C={p.n_embd};V={p.vocab_size};S={p.head_size};F={p.dim_ffn};lora={sorted(p.lora.items())}"


def generate(profile: Profile, out: Path, dtypes: list[str], kinds: tuple = KINDS, seed: int = 0,
             progress=None) -> dict:
    """Write the block graphs and ``blocks.json``; graphs already there with the same settings are reused."""
    import shutil

    import psutil

    check_profile(profile)
    for d in dtypes:
        if d not in DTYPES:
            raise InputError(f"--dtype {d}: expected one of {', '.join(DTYPES)}")
    out = ensure_writable_dir(out)
    key = settings_key(profile, seed)
    try:
        old = json.loads((out / MANIFEST).read_text())
        old = {e["file"]: e for e in old.get("graphs", [])} if old.get("settings") == key else {}
    except (OSError, ValueError, AttributeError):
        old = {}
    specs = [GraphSpec(k, d, profile.version) for d in dtypes for k in kinds]
    todo = [s for s in specs if not (s.filename in old and (out / s.filename).is_file())]
    if todo:
        need = sum(weight_bytes(profile, s.kind, s.dtype) for s in todo)
        free = shutil.disk_usage(out).free
        if need > free:
            raise InputError(f"{out}: the block graphs need {need / 1e9:.2f} GB of disk, only {free / 1e9:.2f} GB is free")
        biggest = max(3 * weight_bytes(profile, s.kind, "fp32") for s in todo)
        if biggest > psutil.virtual_memory().available:
            raise InputError(f"the {max(todo, key=lambda s: weight_bytes(profile, s.kind, 'fp32')).kind} graph needs "
                             f"{biggest / 1e9:.2f} GB of memory to generate, only "
                             f"{psutil.virtual_memory().available / 1e9:.2f} GB is available")
    graphs = []
    for s in specs:
        if s in todo:
            entry = save_graph(build_graph(profile, s.kind, s.dtype, seed), out / s.filename)
            entry.update(kind=s.kind, dtype=s.dtype, weight_bytes=weight_bytes(profile, s.kind, s.dtype),
                         inputs=[n for n, _ in graph_io(profile, s.kind)[0]],
                         outputs=[n for n, _ in graph_io(profile, s.kind)[1]])
        else:
            entry = old[s.filename]
        graphs.append(entry)
        if progress:
            progress(s, s not in todo)
    # graphs of other kinds or dtypes written earlier with the same settings stay listed
    graphs += [e for f, e in old.items() if f not in {s.filename for s in specs} and (out / f).is_file()]
    manifest = {"schema": 1, "kind": "rwkv-block-graphs", "profile": profile.name, "profile_path": profile.path,
                "version": profile.version, "n_layer": profile.n_layer, "opset": OPSET, "seed": seed, "settings": key,
                "embedding": "outside the graphs: input x is the embedded token (ln0 applied), as the reference stores it",
                "graphs": graphs, "reused": len(specs) - len(todo)}
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return manifest


# ------------------------------------------------------------------------------------------------
# Measured on the CPU as a whole (onnxruntime)

#: graphs whose weights exceed this are not timed by analyze (memory and protobuf's limit); the chained
#: blocks stand for them
MAX_TIMED_BYTES = 1_500_000_000
#: the analyze series that get whole-graph times
BACKEND = "onnxruntime"


def measure_graphs(profile: Profile, folder: Path, dtype: str, threads: int, policy, llc_bytes: int | None = None,
                   cold: bool = True, kinds: tuple = KINDS) -> dict:
    """Median seconds of each block graph in onnxruntime (CPU), timed cold like the matmuls: calls rotate over
    sessions that each hold their own weights, plus an untimed eviction read (timing.plan_rotation)."""
    import onnxruntime as ort


    out: dict = {"backend": BACKEND, "dtype": dtype, "threads": threads, "cold": cold, "n_layer": profile.n_layer,
                 "onnxruntime": ort.__version__, "graphs": {}}
    for kind in kinds:  # too big to time: not even written
        nbytes = weight_bytes(profile, kind, dtype)
        if nbytes > MAX_TIMED_BYTES:
            out["graphs"][kind] = {"skipped": f"weights {nbytes / 1e9:.2f} GB above {MAX_TIMED_BYTES / 1e9:.1f} GB: "
                                              "not timed (the chained block graphs stand for it)"}
    manifest = generate(profile, folder, [dtype], tuple(k for k in kinds if k not in out["graphs"]))
    for e in manifest["graphs"]:
        kind = e["kind"]
        if kind not in kinds or e["dtype"] != dtype or kind in out["graphs"]:
            continue
        rot = plan_rotation(e["weight_bytes"], llc_bytes, cold)
        try:
            sessions = [ort.InferenceSession(str(folder / e["file"]), sess_options=session_options(threads),
                                             providers=["CPUExecutionProvider"]) for _ in range(rot.copies)]
            feeds = graph_inputs(profile, kind, dtype)
            # every session runs once before timing (its lazy set-up is not a decode cost); outputs must be finite
            finite = all(np.isfinite(np.asarray(o, dtype=np.float32)).all() for s in sessions for o in s.run(None, feeds))
            if not finite:
                out["graphs"][kind] = {"error": "output not finite", "weight_bytes": e["weight_bytes"]}
                continue
            timing = measure(lambda i, sessions=sessions, feeds=feeds: sessions[i].run(None, feeds), rot.copies, policy,
                             between=eviction(rot.flush_bytes))
            out["graphs"][kind] = {"seconds": timing["median_seconds"], "weight_bytes": e["weight_bytes"],
                                   "rotation": rot.describe(), "timing": timing, "file": e["file"]}
        except Exception as ex:  # reported per graph; e.g. an op without an fp16 kernel
            out["graphs"][kind] = {"error": f"{type(ex).__name__}: {str(ex).splitlines()[0] if str(ex) else ''}"[:300]}
        finally:
            sessions = []
    g = out["graphs"]
    if all((g.get(k) or {}).get("seconds") for k in ("block0", "block", "head")):
        out["chained_seconds_per_token"] = g["block0"]["seconds"] + (profile.n_layer - 1) * g["block"]["seconds"] + g["head"]["seconds"]
    return out


