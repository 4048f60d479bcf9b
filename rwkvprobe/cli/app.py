"""The ``rwkvprobe`` command line: parses options, runs the commands (progress, interrupts, one-line errors)
and prints their results. Exit codes: 0 ok, 1 a measurement failed, 2 bad usage or bad input, 130 interrupted."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

try:  # newer typer releases carry their own copy of click
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_exc

from rwkvprobe import __version__
from rwkvprobe.cli.console import Reporter, err_console, out_console, print_warnings, run_keeping_results  # noqa: F401
from rwkvprobe.errors import InputError, Interrupted
from rwkvprobe.measure.sweep import sweep_command
from rwkvprobe.measure.validate import validate_command
from rwkvprobe.model.importer import profile_from_command
from rwkvprobe.model.profile import DTYPE_BYTES, LayerList, layer_list, load_profile, profiles_dir, shipped_profiles
from rwkvprobe.verdict.compare import compare_command

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Is each RWKV layer compute-, bandwidth- or overhead-bound on this machine?",
)
profile_app = typer.Typer(no_args_is_help=True, help="List the shipped model profiles or show one's layers.")
app.add_typer(profile_app, name="profile")

def _version(value: bool):
    if value:
        print(f"rwkvprobe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
):
    pass


# ------------------------------------------------------------------------------------------------
# Formatting helpers


def si(value: float, unit: str = "", digits: int = 3) -> str:
    """1234567 -> '1.23 M' (SI prefixes, powers of 1000)."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.{digits}g} {prefix}{unit}".rstrip()
    return f"{value:.{digits}g} {unit}".rstrip()


def parse_int_list(text: str, option: str) -> list[int]:
    """'1,64' -> [1, 64]; positive integers only."""
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) <= 0:
            raise InputError(f"{option} {text!r}: expected positive integers separated by commas, e.g. 1,64")
        values.append(int(part))
    return list(dict.fromkeys(values))


def parse_choice_list(text: str, option: str, allowed: tuple[str, ...]) -> list[str]:
    values = [p.strip() for p in text.split(",") if p.strip()]
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise InputError(f"{option} {text!r}: expected one or more of {', '.join(allowed)}, separated by commas")
    return list(dict.fromkeys(values))


# ------------------------------------------------------------------------------------------------
# profile list / show


def _model_label(ll: LayerList) -> str:
    p = ll.profile
    if p.version is None:
        return "custom"
    return f"RWKV-{p.version}"


@profile_app.command("list")
def profile_list():
    """The shipped profiles with their version, size and parameter count."""
    table = Table(title=f"Shipped profiles ({profiles_dir()})")
    for col in ("profile", "model", "arch", "layers", "n_embd", "vocab", "parameters", "fp16 weights"):
        table.add_column(col, justify="right" if col not in ("profile", "model", "arch") else "left")
    for path in shipped_profiles():
        ll = layer_list(load_profile(path))
        p = ll.profile
        table.add_row(
            path.name,
            p.name, _model_label(ll),
            str(p.n_layer or "-"), str(p.n_embd or "-"), str(p.vocab_size or "-"),
            f"{ll.total_params:,}", si(ll.model_bytes("fp16"), "B"),
        )
    out_console.print(table)


