"""One renderer for what every report shares: durations, markdown tables and the environment section
(analyze's report, the sweep report and compare all use these)."""

from __future__ import annotations

from rwkvprobe.measure.system import summarize_environment


def ms(s: float) -> str:
    """A duration in s, ms or µs, three significant figures."""
    if s >= 1.0:
        return f"{s:.3g} s"
    return f"{s * 1e3:.3g} ms" if s >= 1e-3 else f"{s * 1e6:.3g} µs"


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table as lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def environment_section(results: dict, settings: str, extra_rows: list[list[str]] | None = None) -> list[str]:
    """The "Environment" section: the machine (system.summarize_environment), one settings line, each
    backend's description, then ``extra_rows``."""
    env = results.get("environment") or {}
    rows = [[k, str(v)] for k, v in summarize_environment(env)] if env else []
    rows.append(["Settings", settings])
    for name, b in (results.get("backends") or {}).items():
        rows.append([f"backend {name}", ", ".join(f"{k}={v}" for k, v in b.items() if k != "name")])
    return ["## Environment", ""] + md_table(["", ""], rows + (extra_rows or [])) + [""]
