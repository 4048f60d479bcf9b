"""``rwkvprobe validate``: check analyze's decode prediction against a real RWKV forward pass.

The real model is BlinkDL's reference package (``rwkv``) running the profile's architecture with seeded
random weights (see forward_worker). The prediction is what ``analyze`` computes for the same profile,
backend, dtype and threads: the measured matmul time of every layer shape times its runs per token, plus
the timed (or, for older files, modelled) non-matmul work. Measuring its own prediction, validate times both parts
again in the real pass's process, between its rounds (interleaved_layer_pass, interleaved_points), and predicts with
those; analyze's own figures stay beside them. The comparison is stored in the analyze results file (key ``validation``)
and shown in its report as "Prediction checked".
"""

from __future__ import annotations

import importlib.util
import statistics
import sys

from rwkvprobe.errors import InputError, MissingExtra
from rwkvprobe.fsutil import run_json_worker
from rwkvprobe.measure import bandwidth, cachesize, layerpass, nonmatmul
from rwkvprobe.measure.timing import plan_rotation
from rwkvprobe.model.profile import LayerList, Profile, profile_json, weight_bytes_of
from rwkvprobe.progress import Progress

#: the analyze series whose weight layout is the reference's on a CPU: it keeps RWKV-7 weights [K, N]
#: (x @ W) and RWKV-4/5/6 weights as transposed views of [N, K] (nn.Linear's layout, a slower GEMV for M = 1)
PREDICTION_SERIES = {4: "torch-linear", 5: "torch-linear", 6: "torch-linear", 7: "torch"}
#: seconds of rounds for the prediction's timed non-matmul work (analyze: 0.3 with --quick, 0.8): its figure is the
#: small difference of two large ones (a pass, its matmuls), and six rounds of an RWKV 0.4B gave 0.70-1.35 of the
#: real pass's everything else in one bench/validate_all.py table; 2 s left RWKV-7 0.4B eight rounds (compiling
#: and the first profiler session take about a second), whose ring rounds read 569-1000 us a layer. 4 s (about twelve
#: rounds on a 0.4B) still left it at 0.69-1.62 of the real pass in one fp32 table of the eleventh session, 0.84-1.61 in
#: one of the twelfth (each miss a different profile from run to run: noise, not a bias): 8 s, twice the rounds
NONMATMUL_SECONDS = 8.0
DTYPES = ("fp32", "bf16", "fp16")
#: trials of each read-bandwidth probe bracketing the real pass
PHASE_TRIALS = 5
#: ggml's quantized formats: no ggml forward pass here to check them against (check_request says so)
GGML_QUANTIZED = ("q8_0", "q5_1", "q4_0", "q4_k")


def check_request(ll: LayerList, backend: str, dtype: str, tokens: int, chunk: int) -> None:
    """Refuse what validate cannot do, each with one line."""
    p = ll.profile
    if p.version is None:
        raise InputError(f"{p.path or p.name}: a 'layers:' profile has no RWKV model to run; validate needs an "
                         "RWKV profile (version 4-7)")
    if backend not in ("torch", "ggml"):
        raise InputError(f"--backend {backend}: validate checks the torch or the ggml prediction (the real model "
                         "runs in BlinkDL's reference package, written in torch): use --backend torch or ggml")
    if backend == "ggml" and dtype in GGML_QUANTIZED:
        raise InputError(f"--backend ggml --dtype {dtype}: no ggml RWKV forward pass exists in rwkvprobe to check a "
                         "quantized ggml prediction against (that needs rwkv.cpp's library and a model converted "
                         "and quantized by its scripts, timed token by token); validate checks ggml's fp32/fp16/bf16 "
                         "predictions against the reference package, which is not a ggml engine")
    if dtype not in DTYPES:
        raise InputError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    if not 1 <= tokens <= 100_000:
        raise InputError(f"--tokens {tokens}: expected between 1 and 100000 decoded tokens")
    if not 0 <= chunk <= 4096:
        raise InputError(f"--chunk {chunk}: expected a prefill chunk of 0 (none) to 4096 tokens")
    for module, what in (("torch", "torch"), ("rwkv", "BlinkDL's reference package")):
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(module, "validate", f"rwkvprobe validate ({what})")


