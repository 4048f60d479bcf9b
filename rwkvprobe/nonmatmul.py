"""The per-token work outside the weight matmuls, measured in torch.

Decode spends most of its time in the weight matmuls, but not all of it: every block also runs layer
norms, token-shift mixes, activations and the RNN state update (for RWKV-7 a batched H x S x S product
per block), each a separate framework call. ``rwkvprobe validate`` showed that leaving these out (or
modelling them as bytes over bandwidth) under-predicts decode by 7-12% here. So for the torch backend
analyze times one block's non-matmul operations, in the same sequence and dtypes as a CPU forward pass
of the architecture runs them (TorchScript, as BlinkDL's reference package runs by default, vectors in
the model dtype, the RNN state in fp32), with the matmul outputs as fixed inputs, and counts it once per
block. Versions without a timed block here keep the bytes-over-bandwidth model, labelled modelled.
"""

from __future__ import annotations

from typing import List

from rwkvprobe.profile import Profile
from rwkvprobe.timing import TimingPolicy, measure

#: RWKV versions whose block is timed here
VERSIONS = (7,)
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


def block_function(version: int):
    """The TorchScript function of one block's non-matmul decode work (compiled once per process)."""
    import torch

    if version not in _SCRIPTED:
        import warnings

        with warnings.catch_warnings():  # deprecated in favour of torch.compile, but it is what the reference runs
            warnings.simplefilter("ignore", DeprecationWarning)
            _SCRIPTED[version] = torch.jit.script({7: _v7_block_source}[version]())
    return _SCRIPTED[version]


def block_inputs(profile: Profile, dtype: str, seed: int = 0) -> tuple:
    """Seeded inputs of one block: activations, state, vector parameters and the matmul outputs."""
    import torch

    C, S, F_, lo = profile.n_embd, profile.head_size, profile.dim_ffn, profile.lora
    H = C // S
    dt = getattr(torch, _TORCH_DTYPES[dtype])
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, lo_=-1.0, hi=1.0, dtype=dt):
        return (torch.rand(shape, generator=g) * (hi - lo_) + lo_).to(dtype)

    vec = [rnd(C, lo_=0.5, hi=1.5), rnd(C, lo_=-0.1, hi=0.1), rnd(C, lo_=0.5, hi=1.5), rnd(C, lo_=-0.1, hi=0.1)]
    vec += [rnd(C, lo_=0.0) for _ in range(6)]  # token-shift mixes
    vec += [rnd(C) for _ in range(6)]  # w0 a0 v0 k_k k_a r_k
    vec += [rnd(C, lo_=0.5, hi=1.5), rnd(C, lo_=-0.1, hi=0.1), rnd(C, lo_=0.0)]  # ln_x, ffn mix
    mm = [rnd(C), rnd(C), rnd(C), rnd(lo["decay"]), rnd(C), rnd(C), rnd(C), rnd(lo["gate"]), rnd(C), rnd(C),
          rnd(F_), rnd(C)]
    state = rnd(H, S, S, lo_=-0.1, hi=0.1, dtype=torch.float32)
    return rnd(C), rnd(C), rnd(C), state, rnd(C), vec, mm, H, S


def measure_block(profile: Profile, dtype: str, policy: TimingPolicy, llc_bytes: int | None = None,
                  cold: bool = True) -> dict | None:
    """Median seconds of one block's non-matmul decode work in torch (None: no timed block for this version).

    Cold (as in decode, where each block's weights stream megabytes through the cache between two uses of
    its state and vectors): every block has its own inputs, and an untimed read of the last-level cache's
    size runs before each call.
    """
    import torch

    from rwkvprobe.timing import DEFAULT_LLC_BYTES, eviction

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
        for i in range(min(3, copies) if copies > 1 else 3):  # TorchScript optimises after its first calls
            call(i % copies)
        timing = measure(call, copies, policy, between=eviction(llc_bytes or DEFAULT_LLC_BYTES) if cold else None)
    return {"version": profile.version, "blocks": profile.n_layer, "cold": cold,
            "seconds_per_block": timing["median_seconds"], "seconds_per_token": timing["median_seconds"] * profile.n_layer,
            "timing": timing,
            "what": "one block's layer norms, token-shift mixes, activations and RNN state update (TorchScript, "
                    "state in fp32), timed in torch with cold caches, times n_layer"}