@profile_app.command("show")
def profile_show(path: Path = typer.Argument(..., help="A profile YAML file, e.g. profiles/rwkv-1b5.yaml.")):
    """The layer table of one profile: shapes, runs per token, FLOPs and weight bytes per token."""
    ll = layer_list(load_profile(path))
    p = ll.profile
    title = f"{p.name} ({_model_label(ll)}"
    if p.version is not None:
        title += f", {p.n_layer} layers, n_embd {p.n_embd}, vocab {p.vocab_size}"
        if p.head_size:
            title += f", head size {p.head_size}"
    title += ")"
    dtypes = ("fp32", "fp16", "int8", "int4")
    table = Table(title=title, caption="A[M,K] x W[K,N], M=1 (decode). Bytes: weights read per token (int4 nominal, no scales).")
    table.add_column("layer", no_wrap=True)
    for col in ("K", "N", "runs/tok", "params", "FLOPs/tok", *[f"{d} B/tok" for d in dtypes]):
        table.add_column(col, justify="right")
    for layer in ll.layers:
        table.add_row(f"{layer.name} ({layer.kind})", str(layer.k), str(layer.n), str(layer.count), si(layer.params),
                      si(layer.flops(1)), *[si(layer.weight_bytes(d)) for d in dtypes])
    if ll.embedding_rows:
        table.add_row("emb (row lookup)", str(ll.embedding_rows), str(ll.embedding_dim), "1",
                      si(ll.embedding_params), "0", *[si(ll.embedding_bytes_per_token(d)) for d in dtypes])
    if ll.other_params:
        table.add_row("norms, mixes, decays", "", "", "", si(ll.other_params), "", *[""] * len(dtypes))
    table.add_section()
    table.add_row("total", "", "", "", si(ll.total_params), si(ll.flops_per_token()),
                  *[si(ll.weight_bytes_per_token(d)) for d in dtypes])
    out_console.print(table)
    out_console.print(
        f"{len(ll.layers)} matmuls, {len(ll.unique_shapes())} unique shapes; "
        f"{ll.total_params:,} parameters ({si(ll.total_params)}); weights in RAM: "
        + ", ".join(f"{d} {si(ll.model_bytes(d), 'B')}" for d in DTYPE_BYTES if d != "bf16")
    )
    out_console.print(f"source: {p.source}")


# ------------------------------------------------------------------------------------------------
# onnx