def check_memory(ll: LayerList, dtype: str, layer_pass: dict | None = None, points: bool = False) -> None:
    """The random fp32 weights plus the reference's converted copy must fit in available memory, and with
    ``layer_pass`` (interleaved_layer_pass) the ring of layers and the head its rounds run in the same process, with
    ``points`` the prediction's points timed there too (interleaved_points, points_bytes)."""
    import psutil

    need = ll.model_bytes("fp32") + ll.model_bytes(dtype)
    if layer_pass is not None:
        ring = layerpass.ring_size(ll.profile, layer_pass["dtype"], cachesize.usable_llc_bytes())
        need += (ring * layerpass.layer_bytes(ll.profile, layer_pass["dtype"])
                 + sum(x.k * x.n * weight_bytes_of(layer_pass["dtype"]) for x in ll.layers if x.kind == "head"))
    if points:
        need += points_bytes(ll, dtype)
    have = psutil.virtual_memory().available
    if need > have:
        raise InputError(f"{ll.profile.name} in {dtype} needs about {need / 1e9:.1f} GB of free memory to build "
                         f"with random weights; {have / 1e9:.1f} GB is available")


# --------------------------------------------------------------------------------------------
# The prediction


# --------------------------------------------------------------------------------------------
# The real forward pass (subprocess)


def run_forward(ll: LayerList, dtype: str, threads: int, tokens: int, chunk: int, cpus: list[int] | None,
                seed: int = 0, layer_pass: dict | None = None, points: dict | None = None) -> dict:
    """The reference forward pass in a worker process (forward_worker); ``layer_pass`` (interleaved_layer_pass):
    the prediction's layer pass, its rounds run between the real pass's profiled rounds; ``points``
    (interleaved_points): the prediction's points, timed between them too."""
    cfg = {"profile": profile_json(ll), "dtype": dtype, "threads": threads, "tokens": tokens, "chunk": chunk,
           "seed": seed, "cpus": cpus, "layer_pass": layer_pass, "points": points,
           "cache": cachesize.decide()}  # the worker sizes its rings as this process does (no scan of its own)
    result, tail = run_json_worker([sys.executable, "-m", "rwkvprobe.measure.forward_worker"], cfg)
    if result is None:
        raise RuntimeError(f"the forward pass did not finish: {tail}")
    if not result.get("ok"):
        raise RuntimeError(f"the reference forward pass failed: {result.get('error')}")
    return result


def run_forward_bracketed(ll: LayerList, dtype: str, threads: int, tokens: int, chunk: int, cpus: list[int] | None,
                          results: dict, layer_pass: dict | None = None,
                          points: dict | None = None) -> tuple[dict, dict]:
    """run_forward between two read-bandwidth probes, and the analyze run's own probes beside them: on a shared
    machine the DRAM bandwidth moves in phases, and a real pass timed in another phase than the prediction can
    miss it for that reason alone (validation.PHASE_APART)."""
    before = bandwidth.probe_read(threads, cpus, PHASE_TRIALS)
    real = run_forward(ll, dtype, threads, tokens, chunk, cpus, layer_pass=layer_pass, points=points)
    after = bandwidth.probe_read(threads, cpus, PHASE_TRIALS)
    analyze = [g for _, g in bandwidth.read_probes(results, history=False)]
    around = [x["read_best_gbps"] for x in (before, after) if x["check_ok"]]
    return real, {"real_pass_gbps": around, "analyze_gbps": statistics.median(analyze) if analyze else None}


