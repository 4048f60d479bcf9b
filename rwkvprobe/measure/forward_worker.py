"""The real RWKV forward pass for ``rwkvprobe validate``, run in a subprocess of its own.

``python -m rwkvprobe.measure.forward_worker CONFIG.json OUT.json``. BlinkDL's reference package (``rwkv``)
picks its RWKV-7 class from ``RWKV_V7_ON`` at import time and compiles TorchScript functions, so each
run gets a fresh interpreter. The model is built from seeded random weights in the reference's own
checkpoint layout (no download): the weights' values do not change the work a token costs, only their
shapes do. The worker times token-by-token decode and a prefill chunk, and splits each, with torch.profiler,
into weight matmuls (per shape) and everything else. Where validate measures its own prediction, the prediction's
layer pass (layerpass.Rounds) and points (points.PointRounds) run here too, between this pass's rounds.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from typing import Callable

from rwkvprobe.backends import backend_class
from rwkvprobe.measure import cachesize, contention, layerpass, system
from rwkvprobe.measure.points import PointRounds
from rwkvprobe.measure.profiling import cpu_profile, weight_matmul_us, weight_shapes
from rwkvprobe.measure.timing import summarize
from rwkvprobe.model.profile import Profile, layer_list, state_dict_shapes

STRATEGY = {"fp32": "cpu fp32", "bf16": "cpu bf16", "fp16": "cpu fp16"}


def random_state_dict(shapes: dict, seed: int):
    """Seeded weights that keep activations finite through every block: linear and low-rank matrices
    uniform with variance 1/(4 fan-in), the embedding in [-1, 1], vectors (norms, mixes, decays) in [0, 1]."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in shapes.items():
        t = torch.empty(shape, dtype=torch.float32)
        if name == "emb.weight":
            t.uniform_(-1.0, 1.0, generator=g)
        elif len(shape) >= 2 and not name.endswith(("time_faaaa", "time_decay", "r_k")):
            # nn.Linear weights are stored [out, in]; the low-rank matrices (w1, w2, ...) are [in, out]
            fan_in = shape[1] if name.endswith(".weight") else shape[-2]
            bound = math.sqrt(3.0 / fan_in) / 2
            t.uniform_(-bound, bound, generator=g)
        elif name.endswith(".bias"):
            t.uniform_(-0.1, 0.1, generator=g)
        else:
            t.uniform_(0.0, 1.0, generator=g)
        sd[name] = t
    return sd


def load_reference(state_dict: dict, version: int, dtype: str):
    """The reference package's model on this state dict (its loader reads a file: hand it ours)."""
    from unittest import mock

    import rwkv.model as reference
    import torch

    kwargs = {} if version == 7 else {"verbose": False}
    with mock.patch.object(torch, "load", lambda *a, **k: state_dict):
        return reference.RWKV(model="random-weights", strategy=STRATEGY[dtype], **kwargs)


#: untimed chunks before profile_prefill's rounds. The first chunks of a fresh process run slow: RWKV-5.2 0.1B,
#: fp32, chunk 64, 2 threads, the second to seventh chunk took 190, 190, 207, 193, 172 and 162 ms, then 144-157 ms
#: from the eighth on, no matter where torch.profiler sessions fell. With one untimed chunk, the first rounds' plain
#: times were among those: the part outside the weight matmuls read 60.5 ms a chunk against 39.9 once warm (and
#: against the 40.0 ms of analyze's timed sequential block)
PREFILL_WARMUP = 7


#: rounds of validate's prediction of a chunk's rest (layerpass.Rounds, a chunk) before each of profile_prefill's
#: rounds: its figure is the median of its rounds, and the real chunk may have as few as five (a 1.5B's chunk takes
#: seconds), where analyze times six at least
CHUNK_ROUNDS_BETWEEN = 2


