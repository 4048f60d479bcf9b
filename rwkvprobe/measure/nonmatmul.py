"""The per-token work outside the weight matmuls, measured in torch.

Decode spends most of its time in the weight matmuls, but not all of it: every block also runs layer
norms, token-shift mixes, activations and the RNN state update (for RWKV-7 a batched H x S x S product
per block), each a separate framework call. ``rwkvprobe validate`` showed that leaving these out (or
modelling them as bytes over bandwidth) under-predicts decode by 7-12% here. So for the torch backend
analyze times one block's non-matmul operations, in the same sequence and dtypes as a CPU forward pass
of the architecture runs them (TorchScript, as BlinkDL's reference package runs by default, vectors in
the model dtype, the RNN state in fp32), with the matmul outputs as fixed inputs, and counts it once per
block. The torch series of every version are timed in their forward pass's structure instead, with the weight
matmuls between the ops (layerpass.py): RWKV-4/5.2/6 run two scripted calls a layer, RWKV-7 one scripted loop
over the layers, its parameters looked up by name (its bare block measured 0.60-0.69 of the real pass's
everything-else once validate's own split was steady). The ggml stand-in keeps the bare block (ggml runs no
TorchScript). Other backends (and ``layers:`` profiles) keep the bytes-over-bandwidth model, labelled modelled.
"""

from __future__ import annotations

from typing import List

from rwkvprobe.measure import layerpass, system
from rwkvprobe.measure.timing import DEFAULT_LLC_BYTES, TimingPolicy, eviction, measure
from rwkvprobe.model.profile import Profile

#: RWKV versions whose block is timed here
VERSIONS = (4, 5, 6, 7)
#: the analyze series that get a timed block: torch on the CPU, in either weight layout
BACKENDS = ("torch", "torch-linear")
FLOAT_DTYPES = ("fp32", "fp16", "bf16")
#: series whose engine runs its non-matmul work in a graph of its own that rwkvprobe does not build: they get
#: this torch-timed block as a measured stand-in, labelled so, at the activation type the engine computes in.
#: ggml (rwkv.cpp, llama.cpp) computes its elementwise ops and state in fp32 whatever the weight format.
STAND_IN = {"ggml": "fp32"}
STAND_IN_NOTE = ("torch-timed stand-in: the same block's ops timed in torch (TorchScript, fp32), not a ggml "
                 "graph; ggml runs them as nodes of its own graph, which rwkvprobe does not build")


def block_dtype(dtype: str, backend: str = "") -> str:
    """The dtype of a series' non-matmul work: quantized-weight series keep fp32 activations; a stand-in
    series (STAND_IN) the type its engine computes in."""
    if backend in STAND_IN:
        return STAND_IN[backend]
    return dtype if dtype in FLOAT_DTYPES else "fp32"
_TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

_SCRIPTED: dict = {}


