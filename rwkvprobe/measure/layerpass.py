"""The work outside the weight matmuls of RWKV-4, 5.2, 6 and 7, timed inside the structure a torch forward
pass gives it, and split from the matmuls the way ``validate`` splits the real pass.

Why not the bare block (nonmatmul.measure_block): in a torch forward pass of RWKV-4/5.2/6 every layer is
two TorchScript calls (time mix, channel mix) with a few dozen tensor arguments each, every weight matmul
goes through a small scripted helper (dtype handling, the output cast), and every elementwise op runs right
after a weight matmul that streamed megabytes through the caches and left the other thread of the pool
waiting. RWKV-7 runs a whole token as one scripted loop over its layers that looks every parameter up by
name (a string built per layer, a dictionary lookup) and calls a scripted time mix and channel mix with the
weight matmuls inside. Those costs belong to the token but to no matmul kernel; the bare block, its ops fused
into one call on cache-resident inputs, left them out (``validate`` measured 0.43-0.79 of the real pass's
everything-else on RWKV-4/5.2/6, and 0.60-0.69 on RWKV-7 once its own split of the real pass was steady).

So here a ring of layers (weights in the series' layout and dtype, enough distinct layers that their weights
are read from DRAM as decode reads them) runs in that structure, and rounds alternate a plain pass (timed)
with a pass under torch.profiler. A layer's non-matmul time is the plain time minus the profiled time of
its weight matmuls, the same definition ``validate`` applies to the reference's forward pass
(forward_worker.profile_decode), so the two parts of a prediction and of a real pass mean the same thing.
Every other round ends the pass as a forward pass ends a token: the output norm and the head (its matmul split
off like the others). What the tail adds outside the head's matmul is a per-token cost no layer has: on rwkv4-169m
shapes (fp32, 2 threads of the Zen 4 dev VM) the reference's own layer functions called token by token spent
0.45-0.6 ms a token more outside their weight matmuls when each token ended with the output norm and head, a ring
of 5 of these layers 0.46 ms, while the head timed alone spent 0.05 ms outside its matmul: most of it comes with
the 154 MB read among the layers' work, not from the norm.

RWKV-4/5.2/6's forward pass also runs Python around each layer (drive_layer, DRIVER_WORK): it reads its
settings as attributes of its TorchScript module (each read a lookup through TorchScript, 50x a Python
attribute's cost), fetches its layer functions, and looks its parameters up by names built per layer. About 22 us
a layer on rwkv4-169m shapes: a tenth of that token's non-matmul time, left out before.

A prefill chunk is timed the same way (measure_chunk): the same ring, each layer over a chunk of T tokens at once as
the reference runs a prompt (every weight matmul once with M = T, the token shift over the chunk, the state updated
token by token in a loop), split from its matmuls by the same profiler rule. The bare sequential block
(nonmatmul.measure_seq) costs what the real chunk costs op for op under the profiler, yet read 0.68-0.76 of the real
pass's chunk outside its matmuls on RWKV-5.2/6 0.1B-0.4B (fp32, 2 threads): the calls around the ops, and a split
made the other way, were what it left out. In a paired test (rwkv5-0b1 shapes, one process, 20 rounds) the real
chunk's plain time less its profiled matmuls was 1.24-1.31x the bare block.

The functions below are written for this project from the architectures' equations; they compute what a
layer computes (random weights), and only their time is kept.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

from rwkvprobe.measure import contention, system
from rwkvprobe.measure.profiling import cpu_profile, weight_matmul_us, weight_shapes
from rwkvprobe.measure.timing import DEFAULT_LLC_BYTES, LLC_FACTOR, summarize
from rwkvprobe.model.profile import Profile, layer_list, weight_bytes_of

#: RWKV versions timed in their forward pass's structure (every one)
VERSIONS = (4, 5, 6, 7)
#: the series' weight layouts: x @ W with W [K, N], or nn.Linear's [N, K] used transposed
LAYOUTS = {"torch": "kn", "torch-linear": "nk"}
#: rounds (plain + profiled pass) at least, and at most; MIN_ROUNDS while they take at most TOO_SLOW x the
#: budget, FEWEST_ROUNDS whatever they take
MIN_ROUNDS, MAX_ROUNDS, FEWEST_ROUNDS = 8, 40, 6
#: passes a round runs (an untimed one after the profiled one, the plain one, the profiled one)
PASSES_PER_ROUND = 3
#: untimed (profiled, plain) pairs of passes before a token's rounds: at least WARM_PAIRS and WARM_SECONDS. With
#: none, the first round, timed straight after the compiling passes, read 1.35-2.0x the rounds after it outside its
#: matmuls in each of six fresh processes (RWKV-5.2 0.1B and RWKV-7 0.4B, fp32, 2 threads: 1047 against 594-808 us
#: a layer; its plain pass slower, its profiled matmuls faster), and a --quick run's median of four rounds took it in;
#: after three pairs (at RWKV-7 0.4B's 0.1 s) it read 585, 835 and 545 against 557-599, 838-1232 and 528-1045
WARM_PAIRS, WARM_SECONDS = 3, 0.1
#: rounds with the per-token tail (output norm and head) after the ring: every other one, from the second. A
#: chunk's passes leave the tail out: it runs once a chunk, on the last token (about 1% of a chunk's rest: 0.45 ms
#: outside the head's matmul of rwkv4-169m's decode token, where its 64-token chunk spends 40-50 ms outside its
#: matmuls), and its head would double the pass's memory (0.5 GB in fp32 on a 1.5B)
TAIL_EVERY = 2
#: a series whose FEWEST_ROUNDS rounds would take over this many times its budget is not timed here (measure
#: returns None): torch fp16 on a CPU without fp16 arithmetic ran an RWKV-7 0.4B layer in 41 ms (fp32: 3.5), and
#: its eight rounds took 9.7 s of a 38 s --quick run
TOO_SLOW = 4.0
#: a token's rounds in two windows: analyze times the second seconds later (later_window: before the layer points
#: whose weights outweigh the ring, or after the points), and the median is over both windows' rounds. The part
#: outside the matmuls moves in phases of seconds on this VM: one window of an RWKV-7 0.4B (torch fp32, four rounds
#: without the tail, as --quick times) read 544-844 us a layer in six processes, both windows' rounds pooled (8 s of
#: two-thread numpy work between them) 550-741, the second window's first round left out (1172-24951 us: again()
#: warms up first; with it, 555-850); a --quick pair's torch series moved by 3.9 ms of this part alone (16.7 and
#: 12.8 ms/token), a third of its 11% between the runs. In nine --quick runs of rwkv-0b4 with two windows it read
#: 12.7-16.9 ms/token, in four with one 12.8-26.8
LATER_WINDOW = True
#: later_window_seconds: the later window's expected cost over its first window's rounds (its warm-up pairs)
LATER_WINDOW_MARGIN = 1.5
_TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_SCRIPTED: dict = {}
#: the Python work of the reference's forward pass around each RWKV-4/5.2/6 layer of a token (BlinkDL's rwkv
#: package, one token), counted in its code: (reads of its settings as attributes of its TorchScript module, each
#: a lookup through TorchScript: 1.7 us on the dev VM where a Python attribute takes 0.03; layer functions fetched
#: from the module, 0.5 us each; parameters looked up by a name built per layer; type checks, one per
#: quantization input of a weight matmul). The version is compared in a chain of elifs (more reads the later the
#: version comes in it), the rescale setting read once a layer, and the layer functions fetched as the generic
#: ones first, then as the version's own.
DRIVER_WORK = {4: (10, 2, 18, 28), 5: (12, 3, 22, 32), 6: (14, 4, 28, 32)}


def _shared():
    """The pieces the token and chunk forms share (TorchScript inlines their calls: no extra op at run time): the
    weight matmul helper, RWKV-7's token-shift mixes and projections, the RWKV-4/5.2/6 channel mix after its norm."""
    import torch
    import torch.nn.functional as F

    def mm(a: torch.Tensor, w: torch.Tensor, out: Optional[torch.dtype] = None) -> torch.Tensor:
        # every matmul of the projections and of the state's outer product goes through one helper, in the
        # activations' type, its result cast for its consumer (a no-op cast is still a call)
        y = torch.matmul(a, w if w.dtype == a.dtype else w.to(a.dtype))
        return y.to(a.dtype if out is None else out)

    def channel_mix_from(x: torch.Tensor, h: torch.Tensor, before: torch.Tensor, mix_k: torch.Tensor,
                         mix_r: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, wr: torch.Tensor, v6: bool):
        # h: the layer-normed input, before: each token's previous token (normed)
        if v6:  # RWKV-6 mixes towards the previous token by difference
            d = before - h
            kin, rin = h + d * mix_k, h + d * mix_r
        else:
            kin, rin = h * mix_k + before * (1 - mix_k), h * mix_r + before * (1 - mix_r)
        gate = torch.sigmoid(mm(rin, wr))
        hidden = torch.relu(mm(kin, wk)) ** 2
        return x + gate * mm(hidden, wv)

    def projections_7(x: torch.Tensor, d: torch.Tensor, v_first: torch.Tensor, first: bool,
                      z: Dict[str, torch.Tensor], p: str, H: int, S: int) -> Tuple[
            torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
            torch.Tensor]:
        # d: each token's previous token less the token. (r, decay, key, value, in-context rate, gate, the key's
        # normalised copy, v_first), each row a token
        xr, xw, xk = x + d * z[p + "x_r"], x + d * z[p + "x_w"], x + d * z[p + "x_k"]
        xv, xa, xg = x + d * z[p + "x_v"], x + d * z[p + "x_a"], x + d * z[p + "x_g"]
        r = xr @ z[p + "receptance"]
        w = torch.tanh(xw @ z[p + "w1"]) @ z[p + "w2"]
        k = xk @ z[p + "key"]
        v = xv @ z[p + "value"]
        a = torch.sigmoid(z[p + "a0"] + (xa @ z[p + "a1"]) @ z[p + "a2"])
        g = torch.sigmoid(xg @ z[p + "g1"]) @ z[p + "g2"]
        kk = F.normalize((k * z[p + "k_k"]).view(list(k.shape[:-1]) + [H, S]), dim=-1, p=2.0).view(k.shape)
        k = k * (1 + (a - 1) * z[p + "k_a"])
        if first:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(z[p + "v0"] + (xv @ z[p + "v1"]) @ z[p + "v2"])
        w = torch.exp(-0.606531 * torch.sigmoid((z[p + "w0"] + w).float()))
        return r, w, k, v, a, g, kk, v_first

    return mm, projections_7, channel_mix_from