#: profile_prefill's rounds: at least the config's chunk_repeats (5), more while they have taken less than
#: PREFILL_SECONDS, PREFILL_MAX_ROUNDS at most. Five rounds of RWKV-6 0.4B's chunk of 64 (0.5 s a chunk) read 453, 795,
#: 594, 514 and 477 ms in one process: the median of five is the phase they fell in. In one table the prediction's
#: chunk matmuls read 0.74-1.14 of the real pass's (their share of that median), where analyze's points of the large
#: shapes read 0.91-0.99 of the same calls inside a chunk, per call
PREFILL_SECONDS, PREFILL_MAX_ROUNDS = 8.0, 20


def profile_prefill(model, state, ids: list, layer_shapes: list, n_layer: int, repeats: int, between=None,
                    seconds: float = 0.0) -> dict:
    """A chunk's time and its split, as profile_decode splits a token: rounds of the chunk timed plainly, then
    under torch.profiler (``repeats`` at least, more while the rounds have taken less than ``seconds``, at most
    PREFILL_MAX_ROUNDS); the weight-matmul share is the profiled weight-matmul time over the plain time of the same
    round, the rest (the sequential state update, norms, mixes) the remainder.

    ``between``: called before each round (validate's prediction: CHUNK_ROUNDS_BETWEEN rounds of its chunk's layer
    pass)."""
    shapes, batched = weight_shapes(layer_shapes, n_layer)
    plain: list[float] = []
    shares: list[float] = []
    per_shape: dict = {}
    for _ in range(PREFILL_WARMUP):  # the first chunks run slow (see PREFILL_WARMUP)
        model.forward(ids, [x.clone() for x in state] if isinstance(state, list) else state)
    t_start = time.perf_counter()
    while len(plain) < repeats or (len(plain) < PREFILL_MAX_ROUNDS and time.perf_counter() - t_start < seconds):
        if between is not None:
            between()
        s = [x.clone() for x in state] if isinstance(state, list) else state
        t0 = time.perf_counter()
        model.forward(ids, s)
        plain.append(time.perf_counter() - t0)
        s = [x.clone() for x in state] if isinstance(state, list) else state
        with cpu_profile() as prof:
            model.forward(ids, s)
        matmul_us, _ = weight_matmul_us(prof, shapes, batched, per_shape)
        shares.append(min(1.0, matmul_us / 1e6 / plain[-1]))
    median = statistics.median(plain)
    for d in per_shape.values():
        d["calls_per_chunk"] = d["calls"] / len(plain)
        d["seconds_per_call"] = d["us"] / 1e6 / d["calls"]
    return {"chunk": len(ids), "samples": plain, "median": median, "tokens_per_second": len(ids) / median,
            "matmul_share": statistics.median(shares), "by_shape": list(per_shape.values())}


#: versions whose layer pass for a token validate's worker builds before the reference model. In the reference's process
#: an RWKV-7 0.4B ring built after the model read 1.06-1.17x the real pass's part outside the matmuls between its rounds
#: (a script, four processes), built before it 1.03-1.09x; in validate itself (RWKV-7 0.1B and 0.4B, five pairs of runs)
#: 1.01-1.16x against 1.10-1.20x, where validate tables had given RWKV-7's interleaved everything-else 1.11-1.28x (and
#: analyze's own 0.94-1.18x). RWKV-4's did not gain: built first, 0.78-0.93x in four runs of 0.1B and 0.4B, against
#: 0.87-1.03x after in the tables and two runs
RING_FIRST = (7,)
#: the real pass's timed tokens take the machine's speed (contention.torch_canary) before every this many
CANARY_EVERY = 8
#: decode rounds of profile_decode and tokens in each half of a round: many short rounds, not a few long ones. The
#: rest of a token (everything but its weight matmuls) is ~10% of it, found as the token's time less its matmuls'
#: time, so a 5% wobble of the matmuls between a round's halves moves the rest by half. Five rounds of 8 tokens
#: gave rwkv4-169m's rest as 3.7-5.9 ms in four repeats (single rounds -1.5 to 10.8); twenty rounds of 2 tokens,
#: the same 80 tokens, 4.8-5.9. Forty rounds (twelfth session): the real side of validate's everything-else split
#: still moved 5.4-6.5 ms on RWKV-7 0.1B between two runs in the same hour at twenty
PROFILE_ROUNDS, PROFILE_TOKENS = 40, 2
#: untimed calls after a profiled one, before the plain ones: the first call after a torch.profiler session runs
#: 0.3-0.6 ms slower (its own post-processing leaves the caches cold); no decode without a profiler pays that, and
#: a per-layer figure from short plain passes took it in (RWKV-7's ring of 2 layers read 0.63-0.79 ms a layer
#: outside its matmuls, of 12 layers 0.44)
AFTER_PROFILER = 1