def _v7_block_source():
    import torch
    import torch.nn.functional as F

    def v7_block(x: torch.Tensor, shift_att: torch.Tensor, shift_ffn: torch.Tensor, state: torch.Tensor,
                 v_first: torch.Tensor, vec: List[torch.Tensor], mm: List[torch.Tensor], H: int, S: int):
        # vec: ln1 w/b, ln2 w/b, mixes r w k v a g, w0 a0 v0, k_k k_a r_k, ln_x w/b, ffn mix
        # mm (the weight matmuls' outputs, fixed): r k v, decay low-rank (in, out), a out, v-residual out,
        # gate low-rank (in, out), attention output, ffn key (dim_ffn), ffn value
        C = x.shape[0]
        h = F.layer_norm(x, (C,), vec[0], vec[1])
        d = shift_att - h
        mixes = [h + d * vec[4], h + d * vec[5], h + d * vec[6], h + d * vec[7], h + d * vec[8], h + d * vec[9]]
        r, k, v = mm[0], mm[1], mm[2]
        w_in = torch.tanh(mm[3])
        a = torch.sigmoid(vec[11] + mm[5])
        g_in = torch.sigmoid(mm[7])
        kk = F.normalize((k * vec[13]).view(H, S), dim=-1, p=2.0).view(C)
        k = k * (1 + (a - 1) * vec[14])
        v = v + (v_first - v) * torch.sigmoid(vec[12] + mm[6])
        w = torch.exp(-0.606531 * torch.sigmoid((vec[10] + mm[4]).float()))
        vk = v.view(H, S, 1) @ k.view(H, 1, S)
        ab = (-kk).view(H, S, 1) @ (kk * a).view(H, 1, S)
        state = state * w.view(H, 1, S) + state @ ab.float() + vk.float()
        y = state.to(dtype=x.dtype) @ r.view(H, S, 1)
        y = F.group_norm(y.view(1, C), num_groups=H, weight=vec[16], bias=vec[17], eps=64e-5).view(C)
        y = y + ((r * k * vec[15]).view(H, S).sum(dim=-1, keepdim=True) * v.view(H, S)).view(C)
        gated = y * mm[8]
        x = x + mm[9]
        h2 = F.layer_norm(x, (C,), vec[2], vec[3])
        fk = h2 + (shift_ffn - h2) * vec[18]
        act = torch.relu(mm[10]) ** 2
        x = x + mm[11]
        return x, h, h2, state, [w_in, g_in, gated, fk, act] + mixes

    return v7_block


def _v4_block_source():
    import torch
    import torch.nn.functional as F

    def v4_block(x: torch.Tensor, shift_att: torch.Tensor, shift_ffn: torch.Tensor, state: List[torch.Tensor],
                 vec: List[torch.Tensor], mm: List[torch.Tensor]):
        # vec: ln1 w/b, ln2 w/b, att mixes k v r, time_decay, time_first, ffn mixes k r
        # mm: r, k, v (fp32), attention output, ffn receptance, ffn key (dim_ffn), ffn value
        # state: aa, bb, pp (fp32): the RWKV-4 numerator, denominator and running maximum
        C = x.shape[0]
        x = x.to(dtype=x.dtype)  # the reference casts the residual to the block's dtype
        aa, bb, pp = state[0], state[1], state[2]
        h = F.layer_norm(x, (C,), vec[0], vec[1])
        mixes = [h * vec[4] + shift_att * (1 - vec[4]), h * vec[5] + shift_att * (1 - vec[5]),
                 h * vec[6] + shift_att * (1 - vec[6])]
        r = torch.sigmoid(mm[0].to(x.dtype))
        k = mm[1].to(torch.float32)
        v = mm[2].to(torch.float32)
        ww = vec[8] + k
        p = torch.maximum(pp, ww)
        e1 = torch.exp(pp - p)
        e2 = torch.exp(ww - p)
        wkv = ((e1 * aa + e2 * v) / (e1 * bb + e2)).to(dtype=x.dtype)
        ww = vec[7] + pp
        p = torch.maximum(ww, k)
        e1 = torch.exp(ww - p)
        e2 = torch.exp(k - p)
        gated = r * wkv
        x = x + mm[3].to(x.dtype)
        new_state = [e1 * aa + e2 * v, e1 * bb + e2, p]
        h2 = F.layer_norm(x, (C,), vec[2], vec[3])
        fk = h2 * vec[9] + shift_ffn * (1 - vec[9])
        frx = h2 * vec[10] + shift_ffn * (1 - vec[10])
        fr = torch.sigmoid(mm[4].to(x.dtype))
        act = torch.relu(mm[5].to(x.dtype)) ** 2
        x = x + fr * mm[6].to(x.dtype)
        return x, h, h2, new_state, [gated, fk, frx, act] + mixes

    return v4_block