def _sources():
    import torch
    import torch.nn.functional as F

    mm, projections_7, channel_mix_from = _shared()

    def time_mix_4(x: torch.Tensor, prev: torch.Tensor, num: torch.Tensor, den: torch.Tensor, top: torch.Tensor,
                   ln_w: torch.Tensor, ln_b: torch.Tensor, mix_k: torch.Tensor, mix_v: torch.Tensor,
                   mix_r: torch.Tensor, decay: torch.Tensor, bonus: torch.Tensor, wk: torch.Tensor,
                   wv: torch.Tensor, wr: torch.Tensor, wo: torch.Tensor):
        h = F.layer_norm(x, (x.shape[-1],), weight=ln_w, bias=ln_b)
        rcv = torch.sigmoid(mm(h * mix_r + prev * (1 - mix_r), wr))
        key = mm(h * mix_k + prev * (1 - mix_k), wk, torch.float32)
        val = mm(h * mix_v + prev * (1 - mix_v), wv, torch.float32)
        # the RWKV-4 WKV recurrence in its max-shifted form (numerator, denominator, running exponent)
        cur = bonus + key
        m1 = torch.maximum(top, cur)
        a1, b1 = torch.exp(top - m1), torch.exp(cur - m1)
        wkv = ((a1 * num + b1 * val) / (a1 * den + b1)).to(x.dtype)
        aged = decay + top
        m2 = torch.maximum(aged, key)
        a2, b2 = torch.exp(aged - m2), torch.exp(key - m2)
        return x + mm(rcv * wkv, wo), h, a2 * num + b2 * val, a2 * den + b2, m2

    def channel_mix(x: torch.Tensor, prev: torch.Tensor, ln_w: torch.Tensor, ln_b: torch.Tensor,
                    mix_k: torch.Tensor, mix_r: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor,
                    wr: torch.Tensor, v6: bool):
        h = F.layer_norm(x, (x.shape[-1],), weight=ln_w, bias=ln_b)
        return channel_mix_from(x, h, prev, mix_k, mix_r, wk, wv, wr, v6), h

    def time_mix_56(x: torch.Tensor, prev: torch.Tensor, state: torch.Tensor, ln_w: torch.Tensor,
                    ln_b: torch.Tensor, lnx_w: torch.Tensor, lnx_b: torch.Tensor, mixes: List[torch.Tensor],
                    low: List[torch.Tensor], decay: torch.Tensor, bonus: torch.Tensor, wk: torch.Tensor,
                    wv: torch.Tensor, wr: torch.Tensor, wg: torch.Tensor, wo: torch.Tensor, H: int, S: int,
                    v6: bool):
        # mixes: v5 k v r g; v6 x w k v r g. low (v6): token-shift in [C, 5*m] and out [5, m, C], decay in, out
        h = F.layer_norm(x, (x.shape[-1],), weight=ln_w, bias=ln_b)
        if v6:
            d = prev - h
            shift = torch.tanh((h + d * mixes[0]) @ low[0]).view(5, 1, -1)
            pw, pk, pv, pr, pg = torch.bmm(shift, low[1]).view(5, -1).unbind(dim=0)
            win = h + d * (mixes[1] + pw)
            kin, vin = h + d * (mixes[2] + pk), h + d * (mixes[3] + pv)
            rin, gin = h + d * (mixes[4] + pr), h + d * (mixes[5] + pg)
            dec = decay + (torch.tanh(win @ low[2]) @ low[3]).float().view(H, S, 1)
            dec = torch.exp(-torch.exp(dec.float()))
        else:
            kin, vin = h * mixes[0] + prev * (1 - mixes[0]), h * mixes[1] + prev * (1 - mixes[1])
            rin, gin = h * mixes[2] + prev * (1 - mixes[2]), h * mixes[3] + prev * (1 - mixes[3])
            dec = decay
        rcv = mm(rin, wr, torch.float32).view(H, 1, S)
        key = mm(kin, wk, torch.float32).view(H, S, 1)
        val = mm(vin, wv, torch.float32).view(H, 1, S)
        gate = F.silu(mm(gin, wg))
        kv = mm(key, val)  # per head: the outer product that enters the state
        y = (rcv @ (bonus * kv + state)).flatten()
        state = kv + dec * state
        y = F.group_norm(y.unsqueeze(0), num_groups=H, weight=lnx_w, bias=lnx_b, eps=64e-5).squeeze(0)
        return x + mm(y.to(x.dtype) * gate, wo), h, state

    def time_mix_7(x: torch.Tensor, prev: torch.Tensor, state: torch.Tensor, v_first: torch.Tensor, first: bool,
                   z: Dict[str, torch.Tensor], p: str, H: int, S: int):
        # RWKV-7's time mix on the layer-normed input x; every parameter looked up by name, as a pass over a
        # state dict does: token-shift mixes, the decay, in-context learning rate, value-residual and gate low-rank
        # paths, the generalised delta rule on the fp32 state, the bonus term, the gated output
        C = x.shape[0]
        r, w, k, v, a, g, kk, v_first = projections_7(x, prev - x, v_first, first, z, p, H, S)
        vk = v.view(H, S, 1) @ k.view(H, 1, S)
        ab = (-kk).view(H, S, 1) @ (kk * a).view(H, 1, S)
        state = state * w.view(H, 1, S) + state @ ab.float() + vk.float()
        y = state.to(dtype=x.dtype) @ r.view(H, S, 1)
        y = F.group_norm(y.view(1, C), num_groups=H, weight=z[p + "lnx_w"], bias=z[p + "lnx_b"], eps=64e-5).view(C)
        y = y + ((r * k * z[p + "r_k"]).view(H, S).sum(dim=-1, keepdim=True) * v.view(H, S)).view(C)
        return (y * g) @ z[p + "output"], x, state, v_first

    def channel_mix_7(x: torch.Tensor, prev: torch.Tensor, z: Dict[str, torch.Tensor], p: str):
        k = x + (prev - x) * z[p + "ffn_x_k"]
        return (torch.relu(k @ z[p + "ffn_key"]) ** 2) @ z[p + "ffn_value"], x

    def pass_7(x: torch.Tensor, z: Dict[str, torch.Tensor], state: List[torch.Tensor], layers: int, H: int, S: int,
               tail: bool = False):
        # RWKV-7 as its forward pass runs a token: one scripted loop over the layers (no Python between them), the
        # residual carried, parameters looked up by layer name; state per layer: attention shift, wkv, ffn shift;
        # ``tail``: the output norm and the head after the last layer, in the same scripted call
        v_first = torch.empty_like(x)
        C = x.shape[0]
        for i in range(layers):
            p = "blocks." + str(i) + "."
            h = F.layer_norm(x, (C,), weight=z[p + "ln1_w"], bias=z[p + "ln1_b"])
            y, state[3 * i], state[3 * i + 1], v_first = time_mix_7(h, state[3 * i], state[3 * i + 1], v_first,
                                                                     i == 0, z, p, H, S)
            x = x + y
            h = F.layer_norm(x, (C,), weight=z[p + "ln2_w"], bias=z[p + "ln2_b"])
            y, state[3 * i + 2] = channel_mix_7(h, state[3 * i + 2], z, p)
            x = x + y
        if tail:
            x = F.layer_norm(x, (C,), weight=z["ln_out_w"], bias=z["ln_out_b"]) @ z["head"]
        return x, state

    return time_mix_4, channel_mix, time_mix_56, pass_7


