"""``rwkvprobe validate``: analyze's prediction against the real forward pass."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer

from rwkvprobe.cli.console import Reporter, err_console, out_console, run_keeping_results
from rwkvprobe.errors import InputError
from rwkvprobe.measure import nonmatmul
from rwkvprobe.measure.analyze import Analysis, AnalyzeSettings
from rwkvprobe.measure.timing import default_threads
from rwkvprobe.measure.validate import (
    NONMATMUL_SECONDS,
    POINT_SERIES,
    PREDICTION_SERIES,
    check_memory,
    check_request,
    interleaved_layer_pass,
    interleaved_points,
    record,
    run_forward_bracketed,
    take_interleaved,
    take_interleaved_chunk,
    time_nonmatmul_block,
    time_prefill_state,
)
from rwkvprobe.model.profile import layer_list, load_profile
from rwkvprobe.report.markdown import render
from rwkvprobe.results import load_results, save_results
from rwkvprobe.verdict.validation import compare, prediction, summary_lines, with_timed_matmuls


def validate_command(
    profile: Path = typer.Argument(..., help="An RWKV profile YAML file, e.g. profiles/rwkv-0b1.yaml."),
    backend: str = typer.Option("torch", "--backend", help="The analyze series whose prediction is checked: torch, or ggml (fp32/fp16/bf16; the real pass is the torch reference either way, not a ggml engine)."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, bf16 or fp16: the weights and activations of the real pass and of the prediction."),
    tokens: int = typer.Option(64, "--tokens", help="Decoded tokens timed back to back, one by one, before the profiled rounds (shown beside the rounds' 80 unprofiled tokens, which the prediction is compared with)."),
    chunk: int = typer.Option(64, "--chunk", help="Tokens of the prefill chunk timed too (0: none)."),
    results: Optional[Path] = typer.Option(None, "--results", help="analyze's results.json to check (it gains the comparison, and its report.md a 'Prediction checked' section). Default: measure what the prediction needs now."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Threads (default: those of --results, else all CPUs this process may use)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder when no --results is given. Default: rwkvprobe-out/<profile>-validate-<time>/."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More progress detail."),
):
    """Run the real model (random weights) token by token and compare with analyze's prediction."""

    ll = layer_list(load_profile(profile))
    check_request(ll, backend, dtype, tokens, chunk)
    series = PREDICTION_SERIES[ll.profile.version or 0] if backend == "torch" else backend  # check_request: 4-7
    # measuring the prediction now: its part outside the matmuls and its points timed again, between the real pass's
    # rounds
    layer_pass = interleaved_layer_pass(ll, series, dtype) if results is None else None
    check_memory(ll, dtype, layer_pass, points=results is None and series in POINT_SERIES)
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
            time_prefill_state(data, ll.profile, series, dtype, chunk, run_threads, reporter)
            pred = prediction(data, ll, series, dtype)
        if not pred["non_matmul_measured"] and ll.profile.version in nonmatmul.VERSIONS:
            # an older results file: time the non-matmul block now, as analyze does today
            time_nonmatmul_block(data, ll.profile, series, dtype, chunk, run_threads, reporter)
            pred = prediction(data, ll, series, dtype)
        cpus = data.get("settings", {}).get("pinned_cpus")
        path, out_dir = results, results.parent
    else:

        run_threads = threads if threads is not None else default_threads()
        if not 0 < run_threads <= 1024:
            raise InputError(f"--threads {run_threads}: expected a positive number of threads")
        target = out or Path("rwkvprobe-out") / f"{ll.profile.stem}-validate-{datetime.now():%Y%m%d-%H%M%S}"
        settings = AnalyzeSettings(backends=[series], dtypes=[dtype], tokens=[1, chunk] if chunk else [1],
                                   threads=run_threads, cpus=None, quick=True, budget_seconds=45.0,
                                   nonmatmul_seconds=NONMATMUL_SECONDS, later_window=layer_pass is None)
        analysis = Analysis.start(ll, settings, target)
        err_console.print(f"rwkvprobe validate: {ll.profile.name}: measuring the prediction ({series} {dtype}, "
                          f"{run_threads} threads) -> {analysis.out_dir}", highlight=False)
        data = run_keeping_results(analysis, reporter, f"rwkvprobe validate {profile} --results {analysis.path}")
        pred = prediction(data, ll, series, dtype)
        cpus, path, out_dir = None, analysis.path, analysis.out_dir
    points = interleaved_points(data, series, dtype, chunk) if results is None else None
    reporter.stage(f"real forward pass: {ll.profile.name} with random weights, {tokens} decoded tokens"
                   f"{f' and a prefill chunk of {chunk}' if chunk else ''} ({backend} {dtype}, {run_threads} threads)")
    try:
        real, phase = run_forward_bracketed(ll, dtype, run_threads, tokens, chunk, cpus, data, layer_pass, points)
    except RuntimeError as e:
        err_console.print(f"rwkvprobe: error: {e}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    separate, chunk_taken = None, False
    chunk_passes = real.pop("chunk_layer_pass", None)
    if real.get("layer_pass"):
        take_interleaved(data, series, dtype, real.pop("layer_pass"))
        chunk_taken = chunk_passes is not None and take_interleaved_chunk(data, series, dtype, chunk_passes)
        separate, pred = pred, prediction(data, ll, series, dtype)
    timed = real.pop("points", None)
    if timed:  # the prediction's points timed again between the real pass's rounds
        pred = with_timed_matmuls(pred, timed.get("decode", []) + timed.get("chunk", []))
    v = compare(pred, real, chunk)
    if timed:
        v["points_between"] = timed
    if real.get("points_skipped"):  # they could not be built beside the real pass: analyze's own figures stand
        v["points_skipped"] = real.pop("points_skipped")
    if separate is not None:  # what analyze's own layer pass, timed before the real pass, had predicted
        v["split"]["rest_separate_seconds"] = separate["non_matmul_seconds"]
        if chunk_taken and v.get("prefill"):
            v["prefill"]["state_separate_seconds"] = separate["prefill"].get(chunk, {}).get("state_seconds")
    v["bandwidth"] = phase
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