def _v56_block_source():
    import torch
    import torch.nn.functional as F

    def v56_block(x: torch.Tensor, shift_att: torch.Tensor, shift_ffn: torch.Tensor, state: torch.Tensor,
                  vec: List[torch.Tensor], mm: List[torch.Tensor], H: int, S: int, v6: bool):
        # vec: ln1 w/b, ln2 w/b, ln_x w/b, time_decay (H,S,1 fp32; v6: C), time_first (H,S,1 fp32),
        #      mixes (v5: k v r g; v6: x w k v r g), ffn mixes k r
        # mm: r, k, v (fp32), gate, attention output, ffn receptance, ffn key (dim_ffn), ffn value;
        #     v6 also the token-shift low-rank outputs (5*mix, then 5 x C) and the decay low-rank's (decay, C)
        C = x.shape[0]
        x = x.to(dtype=x.dtype)  # the reference casts the residual to the block's dtype
        h = F.layer_norm(x, (C,), vec[0], vec[1])
        extras: List[torch.Tensor] = []
        if v6:
            sx = shift_att - h
            extras.append(h + sx * vec[8])
            lo = torch.tanh(mm[8]).view(5, 1, -1)
            mw, mk, mv, mr, mg = mm[9].view(5, -1).unbind(dim=0)
            extras += [lo, h + sx * (vec[9] + mw), h + sx * (vec[10] + mk), h + sx * (vec[11] + mv),
                       h + sx * (vec[12] + mr), h + sx * (vec[13] + mg)]
            first = 14
        else:
            for i in range(8, 12):
                extras.append(h * vec[i] + shift_att * (1 - vec[i]))
            first = 12
        r = mm[0].to(torch.float32).view(H, 1, S)
        k = mm[1].to(torch.float32).view(H, S, 1)
        v = mm[2].to(torch.float32).view(H, 1, S)
        g = F.silu(mm[3].to(x.dtype))
        if v6:
            extras.append(torch.tanh(mm[10]))  # the decay low-rank's inner activation
            w = vec[6] + mm[11].float().view(H, S, 1)
            w = torch.exp(-torch.exp(w.float()))
        else:
            w = vec[6]
        a = (k @ v).to(torch.float32)
        y = r @ (vec[7] * a + state)
        state = a + w * state
        y = y.flatten()
        y = F.group_norm(y.unsqueeze(0), num_groups=H, weight=vec[4], bias=vec[5], eps=64e-5).squeeze(0)
        gated = y.to(dtype=x.dtype) * g
        x = x + mm[4].to(x.dtype)
        h2 = F.layer_norm(x, (C,), vec[2], vec[3])
        if v6:
            sf = shift_ffn - h2
            fk = h2 + sf * vec[first]
            fr = h2 + sf * vec[first + 1]
        else:
            fk = h2 * vec[first] + shift_ffn * (1 - vec[first])
            fr = h2 * vec[first + 1] + shift_ffn * (1 - vec[first + 1])
        rr = torch.sigmoid(mm[5].to(x.dtype))
        act = torch.relu(mm[6].to(x.dtype)) ** 2
        x = x + rr * mm[7].to(x.dtype)
        return x, h, h2, state, [gated, fk, fr, act] + extras

    return v56_block


def block_function(version: int):
    """The TorchScript function of one block's non-matmul decode work (compiled once per process)."""
    import torch

    if version not in _SCRIPTED:
        import warnings

        with warnings.catch_warnings():  # deprecated in favour of torch.compile, but it is what the reference runs
            warnings.simplefilter("ignore", DeprecationWarning)
            source = {4: _v4_block_source, 5: _v56_block_source, 6: _v56_block_source, 7: _v7_block_source}
            _SCRIPTED[version] = torch.jit.script(source[version]())
    return _SCRIPTED[version]