def _chunk_sources():
    """The same layers over a chunk of T tokens at once, as a forward pass runs a prompt: every weight matmul once
    with M = T, the token shift as the chunk's rows moved down by one (the previous chunk's last row first), and
    the state updated token by token in a loop (the sequential part a matmul-only prefill figure leaves out)."""
    import torch
    import torch.nn.functional as F

    mm, projections_7, channel_mix_from = _shared()

    def time_mix_4_chunk(x: torch.Tensor, prev: torch.Tensor, num: torch.Tensor, den: torch.Tensor,
                         top: torch.Tensor, ln_w: torch.Tensor, ln_b: torch.Tensor, mix_k: torch.Tensor,
                         mix_v: torch.Tensor, mix_r: torch.Tensor, decay: torch.Tensor, bonus: torch.Tensor,
                         wk: torch.Tensor, wv: torch.Tensor, wr: torch.Tensor, wo: torch.Tensor):
        h = F.layer_norm(x, (x.shape[-1],), weight=ln_w, bias=ln_b)
        before = torch.cat((prev.unsqueeze(0), h[:-1, :]))  # each token's previous token
        rcv = torch.sigmoid(mm(h * mix_r + before * (1 - mix_r), wr))
        key = mm(h * mix_k + before * (1 - mix_k), wk, torch.float32)
        val = mm(h * mix_v + before * (1 - mix_v), wv, torch.float32)
        for t in range(x.shape[0]):  # the WKV recurrence, max-shifted; its output overwrites the shifted rows
            kt, vt = key[t], val[t]
            cur = bonus + kt
            m1 = torch.maximum(top, cur)
            a1, b1 = torch.exp(top - m1), torch.exp(cur - m1)
            before[t] = ((a1 * num + b1 * vt) / (a1 * den + b1)).to(dtype=x.dtype)
            aged = decay + top
            m2 = torch.maximum(aged, kt)
            a2, b2 = torch.exp(aged - m2), torch.exp(kt - m2)
            num, den, top = a2 * num + b2 * vt, a2 * den + b2, m2
        return x + mm(rcv * before, wo), h[-1, :], num, den, top

    def channel_mix_chunk(x: torch.Tensor, prev: torch.Tensor, ln_w: torch.Tensor, ln_b: torch.Tensor,
                          mix_k: torch.Tensor, mix_r: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor,
                          wr: torch.Tensor, v6: bool):
        h = F.layer_norm(x, (x.shape[-1],), weight=ln_w, bias=ln_b)
        before = torch.cat((prev.unsqueeze(0), h[:-1, :]))
        return channel_mix_from(x, h, before, mix_k, mix_r, wk, wv, wr, v6), h[-1, :]

    def time_mix_56_chunk(x: torch.Tensor, prev: torch.Tensor, state: torch.Tensor, ln_w: torch.Tensor,
                          ln_b: torch.Tensor, lnx_w: torch.Tensor, lnx_b: torch.Tensor, mixes: List[torch.Tensor],
                          low: List[torch.Tensor], decay: torch.Tensor, bonus: torch.Tensor, wk: torch.Tensor,
                          wv: torch.Tensor, wr: torch.Tensor, wg: torch.Tensor, wo: torch.Tensor, H: int, S: int,
                          v6: bool):
        T = x.shape[0]
        h = F.layer_norm(x, (x.shape[-1],), weight=ln_w, bias=ln_b)
        before = torch.cat((prev.unsqueeze(0), h[:-1, :]))
        if v6:
            d = before - h
            shift = torch.tanh((h + d * mixes[0]) @ low[0]).view(T, 5, -1).transpose(0, 1)
            pw, pk, pv, pr, pg = torch.bmm(shift, low[1]).view(5, T, -1).unbind(dim=0)
            win = h + d * (mixes[1] + pw)
            kin, vin = h + d * (mixes[2] + pk), h + d * (mixes[3] + pv)
            rin, gin = h + d * (mixes[4] + pr), h + d * (mixes[5] + pg)
            dec = decay.view(1, H, S, 1) + (torch.tanh(win @ low[2]) @ low[3]).float().view(T, H, S, 1)
            dec = torch.exp(-torch.exp(dec.float()))
        else:
            kin, vin = h * mixes[0] + before * (1 - mixes[0]), h * mixes[1] + before * (1 - mixes[1])
            rin, gin = h * mixes[2] + before * (1 - mixes[2]), h * mixes[3] + before * (1 - mixes[3])
            dec = decay  # one decay for every token (RWKV-5.2)
        rcv = mm(rin, wr, torch.float32).view(T, H, S).transpose(0, 1)  # [H, T, S]
        key = mm(kin, wk, torch.float32).view(T, H, S).permute(1, 2, 0)  # [H, S, T]
        val = mm(vin, wv, torch.float32).view(T, H, S).transpose(0, 1)  # [H, T, S]
        gate = F.silu(mm(gin, wg))
        y = torch.empty((T, H, S), dtype=rcv.dtype)
        for t in range(T):  # per token and head: the outer product enters the state after the bonus read-out
            kv = mm(key[:, :, t:t + 1], val[:, t:t + 1, :])
            y[t] = (rcv[:, t:t + 1, :] @ (bonus * kv + state)).squeeze(1)
            state = kv + (dec[t] if v6 else dec) * state
        y = F.group_norm(y.reshape(T, H * S), num_groups=H, weight=lnx_w, bias=lnx_b, eps=64e-5)
        return x + mm(y.to(dtype=x.dtype) * gate, wo), h[-1, :], state

    def time_mix_7_chunk(x: torch.Tensor, prev: torch.Tensor, state: torch.Tensor, v_first: torch.Tensor,
                         first: bool, z: Dict[str, torch.Tensor], p: str, H: int, S: int):
        T, C = x.shape[0], x.shape[1]
        d = torch.cat((prev.unsqueeze(0), x[:-1, :])) - x
        r, w, k, v, a, g, kk, v_first = projections_7(x, d, v_first, first, z, p, H, S)
        for t in range(T):  # the generalised delta rule, token by token; the read-out overwrites the shift rows
            rt, wt, kt, vt, kkt, at = r[t], w[t], k[t], v[t], kk[t], a[t]
            vk = vt.view(H, S, 1) @ kt.view(H, 1, S)
            ab = (-kkt).view(H, S, 1) @ (kkt * at).view(H, 1, S)
            state = state * wt.view(H, 1, S) + state @ ab.float() + vk.float()
            d[t] = (state.to(dtype=x.dtype) @ rt.view(H, S, 1)).view(C)
        y = F.group_norm(d.view(T, C), num_groups=H, weight=z[p + "lnx_w"], bias=z[p + "lnx_b"], eps=64e-5).view(T, C)
        y = y + ((r * k * z[p + "r_k"]).view(T, H, S).sum(dim=-1, keepdim=True) * v.view(T, H, S)).view(T, C)
        return (y * g) @ z[p + "output"], x[-1, :], state, v_first

    def channel_mix_7_chunk(x: torch.Tensor, prev: torch.Tensor, z: Dict[str, torch.Tensor], p: str):
        k = x + (torch.cat((prev.unsqueeze(0), x[:-1, :])) - x) * z[p + "ffn_x_k"]
        return (torch.relu(k @ z[p + "ffn_key"]) ** 2) @ z[p + "ffn_value"], x[-1, :]

    def pass_7_chunk(x: torch.Tensor, z: Dict[str, torch.Tensor], state: List[torch.Tensor], layers: int, H: int,
                     S: int, tail: bool = False):
        # as pass_7, over a chunk [T, C]; no tail (see TAIL_EVERY): ``tail`` only keeps pass_7's call
        v_first = torch.empty_like(x)
        C = x.shape[1]
        for i in range(layers):
            p = "blocks." + str(i) + "."
            h = F.layer_norm(x, (C,), weight=z[p + "ln1_w"], bias=z[p + "ln1_b"])
            y, state[3 * i], state[3 * i + 1], v_first = time_mix_7_chunk(h, state[3 * i], state[3 * i + 1],
                                                                           v_first, i == 0, z, p, H, S)
            x = x + y
            h = F.layer_norm(x, (C,), weight=z[p + "ln2_w"], bias=z[p + "ln2_b"])
            y, state[3 * i + 2] = channel_mix_7_chunk(h, state[3 * i + 2], z, p)
            x = x + y
        return x, state

    return time_mix_4_chunk, channel_mix_chunk, time_mix_56_chunk, pass_7_chunk


