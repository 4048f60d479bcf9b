"""``rwkvprobe compare``: two or more results files side by side, with ratios to the first one.

The first file is the baseline; every other file gets a ratio column, other / baseline, and a word
saying which way is better ("2.00x faster" for half the time or twice the rate). What is compared:

- Environment: kind, profile, date, host, CPU, governors, BLAS, threads (text; no ratio).
- Memory bandwidth: the best GB/s of each kernel at each thread count (best over the CPU clusters
  measured with that many threads), so runs compare only at matching thread counts.
- Ceilings per backend and dtype: peak GFLOP/s, cold GEMV GB/s, per-call overhead.
- Model-level figures per backend and dtype (analyze files): decode time per token, tokens/s and
  prefill tokens/s, from the same verdict the report uses (``roofline.build_verdict``). Files of
  different profiles keep these rows apart (labelled by profile): a 0.1B and a 1.5B model are not
  one row.
- Per-layer median time per (backend, dtype, M, K, N) (analyze files).

A row a file lacks shows "-"; a point a file measured but could not time shows why (failed,
skipped, WRONG RESULT). Mixed kinds (bandwidth vs analyze) compare on the sections they share.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

from rwkvprobe.errors import InputError
from rwkvprobe.fsutil import atomic_write_text, ensure_writable_dir
from rwkvprobe.measure.bandwidth import KERNELS
from rwkvprobe.measure.contention import CANARY_SLOW, point_canaries
from rwkvprobe.measure.points import point_seconds
from rwkvprobe.measure.run import RESULTS
from rwkvprobe.measure.system import summarize_environment
from rwkvprobe.model.profile import layers_from_json
from rwkvprobe.report.format import md_table, ms
from rwkvprobe.results import load_results
from rwkvprobe.verdict.roofline import build_verdict, point_status

#: one cell: a number (compared), a text (shown as is, no ratio) or None (the file lacks the row)
Value = Union[float, str, None]


@dataclass(frozen=True)
class Metric:
    """How a row's values read: ``better`` is "lower", "higher" or None for text rows (no ratio)."""

    better: Optional[str]
    fmt: Callable[[float], str]


TEXT = Metric(None, str)
SECONDS = Metric("lower", ms)
GBPS = Metric("higher", lambda v: f"{v:.2f} GB/s")
GFLOPS = Metric("higher", lambda v: f"{v:.1f} GFLOP/s")
TOKENS = Metric("higher", lambda v: f"{v:.2f} tokens/s")


@dataclass
class Row:
    label: str
    metric: Metric
    values: list[Value]  # one per file, in the order of the files


@dataclass
class Section:
    title: str
    rows: list[Row]
    note: str = ""


@dataclass
class Comparison:
    paths: list[Path]
    sections: list[Section]
    warnings: list[str]


#: what one results file contributes to a section: sort key -> (row label, metric, value); rows are
#: matched across files by key and shown in key order, whatever the order of the files
Cells = dict[tuple, tuple[str, Metric, Value]]

#: summarize_environment lines worth setting side by side
HEADLINE = ("CPU", "Board", "CPU governors", "DRAM governor", "BLAS")


# ------------------------------------------------------------------------------------------------
# Loading


def load_all(paths: list[Path]) -> list[dict]:
    """Every file checked and loaded before anything is compared or written (InputError, one line)."""
    if len(paths) < 2:
        raise InputError(f"compare needs at least two results files, got {len(paths)}: "
                         "rwkvprobe compare BASELINE.json OTHER.json ...")
    return [load_results(_results_path(p)) for p in paths]


def _results_path(path: Path) -> Path:
    """An analyze output folder stands for the results.json inside it."""
    inside = path / RESULTS
    return inside if path.is_dir() and inside.is_file() else path


# ------------------------------------------------------------------------------------------------
# What each file contributes, section by section


def _environment(r: dict) -> Cells:
    env = r.get("environment") or {}

    summary = dict(summarize_environment(env))
    settings = r.get("settings") or {}
    rows: list[tuple[str, Value]] = [
        ("kind", r.get("kind")),
        ("profile", (r.get("profile") or {}).get("name")),
        ("created", r.get("created")),
        ("hostname", env.get("hostname")),
        *[(name, summary.get(name)) for name in HEADLINE],
        ("threads", _threads(r)),
        ("cache", ("cold" if settings.get("cold", True) else "warm") if r.get("kind") == "analyze" else None),
        ("machine speed (canary median)", f"{median * 1e6:.0f} µs" if (median := _canary_median(r)) else None),
    ]
    return {(i,): (label, TEXT, value) for i, (label, value) in enumerate(rows) if value is not None}


def _canary_median(r: dict) -> Optional[float]:
    """The median of the canary (contention.canary, a fixed two-thread matmul) timed beside the run's points."""
    seen = point_canaries(r.get("measurements") or [])
    return statistics.median(seen) if seen else None