def block_inputs(profile: Profile, dtype: str, seed: int = 0) -> tuple:
    """Seeded arguments of one block's function: activations, state, vector parameters and matmul outputs."""
    import torch

    v, C, F_, lo = profile.version, profile.n_embd, profile.dim_ffn, profile.lora
    dt = getattr(torch, _TORCH_DTYPES[dtype])
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, lo_=-1.0, hi=1.0, dtype=dt):
        return (torch.rand(shape, generator=g) * (hi - lo_) + lo_).to(dtype)

    def norm():
        return [rnd(C, lo_=0.5, hi=1.5), rnd(C, lo_=-0.1, hi=0.1)]

    x, sa, sf = rnd(C), rnd(C), rnd(C)
    f32 = torch.float32
    if v == 4:
        vec = norm() + norm() + [rnd(C, lo_=0.0) for _ in range(3)] + [rnd(C, dtype=f32), rnd(C, dtype=f32)]
        vec += [rnd(C, lo_=0.0) for _ in range(2)]
        mm = [rnd(C), rnd(C, dtype=f32), rnd(C, dtype=f32), rnd(C), rnd(C), rnd(F_), rnd(C)]
        state = [rnd(C, dtype=f32), rnd(C, lo_=0.5, hi=1.5, dtype=f32), rnd(C, dtype=f32)]
        return x, sa, sf, state, vec, mm
    S = profile.head_size
    H = C // S
    if v in (5, 6):
        decay = rnd(C) if v == 6 else rnd(H, S, 1, lo_=0.5, hi=0.99, dtype=f32)
        if v == 6:
            decay = decay.to(f32).view(H, S, 1)
        vec = norm() + norm() + [t.float() for t in norm()] + [decay, rnd(H, S, 1, dtype=f32)]  # ln_x in fp32
        vec += [rnd(C, lo_=0.0) for _ in range(6 if v == 6 else 4)] + [rnd(C, lo_=0.0) for _ in range(2)]
        mm = [rnd(C, dtype=f32), rnd(C, dtype=f32), rnd(C, dtype=f32), rnd(C), rnd(C), rnd(C), rnd(F_), rnd(C)]
        if v == 6:
            mm += [rnd(5 * lo["mix"]), rnd(5, C), rnd(lo["decay"]), rnd(C)]
        state = rnd(H, S, S, lo_=-0.1, hi=0.1, dtype=f32)
        return x, sa, sf, state, vec, mm, H, S, v == 6
    vec = norm() + norm()
    vec += [rnd(C, lo_=0.0) for _ in range(6)]  # token-shift mixes
    vec += [rnd(C) for _ in range(6)]  # w0 a0 v0 k_k k_a r_k
    vec += norm() + [rnd(C, lo_=0.0)]  # ln_x, ffn mix
    mm = [rnd(C), rnd(C), rnd(C), rnd(lo["decay"]), rnd(C), rnd(C), rnd(C), rnd(lo["gate"]), rnd(C), rnd(C),
          rnd(F_), rnd(C)]
    state = rnd(H, S, S, lo_=-0.1, hi=0.1, dtype=f32)
    return x, sa, sf, state, rnd(C), vec, mm, H, S


def measure_block(profile: Profile, dtype: str, policy: TimingPolicy, llc_bytes: int | None = None,
                  cold: bool = True) -> dict | None:
    """Median seconds of one block's non-matmul decode work in torch (None: no timed block for this version).

    Cold (as in decode, where each block's weights stream megabytes through the cache between two uses of
    its state and vectors): every block has its own inputs, and an untimed read of the last-level cache's
    size runs before each call.
    """
    import torch


    if profile.version not in VERSIONS:
        return None
    fn = block_function(profile.version)
    copies = profile.n_layer if cold else 1
    blocks = [list(block_inputs(profile, dtype, seed=i)) for i in range(copies)]

    def call(i: int) -> None:
        b = blocks[i]
        out = fn(*b)
        b[3] = out[3]  # carry the state, as decode does

    with torch.no_grad():
        for i in range(3):  # TorchScript optimises after its first calls
            call(i % copies)
        timing = measure(call, copies, policy, between=eviction(llc_bytes or DEFAULT_LLC_BYTES) if cold else None)
    return {"version": profile.version, "blocks": profile.n_layer, "cold": cold,
            "seconds_per_block": timing["median_seconds"], "seconds_per_token": timing["median_seconds"] * profile.n_layer,
            "timing": timing,
            "what": "one block's layer norms, token-shift mixes, activations and RNN state update (TorchScript, "
                    f"state in fp32), timed in torch with {'cold' if cold else 'warm'} caches, times n_layer"}