def profile_decode(model, state, token: int, n: int, layer_shapes: list, n_layer: int,
                   rounds: int = PROFILE_ROUNDS, between=None) -> dict:
    """Per-token time of the weight matmuls by shape, measured by torch.profiler, and the matmul share.

    ``rounds`` times: ``n`` tokens timed without the profiler, then ``n`` tokens under it. The matmul share of
    a token is the profiled weight-matmul time over the unprofiled token time of the same round (paired in
    time, so a machine that gets busier or quieter between rounds moves both); the profiler's own per-op cost
    lands mostly on the many small non-matmul ops, so it does not inflate the share much. The split of the
    measured decode time uses the median share over the rounds.

    ``between``: called before each round (validate's prediction: one round of its layer pass), followed by an
    untimed token as after a profiled round.

    ``plain``: the rounds' unprofiled tokens, the decode time validate compares the prediction with. The tokens
    timed back to back before the rounds (``run``'s ``decode``) fall in one phase of a shared machine, the rounds
    in many, and in the same ones as the prediction's rounds between them: in 45 rows of this project's validate
    tables (fp32 and bf16, 0.1B-1.5B) the back-to-back median read 0.93-1.09 of the rounds' tokens (estimated:
    the profiled matmul time over its share), about 1.0 on the mean, and the two totals that missed 10% were rows
    where it read 1.07 and 0.93.
    """
    import torch

    shapes, batched = weight_shapes(layer_shapes, n_layer)
    per_shape: dict = {}
    other_matmul_us = 0.0
    shares, round_info, tokens = [], [], []
    for i in range(rounds):
        if between is not None:
            between()
        speed = contention.torch_canary()  # the machine's speed as the round begins (untimed)
        for _ in range(AFTER_PROFILER if i or between is not None else 0):
            logits, state = model.forward([token], state)
            token = int(torch.argmax(logits))
        plain = []
        for _ in range(n):
            t0 = time.perf_counter()
            logits, state = model.forward([token], state)
            plain.append(time.perf_counter() - t0)
            token = int(torch.argmax(logits))
        with cpu_profile() as prof:
            t0 = time.perf_counter()
            for _ in range(n):
                logits, state = model.forward([token], state)
                token = int(torch.argmax(logits))
            wall = (time.perf_counter() - t0) / n
        matmul_us, other = weight_matmul_us(prof, shapes, batched, per_shape)
        other_matmul_us += other
        token_s = statistics.median(plain)
        tokens += plain
        shares.append(min(1.0, matmul_us / 1e6 / n / token_s))
        round_info.append({"token_seconds": token_s, "profiled_token_seconds": wall,
                           "weight_matmul_seconds": matmul_us / 1e6 / n, "canary_seconds": speed})
    total = n * rounds
    for d in per_shape.values():
        d["calls_per_token"] = d["calls"] / total
        d["seconds_per_call"] = d["us"] / 1e6 / d["calls"]
    matmul = sum(d["us"] for d in per_shape.values()) / 1e6 / total
    summary = summarize(tokens)
    return {"tokens": total, "weight_matmul_seconds_per_token": matmul, "by_shape": list(per_shape.values()),
            "other_matmul_seconds_per_token": other_matmul_us / 1e6 / total,
            "matmul_share": statistics.median(shares), "rounds": round_info,
            # the rounds' unprofiled tokens: the decode time validate compares with (the same phases of the machine
            # as the split's share and as the prediction's rounds run between them)
            "plain": {"samples": tokens, "median": summary["median_seconds"], "min": summary["min_seconds"],
                      "q1": summary["q1_seconds"], "q3": summary["q3_seconds"]}}