def _scripted(sources) -> tuple:
    """The functions ``sources()`` returns, TorchScript-compiled once per process."""
    if sources not in _SCRIPTED:
        import warnings

        import torch

        with warnings.catch_warnings():  # deprecated in favour of torch.compile, but what the reference runs
            warnings.simplefilter("ignore", DeprecationWarning)
            _SCRIPTED[sources] = tuple(torch.jit.script(f) for f in sources())
    return _SCRIPTED[sources]


def functions() -> tuple:
    """The scripted (time mix 4, channel mix, time mix 5/6, RWKV-7 pass) functions for one token."""
    return _scripted(_sources)


def chunk_functions() -> tuple:
    """The scripted chunk forms (_chunk_sources) of (time mix 4, channel mix, time mix 5/6, RWKV-7 pass)."""
    return _scripted(_chunk_sources)


def layer_bytes(profile: Profile, dtype: str) -> int:
    """Weight bytes of one layer (every matrix of a block, at the dtype's size)."""
    size = weight_bytes_of(dtype)
    return int(sum(x.k * x.n * x.stored * size for x in layer_list(profile).layers if x.kind != "head")) // profile.n_layer


def ring_size(profile: Profile, dtype: str, llc_bytes: int | None, fewest: int = 2) -> int:
    """Distinct layers to rotate over: their weights cover LLC_FACTOR times the last-level cache (read from
    DRAM, as in decode), at least ``fewest`` (decode: 2, so that a layer's vectors and state are evicted by another
    layer's weights; a chunk: 1, its M = chunk matmuls over weights this large evict them within the layer), at most
    n_layer."""
    need = LLC_FACTOR * (llc_bytes or DEFAULT_LLC_BYTES)
    return max(fewest, min(profile.n_layer, math.ceil(need / max(1, layer_bytes(profile, dtype)))))


