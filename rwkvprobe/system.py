"""Facts about this machine, read from sysfs/procfs. Missing files are normal (VMs, containers):
every reader returns None or an empty value for what it cannot read, and never raises.

Every function takes ``root`` (default "/") so tests can point it at a fake sysfs tree.
"""

from __future__ import annotations

import os
import re
from pathlib import Path


def _read(root: str | Path, rel: str) -> str | None:
    try:
        return (Path(root) / rel.lstrip("/")).read_text(errors="replace").strip()
    except (OSError, ValueError):
        return None


def _read_int(root: str | Path, rel: str) -> int | None:
    text = _read(root, rel)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def parse_cpu_list(text: str | None) -> list[int]:
    """'0-3,6,8-9' -> [0, 1, 2, 3, 6, 8, 9]."""
    cpus: list[int] = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            if lo.isdigit() and hi.isdigit():
                cpus.extend(range(int(lo), int(hi) + 1))
        elif part.isdigit():
            cpus.append(int(part))
    return sorted(set(cpus))


def _size_bytes(text: str | None) -> int | None:
    m = re.fullmatch(r"(\d+)\s*([KMG]?)", (text or "").strip(), re.I)
    if not m:
        return None
    return int(m.group(1)) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[m.group(2).upper()]


def online_cpus(root: str | Path = "/") -> list[int]:
    cpus = parse_cpu_list(_read(root, "sys/devices/system/cpu/online"))
    if cpus:
        return cpus
    try:  # no sysfs: what this process may run on, else the count
        return sorted(os.sched_getaffinity(0)) if str(root) == "/" else []
    except AttributeError:  # pragma: no cover - not Linux
        return list(range(os.cpu_count() or 1))


def caches(root: str | Path = "/", cpu: int = 0) -> list[dict]:
    """The caches of one CPU: level, type, size in bytes, and which CPUs share it."""
    out = []
    base = Path(root) / f"sys/devices/system/cpu/cpu{cpu}/cache"
    try:
        indexes = sorted(base.glob("index*"))
    except OSError:
        return out
    for idx in indexes:
        rel = str(idx.relative_to(root))
        size = _size_bytes(_read(root, rel + "/size"))
        level = _read_int(root, rel + "/level")
        if size is None or level is None:
            continue
        out.append({"level": level, "type": _read(root, rel + "/type") or "Unknown", "bytes": size,
                    "shared_cpus": parse_cpu_list(_read(root, rel + "/shared_cpu_list"))})
    return out


def llc_bytes(root: str | Path = "/") -> int | None:
    """Size of the last-level cache (the largest data/unified cache of any online CPU), or None."""
    best = None
    for cpu in online_cpus(root) or [0]:
        for c in caches(root, cpu):
            if c["type"] in ("Data", "Unified") and (best is None or (c["level"], c["bytes"]) > best):
                best = (c["level"], c["bytes"])
    return best[1] if best else None


def cpu_clusters(root: str | Path = "/") -> list[dict]:
    """Groups of CPUs that differ in speed (big.LITTLE), from cpufreq's cpuinfo_max_freq or cpu_capacity.

    Returns [{"name": "big"|"little"|"mid"|"all", "cpus": [...], "max_khz": int|None}], fastest first.
    A machine whose CPUs all look alike is one cluster named "all".
    """
    cpus = online_cpus(root)
    keyed: dict[tuple, list[int]] = {}
    for cpu in cpus:
        khz = _read_int(root, f"sys/devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_max_freq")
        cap = _read_int(root, f"sys/devices/system/cpu/cpu{cpu}/cpu_capacity")
        keyed.setdefault((khz or 0, cap or 0), []).append(cpu)
    if len(keyed) <= 1:
        khz = next(iter(keyed))[0] if keyed else 0
        return [{"name": "all", "cpus": cpus, "max_khz": khz or None}]
    groups = sorted(keyed.items(), key=lambda kv: kv[0], reverse=True)
    names = ["big"] + ["mid"] * (len(groups) - 2) + ["little"]
    return [{"name": name, "cpus": members, "max_khz": key[0] or None}
            for name, (key, members) in zip(names, groups)]


def resolve_cpus(spec: str | None, root: str | Path = "/") -> list[int] | None:
    """A --cpus/--cluster value -> CPU list: None (no pinning), 'big', 'little', 'all' or '0-3,6'."""
    if spec is None or spec == "":
        return None
    clusters = {c["name"]: c["cpus"] for c in cpu_clusters(root)}
    if spec in clusters:
        return clusters[spec]
    if spec in ("big", "little"):
        from rwkvprobe.errors import InputError

        raise InputError(f"cluster '{spec}': this CPU has no big.LITTLE clusters (clusters: {', '.join(clusters)})")
    cpus = parse_cpu_list(spec)
    online = set(online_cpus(root))
    if not cpus or not re.fullmatch(r"[\d,\s-]+", spec) or (online and not set(cpus) <= online):
        from rwkvprobe.errors import InputError

        raise InputError(f"--cpus {spec!r}: expected big, little, all, or online CPU numbers like 0-3 "
                         f"(online: {', '.join(map(str, sorted(online))) or 'unknown'})")
    return cpus
