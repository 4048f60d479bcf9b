"""One RWKV-7 block's non-matmul decode work as a ggml graph, timed with its state carried.

A ggml engine (rwkv.cpp, llama.cpp) runs a token's elementwise ops as nodes of its ggml graph: layer norms,
token-shift mixes, activations, the per-head L2 norm, and the state update of ``ggml_rwkv_wkv7`` with the
new state copied back into the state tensor. This module builds that part of one RWKV-7 block in ggml, in
the same sequence as ``nonmatmul``'s torch block (so the tests can compare the two on the same inputs),
with the weight matmuls' outputs as fixed inputs, and times it cold: one graph per block, each with its own
inputs and state, an untimed read of the last-level cache's size between calls, times n_layer.
Everything is fp32, as ggml engines keep activations and state whatever the weight format.

Other RWKV versions have no ggml graph here: their ggml series keep the torch-timed block as a labelled
stand-in (``nonmatmul.STAND_IN``).
"""

from __future__ import annotations

import ctypes
import time

import numpy as np

from rwkvprobe.backends.ggml_backend import GgmlBackend, _cpu_init, _ggml
from rwkvprobe.measure import nonmatmul
from rwkvprobe.measure.timing import DEFAULT_LLC_BYTES, TimingPolicy, eviction, measure
from rwkvprobe.model.profile import Profile

#: RWKV versions with a ggml graph of the block
VERSIONS = (7,)
#: names of the graph's outputs, in the order of the torch block's (x, h, h2, state, extras)
OUTPUTS = ("x", "h", "h2", "state", "w_in", "g_in", "gated", "fk", "act", "mix_r", "mix_w", "mix_k", "mix_v",
           "mix_a", "mix_g")


def block_inputs(profile: Profile, seed: int = 0) -> dict:
    """Seeded fp32 inputs of one RWKV-7 block: x, shifts, state [H,S,S], v_first, 19 vectors, 12 matmul outputs.

    The same ranges as ``nonmatmul.block_inputs`` (norm weights near 1, mixes in [0, 1), small state)."""
    rng = np.random.default_rng(1000 + seed)
    C, F_, lo = profile.n_embd, profile.dim_ffn, profile.lora
    S = profile.head_size
    H = C // S

    def rnd(*shape, lo_=-1.0, hi=1.0):
        return rng.uniform(lo_, hi, size=shape).astype(np.float32)

    def norm():
        return [rnd(C, lo_=0.5, hi=1.5), rnd(C, lo_=-0.1, hi=0.1)]

    vec = norm() + norm() + [rnd(C, lo_=0.0) for _ in range(6)] + [rnd(C) for _ in range(6)] + norm() + [rnd(C, lo_=0.0)]
    mm = [rnd(C), rnd(C), rnd(C), rnd(lo["decay"]), rnd(C), rnd(C), rnd(C), rnd(lo["gate"]), rnd(C), rnd(C),
          rnd(F_), rnd(C)]
    return {"x": rnd(C), "shift_att": rnd(C), "shift_ffn": rnd(C), "state": rnd(H, S, S, lo_=-0.1, hi=0.1),
            "v_first": rnd(C), "vec": vec, "mm": mm, "H": H, "S": S}


