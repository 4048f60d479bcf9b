"""``rwkvprobe validate``: check analyze's decode prediction against a real RWKV forward pass.

The real model is BlinkDL's reference package (``rwkv``) running the profile's architecture with seeded
random weights (see forward_worker). The prediction is what ``analyze`` computes for the same profile,
backend, dtype and threads: the measured matmul time of every layer shape times its runs per token, plus
the modelled non-matmul work. The comparison is stored in the analyze results file (key ``validation``)
and shown in its report as "Prediction checked".
"""

from __future__ import annotations

import importlib.util
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer

from rwkvprobe.cli.console import Reporter, err_console, out_console, run_keeping_results
from rwkvprobe.errors import InputError, MissingExtra
from rwkvprobe.fsutil import run_json_worker
from rwkvprobe.measure import nonmatmul
from rwkvprobe.model.profile import LayerList, layer_list, load_profile
from rwkvprobe.verdict.validation import GGML_NOTE, NOISY, TARGET, summary_lines  # noqa: F401 (re-exported)

#: the analyze series whose weight layout is the reference's on a CPU: it keeps RWKV-7 weights [K, N]
#: (x @ W) and RWKV-4/5/6 weights as transposed views of [N, K] (nn.Linear's layout, a slower GEMV for M = 1)
PREDICTION_SERIES = {4: "torch-linear", 5: "torch-linear", 6: "torch-linear", 7: "torch"}
DTYPES = ("fp32", "bf16", "fp16")
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


def check_memory(ll: LayerList, dtype: str) -> None:
    """The random fp32 weights plus the reference's converted copy must fit in available memory."""
    import psutil

    need = ll.model_bytes("fp32") + ll.model_bytes(dtype)
    have = psutil.virtual_memory().available
    if need > have:
        raise InputError(f"{ll.profile.name} in {dtype} needs about {need / 1e9:.1f} GB of free memory to build "
                         f"with random weights; {have / 1e9:.1f} GB is available")


# --------------------------------------------------------------------------------------------
# The prediction


def prediction(results: dict, ll: LayerList, backend: str, dtype: str) -> dict:
    """analyze's per-token figures for one backend and dtype (matmuls measured, the rest modelled)."""
    from rwkvprobe.report.markdown import verdict_of

    stored, verdict = verdict_of(results)
    if [(x.k, x.n, x.count) for x in stored.layers] != [(x.k, x.n, x.count) for x in ll.layers]:
        raise InputError(f"the results file holds {stored.profile.name!r}, whose layers differ from "
                         f"{ll.profile.name!r}: pass the analyze results of the same profile")
    for s in verdict["series"]:
        if s["backend"] == backend and s["dtype"] == dtype and s["model"].get("decode"):
            d = s["model"]["decode"]
            out = {"decode_seconds": d["seconds_per_token"], "matmul_seconds": d["matmul_seconds"],
                   "non_matmul_seconds": d["non_matmul_seconds"], "non_matmul_measured": d["non_matmul_measured"],
                   "fully_measured": d["fully_measured"],
                   "per_call": {f"{r['k']}x{r['n']}": r["seconds"] if r["measured"] else None
                                for r in s["rows"] if r["m"] == 1}}
            out["prefill"] = {p["chunk"]: p for p in s["model"].get("prefill", [])}
            return out
    raise InputError(f"the results file has no measured {backend} {dtype} decode: run rwkvprobe analyze "
                     f"{ll.profile.path or 'PROFILE'} --backends {backend} --dtypes {dtype}")


# --------------------------------------------------------------------------------------------
# The real forward pass (subprocess)


def run_forward(ll: LayerList, dtype: str, threads: int, tokens: int, chunk: int, cpus: list[int] | None,
                seed: int = 0) -> dict:
    from rwkvprobe.measure.analyze import profile_json

    cfg = {"profile": profile_json(ll), "dtype": dtype, "threads": threads, "tokens": tokens, "chunk": chunk,
           "seed": seed, "cpus": cpus}
    result, tail = run_json_worker([sys.executable, "-m", "rwkvprobe.measure.forward_worker"], cfg)
    if result is None:
        raise RuntimeError(f"the forward pass did not finish: {tail}")
    if not result.get("ok"):
        raise RuntimeError(f"the reference forward pass failed: {result.get('error')}")
    return result


# --------------------------------------------------------------------------------------------
# The comparison


