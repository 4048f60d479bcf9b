"""``rwkvprobe sweep``: the seed article's scaling experiment."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rwkvprobe.cli.console import Reporter, err_console, print_lines, print_warnings, run_and_render
from rwkvprobe.errors import InputError
from rwkvprobe.measure import cachesize
from rwkvprobe.measure.analyze import check_dtypes
from rwkvprobe.measure.run import RESULTS
from rwkvprobe.measure.sweep import (
    DEFAULT_BUDGET_SECONDS,
    DEFAULT_SIZES,
    Sweep,
    SweepSettings,
    check_memory,
    check_resume_settings,
    make_grid,
    parse_sizes,
    plan_pairs,
)
from rwkvprobe.measure.system import resolve_cpus
from rwkvprobe.measure.timing import default_threads
from rwkvprobe.npu.cores import parse_core_masks
from rwkvprobe.report.sweep import render_sweep, summary_sentences
from rwkvprobe.results import load_results


def sweep_command(
    sizes: Optional[str] = typer.Option(None, "--sizes", help="START:STOP:STEP (STOP included) or a list like "
                                        "128,256,512. Default 128:2048:128."),
    m: Optional[str] = typer.Option(None, "--m", help="'square' (M = K = N = size, as the seed article; the "
                                    "default) or a fixed M: 1 = decode, e.g. 64 = a prefill chunk."),
    k: Optional[str] = typer.Option(None, "--k", help="With a fixed M: K = 'size' (default), a number, or a "
                                    "multiple of N such as '4n' (the FFN's down projection)."),
    n: Optional[str] = typer.Option(None, "--n", help="With a fixed M: N = 'size' (default), a number, or a "
                                    "multiple of K such as '4k' (the FFN's up projection)."),
    backends: Optional[str] = typer.Option(None, "--backends", help="Comma-separated: numpy, torch, onnxruntime, "
                                           "torch-cuda, tinygrad, rknnlite (on the board, with --rknn). Default: "
                                           "every one installed."),
    dtypes: Optional[str] = typer.Option(None, "--dtypes", help="Comma-separated: fp32, fp16, bf16; quantized weights (int8, int4, ...; ggml: q8_0, q5_1, q4_0, q4_k, f16 = fp16). Default fp32."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Threads for every backend. Default: all CPUs "
                                          "this process may use."),
    cpus: Optional[str] = typer.Option(None, "--cpus", help="Pin to a cluster (big, little, all) or CPUs like 4-7."),
    warm: Optional[bool] = typer.Option(None, "--warm/--cold", help="Weights cache-resident (warm: the default "
                                        "for square grids, as the article) or read from DRAM on every call (cold: "
                                        "the default with a fixed M, as RWKV decode)."),
    budget: Optional[float] = typer.Option(None, "--budget", help="Seconds for the whole run (default 150): "
                                           "it stops cleanly there and keeps what it measured."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder. Default: "
                                       "rwkvprobe-out/sweep-<grid>-<timestamp>/."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Complete an interrupted or budget-stopped "
                                          "sweep in this folder (options left out are taken from it)."),
    estimate: bool = typer.Option(False, "--estimate", help="Calibrate, print the estimated run time and the "
                                  "plan, measure nothing."),
    rknn: Optional[Path] = typer.Option(None, "--rknn", help="--backends rknnlite: a folder written by 'rwkvprobe "
                                        "convert' with the .rknn models of the grid's shapes."),
    npu_cores: Optional[str] = typer.Option(None, "--npu-cores", help="NPU core masks for rknnlite, comma-separated, "
                                            "each its own series: auto, 0, 1, 2, 0_1, 0_1_2, all (e.g. 0,1,0_1_2). "
                                            "Default auto."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More progress detail."),
):
    """The seed article's scaling experiment: time vs size per backend, fitted cost model, crossovers."""

    old = None
    if resume is not None:
        if out is not None:
            raise InputError("--out and --resume: give one of them (--resume writes into the folder it completes)")
        old = load_results(Path(resume) / RESULTS, kinds=("sweep",))
    stored = (old or {}).get("settings", {})
    grid_old = stored.get("grid") or {}
    sizes_text = sizes if sizes is not None else stored.get("sizes_text", DEFAULT_SIZES)
    size_list = parse_sizes(sizes_text) if sizes is not None or not grid_old else list(grid_old["sizes"])
    grid = make_grid(size_list, m if m is not None else grid_old.get("m"),
                     k if k is not None else grid_old.get("k"), n if n is not None else grid_old.get("n"))
    dts = check_dtypes([d.strip() for d in dtypes.split(",") if d.strip()] if dtypes else stored.get("dtypes"))
    names = [b.strip() for b in backends.split(",") if b.strip()] if backends else stored.get("backends")
    n_threads = threads if threads is not None else stored.get("threads") or default_threads()
    if n_threads <= 0 or n_threads > 1024:
        raise InputError(f"--threads {n_threads}: expected a positive number of threads")
    if budget is not None and not (0 < budget < 1e7):
        raise InputError(f"--budget {budget}: expected a positive number of seconds")
    # square grids run warm by default, as the article's repeated calls of one model; fixed-M (RWKV) grids
    # run cold, as decode reads every weight from DRAM
    cold = (not warm) if warm is not None else stored.get("cold", not grid.square)

    masks = parse_core_masks(npu_cores if npu_cores is not None else stored.get("npu_cores") or "auto")
    rknn_dir = rknn if rknn is not None else (Path(stored["rknn_dir"]) if stored.get("rknn_dir") else None)
    settings = SweepSettings(grid=grid, backends=names, dtypes=dts, threads=n_threads, cpus=resolve_cpus(cpus),
                             cold=cold, budget_seconds=budget or DEFAULT_BUDGET_SECONDS, sizes_text=sizes_text,
                             rknn_dir=rknn_dir, npu_cores=",".join(masks))
    pairs, _ = plan_pairs(settings)  # unknown or missing backends are refused before anything is written
    cachesize.check_env()
    check_memory(grid, pairs, cachesize.usable_llc_bytes(), cold)
    reporter = Reporter(err_console, verbose)
    if estimate:  # calibrate and print the plan; nothing is measured or written
        if old is not None and resume is not None:
            check_resume_settings(old, settings, resume)
        Sweep(settings, Path(resume or "."), old).run(reporter, estimate_only=True)
        return
    sweep = Sweep.resume(settings, Path(resume), old) if resume is not None else Sweep.start(settings, out)
    err_console.print(f"rwkvprobe sweep: {grid.describe()}, n = {grid.sizes[0]}..{grid.sizes[-1]} "
                      f"({len(grid.sizes)} sizes), {len(pairs)} backend x dtype, {n_threads} thread{'' if n_threads == 1 else 's'}, "
                      f"{'cold' if cold else 'warm'} cache -> {sweep.out_dir}", highlight=False, markup=False)
    results, path = run_and_render(sweep, reporter, f"rwkvprobe sweep --resume {sweep.out_dir}", render_sweep)
    print_lines(summary_lines(results))
    print_warnings(results)
    if results.get("stopped"):
        err_console.print(f"stopped at the {settings.budget_seconds:.3g} s budget: "
                          f"{len(results['stopped']['not_measured'])} point(s) not measured; complete them with: "
                          f"rwkvprobe sweep --resume {sweep.out_dir} --budget SECONDS", highlight=False, markup=False)
    print(f"wrote {sweep.path}, {path}, {path.parent / 'sweep.csv'} and plots in {sweep.out_dir}")


def summary_lines(results: dict) -> list[str]:
    """The headline findings as plain terminal lines."""

    return [s.replace("**", "") for s in summary_sentences(results)]
