"""``rwkvprobe profile list | show | from``: the shipped profiles, one profile's layers, a profile from a real model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
import yaml
from rich.table import Table

from rwkvprobe.cli.console import out_console
from rwkvprobe.cli.options import si
from rwkvprobe.fsutil import atomic_write_text
from rwkvprobe.model.importer import profile_from, profile_yaml
from rwkvprobe.model.profile import (
    DTYPE_BYTES,
    LayerList,
    layer_list,
    load_profile,
    parse_profile,
    profiles_dir,
    shipped_profiles,
)


def _model_label(ll: LayerList) -> str:
    p = ll.profile
    if p.version is None:
        return "custom"
    return f"RWKV-{p.version}"


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


def profile_from_command(
    path: Path = typer.Argument(..., help="An RWKV .pth checkpoint, a .safetensors file, or a Hugging Face "
                                "config.json (or the folder holding it)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the profile to this file (atomically) "
                                       "instead of printing it, e.g. profiles/my-model.yaml."),
    name: Optional[str] = typer.Option(None, "--name", help="The profile's name (default: from the file name)."),
):
    """A profile from a real model: reads tensor shapes (.pth, safetensors header) or a config.json."""

    data = profile_from(path, name)
    text = profile_yaml(data)
    profile = parse_profile(yaml.safe_load(text), str(out or path))  # what we write must load back
    if out is None:
        sys.stdout.write(text)
        return
    atomic_write_text(out, text)
    ll = layer_list(profile)
    print(f"{out}: RWKV-{profile.version}, {profile.n_layer} layers, n_embd {profile.n_embd}, "
          f"{ll.total_params:,} parameters", file=sys.stderr)
