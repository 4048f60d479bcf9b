"""``rwkvprobe compare``: results files side by side, as rich tables or markdown."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from rwkvprobe.cli.console import err_console, out_console
from rwkvprobe.report.compare import Comparison, cells, compare_files, header, legend, render_markdown, write_markdown


def print_tables(c: Comparison, console) -> None:
    """The comparison as rich tables, better ratios in green and worse in red."""
    from rich.text import Text

    for line in legend(c):
        console.print(line, markup=False, highlight=False)
    styles = {1: "green", -1: "red", 0: ""}
    for s in c.sections:
        table = Table(title=s.title, caption=s.note or None, title_justify="left")
        for i, col in enumerate(header(c)):
            table.add_column(col, justify="left" if i < 2 else "right", no_wrap=i == 0)
        for row in s.rows:
            table.add_row(row.label, *[Text(text, style=styles[sign]) for text, sign in cells(c, row)])
        console.print(table)


def compare_command(
    files: list[Path] = typer.Argument(..., help="Two or more results.json files (or analyze output folders); "
                                       "the first is the baseline."),
    markdown: bool = typer.Option(False, "--markdown", help="Print markdown instead of the terminal tables."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the comparison as markdown to this file."),
):
    """Compare results files side by side (two boards, two governors, before/after), with ratios to the first."""

    comparison = compare_files(files)
    text = render_markdown(comparison) + "\n"
    if out is not None:
        write_markdown(out, text)
    for w in comparison.warnings:
        err_console.print(f"warning: {w}", markup=False, highlight=False, soft_wrap=True)
    if markdown:
        print(text, end="")
    else:
        print_tables(comparison, out_console)
    if out is not None:
        err_console.print(f"wrote {out}", markup=False, highlight=False, soft_wrap=True)