def measure_series(profile: Profile, backend: str, dtype: str, budget_seconds: float, llc_bytes: int | None,
                   cold: bool, threads: int | None = None, chunks: tuple[int, ...] = (), keep: list | None = None
                   ) -> dict:
    """The results entry of one series' timed block (analyze, and validate on an older results file), with
    the sequential prefill work of each chunk length in ``chunks`` (key ``seq``, by chunk length).

    ``threads``: torch's intra-op threads for a stand-in series (the torch series set them themselves). ``keep``: a
    list the decode layer pass's Rounds goes into, for a later window of its rounds (layerpass.later_window)."""
    policy = TimingPolicy(budget_seconds=budget_seconds, min_samples=5)
    if backend in STAND_IN and threads:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            entry = measure_block(profile, dtype, policy, llc_bytes, cold)
        finally:
            torch.set_num_threads(before)
        return {"backend": backend, "dtype": dtype, **entry, "stand_in": STAND_IN_NOTE}
    in_layers = cold and profile.version in layerpass.VERSIONS  # in a forward pass's structure, matmuls included
    passes = layerpass.measure(profile, backend, dtype, budget_seconds, llc_bytes, keep) if in_layers else None
    if in_layers:
        system.release_free_memory()  # what the profiled passes left behind, before the stages to come
    if passes is not None:
        out = {"backend": backend, "dtype": dtype, **passes}
    else:
        out = {"backend": backend, "dtype": dtype, **measure_block(profile, dtype, policy, llc_bytes, cold)}
        if in_layers:
            out["layer_pass_skipped"] = (f"a pass of whole layers is too slow for a {budget_seconds:g} s budget at "
                                         f"{backend} {dtype}: the bare block timed instead (a lower bound)")
    seq = {str(m): x for m in chunks if m > 1 and (x := chunk_rest(profile, backend, dtype, m, budget_seconds,
                                                                    llc_bytes, policy, passes is not None))}
    if seq:
        out["seq"] = seq
    return out


# --------------------------------------------------------------------------------------------
# Prefill: the sequential part of a chunk
#
# For a chunk of T tokens the reference runs every weight matmul once with M = T, but the RNN state update
# stays a loop over the T tokens (``for t in range(T)`` in each version's ``*_seq`` function), around
# chunk-wide norms, token-shift mixes and activations. That loop is what a matmul-only prefill figure
# leaves out. The functions below run it as the reference does, with the matmul outputs as fixed inputs: the
# bare block. The torch series time a chunk in layers instead (layerpass.measure_chunk, via chunk_rest); the
# bare block stays for a warm run and for a series too slow for a pass of whole layers.