class GgmlBlock:
    """One block's graph over its own inputs; ``run()`` computes it and carries the state."""

    def __init__(self, inputs: dict, threads: int, threadpool=None):
        g = _ggml()
        _cpu_init()
        self.g = g
        H, S = inputs["H"], inputs["S"]
        C = H * S
        arrays = [inputs["x"], inputs["shift_att"], inputs["shift_ffn"], inputs["state"], inputs["v_first"],
                  *inputs["vec"], *inputs["mm"]]
        mem = sum(a.nbytes for a in arrays) * 12 + C * 4 * 200 + (1 << 20) + g.ggml_graph_overhead()
        self.ctx = g.ggml_init(g.ggml_init_params(mem_size=mem, mem_buffer=None, no_alloc=False))
        if not self.ctx:
            raise MemoryError(f"ggml_init could not allocate {mem} bytes")
        ctx = self.ctx

        def tensor(a: np.ndarray):
            a = np.ascontiguousarray(a, dtype=np.float32)  # kept alive until the copy is done
            t = g.ggml_new_tensor_1d(ctx, g.GGML_TYPE_F32, a.size)
            ctypes.memmove(g.ggml_get_data(t), a.ctypes.data, a.nbytes)
            return t

        x, sa, sf = tensor(inputs["x"]), tensor(inputs["shift_att"]), tensor(inputs["shift_ffn"])
        self.state = tensor(inputs["state"])
        v_first = tensor(inputs["v_first"])
        vec = [tensor(a) for a in inputs["vec"]]
        mm = [tensor(a) for a in inputs["mm"]]
        add, mul, sub = g.ggml_add, g.ggml_mul, g.ggml_sub

        def layer_norm(t, w, b):
            return add(ctx, mul(ctx, g.ggml_norm(ctx, t, 1e-5), w), b)

        def heads(t):  # [C] -> [S, H, 1], as the wkv7 op and the per-head norms take it
            return g.ggml_reshape_3d(ctx, t, S, H, 1)

        h = layer_norm(x, vec[0], vec[1])
        d = sub(ctx, sa, h)
        mixes = [add(ctx, h, mul(ctx, d, vec[4 + i])) for i in range(6)]
        r, k, v = mm[0], mm[1], mm[2]
        w_in = g.ggml_tanh(ctx, mm[3])
        a = g.ggml_sigmoid(ctx, add(ctx, vec[11], mm[5]))
        g_in = g.ggml_sigmoid(ctx, mm[7])
        kk = g.ggml_reshape_1d(ctx, g.ggml_l2_norm(ctx, heads(mul(ctx, k, vec[13])), 1e-12), C)
        ones = _ones(g, ctx, C)
        k = mul(ctx, k, add(ctx, mul(ctx, sub(ctx, a, ones), vec[14]), ones))
        v = add(ctx, v, mul(ctx, sub(ctx, v_first, v), g.ggml_sigmoid(ctx, add(ctx, vec[12], mm[6]))))
        w = g.ggml_exp(ctx, g.ggml_scale(ctx, g.ggml_sigmoid(ctx, add(ctx, vec[10], mm[4])), -0.606531))
        wkv = g.ggml_rwkv_wkv7(ctx, heads(r), heads(w), heads(k), heads(v), heads(g.ggml_neg(ctx, kk)),
                               heads(mul(ctx, kk, a)), g.ggml_reshape_2d(ctx, self.state, S * S * H, 1))
        y = g.ggml_view_1d(ctx, wkv, C, 0)
        new_state = g.ggml_view_1d(ctx, wkv, S * S * H, C * 4)
        carry = g.ggml_cpy(ctx, new_state, self.state)  # the state carried to the next token, inside the graph
        y = g.ggml_reshape_1d(ctx, g.ggml_norm(ctx, g.ggml_reshape_2d(ctx, g.ggml_cont(ctx, y), S, H), 64e-5), C)
        y = add(ctx, mul(ctx, y, vec[16]), vec[17])
        bonus = g.ggml_sum_rows(ctx, g.ggml_reshape_2d(ctx, mul(ctx, mul(ctx, r, k), vec[15]), S, H))  # [1, H]
        y = add(ctx, y, g.ggml_reshape_1d(ctx, mul(ctx, g.ggml_reshape_2d(ctx, v, S, H), bonus), C))
        gated = mul(ctx, y, mm[8])
        x2 = add(ctx, x, mm[9])
        h2 = layer_norm(x2, vec[2], vec[3])
        fk = add(ctx, h2, mul(ctx, sub(ctx, sf, h2), vec[18]))
        act = g.ggml_sqr(ctx, g.ggml_relu(ctx, mm[10]))
        x3 = add(ctx, x2, mm[11])
        self.outputs = dict(zip(OUTPUTS, [x3, h, h2, new_state, w_in, g_in, gated, fk, act, *mixes]))
        self.graph = g.ggml_new_graph_custom(ctx, 512, False)
        for t in self.outputs.values():
            g.ggml_build_forward_expand(self.graph, t)
        g.ggml_build_forward_expand(self.graph, carry)
        self.plan = g.ggml_graph_plan(self.graph, threads, threadpool)
        self.work = (ctypes.c_uint8 * max(int(self.plan.work_size), 1))()
        self.plan.work_data = ctypes.cast(self.work, ctypes.POINTER(ctypes.c_uint8))
        self._args = (self.graph, ctypes.byref(self.plan))
        self.status = 0
        self.n_nodes = int(g.ggml_graph_n_nodes(self.graph))

    def run(self) -> None:
        self.status = self.g.ggml_graph_compute(*self._args)

    def read(self, name: str) -> np.ndarray:
        """An output after the last run (fp32 copy); ``state`` is the state this run produced."""
        if self.status != 0:
            raise RuntimeError(f"ggml_graph_compute returned status {self.status}")
        t = self.outputs[name]
        n = int(self.g.ggml_nelements(t))
        return np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.g.ggml_get_data(t))).copy()

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self.g.ggml_free(self.ctx)
            self.ctx = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _ones(g, ctx, n: int):
    t = g.ggml_new_tensor_1d(ctx, g.GGML_TYPE_F32, n)
    ones = np.ones(n, dtype=np.float32)  # kept alive until the copy is done
    ctypes.memmove(g.ggml_get_data(t), ones.ctypes.data, n * 4)
    return t


