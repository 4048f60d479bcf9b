"""The machine's own record of its read-bandwidth probes, kept between runs.

A shared machine's DRAM bandwidth can move for minutes at a time (on the dev VM one run's seven probes read
68-73 GB/s and the next run's, a minute later, 36-44 GB/s, while the layers ran at the same speed in both).
Judged at each run's own probes, the same layers were "kernel-limited" in one run and "bandwidth-bound" in the
next. The DRAM ceiling is the machine's, not the run's: analyze judges the layers at the probes of this run
together with those of the machine's earlier runs (the last MAX_AGE_DAYS days, same threads, CPUs and probe
engine), and records its own probes for the runs to come. What was used goes into results.json, so the verdict
is rebuilt from that file alone. ``rwkvprobe bandwidth`` reads its figure against the same history and records it
too (cli/bandwidth.read_history), where its run is one analyze would make.

The same file keeps each analyze run's canary (contention.canary around its points: its best and median), so that
a run timed wholly in one of the machine's slow phases can tell (contention.machine_speed): its own best canary
cannot show a phase that lasted the whole run.

The file is ``$XDG_CACHE_HOME/rwkvprobe/bandwidth-history.json`` (``~/.cache`` by default); HISTORY_ENV names
another file, or ``off``. A missing, unreadable or malformed file counts as empty; one that cannot be written
is left as it is: the record never stops a run.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import psutil

from rwkvprobe.fsutil import atomic_write_text, cache_dir
from rwkvprobe.measure import system

HISTORY_ENV = "RWKVPROBE_BANDWIDTH_HISTORY"
OFF = ("off", "0", "no", "false", "")
MAX_AGE_DAYS = 7.0  # probes older than this are dropped (a memory or firmware change outlives no more than this)
MAX_PROBES = 400  # per file: the newest are kept, and each setup's best (the ceiling it sets stays for MAX_AGE_DAYS)
FORMAT = 1


def history_path() -> Path | None:
    """The history file, or None when HISTORY_ENV turns it off."""
    value = os.environ.get(HISTORY_ENV)
    if value is not None:
        return None if value.strip().lower() in OFF else Path(value).expanduser()
    return cache_dir() / "bandwidth-history.json"


def machine_key() -> dict[str, Any]:
    """What makes two runs' probes comparable: the same host, CPU, CPU count, memory size and architecture."""
    return {"host": platform.node(), "cpu": system.cpu_model(), "logical_cpus": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30), "arch": platform.machine()}


def _entries(path: Path, name: str, value: str) -> list[dict]:
    """The file's well-formed ``name`` entries (each with a positive number ``value`` and a time ``at``); a missing,
    unreadable or malformed file (or list) counts as empty."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return []
    entries = data.get(name) if isinstance(data, dict) and data.get("format") == FORMAT else None
    if not isinstance(entries, list):
        return []
    return [p for p in entries if isinstance(p, dict) and isinstance(p.get(value), (int, float))
            and isinstance(p.get("at"), (int, float)) and p[value] > 0]


def _load_all(path: Path) -> list[dict]:
    return _entries(path, "probes", "read_best_gbps")


def _load_canaries(path: Path) -> list[dict]:
    return _entries(path, "canaries", "best_seconds")


def _fresh(p: dict, now: float) -> bool:
    return 0 <= now - p["at"] <= MAX_AGE_DAYS * 86400


def _same_setup(p: dict, key: dict, threads: int, cpus: list[int] | None, engine: str | None) -> bool:
    return (p.get("machine") == key and p.get("threads") == threads and p.get("cpus") == cpus
            and (engine is None or p.get("engine") == engine))


def earlier_probes(threads: int, cpus: list[int] | None, engine: str | None, now: float | None = None,
                   path: Path | None = None, key: dict | None = None) -> dict | None:
    """The machine's earlier probes that count for a run (same machine, threads, CPUs, engine; at most
    MAX_AGE_DAYS old) as results.json keeps them: {"path", "max_age_days", "machine", "probes"}; None when the
    history is off. ``cpus``: the run's pinned CPUs, None when not pinned."""
    return _earlier("probes", _load_all, ("at", "read_best_gbps", "array_bytes", "command"), threads, cpus, engine,
                    now, path, key)