def _v7_seq_source():
    import torch
    import torch.nn.functional as F

    def v7_seq(x: torch.Tensor, x_prev: torch.Tensor, state: torch.Tensor, vec: List[torch.Tensor],
               mm: List[torch.Tensor], H: int, S: int):
        # mm: r, w (low-rank out), k, v, a (low-rank out), g, v-residual (low-rank out), ffn key [T, dim_ffn],
        #     decay low-rank in [T, decay], gate low-rank in [T, gate], ffn value [T, C]
        T, C = x.shape[0], x.shape[1]
        h = F.layer_norm(x, (C,), vec[0], vec[1])
        xx = torch.cat((x_prev.unsqueeze(0), h[:-1, :])) - h
        mixes = [h + xx * vec[2], h + xx * vec[3], h + xx * vec[4], h + xx * vec[5], h + xx * vec[6], h + xx * vec[7]]
        r, k, v = mm[0], mm[2], mm[3]
        a = torch.sigmoid(vec[9] + mm[4])
        kk = F.normalize((k * vec[11]).view(T, H, S), dim=-1, p=2.0).view(T, C)
        k = k * (1 + (a - 1) * vec[12])
        v = v + (mm[6] - v) * torch.sigmoid(vec[10] + mm[6])
        w = torch.exp(-0.606531 * torch.sigmoid((vec[8] + mm[1]).float()))
        for t in range(T):
            r_, w_, k_, v_, kk_, a_ = r[t], w[t], k[t], v[t], kk[t], a[t]
            vk = v_.view(H, S, 1) @ k_.view(H, 1, S)
            ab = (-kk_).view(H, S, 1) @ (kk_ * a_).view(H, 1, S)
            state = state * w_.view(H, 1, S) + state @ ab.float() + vk.float()
            xx[t] = (state.to(dtype=x.dtype) @ r_.view(H, S, 1)).view(C)
        xx = F.group_norm(xx.view(T, C), num_groups=H, weight=vec[14], bias=vec[15], eps=64e-5).view(T, C)
        xx = xx + ((r * k * vec[13]).view(T, H, S).sum(dim=-1, keepdim=True) * v.view(T, H, S)).view(T, C)
        y = xx * mm[5]
        x = x + y
        h2 = F.layer_norm(x, (C,), vec[16], vec[17])
        fx = torch.cat((x_prev.unsqueeze(0), h2[:-1, :])) - h2
        act = torch.relu(mm[7]) ** 2
        x = x + mm[10]
        # the low-rank inner activations (decay tanh, gate sigmoid) and the two token-shift states kept
        inner = [torch.tanh(mm[8]), torch.sigmoid(mm[9]), h[-1, :], h2[-1, :]]
        return state, [y, h2 + fx * vec[18], act, x] + mixes + inner

    return v7_seq


def _v4_seq_source():
    import torch
    import torch.nn.functional as F

    def v4_seq(x: torch.Tensor, x_prev: torch.Tensor, state: List[torch.Tensor], vec: List[torch.Tensor],
               mm: List[torch.Tensor]):
        # mm: r, k, v (fp32) [T, C], ffn receptance, ffn key [T, dim_ffn]
        T, C = x.shape[0], x.shape[1]
        aa, bb, pp = state[0], state[1], state[2]
        h = F.layer_norm(x, (C,), vec[0], vec[1])
        sx = torch.cat((x_prev.unsqueeze(0), h[:-1, :]))
        mixes = [h * vec[4] + sx * (1 - vec[4]), h * vec[5] + sx * (1 - vec[5]), h * vec[6] + sx * (1 - vec[6])]
        r = torch.sigmoid(mm[0])
        k, v = mm[1], mm[2]
        for t in range(T):
            kk = k[t]
            vv = v[t]
            ww = vec[8] + kk
            p = torch.maximum(pp, ww)
            e1 = torch.exp(pp - p)
            e2 = torch.exp(ww - p)
            sx[t] = ((e1 * aa + e2 * vv) / (e1 * bb + e2)).to(dtype=x.dtype)
            ww = vec[7] + pp
            p = torch.maximum(ww, kk)
            e1 = torch.exp(ww - p)
            e2 = torch.exp(kk - p)
            aa = e1 * aa + e2 * vv
            bb = e1 * bb + e2
            pp = p
        y = r * sx
        h2 = F.layer_norm(x + y, (C,), vec[2], vec[3])
        fs = torch.cat((x_prev.unsqueeze(0), h2[:-1, :]))
        act = torch.relu(mm[4]) ** 2
        return [aa, bb, pp], [y, h2 * vec[9] + fs * (1 - vec[9]), torch.sigmoid(mm[3]), act] + mixes

    return v4_seq