def _speed_warning(paths: list[Path], results: list[dict]) -> list[str]:
    """A warning where the machine itself ran at different speeds in the files' runs (their canary medians
    CANARY_SLOW or more apart): on the dev VM two quick runs of rwkv-0b4 with medians of 84 and 146 µs read every
    two-thread series 4-19% apart, the same code on the same machine."""
    medians = [(p, m) for p, r in zip(paths, results) if (m := _canary_median(r))]
    if len(medians) < 2:
        return []
    (fast, lo), (slow, hi) = min(medians, key=lambda x: x[1]), max(medians, key=lambda x: x[1])
    if hi < CANARY_SLOW * lo:
        return []
    return [f"the machine itself ran at different speeds in these runs: a fixed two-thread matmul timed beside each "
            f"point (the canary) had a median of {lo * 1e6:.0f} µs in {fast} and {hi * 1e6:.0f} µs in {slow} "
            f"({hi / lo:.2f}x); layer times differ by up to that much from the machine alone"]


def _threads(r: dict) -> Optional[str]:
    threads = (r.get("settings") or {}).get("threads")
    if isinstance(threads, int):
        return str(threads)
    counts = sorted({run.get("threads") for run in (r.get("bandwidth") or {}).get("runs", []) if run.get("threads")})
    return ", ".join(map(str, counts)) or None


def _bandwidth(r: dict) -> Cells:
    best: dict[tuple[int, str], float] = {}
    for run in (r.get("bandwidth") or {}).get("runs", []):
        for kernel, k in (run.get("kernels") or {}).items():
            key = (run.get("threads") or 0, kernel)
            if k.get("best_gbps"):
                best[key] = max(best.get(key, 0.0), k["best_gbps"])
    return {(n, _kernel_rank(kernel), kernel): (f"{kernel}, {n} thread{'s' if n != 1 else ''}", GBPS, gbps)
            for (n, kernel), gbps in best.items()}


def _kernel_rank(kernel: str) -> int:
    return KERNELS.index(kernel) if kernel in KERNELS else len(KERNELS)


def _ceilings(r: dict) -> Cells:
    cells: Cells = {}
    for c in r.get("ceilings") or []:
        series = f"{c['backend']} {c['dtype']}"
        for i, (name, key, metric) in enumerate((("peak", "peak_gflops", GFLOPS), ("GEMV (cold)", "gemv_gbps", GBPS),
                                                 ("per-call overhead", "overhead_seconds", SECONDS))):
            cells[(c["backend"], c["dtype"], i)] = (f"{series} {name}", metric, c.get(key) or "failed")
    return cells


def _model_level(r: dict, by_profile: bool) -> Cells:
    if r.get("kind") != "analyze" or not r.get("profile"):
        return {}
    verdict = build_verdict(r, layers_from_json(r["profile"]))
    profile = r["profile"]["name"] if by_profile else ""
    cells: Cells = {}
    for s in verdict["series"]:
        series = f"{profile} {s['backend']} {s['dtype']}".lstrip()
        key = (profile, s["backend"], s["dtype"])
        decode = s["model"].get("decode")
        if decode:
            cells[(*key, 0, 1)] = (f"{series} decode time/token", SECONDS, decode["seconds_per_token"])
            cells[(*key, 1, 1)] = (f"{series} decode", TOKENS, decode["tokens_per_second"])
        for p in s["model"].get("prefill", []):
            cells[(*key, 2, p["chunk"])] = (f"{series} prefill M={p['chunk']}", TOKENS, p["tokens_per_second"])
    return cells


def _layers(r: dict) -> Cells:
    cells: Cells = {}
    for p in r.get("measurements") or []:
        t = point_seconds(p)
        cells[(p["backend"], p["dtype"], p["m"], p["k"], p["n"])] = (
            f"{p['backend']} {p['dtype']} M={p['m']} {p['k']}x{p['n']}", SECONDS,
            t if t is not None else point_status(p).split(":")[0])
    return cells


def _section(title: str, per_file: list[Cells], note: str = "") -> Optional[Section]:
    """One row per key any file has, in key order; a file without the row gets None ("-")."""
    rows = []
    for key in sorted({key for cells in per_file for key in cells}):
        label, metric, _ = next(cells[key] for cells in per_file if key in cells)
        rows.append(Row(label, metric, [cells[key][2] if key in cells else None for cells in per_file]))
    return Section(title, rows, note) if rows else None


#: the sections in display order: (title, note under the table)
SECTIONS = (
    ("Environment", ""),
    ("Memory bandwidth (best of the trials, per thread count)", ""),
    ("Ceilings per backend and dtype", ""),
    ("Model level (as in the report)",
     "Decode time includes the non-matmul work, modelled from the measured bandwidth; layers that could not be "
     "measured count at their modelled time. Prefill counts matmuls only."),
    ("Per-layer median time per call", ""),
)


