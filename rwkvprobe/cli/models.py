"""``rwkvprobe onnx``, ``convert`` and ``toolkit``: the model files (ONNX, RKNN) and the RKNN toolkit's environment."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from rwkvprobe.backends import onnxgen
from rwkvprobe.cli.console import err_console, out_console
from rwkvprobe.cli.options import parse_choice_list, parse_int_list, si
from rwkvprobe.errors import InputError
from rwkvprobe.measure import onnxblock
from rwkvprobe.model.profile import LayerList, layer_list, load_profile
from rwkvprobe.npu import toolkit


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


def toolkit_install(
    python: Optional[str] = typer.Option(None, "--python", help="The Python to build it with (3.6-3.12). Default: this one."),
):
    """Create the toolkit's own virtual environment with rknn-toolkit2 and versions that work with it."""

    py = toolkit.install(python, progress=lambda m: err_console.print(m, markup=False))
    print(f"RKNN toolkit {toolkit.TOOLKIT_VERSION} ready: {py}")


def toolkit_status():
    """Where the toolkit environment is and whether it is installed."""

    state = "installed" if toolkit.installed() else "not installed (rwkvprobe toolkit install)"
    print(f"rknn-toolkit2 {toolkit.TOOLKIT_VERSION}: {state} at {toolkit.toolkit_dir()}")


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