def _makers(C: int, backend: str, dtype: str, seed: int) -> tuple:
    """Seeded (rnd, weight, norm) makers of one parameter set: uniform vectors, weights scaled like a trained
    matrix in the series' layout (low-rank matrices stay [K, N]), a norm's weight and bias."""
    import torch

    dt = getattr(torch, _TORCH_DTYPES[dtype])
    g = torch.Generator().manual_seed(seed)
    nk = LAYOUTS[backend] == "nk"

    def rnd(*shape, lo_=-1.0, hi=1.0, dtype=dt):  # in place: a 1.5B's head is 0.5 GB in fp32
        return torch.rand(shape, generator=g).mul_(hi - lo_).add_(lo_).to(dtype)

    def weight(k, n, linear=True):  # scaled like a trained matrix so that activations stay finite
        bound = math.sqrt(3.0 / k) / 2  # the projections in the series' layout; low-rank matrices stay [K, N]
        return rnd(n, k, lo_=-bound, hi=bound).t() if nk and linear else rnd(k, n, lo_=-bound, hi=bound)

    def norm():
        return [rnd(C, lo_=0.5, hi=1.5), rnd(C, lo_=-0.1, hi=0.1)]

    return rnd, weight, norm


def build_tail(profile: Profile, backend: str, dtype: str, seed: int = 1) -> dict:
    """The per-token tail's parameters: the output norm's weight and bias, and the head [n_embd, vocab] in the
    series' layout and dtype."""
    _, weight, norm = _makers(profile.n_embd, backend, dtype, seed)
    ln_w, ln_b = norm()
    return {"ln_out_w": ln_w, "ln_out_b": ln_b, "head": weight(profile.n_embd, profile.vocab_size)}


def run_tail(tail: dict, x):
    """The tail of a torch forward pass of RWKV-4/5.2/6 after its last layer: the residual cast to the
    activations' type, the output norm, the head, the logits as float32."""
    import torch.nn.functional as F

    x = x.to(dtype=tail["ln_out_w"].dtype)
    x = F.layer_norm(x, (x.shape[-1],), weight=tail["ln_out_w"], bias=tail["ln_out_b"])
    return (x @ tail["head"]).float()