def _file_cells(path: Path, r: dict, by_profile: bool) -> list[Cells]:
    """One file's contribution to each of SECTIONS; a damaged file is refused with one line."""
    try:
        return [_environment(r), _bandwidth(r), _ceilings(r), _model_level(r, by_profile), _layers(r)]
    except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError) as e:
        raise InputError(f"{path}: results file is incomplete or damaged ({type(e).__name__}: {e})") from None


def build_comparison(paths: list[Path], results: list[dict]) -> Comparison:
    """The comparison of already-loaded results files (the first is the baseline)."""
    profiles = list(dict.fromkeys(r["profile"]["name"] for r in results
                                  if r.get("kind") == "analyze" and (r.get("profile") or {}).get("name")))
    by_profile = len(profiles) > 1
    warnings = [f"the files hold different profiles ({', '.join(profiles)}): model-level rows are kept apart "
                "by profile; bandwidth, ceilings and layer shapes still compare"] if by_profile else []
    warnings += _speed_warning(paths, results)
    per_file = [_file_cells(path, r, by_profile) for path, r in zip(paths, results)]
    sections = [_section(title, [cells[i] for cells in per_file], note) for i, (title, note) in enumerate(SECTIONS)]
    return Comparison(list(paths), [s for s in sections if s is not None], warnings)


def compare_files(paths: list[Path]) -> Comparison:
    return build_comparison(paths, load_all(paths))


# ------------------------------------------------------------------------------------------------
# Ratios


def ratio(base: Value, other: Value) -> Optional[float]:
    """other / base when both are positive numbers, else None."""
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (base, other))
    return other / base if numbers else None  # type: ignore[operator]


def ratio_cell(row: Row, i: int) -> tuple[str, int]:
    """The ratio of file ``i`` to the baseline as text, and +1 better, -1 worse, 0 same or none."""
    if row.metric.better is None:
        return "", 0
    r = ratio(row.values[0], row.values[i])
    if r is None:
        return "-", 0
    gain = 1 / r if row.metric.better == "lower" else r
    if f"{gain:.2f}" == "1.00":
        return f"{r:.2f}x (same)", 0
    if gain > 1:
        return f"{r:.2f}x ({gain:.2f}x faster)", 1
    return f"{r:.2f}x ({1 / gain:.2f}x slower)", -1


def value_text(row: Row, i: int) -> str:
    v = row.values[i]
    if v is None:
        return "-"
    return v if isinstance(v, str) else row.metric.fmt(v)


# ------------------------------------------------------------------------------------------------
# Rendering


def _letters(c: Comparison) -> list[str]:
    return [chr(ord("A") + i) if i < 26 else f"F{i + 1}" for i in range(len(c.paths))]


def header(c: Comparison) -> list[str]:
    names = _letters(c)
    cols = ["", "better", f"{names[0]} (baseline)"]
    for name in names[1:]:
        cols += [name, f"{name}/{names[0]}"]
    return cols


def cells(c: Comparison, row: Row) -> list[tuple[str, int]]:
    """(text, +1/-1/0) per column after the label: better, baseline, then value and ratio per file."""
    cells = [(row.metric.better or "", 0), (value_text(row, 0), 0)]
    for i in range(1, len(c.paths)):
        cells += [(value_text(row, i), 0), ratio_cell(row, i)]
    return cells


def legend(c: Comparison) -> list[str]:
    names = _letters(c)
    lines = [f"{name}{' (baseline)' if i == 0 else ''}: {path}" for i, (name, path) in enumerate(zip(names, c.paths))]
    return lines + [f"Ratios are file / {names[0]}; \"faster\" means less time or more throughput than {names[0]}."]


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(c: Comparison) -> str:
    md = ["# rwkvprobe comparison", ""] + [f"- {line}" for line in legend(c)] + [""]
    for s in c.sections:
        md += [f"## {s.title}", ""]
        md += md_table(header(c), [[_md(row.label)] + [_md(text) for text, _ in cells(c, row)] for row in s.rows])
        md += ["", s.note, ""] if s.note else [""]
    return "\n".join(md)


def write_markdown(path: Path, text: str) -> None:
    """Write atomically; an unwritable path is an InputError and leaves any earlier file as it was."""
    if path.is_dir():
        raise InputError(f"--out {path}: is a directory, expected a file name such as compare.md")
    ensure_writable_dir(path.parent)
    try:
        atomic_write_text(path, text)
    except OSError as e:
        raise InputError(f"--out {path}: cannot write: {e.strerror or e}") from None


# ------------------------------------------------------------------------------------------------
# The command (registered in cli.py)