@app.command("onnx")
def onnx_cmd(
    profile: Path = typer.Argument(..., help="A profile YAML file."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the models and manifest.json."),
    tokens: str = typer.Option("1", "--tokens", help="M, tokens per call: 1 for decode, e.g. 1,64 for decode and a prefill chunk."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, fp16 or both (fp32,fp16)."),
    opset: int = typer.Option(14, "--opset", help="ONNX opset (RKNN accepts 14)."),
    block: bool = typer.Option(False, "--block", help="Whole-block decode graphs instead (RWKV-7 or RWKV-4): block 0, a later "
                               "block, the head and the full model, state in and out, with blocks.json."),
):
    """Write one ONNX MatMul model per unique (M, K, N, dtype) of a profile, with a manifest."""
    from rwkvprobe.measure import onnxgen

    ll = layer_list(load_profile(profile))
    ms = parse_int_list(tokens, "--tokens")
    dts = parse_choice_list(dtype, "--dtype", onnxgen.ONNX_DTYPES)
    if block:
        _onnx_blocks(ll, out, ms, dts, opset)
        return
    too_big = [m for m in ms if m > 65536]
    if too_big:
        raise InputError(f"--tokens {too_big[0]}: expected at most 65536 tokens per call")
    onnxgen.check_opset(opset)
    total = len(onnxgen.plan(ll, ms, dts))
    done = [0]

    def progress(spec, reused):
        done[0] += 1
        verb = "reused" if reused else "wrote"
        err_console.print(f"[{done[0]}/{total}] {verb} {spec.filename}")

    manifest = onnxgen.generate(ll, out, ms, dts, opset, progress=progress)
    written = len(manifest["models"]) - manifest["reused"]
    size = sum(e["bytes"] for e in manifest["models"])
    print(f"{len(manifest['models'])} models ({written} written, {manifest['reused']} reused, {si(size, 'B')}) "
          f"and {out / onnxgen.MANIFEST} for {len(manifest['layers'])} layer runs, opset {opset}")


def _onnx_blocks(ll: LayerList, out: Path, tokens: list[int], dtypes: list[str], opset: int) -> None:
    from rwkvprobe.measure import onnxblock

    if tokens != [1]:
        raise InputError("--block: the block graphs are one decode step (--tokens 1)")
    if opset != onnxblock.OPSET:
        raise InputError(f"--block: the block graphs use opset {onnxblock.OPSET}; leave --opset out")
    onnxblock.check_profile(ll.profile)

    def progress(spec, reused):
        err_console.print(f"{'reused' if reused else 'wrote'} {spec.filename}", markup=False)

    manifest = onnxblock.generate(ll.profile, out, dtypes, progress=progress)
    size = sum(g["bytes"] for g in manifest["graphs"])
    print(f"{len(manifest['graphs'])} block graphs ({si(size, 'B')}) and {out / onnxblock.MANIFEST}: "
          f"{', '.join(onnxblock.KINDS)} x {','.join(dtypes)}, opset {onnxblock.OPSET}")


# ------------------------------------------------------------------------------------------------
# bandwidth


@app.command("bandwidth")
def bandwidth_cmd(
    size: Optional[str] = typer.Option(None, "--size", help="Bytes per array, e.g. 128M or 1G (K/M/G = 1024-based; "
                                       "kB/MB/GB = 1000-based). Default: 4x the last-level cache."),
    threads: Optional[str] = typer.Option(None, "--threads", help="Thread counts, e.g. 1,2. Default: 1 and all CPUs "
                                          "(of each cluster on big.LITTLE)."),
    trials: int = typer.Option(10, "--trials", help="Timed trials per kernel, best kept (1-100)."),
    cpus: Optional[str] = typer.Option(None, "--cpus", help="Pin to big, little, all, or CPU numbers like 0-3. "
                                       "Default: each cluster on its own, then all CPUs."),
    json_out: bool = typer.Option(False, "--json", help="Print the results JSON on stdout instead of the table."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the results JSON (with the environment) to this file."),
    engine: str = typer.Option("auto", "--engine", help="Kernel engine: auto (numba when installed), numba, or numpy."),
    npu: bool = typer.Option(False, "--npu", help="Also the NPU side: memory-only graphs (elementwise add, copy, a 64 MB GEMV) "
                             "through the RKNN compiler; its DDR-cycle figure, labelled as the compiler's estimate (no board)."),
    device: str = typer.Option("rk3588", "--device", help="With --npu: the device profile whose NPU clock turns cycles into time."),
):
    """Memory bandwidth, STREAM-style: copy, scale, add, triad and read; GB/s per thread count and cluster."""
    import json

    from rwkvprobe.measure import bandwidth, system
    from rwkvprobe.results import new_results, save_results

    if npu:  # refuse a missing toolkit or an unknown device before measuring anything
        from rwkvprobe.model.device import load_device
        from rwkvprobe.npu import toolkit

        toolkit.require_toolkit()
        load_device(device)
    array_bytes = bandwidth.parse_size(size) if size is not None else None
    thread_counts = parse_int_list(threads, "--threads") if threads is not None else None
    cpu_list = system.resolve_cpus(cpus)
    engine = bandwidth.engine_name(engine)
    if out is not None:  # refuse an unwritable path before measuring
        from rwkvprobe.fsutil import ensure_writable_dir

        ensure_writable_dir(out.parent if str(out.parent) else Path("."))
    env = system.capture_environment()
    before = system.snapshot_dynamic()
    result = bandwidth.measure_bandwidth(array_bytes, thread_counts, trials, cpu_list,
                                         progress=lambda m: err_console.print(m, markup=False, highlight=False),
                                         engine=engine)
    results = new_results("bandwidth", env, {"size": array_bytes, "threads": thread_counts, "trials": trials,
                                             "cpus": cpu_list, "engine": engine})
    results.update(bandwidth=result, before=before, after=system.snapshot_dynamic())
    results["warnings"] = system.environment_warnings(env, before, results["after"])
    if npu:
        from rwkvprobe.npu import bandwidth as npubw

        results["npu_bandwidth"] = npubw.measure(device, progress=lambda m: err_console.print(m, markup=False))
    if out is not None:
        save_results(out, results)
    if json_out:
        print(json.dumps(results, indent=1))
    else:
        out_console.print(bandwidth.bandwidth_table(result))
        if npu:
            from rwkvprobe.npu import bandwidth as npubw

            for line in npubw.table_lines(results["npu_bandwidth"]):
                print(line)
    print_warnings(results)
    err_console.print(f"bandwidth: done in {result['total_seconds']:.1f} s" + (f", wrote {out}" if out else ""),
                      markup=False, highlight=False)


# ------------------------------------------------------------------------------------------------
# analyze / report


@app.command("analyze")
def analyze_cmd(
    profile: Path = typer.Argument(..., help="A profile YAML file, e.g. profiles/rwkv-1b5.yaml."),
    backends: Optional[str] = typer.Option(None, "--backends", help="Comma-separated: numpy, torch, torch-linear (weights [N, K] as nn.Linear keeps them), onnxruntime, ggml (llama.cpp's and rwkv.cpp's kernels), torch-cuda, tinygrad, rknnlite (on the board), rknn (a board driven over adb from this machine). Default: every one installed (torch-linear and rknn only when named)."),
    dtypes: Optional[str] = typer.Option(None, "--dtypes", help="Comma-separated: fp32, fp16, bf16, and quantized weights int8, int4, int8-a8, int4-a8, int8-dyn; ggml's q8_0, q5_1, q4_0, q4_k (f16/f32 accepted for fp16/fp32). Default: each backend's usual ones (ggml: fp16, q8_0, q4_0), plus onnxruntime's int8 and int4 formats on the decode shapes (the measured smaller-weights what-if)."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="Layer kinds stored quantized in the quantized model-level figures (att, ffn, lora, head, custom); the rest stay at the float type. Default: each backend's rule (att,ffn,custom; ggml: rwkv.cpp's, which keeps the embedding, head and LoRA matrices f16)."),
    block_size: int = typer.Option(32, "--block-size", help="Block size of blockwise-quantized weights (int4/int8 MatMulNBits, torch int4 groups)."),
    tokens: Optional[str] = typer.Option(None, "--tokens", help="M values: 1 = decode, larger = a prefill chunk. Default 1,64 (--quick: 1)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Threads for every backend. Default: all CPUs this process may use."),
    cpus: Optional[str] = typer.Option(None, "--cpus", help="Pin to a cluster (big, little, all) or CPUs like 4-7; recorded."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder. Default: rwkvprobe-out/<profile>-<timestamp>/."),
    quick: bool = typer.Option(False, "--quick", help="Decode only, shorter timing: about a minute."),
    budget: Optional[float] = typer.Option(None, "--budget", help="Seconds for the whole run, about its wall time (default 100, --quick 38)."),
    warm: bool = typer.Option(False, "--warm", help="Measure with weights cache-resident (labelled warm) instead of cold."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Complete an interrupted run in this folder (same options)."),
    device: Optional[str] = typer.Option(None, "--device", help="Model a device instead of measuring this machine: rk3588 or a device YAML. Every figure is labelled modelled."),
    rknn: Optional[Path] = typer.Option(None, "--rknn", help="A folder written by 'rwkvprobe convert': the .rknn models for --backends rknnlite on the board or rknn over adb (rknn converts them on the fly without it), or the compiler estimates for --device."),
    npu_cores: str = typer.Option("auto", "--npu-cores", help="NPU core masks for rknnlite and rknn, comma-separated, each its own series: auto, 0, 1, 2, 0_1, 0_1_2, all (e.g. 0,1,0_1_2)."),
    device_id: Optional[str] = typer.Option(None, "--device-id", help="--backends rknn: the adb device ID of the RK3588 board (as 'adb devices' lists it). Default: the only one connected."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More progress detail, and the NPU library's own log (rknnlite)."),
):
    """Measure every unique layer shape of a profile and write results.json, report.md and plots."""
    from rwkvprobe.measure.analyze import Analysis, AnalyzeSettings, check_dtypes, plan_series
    from rwkvprobe.measure.system import resolve_cpus
    from rwkvprobe.measure.timing import default_threads
    from rwkvprobe.report.markdown import render

    ll = layer_list(load_profile(profile))
    ms = parse_int_list(tokens, "--tokens") if tokens else ([1] if quick else [1, 64])
    if max(ms) > 4096:
        raise InputError(f"--tokens {max(ms)}: expected at most 4096 tokens per call")
    if device is not None:
        return _analyze_device(ll, device, ms, out, rknn)
    from rwkvprobe.backends.rknnlite_backend import show_library_log

    show_library_log(verbose)  # rknn-toolkit-lite2's log and tracebacks: kept aside unless --verbose
    from rwkvprobe.npu.board import BACKEND as BOARD_BACKEND
    from rwkvprobe.npu.board import parse_core_masks

    masks = parse_core_masks(npu_cores)  # one line naming a bad mask
    dts = check_dtypes([d.strip() for d in dtypes.split(",") if d.strip()] if dtypes else None)
    names = [b.strip() for b in backends.split(",") if b.strip()] if backends else None
    if device_id is not None and BOARD_BACKEND not in (names or []):
        raise InputError("--device-id is for --backends rknn (an RK3588 driven over adb from this machine)")
    n_threads = threads if threads is not None else default_threads()
    if n_threads <= 0 or n_threads > 1024:
        raise InputError(f"--threads {n_threads}: expected a positive number of threads")
    if budget is not None and budget <= 0:
        raise InputError(f"--budget {budget}: expected a positive number of seconds")
    if block_size not in (16, 32, 64, 128, 256):
        raise InputError(f"--block-size {block_size}: expected 16, 32, 64, 128 or 256")
    settings = AnalyzeSettings(backends=names, dtypes=dts, tokens=ms, threads=n_threads, cpus=resolve_cpus(cpus),
                               cold=not warm, budget_seconds=budget or (38.0 if quick else 100.0), quick=quick,
                               rknn_dir=rknn, npu_cores=",".join(masks), device_id=device_id, block_size=block_size,
                               quantize=parse_choice_list(quantize, "--quantize", ("att", "ffn", "lora", "head", "custom"))
                               if quantize is not None else None)
    plan_series(settings)  # unknown or missing backends are refused before anything is written
    analysis = Analysis.resume(ll, settings, resume) if resume else Analysis.start(ll, settings, out)
    reporter = Reporter(err_console, verbose)
    err_console.print(f"rwkvprobe analyze: {ll.profile.name}, {len(ll.unique_shapes())} unique shapes, "
                      f"tokens {ms}, {n_threads} threads -> {analysis.out_dir}", highlight=False)
    try:
        results = run_keeping_results(analysis, reporter, f"rwkvprobe analyze {profile} --resume {analysis.out_dir}")
        path = render(results, analysis.out_dir)
    finally:
        analysis.release()
    from rwkvprobe.report.markdown import verdict_lines

    for line in verdict_lines(results):
        out_console.print(line, highlight=False, markup=False)
    print_warnings(results)
    print(f"wrote {analysis.path}, {path} and plots in {analysis.out_dir}")


def _analyze_device(ll: LayerList, device: str, tokens: list[int], out: Optional[Path], rknn: Optional[Path]) -> None:
    """analyze --device: the verdict for a modelled device (no measurement), with compiler estimates."""
    from rwkvprobe.fsutil import ensure_writable_dir, lock_folder
    from rwkvprobe.measure.analyze import RESULTS, default_out_dir, profile_json
    from rwkvprobe.model.device import compiler_estimates, load_device, modelled_results
    from rwkvprobe.npu import toolkit
    from rwkvprobe.report.markdown import render, verdict_lines
    from rwkvprobe.results import save_results

    dev = load_device(device)
    folder = ensure_writable_dir(out or default_out_dir(ll).with_name(default_out_dir(ll).name + "-" + Path(device).stem))
    with lock_folder(folder):  # one run per folder
        if (folder / RESULTS).exists():
            raise InputError(f"{folder / RESULTS} exists: choose another --out")
        compiler = blocks = None
        if rknn is not None:
            blocks_manifest = toolkit.read_blocks_manifest(rknn)
            if blocks_manifest is not None:
                from rwkvprobe.model.device import block_estimates

                blocks = block_estimates(blocks_manifest, dev, ll.profile)
            if blocks_manifest is None or (rknn / "manifest.json").is_file():
                compiler = compiler_estimates(toolkit.read_convert_manifest(rknn), dev)
        elif toolkit.installed():
            from rwkvprobe.measure.points import onnx_cache_dir

            cache = onnx_cache_dir().parent / f"rknn-{Path(device).stem}"
            # decode shapes only (M=1): what the verdict needs, and half the builds
            manifest = toolkit.convert(ll, cache, ["fp16", "int8"], [1], progress=lambda m: err_console.print(m, markup=False))
            compiler = compiler_estimates(manifest, dev)
        else:
            err_console.print("note: no RKNN compiler estimates: 'rwkvprobe toolkit install' adds them", markup=False)
        results = modelled_results(dev, profile_json(ll), tokens, compiler)
        if blocks:
            results["compiler_block_estimates"] = blocks
        from rwkvprobe.npu import bandwidth as npubw

        npu_bw = npubw.cached(device, rknn) or npubw.cached(device)
        if npu_bw:
            results["npu_bandwidth"] = npu_bw
        save_results(folder / RESULTS, results)
        path = render(results, folder)
        from rwkvprobe.model.device import block_estimate_lines

        for line in verdict_lines(results) + block_estimate_lines(results):
            out_console.print(line, highlight=False, markup=False)
        print(f"wrote {folder / RESULTS}, {path} and plots in {folder} (modelled: nothing was measured)")


@app.command("report")
def report_cmd(
    results_file: Path = typer.Argument(..., help="A results.json written by rwkvprobe analyze."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for report.md and plots. Default: beside the results file."),
):
    """Re-render report.md (or sweep.md) and the plots from a results file, on any machine."""
    from rwkvprobe.results import load_results

    results = load_results(results_file, kinds=("analyze", "sweep"))
    if results["kind"] == "sweep":
        from rwkvprobe.measure.sweep import summary_lines
        from rwkvprobe.report.sweep import render_sweep

        path, lines = render_sweep(results, out or results_file.parent), summary_lines(results)
    else:
        from rwkvprobe.report.markdown import render, verdict_lines

        path, lines = render(results, out or results_file.parent), verdict_lines(results)
    for line in lines:
        out_console.print(line, highlight=False, markup=False)
    print(f"wrote {path}")


toolkit_app = typer.Typer(no_args_is_help=True, help="The RKNN toolkit (rknn-toolkit2) in an environment of its own.")
app.add_typer(toolkit_app, name="toolkit")


@toolkit_app.command("install")
def toolkit_install(
    python: Optional[str] = typer.Option(None, "--python", help="The Python to build it with (3.6-3.12). Default: this one."),
):
    """Create the toolkit's own virtual environment with rknn-toolkit2 and versions that work with it."""
    from rwkvprobe.npu import toolkit

    py = toolkit.install(python, progress=lambda m: err_console.print(m, markup=False))
    print(f"RKNN toolkit {toolkit.TOOLKIT_VERSION} ready: {py}")


@toolkit_app.command("status")
def toolkit_status():
    """Where the toolkit environment is and whether it is installed."""
    from rwkvprobe.npu import toolkit

    state = "installed" if toolkit.installed() else "not installed (rwkvprobe toolkit install)"
    print(f"rknn-toolkit2 {toolkit.TOOLKIT_VERSION}: {state} at {toolkit.toolkit_dir()}")


@app.command("convert")
def convert_cmd(
    profile: Path = typer.Argument(..., help="A profile YAML file."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the .rknn files, build logs and manifest.json."),
    target: str = typer.Option("rk3588", "--target", help="RKNN target platform."),
    dtype: str = typer.Option("fp16", "--dtype", help="fp16, int8 (w8a8, calibrated on seeded random activations) or both."),
    tokens: str = typer.Option("1", "--tokens", help="M values, e.g. 1,64."),
    no_simulate: bool = typer.Option(False, "--no-simulate", help="Skip the simulator correctness check."),
    ceilings: bool = typer.Option(True, "--ceilings/--no-ceilings", help="Also convert the ceiling shapes that 'analyze --backends rknnlite' measures."),
    block: bool = typer.Option(False, "--block", help="Convert the whole-block decode graphs instead (RWKV-7 or RWKV-4; "
                               "'rwkvprobe onnx --block'): per-op cycle table, ops sent to the CPU, blocks-manifest.json."),
):
    """ONNX -> RKNN for every unique layer shape, checked in the toolkit's simulator (correctness only)."""
    from rwkvprobe.npu import toolkit

    ll = layer_list(load_profile(profile))
    dts = parse_choice_list(dtype, "--dtype", toolkit.RKNN_DTYPES)
    ms = parse_int_list(tokens, "--tokens")
    if block:
        _convert_blocks(ll, out, dts, ms, target, not no_simulate)
        return
    manifest = toolkit.convert(ll, out, dts, ms, target, not no_simulate,
                               progress=lambda m: err_console.print(m, markup=False), with_ceilings=ceilings)
    table = Table(title=f"{ll.profile.name} -> RKNN ({target}); simulator = correctness only, never a timing")
    for col in ("model", "size", "simulator rel. error", "compiler cycles DDR/NPU", "bound"):
        table.add_column(col, justify="left" if col == "model" else "right")
    bad = 0
    for m in manifest["models"]:
        sim = m.get("simulator") or {}
        c = m.get("cycles") or {}
        ok = m.get("ok")
        bad += not ok
        table.add_row(m["file"], si(m.get("rknn_bytes") or 0, "B"),
                      (f"{sim['rel_err']:.1e}" + ("" if sim.get("ok") else " WRONG")) if sim else (m.get("error") or "-"),
                      f"{c.get('ddr_cycles', 0)}/{c.get('npu_cycles', 0)}", c.get("bound", "-"))
    out_console.print(table)
    print(f"{len(manifest['models'])} models in {out}, {bad} failed their check")
    if bad:
        raise typer.Exit(1)


def _convert_blocks(ll: LayerList, out: Path, dtypes: list[str], tokens: list[int], target: str, simulate: bool) -> None:
    from rwkvprobe.measure import onnxblock
    from rwkvprobe.npu import toolkit

    if tokens != [1]:
        raise InputError("--block: the block graphs are one decode step (--tokens 1)")
    onnxblock.check_profile(ll.profile)
    manifest = toolkit.convert_blocks(ll.profile, out, dtypes, target, simulate,
                                      progress=lambda m: err_console.print(m, markup=False))
    table = Table(title=f"{ll.profile.name} whole blocks -> RKNN ({target}); compiler estimate, simulator = correctness only")
    for col in ("graph", "dtype", "simulator rel. error", "compiler cycles DDR/NPU/total", "ops on the CPU", "top op kinds by cycles"):
        table.add_column(col, justify="left" if col in ("graph", "ops on the CPU", "top op kinds by cycles") else "right")
    bad = 0
    for g in manifest["graphs"]:
        sim = g.get("simulator") or {}
        c = g.get("cycles") or {}
        bad += not g.get("ok")
        kinds = ", ".join(f"{k} {v:.0%}" for k, v in op_kind_shares(c)[:3])
        table.add_row(g["graph"], g["dtype"],
                      (f"{sim['rel_err']:.1e}" + ("" if sim.get("ok") else " WRONG")) if sim else (g.get("error") or "-"),
                      f"{c.get('ddr_cycles', 0)}/{c.get('npu_cycles', 0)}/{c.get('total_cycles', 0)}",
                      ", ".join(g.get("cpu_ops") or []) or "none", kinds or "-")
    out_console.print(table)
    print(f"{len(manifest['graphs'])} block graphs in {out / toolkit.BLOCKS_MANIFEST}, {bad} failed their check")
    if bad:
        raise typer.Exit(1)


def op_kind_shares(cycles: dict) -> list[tuple[str, float]]:
    """The op kinds of a compiler cycle table by share of its total cycles, largest first."""
    total = cycles.get("total_cycles") or 0
    by: dict = {}
    for o in cycles.get("ops", []):
        by[o["op"]] = by.get(o["op"], 0) + o["total_cycles"]
    return sorted(((k, v / total) for k, v in by.items() if v and total), key=lambda kv: -kv[1])


# The commands whose functions live beside their engines (no import cycle since console.py)
app.command("compare")(compare_command)
app.command("sweep")(sweep_command)
app.command("validate")(validate_command)
profile_app.command("from")(profile_from_command)


# ------------------------------------------------------------------------------------------------
# Entry point: bad input ends in one line on stderr and exit code 2


def _error(message: str, code: int = 2) -> None:
    err_console.print(f"rwkvprobe: error: {message}", markup=False, soft_wrap=True)
    sys.exit(code)


_NO_ARGS_HELP = getattr(click_exc, "NoArgsIsHelpError", ())


def main(argv: Optional[list[str]] = None) -> None:
    try:
        code = app(args=argv, prog_name="rwkvprobe", standalone_mode=False)
        if isinstance(code, int) and code:  # click hands typer.Exit(n) back as a return value here
            sys.exit(code)
    except InputError as e:
        _error(str(e))
    except Interrupted as e:
        _error(str(e), 130)
    except _NO_ARGS_HELP:
        sys.exit(0)  # help was printed
    except click_exc.UsageError as e:
        hint = f" (see: rwkvprobe {e.ctx.command_path.split(' ', 1)[1] + ' ' if e.ctx and ' ' in e.ctx.command_path else ''}--help)"
        _error(e.format_message() + hint)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        _error("interrupted", 130)
    except KeyboardInterrupt:
        _error("interrupted", 130)
    except MemoryError:
        _error("out of memory: try a smaller profile or fewer tokens", 1)
    except OSError as e:
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        _error(f"{where}{e.strerror or e}", 2)
    except Exception as e:  # a bug or an unforeseen failure: one line, the traceback on request
        if os.environ.get("RWKVPROBE_DEBUG"):
            raise
        _error(f"internal error: {type(e).__name__}: {e} (set RWKVPROBE_DEBUG=1 for the traceback)", 1)