def interleaved_layer_pass(ll: LayerList, series: str, dtype: str) -> dict | None:
    """What the real-pass worker needs to time the prediction's non-matmul work between its own profiled rounds
    (layerpass.Rounds), for a series analyze times in layers; None for the others. The part outside the matmuls is the
    small difference of two large times on both sides, and this VM runs two-thread work 1.3-2x slower for seconds at
    a time: two interleaved layer passes of the same shapes (rwkv6-0b4, 64 rounds each, one process) read within
    0.85-1.03 of each other in every block of 8 rounds, where each one's own blocks ranged over 483-709 and
    556-753 us a layer. Timed before the real pass (analyze's own figure), the prediction read 0.70-1.45 of the real
    pass's everything-else across this project's validate tables; in one table of 12 profiles (0.1B-1.5B) the
    interleaved figure read 0.80-1.29 of it (RMS 12.7%), the one timed apart 0.82-1.34 (RMS 14.4%)."""
    if series not in layerpass.LAYOUTS or ll.profile.version not in layerpass.VERSIONS:
        return None
    return {"backend": series, "dtype": nonmatmul.block_dtype(dtype, series), "budget_seconds": NONMATMUL_SECONDS}


#: the series whose points validate's real-pass worker can time again between its rounds (it runs torch alone)
POINT_SERIES = ("torch", "torch-linear")
#: timed calls of every point in each round validate's worker runs between the real pass's profiled decode rounds
#: (forward_worker.PROFILE_ROUNDS of them) or before each of its prefill rounds (five to twenty)
POINT_CALLS_DECODE, POINT_CALLS_CHUNK = 2, 2


def interleaved_points(results: dict, series: str, dtype: str, chunk: int) -> dict | None:
    """What the real-pass worker needs to time the prediction's weight matmuls again between its own rounds
    (points.PointRounds): the series' points of the decode (M = 1) and of the prefill chunk (M = ``chunk``) that
    analyze timed and checked, each with the rotation it was timed with; None for a series the worker cannot run.

    Why: analyze times its points a minute or more before the real pass, and this VM's DRAM bandwidth moves in
    phases of seconds (18-90 GB/s): in one bench/validate_all.py table the prediction's matmuls read 0.87-1.26 of
    the real pass's, and in four of the six rows that missed their total the probes around the real pass read over
    15% from analyze's. Timed between the real pass's rounds, the two sides share the machine's phases, as the part
    outside the matmuls already does (interleaved_layer_pass). Over 20 rows (0.1B-1.5B, fp32, three tables of the
    eighteenth session) the decode's matmuls read 0.94-1.05 of the real pass's so (0.94-1.17 as analyze timed them), a
    chunk's 0.91-1.03 (0.73-1.22)."""
    if series not in POINT_SERIES:
        return None
    last = {(p["m"], p["k"], p["n"]): p for p in results.get("measurements") or []  # the verdict's: the last one
            if p.get("backend") == series and p.get("dtype") == dtype}
    ok = [p for p in last.values() if p.get("timing") and (p.get("check") or {}).get("ok") and p.get("rotation")]

    def specs(m: int) -> list[dict]:
        return [{"m": m, "k": p["k"], "n": p["n"], "dtype": dtype, "copies": p["rotation"]["copies"],
                 "flush_bytes": p["rotation"]["flush_bytes"]} for p in ok if p["m"] == m]
    out = {"backend": series, "decode": specs(1), "calls_decode": POINT_CALLS_DECODE,
           "chunk": specs(chunk) if chunk else [], "calls_chunk": POINT_CALLS_CHUNK}
    return out if out["decode"] or out["chunk"] else None


def points_bytes(ll: LayerList, dtype: str) -> int:
    """The memory the worker's points (interleaved_points) hold at once: every decode shape's copies and eviction
    buffer, as plan_rotation gives them (the chunk's, the same weights, are built once the decode's are gone)."""
    total = 0.0
    for k, n in {x.call_shape for x in ll.layers}:
        r = plan_rotation(k * n * weight_bytes_of(dtype), cachesize.usable_llc_bytes())
        total += r.copies * k * n * weight_bytes_of(dtype) + r.flush_bytes
    return int(total)


def _layer_pass_entry(results: dict, series: str, dtype: str) -> dict | None:
    """The series' non-matmul entry in ``results`` where analyze timed it in layers (None: the bare block)."""
    block = nonmatmul.block_dtype(dtype, series)
    return next((x for x in results.get("nonmatmul") or [] if x.get("backend") == series and x.get("dtype") == block
                 and x.get("method") == "layer-pass"), None)