def compare(pred: dict, real: dict, chunk: int) -> dict:
    measured = real["decode"]["median"]
    predicted = pred["decode_seconds"]
    prof = real["profiled"]
    # the weight-matmul share of a token, paired in time with unprofiled tokens (forward_worker.profile_decode),
    # applied to the measured decode time; older workers gave the profiled matmul time alone
    matmul_real = prof["matmul_share"] * measured if "matmul_share" in prof else prof["weight_matmul_seconds_per_token"]
    shapes = []
    for x in sorted(prof["by_shape"], key=lambda x: -x["seconds_per_call"] * x["calls_per_token"]):
        key = f"{x['k']}x{x['n']}"
        a = pred["per_call"].get(key)
        shapes.append({"shape": key, "calls_per_token": x["calls_per_token"], "forward_seconds_per_call": x["seconds_per_call"],
                       "analyze_seconds_per_call": a, "ratio": a / x["seconds_per_call"] if a else None})
    out = {
        "predicted": pred, "measured": {"decode": real["decode"], "prefill": real.get("prefill"),
                                        "logits_finite": real.get("logits_finite")},
        "predicted_over_measured": predicted / measured,
        "within_target": abs(predicted / measured - 1) <= TARGET, "target": TARGET,
        "split": {"matmul_forward_seconds": matmul_real, "matmul_predicted_seconds": pred["matmul_seconds"],
                  "rest_forward_seconds": measured - matmul_real,
                  "rest_predicted_seconds": pred["non_matmul_seconds"],
                  "rest_predicted_measured": pred.get("non_matmul_measured", False),
                  "state_matmul_seconds": prof.get("other_matmul_seconds_per_token")},
        "by_shape": shapes,
        "reference": real.get("reference"), "torch": real.get("torch"), "load_seconds": real.get("load_seconds"),
    }
    pre = pred["prefill"].get(chunk)
    if real.get("prefill") and pre:
        measured_tps = real["prefill"]["tokens_per_second"]
        with_state = bool(pre.get("with_state"))
        out["prefill"] = {"chunk": chunk, "measured_tokens_per_second": measured_tps,
                          "predicted_tokens_per_second": pre["tokens_per_second"],
                          "predicted_with_state": with_state,
                          "predicted_state_seconds": pre.get("state_seconds"),
                          "predicted_matmul_seconds": pre["matmul_seconds"],
                          "measured_seconds": real["prefill"]["median"],
                          "predicted_modelled": pre["modelled"],
                          # predicted time over measured time, as for decode
                          "predicted_over_measured": measured_tps / pre["tokens_per_second"],
                          "within_target": with_state and abs(measured_tps / pre["tokens_per_second"] - 1) <= TARGET}
    return out


def record(results: dict, validation: dict) -> None:
    """Store a validation in an analyze results dict, replacing an earlier one of the same backend and dtype."""
    kept = [x for x in results.get("validation") or []
            if (x.get("backend"), x.get("dtype")) != (validation["backend"], validation["dtype"])]
    results["validation"] = kept + [validation]


# --------------------------------------------------------------------------------------------
# The command


