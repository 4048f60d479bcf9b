"""The ``rwkvprobe`` command line: thin wrappers that parse, call plain functions and print."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

try:  # newer typer releases carry their own copy of click
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_exc

from rwkvprobe import __version__
from rwkvprobe.errors import InputError
from rwkvprobe.profile import DTYPE_BYTES, LayerList, layer_list, load_profile, profiles_dir, shipped_profiles

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Is each RWKV layer compute-, bandwidth- or overhead-bound on this machine?",
)
profile_app = typer.Typer(no_args_is_help=True, help="List the shipped model profiles or show one's layers.")
app.add_typer(profile_app, name="profile")

def _console(stderr: bool = False) -> Console:
    """Rich console; when not on a terminal (pipes, CI logs) use 120 columns, not rich's 80."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS") else 120
    return Console(stderr=stderr, highlight=False, width=width)


out_console = _console()
err_console = _console(stderr=True)


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
):
    """Write one ONNX MatMul model per unique (M, K, N, dtype) of a profile, with a manifest."""
    from rwkvprobe import onnxgen

    ll = layer_list(load_profile(profile))
    ms = parse_int_list(tokens, "--tokens")
    dts = parse_choice_list(dtype, "--dtype", onnxgen.ONNX_DTYPES)
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


# ------------------------------------------------------------------------------------------------
# Entry point: bad input ends in one line on stderr and exit code 2


def _error(message: str, code: int = 2) -> None:
    err_console.print(f"rwkvprobe: error: {message}", markup=False, soft_wrap=True)
    sys.exit(code)


_NO_ARGS_HELP = getattr(click_exc, "NoArgsIsHelpError", ())


def main(argv: Optional[list[str]] = None) -> None:
    try:
        app(args=argv, prog_name="rwkvprobe", standalone_mode=False)
    except InputError as e:
        _error(str(e))
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