#: ggml's wkv7 kernel steps through a head in SIMD blocks of up to 64 floats (AVX-512) with no tail loop
#: for the state: head sizes that are not a multiple of 64 are left to the torch stand-in
HEAD_MULTIPLE = 64
#: largest relative difference from the torch block on the same inputs (fp32 both; measured ~1e-6)
TOLERANCE = 1e-4


def supported(profile: Profile) -> bool:
    return profile.version in VERSIONS and profile.head_size % HEAD_MULTIPLE == 0


def check_against_torch(inputs: dict, block: GgmlBlock) -> dict | None:
    """Run the graph once (from the initial state) and compare every output with nonmatmul's torch block on the
    same inputs, which the tests check against the reference package's ops. None when torch is not installed."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return None
    import torch


    def t(a):
        return torch.from_numpy(np.array(a, dtype=np.float32))

    args = (t(inputs["x"]), t(inputs["shift_att"]), t(inputs["shift_ffn"]), t(inputs["state"]), t(inputs["v_first"]),
            [t(a) for a in inputs["vec"]], [t(a) for a in inputs["mm"]], inputs["H"], inputs["S"])
    with torch.no_grad():
        x, h, h2, state, extras = nonmatmul.block_function(7)(*args)
    ref = dict(zip(OUTPUTS, [x, h, h2, state, *extras]))
    block.run()
    worst, where = 0.0, ""
    for name in OUTPUTS:
        r = ref[name].double().numpy().ravel()
        err = float(np.abs(block.read(name) - r).max() / (np.abs(r).max() or 1.0))
        if not np.isfinite(err) or err > worst:
            worst, where = (err if np.isfinite(err) else float("inf")), name
    ok = worst <= TOLERANCE
    return {"ok": ok, "rel_err": worst, "tolerance": TOLERANCE, "against": "nonmatmul's torch block, same inputs",
            "detail": "" if ok else f"{where}: relative error {worst:.2e} > {TOLERANCE:.0e}"}


def measure_block(profile: Profile, threads: int, policy: TimingPolicy, llc_bytes: int | None = None,
                  cold: bool = True) -> dict | None:
    """Median seconds of one block's non-matmul decode work as a ggml graph (None: no graph for this version)."""

    if not supported(profile):
        return None
    backend = GgmlBackend(threads)
    copies = profile.n_layer if cold else 1
    first = block_inputs(profile, seed=0)
    blocks = [GgmlBlock(first if i == 0 else block_inputs(profile, seed=i), threads, backend.threadpool())
              for i in range(copies)]
    try:
        check = check_against_torch(first, blocks[0])
        if check is not None and not check["ok"]:
            return {"version": profile.version, "blocks": profile.n_layer, "cold": cold, "engine": "ggml",
                    "check": check, "seconds_per_block": None, "seconds_per_token": None, "timing": None}
        for i in range(3):
            blocks[i % copies].run()
        timing = measure(lambda i: blocks[i].run(), copies, policy,
                         between=eviction(llc_bytes or DEFAULT_LLC_BYTES) if cold else None)
        nodes = blocks[0].n_nodes
    finally:
        for b in blocks:
            b.close()
    return {"version": profile.version, "blocks": profile.n_layer, "cold": cold, "engine": "ggml", "check": check,
            "seconds_per_block": timing["median_seconds"], "seconds_per_token": timing["median_seconds"] * profile.n_layer,
            "timing": timing, "graph_nodes": nodes,
            "what": f"one block's layer norms, token-shift mixes, activations and ggml_rwkv_wkv7 state update as a ggml "
                    f"graph ({nodes} nodes, fp32, state copied back in the graph), {threads} threads, "
                    f"{'cold' if cold else 'warm'} caches, times n_layer"}


def measure_series(profile: Profile, threads: int, budget_seconds: float, llc_bytes: int | None, cold: bool) -> dict:
    """The results entry of the ggml series' block (analyze)."""
    policy = TimingPolicy(budget_seconds=budget_seconds, min_samples=5)
    t0 = time.perf_counter()
    entry = {"backend": "ggml", "dtype": "fp32", **measure_block(profile, threads, policy, llc_bytes, cold)}
    entry["elapsed_seconds"] = time.perf_counter() - t0  # building, checking and timing it (a second timing's cost)
    return entry