def _prediction_rounds(profile: Profile, layer_pass: dict | None, tokens: int) -> layerpass.Rounds | None:
    """validate's prediction's layer pass (``layer_pass``: validate.interleaved_layer_pass) for a token (``tokens``
    1) or a chunk, compiled and warmed up, for its rounds to run between this pass's; None without one, or where its
    passes are too slow for its budget (layerpass.TOO_SLOW)."""
    if not layer_pass:
        return None
    rounds = layerpass.Rounds(profile, layer_pass["backend"], layer_pass["dtype"], cachesize.usable_llc_bytes(), tokens)
    return rounds if rounds.start(layer_pass["budget_seconds"]) else None


def _prediction_points(cfg: dict, which: str, out: dict) -> PointRounds | None:
    """validate's prediction's points (``cfg["points"]``: validate.interleaved_points) of the decode (``which``
    "decode") or of the chunk ("chunk"), built and called once per copy, for their rounds to run between this pass's;
    None without them, or where they cannot be built here (the reason in ``out["points_skipped"]``: the prediction
    then keeps analyze's own figures)."""
    spec = cfg.get("points")
    if not spec or not spec.get(which):
        return None
    try:
        return PointRounds(backend_class(spec["backend"])(cfg["threads"]), spec[which])
    except (MemoryError, RuntimeError) as e:
        out.setdefault("points_skipped", {})[which] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return None


def _betweens(*calls) -> Callable[[], None] | None:
    """One call running each of ``calls`` that is not None in turn (None where all are)."""
    todo = [c for c in calls if c is not None]
    if not todo:
        return None

    def between() -> None:
        for c in todo:
            c()
    return between