def take_interleaved(results: dict, series: str, dtype: str, passes: dict) -> None:
    """The series' timed non-matmul work in ``results`` replaced by ``passes``, the layer pass timed between the real
    pass's rounds; its chunk figures (``seq``) kept, the figure it had recorded under ``interleaved``."""
    entry = _layer_pass_entry(results, series, dtype)
    if entry is None:  # analyze timed the bare block (its layer pass too slow): the prediction stays as it is
        return
    before = {k: entry[k] for k in ("seconds_per_token", "seconds_per_block", "tail_seconds", "windows") if k in entry}
    entry.pop("windows", None)  # analyze's windows of rounds (layerpass.later_window), not these rounds'
    entry.update(passes)
    entry["what"] = passes["what"] + " (validate: its rounds ran between the real pass's profiled rounds)"
    entry["interleaved"] = {"with": "the real pass's profiled rounds", "separate": before}


def take_interleaved_chunk(results: dict, series: str, dtype: str, passes: dict) -> bool:
    """The series' timed sequential work of a chunk (its ``seq`` entry for ``passes["chunk"]``) replaced by
    ``passes``, the chunk's layer pass timed between the real pass's prefill rounds (forward_worker.profile_prefill),
    the figures it had recorded under ``interleaved``; False where it stays (no such chunk, or timed as the bare
    block)."""
    entry = _layer_pass_entry(results, series, dtype)
    key = str(passes["chunk"])
    seq = ((entry or {}).get("seq") or {}).get(key)
    if entry is None or seq is None or seq.get("method") != "layer-pass":
        return False
    before = {k: seq[k] for k in ("seconds_per_chunk", "seconds_per_block") if k in seq}
    entry["seq"][key] = {**passes, "what": passes["what"] + " (validate: its rounds ran between the real pass's "
                                                              "prefill rounds)",
                         "interleaved": {"with": "the real pass's prefill rounds", "separate": before}}
    return True


# --------------------------------------------------------------------------------------------
# The comparison


def record(results: dict, validation: dict) -> None:
    """Store a validation in an analyze results dict, replacing an earlier one of the same backend and dtype."""
    kept = [x for x in results.get("validation") or []
            if (x.get("backend"), x.get("dtype")) != (validation["backend"], validation["dtype"])]
    results["validation"] = kept + [validation]


# --------------------------------------------------------------------------------------------
# The command


# --------------------------------------------------------------------------------------------
# Completing an older analyze results file with what the prediction needs


def time_prefill_state(data: dict, profile: Profile, series: str, dtype: str, chunk: int, threads: int,
                       progress: Progress) -> None:
    """Time the sequential prefill work (the state update per token) for ``chunk`` into the series' non-matmul
    entry of ``data`` (a results file written before analyze timed it)."""
    import torch

    torch.set_num_threads(threads)
    progress.stage(f"sequential prefill work: {series} {dtype}, chunk {chunk}")
    entry = next(x for x in data["nonmatmul"] if x.get("backend") == series
                 and x.get("dtype") == nonmatmul.block_dtype(dtype))
    seq = nonmatmul.chunk_rest(profile, series, nonmatmul.block_dtype(dtype), chunk, NONMATMUL_SECONDS,
                               cachesize.usable_llc_bytes(), nonmatmul.TimingPolicy(budget_seconds=0.8, min_samples=5),
                               entry.get("method") == "layer-pass")
    entry.setdefault("seq", {})[str(chunk)] = seq


def time_nonmatmul_block(data: dict, profile: Profile, series: str, dtype: str, chunk: int, threads: int,
                         progress: Progress) -> None:
    """Time the non-matmul block of ``series`` into ``data`` as analyze does today (a results file written
    before analyze timed it)."""
    import torch

    torch.set_num_threads(threads)
    progress.stage(f"non-matmul block: {series} {dtype}")
    data.setdefault("nonmatmul", []).append(nonmatmul.measure_series(
        profile, series, nonmatmul.block_dtype(dtype, series), NONMATMUL_SECONDS, cachesize.usable_llc_bytes(),
        data.get("settings", {}).get("cold", True), threads=threads, chunks=(chunk,) if chunk else ()))