def earlier_canaries(threads: int, cpus: list[int] | None, now: float | None = None, path: Path | None = None,
                     key: dict | None = None) -> dict | None:
    """The machine's earlier runs' canaries (contention.canary around their points: each run's best and median;
    same machine, threads and CPUs, at most MAX_AGE_DAYS old) as results.json keeps them: {"path", "max_age_days",
    "machine", "runs"}; None when the history is off. A run whose points all fell in the machine's slow phase has
    nothing faster of its own to compare with (on the dev VM the canary reads 83-88 µs or 125-150, a phase holding
    for seconds to minutes): its earlier runs say how fast the machine can be."""
    return _earlier("runs", _load_canaries, ("at", "best_seconds", "median_seconds", "command"), threads, cpus, None,
                    now, path, key)


def _earlier(name: str, load, fields: tuple[str, ...], threads: int, cpus: list[int] | None, engine: str | None,
             now: float | None, path: Path | None, key: dict | None) -> dict | None:
    """The entries ``load`` reads from the history that count for a run (its setup, fresh), their ``fields``, under
    ``name`` beside the file, its age limit and the machine; None when the history is off."""
    path = path or history_path()
    if path is None:
        return None
    key = key or machine_key()
    now = time.time() if now is None else now
    entries = [{k: p[k] for k in fields if k in p} for p in load(path)
               if _same_setup(p, key, threads, cpus, engine) and _fresh(p, now)]
    return {"path": str(path), "max_age_days": MAX_AGE_DAYS, "machine": key, name: entries}


def record(probes: list[dict], threads: int, cpus: list[int] | None, engine: str, command: str = "",
           now: float | None = None, path: Path | None = None, key: dict | None = None,
           canary: dict | None = None) -> bool:
    """Add a run's checked read probes ({"at", "read_best_gbps", "array_bytes"}) to the history; drop those
    older than MAX_AGE_DAYS and the oldest beyond MAX_PROBES, except the best of each setup (machine, threads, CPUs,
    engine): the ceiling a run judges at is that best, and a cap that dropped it lowered the ceiling of the runs after
    (this VM: 92.8 GB/s to 74.1 within a day of quick runs). ``canary``: the run's canary ({"at", "best_seconds",
    "median_seconds"}), kept the same way (the fastest of each setup kept past MAX_PROBES). True when written; False
    when off or unwritable."""
    path = path or history_path()
    if path is None or not (probes or canary):
        return False
    key = key or machine_key()
    now = time.time() if now is None else now
    canaries = [c for c in _load_canaries(path) if _fresh(c, now)]
    if canary and not any(c["at"] == canary["at"] for c in canaries):  # a resumed run records its canary once
        canaries.append({"at": canary["at"], "best_seconds": canary["best_seconds"],
                         "median_seconds": canary.get("median_seconds"), "threads": threads, "cpus": cpus,
                         "machine": key, "command": command})
    canaries = _capped(canaries, lambda c: -c["best_seconds"], engine=False)
    kept = [p for p in _load_all(path) if _fresh(p, now)]
    seen = {(p.get("at"), p.get("read_best_gbps")) for p in kept}
    for p in probes:
        if (p["at"], p["read_best_gbps"]) in seen:  # a resumed run records its first probes once
            continue
        kept.append({"at": p["at"], "read_best_gbps": p["read_best_gbps"], "array_bytes": p.get("array_bytes"),
                     "threads": threads, "cpus": cpus, "engine": engine, "machine": key, "command": command})
    kept = _capped(kept, lambda p: p["read_best_gbps"], engine=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"format": FORMAT, "probes": kept, "canaries": canaries}, indent=1) + "\n")
    except OSError:
        return False
    return True


def _capped(entries: list[dict], score, engine: bool) -> list[dict]:
    """``entries`` by time, the newest MAX_PROBES kept and the best (highest ``score``) of each setup (machine,
    threads, CPUs and, with ``engine``, the probe engine) whatever its age within MAX_AGE_DAYS."""
    entries = sorted(entries, key=lambda p: p["at"])
    best: dict[str, dict] = {}
    for p in entries:
        setup = json.dumps([p.get("machine"), p.get("threads"), p.get("cpus"), p.get("engine") if engine else None],
                           sort_keys=True)
        if setup not in best or score(p) > score(best[setup]):
            best[setup] = p
    keep = {id(p) for p in entries[-MAX_PROBES:]} | {id(p) for p in best.values()}
    return [p for p in entries if id(p) in keep]