def run(cfg: dict) -> dict:
    import torch


    if cfg.get("cpus"):
        os.sched_setaffinity(0, cfg["cpus"])  # the CPUs the prediction was measured on
    torch.set_num_threads(cfg["threads"])
    p = cfg["profile"]
    profile = Profile(name=p["name"], source=p.get("source", ""), version=p["version"], n_layer=p["n_layer"],
                      n_embd=p["n_embd"], vocab_size=p["vocab_size"], head_size=p["head_size"], dim_ffn=p["dim_ffn"],
                      lora=p.get("lora") or {})
    shapes = state_dict_shapes(profile)
    # validate's prediction's layer pass for a token: RWKV-7's built (its ring allocated, compiled, warmed up) before the
    # reference model is loaded (RING_FIRST), the others' after it, as before
    lp = cfg.get("layer_pass")
    first = profile.version in RING_FIRST
    rounds = _prediction_rounds(profile, lp, 1) if first else None
    t_start = time.perf_counter()
    model = load_reference(random_state_dict(shapes, cfg.get("seed", 0)), profile.version, cfg["dtype"])
    load_seconds = time.perf_counter() - t_start
    gen = torch.Generator().manual_seed(cfg.get("seed", 0) + 1)
    vocab = profile.vocab_size
    prompt = torch.randint(0, vocab, (cfg.get("prompt", 8),), generator=gen).tolist()
    out: dict = {"load_seconds": load_seconds, "threads": torch.get_num_threads(), "torch": torch.__version__}
    try:
        import importlib.metadata as md

        out["reference"] = f"rwkv {md.version('rwkv')}"
    except Exception:  # pragma: no cover - metadata missing
        out["reference"] = "rwkv"
    with torch.no_grad():
        logits, state = model.forward(prompt, None)
        token = int(torch.argmax(logits))
        for _ in range(cfg.get("warmup", 6)):  # TorchScript optimises a function after its first calls
            logits, state = model.forward([token], state)
            token = int(torch.argmax(logits))
        samples = []
        finite = True
        canaries = []  # the machine's speed (contention.torch_canary) every CANARY_EVERY tokens, untimed
        for i in range(cfg["tokens"]):
            if i % CANARY_EVERY == 0:
                canaries.append(contention.torch_canary())
            t0 = time.perf_counter()
            logits, state = model.forward([token], state)
            samples.append(time.perf_counter() - t0)
            finite = finite and bool(torch.isfinite(logits).all())
            token = int(torch.argmax(logits))  # greedy sampling, outside the timed call
        summary = summarize(samples)
        out["decode"] = {"samples": samples, "median": summary["median_seconds"], "min": summary["min_seconds"],
                         "q1": summary["q1_seconds"], "q3": summary["q3_seconds"]}
        out["logits_finite"] = finite
        ll = layer_list(profile)
        layer_shapes = [(x.k, x.n, x.count) for x in ll.layers]
        # validate's prediction of the part outside the matmuls, its layer pass's rounds run between this pass's
        # profiled rounds (layerpass.Rounds): the machine's phases of seconds fall on both sides alike; and of its
        # weight matmuls, analyze's points timed again there (points.PointRounds)
        if not first:
            rounds = _prediction_rounds(profile, lp, 1)
        points = _prediction_points(cfg, "decode", out)
        calls_decode = (cfg.get("points") or {}).get("calls_decode", 1)
        out["profiled"] = profile_decode(model, state, token, cfg.get("profile_tokens", PROFILE_TOKENS), layer_shapes,
                                         profile.n_layer, between=_betweens(rounds.round if rounds else None,
                                                                            (lambda: points.round(calls_decode)) if points
                                                                            else None))
        if rounds is not None:
            out["layer_pass"] = rounds.result()
            rounds = None
        if points is not None:
            out["points"] = {"decode": points.result()}
            points.close()
            points = None
        system.release_free_memory()  # the ring's and the points' weights, before the prefill chunk
        out["canary_seconds"] = canaries + [x["canary_seconds"] for x in out["profiled"]["rounds"]]
        chunk = cfg.get("chunk", 0)
        if chunk:
            ids = torch.randint(0, vocab, (chunk,), generator=gen).tolist()
            # the prediction's sequential part of the chunk too (layerpass.Rounds over the chunk), between this
            # pass's prefill rounds
            chunk_rounds = _prediction_rounds(profile, lp, chunk)
            chunk_points = _prediction_points(cfg, "chunk", out)  # and its points at M = chunk
            calls_chunk = (cfg.get("points") or {}).get("calls_chunk", 1)

            def between() -> None:
                assert chunk_rounds is not None
                for _ in range(CHUNK_ROUNDS_BETWEEN):
                    chunk_rounds.round()
            out["prefill"] = profile_prefill(
                model, state, ids, layer_shapes, profile.n_layer, cfg.get("chunk_repeats", 5),
                between=_betweens(between if chunk_rounds else None,
                                  (lambda: chunk_points.round(calls_chunk)) if chunk_points else None),
                seconds=cfg.get("chunk_seconds", PREFILL_SECONDS))
            if chunk_rounds is not None:
                out["chunk_layer_pass"] = chunk_rounds.result()
            if chunk_points is not None:
                out.setdefault("points", {})["chunk"] = chunk_points.result()
                chunk_points.close()
    return out


def main(argv: list[str]) -> int:
    cfg = json.loads(open(argv[0]).read())
    os.environ["RWKV_V7_ON"] = "1" if cfg["profile"]["version"] == 7 else "0"
    os.environ.setdefault("RWKV_JIT_ON", "1")  # the package's default, as ChatRWKV runs it
    os.environ["RWKV_CUDA_ON"] = "0"
    cachesize.adopt(cfg.get("cache"))  # the parent's cache size: the rings sized as its run sizes them
    try:
        result = {"ok": True, **run(cfg)}
    except Exception as e:  # reported by the parent in one line
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    with open(argv[1], "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