def _v56_seq_source():
    import torch
    import torch.nn.functional as F

    def v56_seq(x: torch.Tensor, x_prev: torch.Tensor, state: torch.Tensor, vec: List[torch.Tensor],
                mm: List[torch.Tensor], H: int, S: int, v6: bool):
        # vec: ln1 w/b, ln2 w/b, ln_x w/b, time_decay (H,S,1), time_first (H,S,1), 4 mixes, ffn mix
        # mm: r, k, v (fp32) [T, C], gate [T, C], decay low-rank out [T, C] (v6), ffn key [T, dim_ffn]
        T, C = x.shape[0], x.shape[1]
        h = F.layer_norm(x, (C,), vec[0], vec[1])
        sx = torch.cat((x_prev.unsqueeze(0), h[:-1, :]))
        mixes = [h * vec[8] + sx * (1 - vec[8]), h * vec[9] + sx * (1 - vec[9]), h * vec[10] + sx * (1 - vec[10]),
                 h * vec[11] + sx * (1 - vec[11])]
        r = mm[0].view(T, H, S).transpose(0, 1)
        k = mm[1].view(T, H, S).permute(1, 2, 0)
        v = mm[2].view(T, H, S).transpose(0, 1)
        g = F.silu(mm[3])
        if v6:
            w = vec[6].view(1, H, S, 1) + mm[4].float().view(T, H, S, 1)
            w = torch.exp(-torch.exp(w.float()))
        else:
            w = vec[6].view(1, H, S, 1).expand(T, H, S, 1)
        out = torch.empty((T, H, S), dtype=r.dtype)
        for t in range(T):
            rt = r[:, t:t + 1, :]
            kt = k[:, :, t:t + 1]
            vt = v[:, t:t + 1, :]
            at = kt @ vt
            out[t] = (rt @ (vec[7] * at + state)).squeeze(1)
            state = at + w[t] * state
        y = F.group_norm(out.reshape(T, C), num_groups=H, weight=vec[4], bias=vec[5], eps=64e-5).to(dtype=x.dtype) * g
        h2 = F.layer_norm(x + y, (C,), vec[2], vec[3])
        fs = torch.cat((x_prev.unsqueeze(0), h2[:-1, :]))
        act = torch.relu(mm[5]) ** 2
        return state, [y, h2 * vec[12] + fs * (1 - vec[12]), act] + mixes

    return v56_seq


_SEQ_SCRIPTED: dict = {}


def seq_function(version: int):
    """The TorchScript function of one block's sequential prefill work (compiled once per process)."""
    import torch

    if version not in _SEQ_SCRIPTED:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            source = {4: _v4_seq_source, 5: _v56_seq_source, 6: _v56_seq_source, 7: _v7_seq_source}
            _SEQ_SCRIPTED[version] = torch.jit.script(source[version]())
    return _SEQ_SCRIPTED[version]