def build_ring(profile: Profile, backend: str, dtype: str, layers: int, seed: int = 0) -> list[dict]:
    """Seeded parameters and state of ``layers`` distinct layers, weights in the series' layout."""
    import torch

    v, C, F_, lo = profile.version, profile.n_embd, profile.dim_ffn, profile.lora
    f32 = torch.float32
    rnd, weight, norm = _makers(C, backend, dtype, seed)

    ring = []
    if v == 7:  # one pass runs the ring as one model (pass_7): its parameters by name, its state as a list
        S = profile.head_size
        for i in range(layers):
            z = dict(zip(("ln1_w", "ln1_b", "ln2_w", "ln2_b", "lnx_w", "lnx_b"), norm() + norm() + norm()))
            z.update({name: rnd(C, lo_=0.0) for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")})
            z.update({name: rnd(C) for name in ("w0", "a0", "v0", "k_k", "k_a", "r_k")})
            z["ffn_x_k"] = rnd(C, lo_=0.0)  # the channel mix's token-shift mix
            for name, rank in (("w", lo["decay"]), ("a", lo["aaa"]), ("v", lo["mv"]), ("g", lo["gate"])):
                z[f"{name}1"], z[f"{name}2"] = weight(C, rank, False), weight(rank, C, False)
            z.update({name: weight(C, C) for name in ("receptance", "key", "value", "output")})
            z["ffn_key"], z["ffn_value"] = weight(C, F_), weight(F_, C)
            ring.append({"z": {f"blocks.{i}.{name}": t for name, t in z.items()},
                         "state": [rnd(C), rnd(C // S, S, S, lo_=-0.1, hi=0.1, dtype=f32), rnd(C)]})
        return ring
    assert v in DRIVER_WORK, f"RWKV-{v}: no forward-pass structure here"
    for _ in range(layers):
        d: dict = {"x_prev_att": rnd(C), "x_prev_ffn": rnd(C)}
        ffn_w = [weight(C, F_), weight(F_, C), weight(C, C)]  # key, value, receptance
        d["ffn"] = norm() + [rnd(C, lo_=0.0), rnd(C, lo_=0.0)] + ffn_w
        if v == 4:
            d["state"] = [rnd(C, dtype=f32), rnd(C, lo_=0.5, hi=1.5, dtype=f32), rnd(C, dtype=f32)]
            d["att"] = norm() + [rnd(C, lo_=0.0) for _ in range(3)] + [rnd(C, lo_=-1.0, hi=0.0, dtype=f32),
                                                                       rnd(C, dtype=f32)]
            d["att_w"] = [weight(C, C) for _ in range(4)]  # key, value, receptance, output
        else:
            S = profile.head_size
            H = C // S
            d["state"] = rnd(H, S, S, lo_=-0.1, hi=0.1, dtype=f32)
            d["mixes"] = [rnd(C, lo_=0.0) for _ in range(6 if v == 6 else 4)]
            d["low"] = ([weight(C, 5 * lo["mix"], False), rnd(5, lo["mix"], C, lo_=-0.1, hi=0.1),
                         weight(C, lo["decay"], False), weight(lo["decay"], C, False)] if v == 6 else [])
            d["decay"] = (rnd(H, S, 1, lo_=-1.0, hi=0.0, dtype=f32) if v == 6
                          else rnd(H, S, 1, lo_=0.5, hi=0.99, dtype=f32))
            d["att"] = norm() + [t.float() for t in norm()]  # ln_x in fp32, as group_norm's fp32 input needs
            d["bonus"] = rnd(H, S, 1, dtype=f32)
            d["att_w"] = [weight(C, C) for _ in range(5)]  # key, value, receptance, gate, output
        d["index"] = len(ring)
        d["named"] = named_parameters(d, d["index"], v)
        ring.append(d)
    return ring


def as_model(ring: list[dict]) -> tuple[dict, list]:
    """An RWKV-7 ring (build_ring) as pass_7 takes it: every layer's parameters in one dict by name, and the
    layers' states in one list (attention shift, wkv state, ffn shift per layer)."""
    return {name: t for d in ring for name, t in d["z"].items()}, [t for d in ring for t in d["state"]]


def make_driver(version: int):
    """A TorchScript module holding the settings the reference's per-layer Python reads (drive_layer), with two
    script methods in the place of its layer functions."""
    import torch

    class Driver(torch.jit.ScriptModule):
        def __init__(self) -> None:
            super().__init__()
            self.version = {4: 4, 5: 5.2, 6: 6.0}[version]  # every setting read (DRIVER_WORK) costs as this one

        @torch.jit.script_method
        def time_mix(self, x: torch.Tensor) -> torch.Tensor:
            return x

        @torch.jit.script_method
        def channel_mix(self, x: torch.Tensor) -> torch.Tensor:
            return x

    return Driver()


def named_parameters(d: dict, i: int, version: int) -> dict:
    """A layer's parameters by the names drive_layer builds for them (``blocks.{i}.p{j}``), as many as the
    reference looks up a layer (DRIVER_WORK)."""
    tensors = [t for key in ("att", "att_w", "ffn", "mixes", "low") for t in d.get(key, [])]
    return {f"blocks.{i}.p{j}": tensors[j % len(tensors)] for j in range(DRIVER_WORK[version][2])}


def drive_layer(driver, named: dict, i: int, version: int) -> None:
    """The reference's Python work around one layer (DRIVER_WORK): its settings read from a TorchScript module, its
    layer functions fetched, its parameters looked up by a name built for this layer, its type checks. Timed in the
    plain pass with the layer, as the reference's forward pass pays it."""
    import torch

    reads, fetches, lookups, checks = DRIVER_WORK[version]
    for _ in range(reads):
        _ = driver.version
    for j in range(fetches):
        _ = driver.time_mix if j % 2 == 0 else driver.channel_mix
    prefix = f"blocks.{i}.p"
    for j in range(lookups):
        _ = named[f"{prefix}{j}"]
    for _ in range(checks):
        _ = torch.float32 == torch.uint8  # the reference's check, kept for its time


def run_layer(profile: Profile, fns: tuple, d: dict, x, driver=None):
    """One layer as a torch forward pass runs it: with ``driver`` (make_driver) and ``d["named"]``
    (named_parameters) the reference's per-layer Python first (drive_layer), the residual cast to the layer's
    type, the time mix call, the channel mix call; the state and token-shift inputs carried for the next token.
    ``fns``: functions() for one token (x: [n_embd]), chunk_functions() for a chunk (x: [T, n_embd])."""
    time_mix_4, channel_mix, time_mix_56, _ = fns
    v = profile.version
    if driver is not None and v is not None:
        drive_layer(driver, d["named"], d["index"], v)
    x = x.to(dtype=d["x_prev_att"].dtype)
    if v == 4:
        s = d["state"]
        x, d["x_prev_att"], s[0], s[1], s[2] = time_mix_4(x, d["x_prev_att"], s[0], s[1], s[2], *d["att"][:5],
                                                            d["att"][5], d["att"][6], *d["att_w"])
    else:
        S = profile.head_size
        x, d["x_prev_att"], d["state"] = time_mix_56(
            x, d["x_prev_att"], d["state"], d["att"][0], d["att"][1], d["att"][2], d["att"][3], d["mixes"], d["low"],
            d["decay"], d["bonus"], *d["att_w"], profile.n_embd // S, S, v == 6)
    x, d["x_prev_ffn"] = channel_mix(x, d["x_prev_ffn"], *d["ffn"], v == 6)
    return x


def _pass_runner(profile: Profile, backend: str, dtype: str, ring: list[dict], tokens: int,
                 tail: dict) -> tuple[Callable[[bool], None], Callable[[], None]]:
    """(one_pass(with_tail), drop_tail()): the ring once as a forward pass runs it, for one token (``tokens`` 1:
    decode) or a chunk of ``tokens``; with the tail (``tail``, filled in later) after the last layer. drop_tail()
    lets the tail's weights go (the head: 0.5 GB in fp32 on a 1.5B); no pass with the tail may follow."""
    import torch

    chunk = tokens > 1
    fns = chunk_functions() if chunk else functions()
    # every layer reads the same input (a random network's residual would drift); the state is carried
    shape = (tokens, profile.n_embd) if chunk else (profile.n_embd,)
    x0 = (torch.rand(shape, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(getattr(torch, _TORCH_DTYPES[dtype]))

    if profile.version == 7:  # the ring as one model, run by one scripted call (pass_7)
        z, state = as_model(ring)
        H, S = profile.n_embd // profile.head_size, profile.head_size

        def one_pass(with_tail: bool) -> None:
            nonlocal state
            if with_tail and "head" not in z:
                z.update(tail)
            _, state = fns[3](x0, z, state, len(ring), H, S, with_tail)

        def drop_tail_7() -> None:
            for key in tail:
                z.pop(key, None)
            tail.clear()
        return one_pass, drop_tail_7
    assert profile.version is not None  # an RWKV profile (nonmatmul.measure_series checks it)
    driver = make_driver(profile.version)

    def one_pass_layers(with_tail: bool) -> None:
        x = x0
        for d in ring:
            x = run_layer(profile, fns, d, x0, driver)
        if with_tail:
            run_tail(tail, x)
    return one_pass_layers, tail.clear


class Rounds:
    """The rounds of measure() (``tokens`` 1) or measure_chunk() (more), one at a time: ``start`` builds the ring and
    runs the compiling and warm-up passes, each ``round`` times one (a plain pass, then the profiled one), ``result``
    splits them. measure() runs its rounds back to back; validate's real-pass worker (forward_worker) runs one
    before each of its own profiled rounds, so that the two sides' rounds share the machine's phases; analyze runs
    a token's rounds in two windows (``again``: the second during or after its layer points, see LATER_WINDOW). A
    chunk's passes run without the tail (see TAIL_EVERY)."""

    def __init__(self, profile: Profile, backend: str, dtype: str, llc_bytes: int | None, tokens: int = 1):
        self.profile, self.backend, self.dtype, self.tokens = profile, backend, dtype, tokens
        self.ring = build_ring(profile, backend, dtype, ring_size(profile, dtype, llc_bytes, 1 if tokens > 1 else 2))
        self.tail: dict = {}  # built once the rounds are known to fit (a 1.5B's head is 0.5 GB in fp32)
        self.shapes, self.batched = weight_shapes([(x.k, x.n, x.count) for x in layer_list(profile).layers],
                                                  profile.n_layer)
        self.one_pass, self._drop_tail = _pass_runner(profile, backend, dtype, self.ring, tokens, self.tail)
        self.tails = tokens == 1  # decode: every other round ends with the token's tail (until drop_tail)
        self.rounds: list[dict] = []
        self.calls = 0.0
        self.ring_bytes = len(self.ring) * layer_bytes(profile, dtype)
        self.window = 0  # the rounds' window (again() opens the next)
        self.round_seconds: list[float] = []  # what each round of a layer alone (no tail) cost, warm-up pass included

    def start(self, budget_seconds: float) -> bool:
        """The compiling passes (TorchScript optimises a function after its first calls; both kinds of pass) and a
        token's warm-up pairs; False where the second pass says the rounds would not fit ``budget_seconds``
        (TOO_SLOW)."""
        import torch

        with torch.no_grad():
            for i in range(3):
                if i == 2 and self.tails:
                    self.tail.update(build_tail(self.profile, self.backend, self.dtype))
                t0 = time.perf_counter()
                self.one_pass(i == 2 and self.tails)
                # the second pass (the first compiles) says whether the rounds fit, before any tail: the head of a
                # 1.5B in fp16 on a CPU without fp16 arithmetic took seconds a pass
                if i == 1 and (time.perf_counter() - t0) * PASSES_PER_ROUND * FEWEST_ROUNDS > TOO_SLOW * budget_seconds:
                    return False  # the caller times the bare block instead
        if self.tails:
            self._warm()
        return True

    def _warm(self) -> None:
        """A token's profiled passes warm up too (WARM_PAIRS, WARM_SECONDS; the pair ends on the untimed plain pass
        that follows a profiled one); a chunk's pass is long (a second on a 1.5B), and its rounds start as before."""
        import torch

        t_warm = time.perf_counter()
        with torch.no_grad():
            for i in range(MAX_ROUNDS):
                if i >= WARM_PAIRS and time.perf_counter() - t_warm >= WARM_SECONDS:
                    break
                with cpu_profile():
                    self.one_pass(False)
                self.one_pass(False)

    def drop_tail(self) -> None:
        """No more rounds with the tail: its weights go (the head: 0.5 GB in fp32 on a 1.5B). result() keeps the
        tail figure of the rounds that had it."""
        self.tails = False
        self._drop_tail()

    def again(self) -> None:
        """Open the next window of rounds: a token's warm-up pairs first (without them, the first round after 8 s of
        other work read 1172 to 24951 us a layer outside its matmuls in six processes of RWKV-7 0.4B, the three rounds
        after it 452-1593, the first window's medians 544-844)."""
        self.window += 1
        if self.tokens == 1:
            self._warm()

    def round(self) -> None:
        """One round: the machine's speed, an untimed pass after a profiled one, the plain pass (timed), the
        profiled pass (its weight matmuls)."""
        import torch

        rounds, ring, tails = self.rounds, self.ring, self.tails
        t_round = time.perf_counter()
        with torch.no_grad():
            with_tail = tails and len(rounds) % TAIL_EVERY == TAIL_EVERY - 1
            # the machine's speed as the round begins (validate compares it with the real pass's)
            speed = contention.torch_canary()
            if rounds:  # the first pass after a profiled one is slower (forward_worker.AFTER_PROFILER): untimed
                self.one_pass(with_tail)
            t0 = time.perf_counter()
            self.one_pass(with_tail)
            plain = (time.perf_counter() - t0) / len(ring)
            with cpu_profile() as prof:
                self.one_pass(with_tail)
            by_shape: dict = {}
            matmul_us, _ = weight_matmul_us(prof, self.shapes, self.batched, by_shape)
            del prof
            if self.tokens > 1:  # a chunk's profile (12,000 events with their shapes on a 1.5B) held 0.3-0.4 GB
                system.release_free_memory()
        matmul = matmul_us / 1e6 / len(ring)
        r = {"layer_seconds": plain, "weight_matmul_seconds": matmul, "non_matmul_seconds": max(0.0, plain - matmul),
             "canary_seconds": speed}
        if self.window:
            r["window"] = self.window
        if with_tail:
            r["tail"] = True
        else:
            self.calls = sum(x["calls"] for x in by_shape.values()) / len(ring)
            self.round_seconds.append(time.perf_counter() - t_round)
        rounds.append(r)

    def result(self) -> dict:
        """The split of the rounds so far: the median per layer (plain less its matmuls, over every window's rounds)
        times n_layer, and a token's tail."""
        profile, rounds, ring = self.profile, self.rounds, self.ring
        plain = [r for r in rounds if not r.get("tail")]
        summary = summarize([r["non_matmul_seconds"] for r in plain])
        per_layer = summary["median_seconds"]
        structure = ("one TorchScript loop over the layers, parameters looked up by name" if profile.version == 7
                     else "two TorchScript calls a layer, each weight matmul through a helper")
        common = {"version": profile.version, "blocks": profile.n_layer, "cold": True, "method": "layer-pass",
                  "ring_layers": len(ring), "weight_matmuls_per_layer": self.calls, "seconds_per_block": per_layer,
                  "rounds": rounds, "spread": summary["spread"]}
        if self.window:  # each window's median beside the pooled one (LATER_WINDOW)
            common["windows"] = [statistics.median(r["non_matmul_seconds"] for r in plain if r.get("window", 0) == w)
                                 for w in range(self.window + 1) if any(r.get("window", 0) == w for r in plain)]
        if self.tokens > 1:
            return {"chunk": self.tokens, **common, "seconds_per_chunk": per_layer * profile.n_layer,
                    "what": f"one layer's work outside its weight matmuls over a chunk of {self.tokens} tokens (the "
                            f"state updated token by token), timed in a torch forward pass's structure ({structure}) as "
                            "the layer's time minus its weight matmuls' profiled time, times n_layer (the chunk's tail, "
                            "the output norm and head on its last token, left out: about 1% of a chunk's rest)"}
        for r in rounds:  # what a pass with the tail spent outside its matmuls beyond the ring's median, per token
            if r.get("tail"):
                r["tail_seconds"] = (r["layer_seconds"] - r["weight_matmul_seconds"] - per_layer) * len(ring)
        # the median over the tail rounds (one slow phase in two rounds moved a mean by several ms); a negative tail
        # is noise around a small figure: counted as none
        tail_seconds = max(0.0, statistics.median(r["tail_seconds"] for r in rounds if r.get("tail")))
        windows = (" (its rounds in two windows seconds apart: before analyze's layer points, and during or after "
                   "them)" if self.window else "")
        return {**common, "tail_seconds": tail_seconds, "seconds_per_token": per_layer * profile.n_layer + tail_seconds,
                "what": f"one layer's work outside its weight matmuls, timed in a torch forward pass's structure "
                        f"({structure}), weights read from DRAM) as the layer's time minus its weight matmuls' profiled "
                        f"time, times n_layer, plus the token's tail (output norm and head) outside the head's "
                        f"matmul{windows}"}


def _measure(profile: Profile, backend: str, dtype: str, budget_seconds: float, llc_bytes: int | None,
             tokens: int, keep: list | None = None) -> dict | None:
    """measure() for ``tokens`` 1, measure_chunk() for more: the rounds back to back, and their split; with
    ``keep``, the Rounds appended to it, without its tail, for a later window (LATER_WINDOW)."""
    r = Rounds(profile, backend, dtype, llc_bytes, tokens)
    # the budget counts the warm-up (the first passes compile) and the rounds; validate asks for more
    # (measure.validate.NONMATMUL_SECONDS)
    t_start = time.perf_counter()
    t_end, t_cap = t_start + budget_seconds, t_start + TOO_SLOW * budget_seconds
    if not r.start(budget_seconds):
        return None
    while len(r.rounds) < MAX_ROUNDS and (len(r.rounds) < FEWEST_ROUNDS or time.perf_counter() < t_end or (
            len(r.rounds) < MIN_ROUNDS and time.perf_counter() < t_cap)):
        r.round()
    if keep is not None:
        r.drop_tail()
        keep.append(r)
    return r.result()


def measure(profile: Profile, backend: str, dtype: str, budget_seconds: float, llc_bytes: int | None,
            keep: list | None = None) -> dict | None:
    """Median non-matmul seconds per layer in the per-layer structure (see the module's docstring), times
    n_layer, plus the per-token tail's non-matmul seconds; every round's figures kept. None where a pass is too
    slow for the budget (TOO_SLOW). ``keep``: a list the Rounds goes into for later_window()."""
    return _measure(profile, backend, dtype, budget_seconds, llc_bytes, 1, keep)


def later_window_seconds(r: Rounds) -> float:
    """What later_window(r) is expected to cost: its first window's rounds without the tail, and the warm-up."""
    return LATER_WINDOW_MARGIN * sum(r.round_seconds)


def later_window(r: Rounds) -> dict:
    """A token's rounds in a second window, seconds after the first (analyze: during or after its layer points), as
    many as the first had without the tail; the split of both windows' rounds (see LATER_WINDOW)."""
    first = sum(1 for x in r.rounds if not x.get("tail"))
    r.again()
    for _ in range(first):
        r.round()
    return r.result()


def measure_chunk(profile: Profile, backend: str, dtype: str, chunk: int, budget_seconds: float,
                  llc_bytes: int | None) -> dict | None:
    """A prefill chunk's work outside its weight matmuls (the sequential state update, the chunk-wide norms, mixes
    and activations, the calls around them), timed as measure() times a token: a ring of layers over ``chunk``
    tokens, plain passes split by profiled ones. ``seconds_per_chunk``: the median per layer times n_layer (no tail:
    see TAIL_EVERY). None where a pass is too slow for the budget (TOO_SLOW)."""
    if chunk < 2:
        raise ValueError(f"a chunk is 2 tokens or more, not {chunk}")
    return _measure(profile, backend, dtype, budget_seconds, llc_bytes, chunk)
