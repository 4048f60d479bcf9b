"""``rwkvprobe analyze`` and ``rwkvprobe report``: measure (or model) a profile, render its verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rwkvprobe import process
from rwkvprobe.backends.rknnlite_backend import read_convert_manifest, show_library_log
from rwkvprobe.cli.console import Reporter, err_console, print_lines, print_warnings, run_and_render
from rwkvprobe.cli.options import parse_choice_list, parse_int_list
from rwkvprobe.cli.sweep import summary_lines
from rwkvprobe.errors import InputError
from rwkvprobe.fsutil import ensure_writable_dir, lock_folder
from rwkvprobe.measure import cachesize
from rwkvprobe.measure.analyze import Analysis, AnalyzeSettings, check_dtypes, default_out_dir, plan_series
from rwkvprobe.measure.points import onnx_cache_dir
from rwkvprobe.measure.run import RESULTS
from rwkvprobe.measure.system import resolve_cpus
from rwkvprobe.measure.timing import default_threads
from rwkvprobe.model.profile import LayerList, layer_list, load_profile, profile_json
from rwkvprobe.npu import bandwidth as npubw
from rwkvprobe.npu import toolkit
from rwkvprobe.npu.cores import BACKEND as BOARD_BACKEND
from rwkvprobe.npu.cores import parse_core_masks
from rwkvprobe.npu.device import block_estimates, compiler_estimates, load_device, modelled_results
from rwkvprobe.report.markdown import render, verdict_lines
from rwkvprobe.report.sections import block_estimate_lines
from rwkvprobe.report.sweep import render_sweep
from rwkvprobe.results import load_results, save_results
from rwkvprobe.verdict.roofline import heavy_points, near_line_points, series_heavy_points


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
    budget: Optional[float] = typer.Option(None, "--budget", help="Seconds for the whole run from the command's start, about its wall time (default 100, --quick 38)."),
    warm: bool = typer.Option(False, "--warm", help="Measure with weights cache-resident (labelled warm) instead of cold."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Complete an interrupted run in this folder (same options)."),
    device: Optional[str] = typer.Option(None, "--device", help="Model a device instead of measuring this machine: rk3588 or a device YAML. Every figure is labelled modelled."),
    rknn: Optional[Path] = typer.Option(None, "--rknn", help="A folder written by 'rwkvprobe convert': the .rknn models for --backends rknnlite on the board or rknn over adb (rknn converts them on the fly without it), or the compiler estimates for --device."),
    npu_cores: str = typer.Option("auto", "--npu-cores", help="NPU core masks for rknnlite and rknn, comma-separated, each its own series: auto, 0, 1, 2, 0_1, 0_1_2, all (e.g. 0,1,0_1_2)."),
    device_id: Optional[str] = typer.Option(None, "--device-id", help="--backends rknn: the adb device ID of the RK3588 board (as 'adb devices' lists it). Default: the only one connected."),
    use_history: bool = typer.Option(True, "--history/--no-history", help="Judge the layers with this machine's earlier runs' bandwidth probes too (the last 7 days, same threads and CPUs; a shared machine's DRAM bandwidth moves for minutes at a time), read this run's speed against their canaries, and record this run's. --no-history: this run's probes only, nothing recorded. The file: $RWKVPROBE_BANDWIDTH_HISTORY, else ~/.cache/rwkvprobe/bandwidth-history.json."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More progress detail, and the NPU library's own log (rknnlite)."),
):
    """Measure every unique layer shape of a profile and write results.json, report.md and plots."""

    ll = layer_list(load_profile(profile))
    ms = parse_int_list(tokens, "--tokens") if tokens else ([1] if quick else [1, 64])
    if max(ms) > 4096:
        raise InputError(f"--tokens {max(ms)}: expected at most 4096 tokens per call")
    if device is not None:
        return _analyze_device(ll, device, ms, out, rknn)

    show_library_log(verbose)  # rknn-toolkit-lite2's log and tracebacks: kept aside unless --verbose

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
                               if quantize is not None else None, history=use_history, started=process.COMMAND_START)
    plan_series(settings)  # unknown or missing backends are refused before anything is written
    cachesize.check_env()
    analysis = Analysis.resume(ll, settings, resume) if resume else Analysis.start(ll, settings, out)
    analysis.near_line = near_line_points  # the headline's points near the kernel-limited line get a second timing
    analysis.heavy = heavy_points  # and so do its heaviest points
    analysis.series_heavy = series_heavy_points  # then every series' heaviest, with what the budget has left
    reporter = Reporter(err_console, verbose)
    err_console.print(f"rwkvprobe analyze: {ll.profile.name}, {len(ll.unique_shapes())} unique shapes, "
                      f"tokens {ms}, {n_threads} threads -> {analysis.out_dir}", highlight=False)
    results, path = run_and_render(analysis, reporter, f"rwkvprobe analyze {profile} --resume {analysis.out_dir}",
                                   render)
    print_lines(verdict_lines(results))
    print_warnings(results)
    print(f"wrote {analysis.path}, {path} and plots in {analysis.out_dir}")


def _analyze_device(ll: LayerList, device: str, tokens: list[int], out: Optional[Path], rknn: Optional[Path]) -> None:
    """analyze --device: the verdict for a modelled device (no measurement), with compiler estimates."""

    dev = load_device(device)
    folder = ensure_writable_dir(out or default_out_dir(ll).with_name(default_out_dir(ll).name + "-" + Path(device).stem))
    with lock_folder(folder):  # one run per folder
        if (folder / RESULTS).exists():
            raise InputError(f"{folder / RESULTS} exists: choose another --out")
        compiler = blocks = None
        if rknn is not None:
            blocks_manifest = toolkit.read_blocks_manifest(rknn)
            if blocks_manifest is not None:

                blocks = block_estimates(blocks_manifest, dev, ll.profile)
            if blocks_manifest is None or (rknn / "manifest.json").is_file():
                compiler = compiler_estimates(read_convert_manifest(rknn), dev)
        elif toolkit.installed():

            cache = onnx_cache_dir().parent / f"rknn-{Path(device).stem}"
            # decode shapes only (M=1): what the verdict needs, and half the builds
            manifest = toolkit.convert(ll, cache, ["fp16", "int8"], [1], progress=lambda m: err_console.print(m, markup=False))
            compiler = compiler_estimates(manifest, dev)
        else:
            err_console.print("note: no RKNN compiler estimates: 'rwkvprobe toolkit install' adds them", markup=False)
        results = modelled_results(dev, profile_json(ll), tokens, compiler)
        if blocks:
            results["compiler_block_estimates"] = blocks

        npu_bw = npubw.cached(device, rknn) or npubw.cached(device)
        if npu_bw:
            results["npu_bandwidth"] = npu_bw
        save_results(folder / RESULTS, results)
        path = render(results, folder)
        print_lines(verdict_lines(results) + block_estimate_lines(results))
        print(f"wrote {folder / RESULTS}, {path} and plots in {folder} (modelled: nothing was measured)")


def report_cmd(
    results_file: Path = typer.Argument(..., help="A results.json written by rwkvprobe analyze."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for report.md and plots. Default: beside the results file."),
):
    """Re-render report.md (or sweep.md) and the plots from a results file, on any machine."""

    results = load_results(results_file, kinds=("analyze", "sweep"))
    if results["kind"] == "sweep":

        path, lines = render_sweep(results, out or results_file.parent), summary_lines(results)
    else:

        path, lines = render(results, out or results_file.parent), verdict_lines(results)
    print_lines(lines)
    print(f"wrote {path}")