def validate_command(
    profile: Path = typer.Argument(..., help="An RWKV profile YAML file, e.g. profiles/rwkv-0b1.yaml."),
    backend: str = typer.Option("torch", "--backend", help="The analyze series whose prediction is checked: torch, or ggml (fp32/fp16/bf16; the real pass is the torch reference either way, not a ggml engine)."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, bf16 or fp16: the weights and activations of the real pass and of the prediction."),
    tokens: int = typer.Option(64, "--tokens", help="Decoded tokens to time, one by one."),
    chunk: int = typer.Option(64, "--chunk", help="Tokens of the prefill chunk timed too (0: none)."),
    results: Optional[Path] = typer.Option(None, "--results", help="analyze's results.json to check (it gains the comparison, and its report.md a 'Prediction checked' section). Default: measure what the prediction needs now."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Threads (default: those of --results, else all CPUs this process may use)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder when no --results is given. Default: rwkvprobe-out/<profile>-validate-<time>/."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More progress detail."),
):
    """Run the real model (random weights) token by token and compare with analyze's prediction."""
    from rwkvprobe.measure.timing import default_threads
    from rwkvprobe.report.markdown import render
    from rwkvprobe.results import load_results, save_results

    ll = layer_list(load_profile(profile))
    check_request(ll, backend, dtype, tokens, chunk)
    check_memory(ll, dtype)
    series = PREDICTION_SERIES[ll.profile.version] if backend == "torch" else backend
    reporter = Reporter(err_console, verbose)
    if results is not None:
        data = load_results(results, kinds=("analyze",))
        pred = prediction(data, ll, series, dtype)
        run_threads = int(data.get("settings", {}).get("threads") or default_threads())
        if threads is not None and threads != run_threads:
            raise InputError(f"--threads {threads}: {results} was measured with {run_threads} threads; the "
                             "prediction holds for those (leave --threads out)")
        pre = pred["prefill"].get(chunk)
        if (chunk and pre and not pre.get("with_state") and pred["non_matmul_measured"]
                and ll.profile.version in nonmatmul.VERSIONS):
            # a results file without the sequential prefill work: time it now for this chunk
            import torch

            torch.set_num_threads(run_threads)
            reporter.stage(f"sequential prefill work: {series} {dtype}, chunk {chunk}")
            entry = next(x for x in data["nonmatmul"] if x.get("backend") == series
                         and x.get("dtype") == nonmatmul.block_dtype(dtype))
            seq = nonmatmul.measure_seq(ll.profile, nonmatmul.block_dtype(dtype), chunk,
                                        nonmatmul.TimingPolicy(budget_seconds=0.8, min_samples=5))
            entry.setdefault("seq", {})[str(chunk)] = seq
            pred = prediction(data, ll, series, dtype)
        if not pred["non_matmul_measured"] and ll.profile.version in nonmatmul.VERSIONS:
            # an older results file: time the non-matmul block now, as analyze does today
            import torch

            from rwkvprobe.measure.system import llc_bytes

            torch.set_num_threads(run_threads)
            reporter.stage(f"non-matmul block: {series} {dtype}")
            data.setdefault("nonmatmul", []).append(nonmatmul.measure_series(
                ll.profile, series, nonmatmul.block_dtype(dtype, series), 0.8, llc_bytes(),
                data.get("settings", {}).get("cold", True), threads=run_threads, chunks=(chunk,) if chunk else ()))
            pred = prediction(data, ll, series, dtype)
        cpus = data.get("settings", {}).get("pinned_cpus")
        path, out_dir = results, results.parent
    else:
        from rwkvprobe.measure.analyze import Analysis, AnalyzeSettings

        run_threads = threads if threads is not None else default_threads()
        if not 0 < run_threads <= 1024:
            raise InputError(f"--threads {run_threads}: expected a positive number of threads")
        target = out or Path("rwkvprobe-out") / f"{ll.profile.stem}-validate-{datetime.now():%Y%m%d-%H%M%S}"
        settings = AnalyzeSettings(backends=[series], dtypes=[dtype], tokens=[1, chunk] if chunk else [1],
                                   threads=run_threads, cpus=None, quick=True, budget_seconds=45.0)
        analysis = Analysis.start(ll, settings, target)
        err_console.print(f"rwkvprobe validate: {ll.profile.name}: measuring the prediction ({series} {dtype}, "
                          f"{run_threads} threads) -> {analysis.out_dir}", highlight=False)
        data = run_keeping_results(analysis, reporter, f"rwkvprobe validate {profile} --results {analysis.path}")
        pred = prediction(data, ll, series, dtype)
        cpus, path, out_dir = None, analysis.path, analysis.out_dir
    reporter.stage(f"real forward pass: {ll.profile.name} with random weights, {tokens} decoded tokens"
                   f"{f' and a prefill chunk of {chunk}' if chunk else ''} ({backend} {dtype}, {run_threads} threads)")
    try:
        real = run_forward(ll, dtype, run_threads, tokens, chunk, cpus)
    except RuntimeError as e:
        err_console.print(f"rwkvprobe: error: {e}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    v = compare(pred, real, chunk)
    v.update({"backend": backend, "dtype": dtype, "threads": run_threads, "tokens": tokens, "prediction_series": series,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": ["rwkvprobe"] + sys.argv[1:]})
    record(data, v)
    save_results(path, data)
    report = render(data, out_dir)
    for line in summary_lines(v, ll.profile.name):
        out_console.print(line, highlight=False, markup=False, soft_wrap=True)
    if verbose:
        for x in v["by_shape"]:
            a = x["analyze_seconds_per_call"]
            line = f"  {x['shape']:>12} x{x['calls_per_token']:g}/token: forward {x['forward_seconds_per_call'] * 1e6:.1f} us/call"
            out_console.print(line + (f", analyze {a * 1e6:.1f} us/call" if a else ""), highlight=False, markup=False)
    print(f"wrote {path} and {report}")