def seq_inputs(profile: Profile, dtype: str, chunk: int, seed: int = 0) -> tuple:
    """Seeded arguments of one block's sequential prefill function for a chunk of ``chunk`` tokens."""
    import torch

    v, C, F_ = profile.version, profile.n_embd, profile.dim_ffn
    dt = getattr(torch, _TORCH_DTYPES[dtype])
    f32 = torch.float32
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, lo_=-1.0, hi=1.0, dtype=dt):
        return (torch.rand(shape, generator=g) * (hi - lo_) + lo_).to(dtype)

    T = chunk
    x, xp = rnd(T, C), rnd(C)
    if v == 4:
        vec = [rnd(C, lo_=0.5, hi=1.5), rnd(C, lo_=-0.1, hi=0.1), rnd(C, lo_=0.5, hi=1.5), rnd(C, lo_=-0.1, hi=0.1)]
        vec += [rnd(C, lo_=0.0) for _ in range(3)] + [rnd(C, dtype=f32), rnd(C, dtype=f32), rnd(C, lo_=0.0)]
        mm = [rnd(T, C), rnd(T, C, dtype=f32), rnd(T, C, dtype=f32), rnd(T, C), rnd(T, F_)]
        state = [rnd(C, dtype=f32), rnd(C, lo_=0.5, hi=1.5, dtype=f32), rnd(C, dtype=f32)]
        return x, xp, state, vec, mm
    S = profile.head_size
    H = C // S
    norm = [rnd(C, lo_=0.5, hi=1.5), rnd(C, lo_=-0.1, hi=0.1)]
    if v in (5, 6):
        # ln2, then ln_x in fp32: group_norm's input (the heads' output) is fp32, as in the reference
        vec = norm + [rnd(C, lo_=0.5, hi=1.5), rnd(C, lo_=-0.1, hi=0.1), rnd(C, lo_=0.5, hi=1.5, dtype=f32),
                      rnd(C, lo_=-0.1, hi=0.1, dtype=f32)]
        vec += [rnd(H, S, 1, lo_=0.5, hi=0.99, dtype=f32), rnd(H, S, 1, dtype=f32)]
        vec += [rnd(C, lo_=0.0) for _ in range(5)]
        mm = [rnd(T, C, dtype=f32), rnd(T, C, dtype=f32), rnd(T, C, dtype=f32), rnd(T, C), rnd(T, C), rnd(T, F_)]
        return x, xp, rnd(H, S, S, lo_=-0.1, hi=0.1, dtype=f32), vec, mm, H, S, v == 6
    vec = norm + [rnd(C, lo_=0.0) for _ in range(6)] + [rnd(C) for _ in range(6)]
    vec += [rnd(C, lo_=0.5, hi=1.5), rnd(C, lo_=-0.1, hi=0.1), rnd(C, lo_=0.5, hi=1.5), rnd(C, lo_=-0.1, hi=0.1),
            rnd(C, lo_=0.0)]
    lo = profile.lora
    mm = [rnd(T, C) for _ in range(7)] + [rnd(T, F_), rnd(T, lo["decay"]), rnd(T, lo["gate"]), rnd(T, C)]
    return x, xp, rnd(H, S, S, lo_=-0.1, hi=0.1, dtype=f32), vec, mm, H, S


def chunk_rest(profile: Profile, backend: str, dtype: str, chunk: int, budget_seconds: float, llc_bytes: int | None,
               policy: TimingPolicy, in_layers: bool) -> dict | None:
    """A prefill chunk's work outside its weight matmuls: in a forward pass's structure (layerpass.measure_chunk)
    where the series' decode was timed that way (``in_layers``) and a chunk's pass fits the budget, else the bare
    sequential block (measure_seq), which leaves out the calls around the ops: on RWKV-5.2/6 0.1B-0.4B shapes
    (fp32, 2 threads of the Zen 4 dev VM) it read 0.68-0.76 of the real pass's chunk outside its matmuls in validate,
    while op for op, under the profiler, the two cost the same."""
    if in_layers and backend in layerpass.LAYOUTS:
        x = layerpass.measure_chunk(profile, backend, dtype, chunk, budget_seconds, llc_bytes)
        system.release_free_memory()  # the ring's weights, freed as it returns (its rounds trim their profiles)
        if x is not None:
            return x
    return measure_seq(profile, dtype, chunk, policy)


def measure_seq(profile: Profile, dtype: str, chunk: int, policy: TimingPolicy) -> dict | None:
    """Median seconds of one block's sequential prefill work for a chunk, times n_layer (None: no such block).

    Every block has its own inputs (rotated); no eviction: within a chunk the state stays in cache after its
    first step, and the chunk's matmuls (M = chunk) are compute-heavy rather than streaming."""
    import torch

    if profile.version not in VERSIONS or chunk < 2:
        return None
    fn = seq_function(profile.version)
    copies = min(profile.n_layer, 4)
    blocks = [list(seq_inputs(profile, dtype, chunk, seed=i)) for i in range(copies)]

    def call(i: int) -> None:
        b = blocks[i]
        b[2] = fn(*b)[0]

    with torch.no_grad():
        for i in range(3):
            call(i % copies)
        timing = measure(call, copies, policy)
    return {"chunk": chunk, "seconds_per_block": timing["median_seconds"],
            "seconds_per_chunk": timing["median_seconds"] * profile.n_layer, "timing": timing,
            "what": f"one block's sequential state update over a chunk of {chunk} tokens (the reference's per-token "
                    "loop, TorchScript) with its chunk-wide norms, mixes and activations, times n_layer"}
