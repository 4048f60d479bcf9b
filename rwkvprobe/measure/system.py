"""Facts about this machine, read from sysfs/procfs. Missing files are normal (VMs, containers):
every reader returns None or an empty value for what it cannot read, and never raises.

Every function takes ``root`` (default "/") so tests can point it at a fake sysfs tree.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rwkvprobe.errors import InputError


def release_free_memory() -> bool:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``); whether it could. A torch pass
    under the profiler left 0.2 GB of freed small blocks resident in analyze's process, and a later stage's peak
    stood on them (rwkv-1b5 --quick: 2.46 GB at its peak, 2.31 with them handed back). Elsewhere (musl, macOS) a
    no-op."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # no such symbol in this C library
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True


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
    clusters.setdefault("all", online_cpus(root))
    if spec in clusters:
        return clusters[spec]
    if spec in ("big", "little"):

        raise InputError(f"cluster '{spec}': this CPU has no big.LITTLE clusters (clusters: {', '.join(clusters)})")
    cpus = parse_cpu_list(spec)
    online = set(online_cpus(root))
    if not cpus or not re.fullmatch(r"[\d,\s-]+", spec) or (online and not set(cpus) <= online):

        raise InputError(f"--cpus {spec!r}: expected big, little, all, or online CPU numbers like 0-3 "
                         f"(online: {', '.join(map(str, sorted(online))) or 'unknown'})")
    return cpus


# --------------------------------------------------------------------------------------------------
# Environment capture: what a results file records about the machine (like pyperf's metadata).
# Static facts once per run (capture_environment), the things that drift during a run before and
# after each measurement (snapshot_dynamic), then plain-words warnings with the command that fixes
# each (environment_warnings) and short report lines (summarize_environment).
# Values that cannot be read are None (summaries print "unknown"); nothing here raises for that.
# --------------------------------------------------------------------------------------------------

# ARM Ltd (implementer 0x41) core part numbers, from each core's Technical Reference Manual (MIDR).
_ARM_PARTS = {
    0xD03: "Cortex-A53", 0xD04: "Cortex-A35", 0xD05: "Cortex-A55", 0xD07: "Cortex-A57",
    0xD08: "Cortex-A72", 0xD09: "Cortex-A73", 0xD0A: "Cortex-A75", 0xD0B: "Cortex-A76",
    0xD0C: "Neoverse-N1", 0xD0D: "Cortex-A77", 0xD40: "Neoverse-V1", 0xD41: "Cortex-A78",
    0xD44: "Cortex-X1", 0xD46: "Cortex-A510", 0xD47: "Cortex-A710", 0xD49: "Neoverse-N2",
    0xD4F: "Neoverse-V2",
}
_LIBRARIES = ("numpy", "onnx", "onnxruntime", "torch", "rknn-toolkit-lite2", "rknn-toolkit2", "tinygrad",
              "rwkvprobe")
_NPU_DRIVER_FILES = ("sys/kernel/debug/rknpu/version", "proc/debug/rknpu/version", "sys/module/rknpu/version")
_LIBRKNNRT_FILES = ("usr/lib/librknnrt.so", "usr/lib64/librknnrt.so", "usr/lib/aarch64-linux-gnu/librknnrt.so",
                    "usr/local/lib/librknnrt.so")
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_RECORDED_VARS = _THREAD_VARS + ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_PROC_BIND", "OMP_PLACES",
                                 "GOMP_CPU_AFFINITY")
_VM_VENDORS = ("qemu", "kvm", "vmware", "virtualbox", "innotek", "xen", "bochs", "bhyve", "parallels",
               "amazon ec2", "google compute engine", "virtual machine")
_SCAN_LIMIT_BYTES = 16 * 1024 * 1024  # librknnrt.so 2.x is ~7 MB; never read more than this
_SCAN_CHUNK_BYTES = 1024 * 1024
_SCAN_OVERLAP_BYTES = 256  # a version string cut by a chunk boundary is found in the next round
_HOT_C = 80.0  # warn at or above this
_RISE_C = 15.0  # warn when a zone heats by more than this during a run
_DROP = 0.10  # warn when a clock falls by more than this fraction during a run
_GOVERNOR_NOTE = ("Note: CPU frequency governors could not be read (no cpufreq in sysfs, as in most VMs and "
                  "containers); CPU clocks are recorded as unknown.")


# ---- small helpers -------------------------------------------------------------------------------

def _is_real_root(root: str | Path) -> bool:
    return os.path.realpath(str(root)) == "/"


def _exists(root: str | Path, rel: str) -> bool:
    try:
        return (Path(root) / rel.lstrip("/")).exists()
    except OSError:
        return False


def _list_dir(root: str | Path, rel: str) -> list[str]:
    """Entry names of a directory (sysfs class entries are symlinks: listed too), [] if unreadable."""
    try:
        return sorted(os.listdir(Path(root) / rel))
    except OSError:
        return []


def _read_words(root: str | Path, rel: str) -> list[str] | None:
    text = _read(root, rel)
    return text.split() if text else None


def _read_nul_list(root: str | Path, rel: str) -> list[str]:
    """A device-tree string list ("a\\0b\\0") -> ["a", "b"]."""
    return [s.strip() for s in (_read(root, rel) or "").split("\0") if s.strip()]


def format_cpu_list(cpus: list[int]) -> str:
    """[0, 1, 2, 3, 6] -> '0-3,6' (the inverse of parse_cpu_list)."""
    parts: list[str] = []
    for cpu in sorted(set(cpus)):
        if parts and parts[-1].split("-")[-1] == str(cpu - 1):
            parts[-1] = f"{parts[-1].split('-')[0]}-{cpu}"
        else:
            parts.append(str(cpu))
    return ",".join(parts)


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---- CPU and board -------------------------------------------------------------------------------

def _cpuinfo_blocks(root: str | Path) -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per blank-line separated block, keys lower-cased."""
    blocks = []
    for chunk in re.split(r"\n\s*\n", _read(root, "proc/cpuinfo") or ""):
        fields: dict[str, str] = {}
        for line in chunk.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip().lower(), value.strip())
        if fields:
            blocks.append(fields)
    return blocks


def _arm_core_name(implementer: str | None, part: str) -> str:
    """'0x41', '0xd0b' -> 'Cortex-A76'; unknown parts keep their numbers."""
    try:
        known = (implementer is None or int(implementer, 16) == 0x41) and int(part, 16) in _ARM_PARTS
    except ValueError:
        known = False
    if known:
        return _ARM_PARTS[int(part, 16)]
    return f"CPU part {part}" + (f" (implementer {implementer})" if implementer else "")


def cpu_core_names(root: str | Path = "/") -> dict[int, str]:
    """CPU number -> core name for ARM CPUs that list 'CPU part' in /proc/cpuinfo ({} elsewhere)."""
    names = {}
    for block in _cpuinfo_blocks(root):
        if block.get("processor", "").isdigit() and "cpu part" in block:
            names[int(block["processor"])] = _arm_core_name(block.get("cpu implementer"), block["cpu part"])
    return names


def cpu_model(root: str | Path = "/") -> str | None:
    """'AMD EPYC 7763 ...', or for ARM the decoded cores ('4x Cortex-A55 + 4x Cortex-A76'), or 'Hardware'."""
    names = cpu_core_names(root)
    if names:
        counts: dict[str, int] = {}
        for cpu in sorted(names):
            counts[names[cpu]] = counts.get(names[cpu], 0) + 1
        return " + ".join(f"{n}x {name}" for name, n in counts.items())
    blocks = _cpuinfo_blocks(root)
    for key in ("model name", "hardware", "cpu model"):
        value = next((b[key] for b in blocks if b.get(key)), None)
        if value:
            return value
    return None


def board_info(root: str | Path = "/") -> dict[str, Any]:
    """Device-tree model and compatible strings, and whether this is an RK3588 (or RK3588S)."""
    compatible = _read_nul_list(root, "proc/device-tree/compatible")
    model = _read_nul_list(root, "proc/device-tree/model")
    return {"model": model[0] if model else None, "compatible": compatible,
            "rk3588": any(c in ("rockchip,rk3588", "rockchip,rk3588s") for c in compatible)}


def _physical_cores(root: str | Path, cpus: list[int]) -> int | None:
    """Distinct (package, cluster, core) ids from sysfs topology; psutil on the real machine as a fallback."""
    cores = set()
    for cpu in cpus:
        base = f"sys/devices/system/cpu/cpu{cpu}/topology/"
        core = _read_int(root, base + "core_id")
        if core is not None:
            cores.add((_read_int(root, base + "physical_package_id"), _read_int(root, base + "cluster_id"), core))
    if cores:
        return len(cores)
    return _psutil_call("cpu_count", logical=False) if _is_real_root(root) else None


def _psutil_call(name: str, *args: Any, **kwargs: Any) -> Any:
    try:
        import psutil

        return getattr(psutil, name)(*args, **kwargs)
    except Exception:  # psutil missing or failing on an odd kernel: the value is unknown
        return None


def cpu_info(root: str | Path = "/") -> dict[str, Any]:
    """Model, CPU counts, clusters (with core names on ARM and their caches), the caches of the first
    online CPU and the LLC size."""
    listed = parse_cpu_list(_read(root, "sys/devices/system/cpu/online"))
    online = online_cpus(root)
    real = _is_real_root(root)
    names = cpu_core_names(root)
    clusters = [dict(c, core=_cluster_core(c["cpus"], names), caches=caches(root, c["cpus"][0]) if c["cpus"] else [])
                for c in cpu_clusters(root)]
    return {
        "model": cpu_model(root),
        "logical_cpus": len(listed) or (os.cpu_count() if real else None),
        "physical_cores": _physical_cores(root, online),
        "online": online,
        "isolated": parse_cpu_list(_read(root, "sys/devices/system/cpu/isolated")),
        "affinity": sorted(os.sched_getaffinity(0)) if real and hasattr(os, "sched_getaffinity") else None,
        "clusters": clusters,
        "caches": caches(root, (online or [0])[0]),
        "llc_bytes": llc_bytes(root),
    }


def _cluster_core(cpus: list[int], names: dict[int, str]) -> str | None:
    kinds = sorted({names[c] for c in cpus if c in names})
    return "/".join(kinds) or None


# ---- the things that drift: clocks, governors, temperatures ---------------------------------------

def cpufreq_state(root: str | Path = "/") -> list[dict[str, Any]]:
    """Per online CPU: governor, scaling cur/min/max kHz and the hardware maximum (cpuinfo_max_freq)."""
    rows = []
    for cpu in online_cpus(root):
        base = f"sys/devices/system/cpu/cpu{cpu}/cpufreq/"
        rows.append({"cpu": cpu, "governor": _read(root, base + "scaling_governor"),
                     "cur_khz": _read_int(root, base + "scaling_cur_freq"),
                     "min_khz": _read_int(root, base + "scaling_min_freq"),
                     "max_khz": _read_int(root, base + "scaling_max_freq"),
                     "cpuinfo_max_khz": _read_int(root, base + "cpuinfo_max_freq")})
    return rows


def _devfreq_kind(name: str) -> str:
    lower = name.lower()
    if "dmc" in lower or "ddr" in lower:
        return "dram"
    return next((kind for kind in ("npu", "gpu") if kind in lower), "other")


def devfreq_state(root: str | Path = "/") -> list[dict[str, Any]]:
    """Every devfreq device (RK3588: 'dmc' = DRAM, 'fdab0000.npu' = NPU): governor and clocks in Hz."""
    rows = []
    for name in _list_dir(root, "sys/class/devfreq"):
        base = f"sys/class/devfreq/{name}/"
        rows.append({"name": name, "kind": _devfreq_kind(name), "governor": _read(root, base + "governor"),
                     "cur_hz": _read_int(root, base + "cur_freq"), "min_hz": _read_int(root, base + "min_freq"),
                     "max_hz": _read_int(root, base + "max_freq"),
                     "available_governors": _read_words(root, base + "available_governors")})
    return rows


def _zone_number(name: str) -> int:
    digits = name.removeprefix("thermal_zone")
    return int(digits) if digits.isdigit() else -1


def thermal_state(root: str | Path = "/") -> list[dict[str, Any]]:
    """Every thermal zone: its type (e.g. 'soc-thermal', 'bigcore0-thermal') and temperature in C."""
    zones = [n for n in _list_dir(root, "sys/class/thermal") if n.startswith("thermal_zone")]
    rows = []
    for zone in sorted(zones, key=_zone_number):
        milli = _read_int(root, f"sys/class/thermal/{zone}/temp")
        rows.append({"zone": zone, "type": _read(root, f"sys/class/thermal/{zone}/type"),
                     "temp_c": round(milli / 1000, 1) if milli is not None else None})
    return rows


def snapshot_dynamic(root: str | Path = "/") -> dict[str, Any]:
    """What drifts during a run (clocks, governors, temperatures), cheap to read before and after."""
    return {"timestamp": _utc_now(), "monotonic_seconds": time.monotonic(), "cpufreq": cpufreq_state(root),
            "devfreq": devfreq_state(root), "thermal": thermal_state(root)}


# ---- software -------------------------------------------------------------------------------------

def library_versions() -> dict[str, str | None]:
    """Installed versions from package metadata (nothing is imported: torch and rknn are slow)."""
    versions: dict[str, str | None] = {}
    for dist in _LIBRARIES:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except Exception:  # not installed, or broken metadata: unknown either way
            versions[dist] = None
    return versions


def blas_info() -> list[dict[str, Any]]:
    """BLAS and OpenMP libraries loaded in this process (threadpoolctl), after loading numpy's BLAS."""
    keys = ("user_api", "internal_api", "version", "num_threads", "threading_layer", "architecture", "prefix",
            "filepath")
    try:
        import numpy  # noqa: F401  (loads its BLAS, so threadpoolctl can see it)
        from threadpoolctl import threadpool_info

        return [{k: info[k] for k in keys if k in info} for info in threadpool_info()]
    except Exception:  # no numpy/threadpoolctl, or a library it cannot query
        return []


def scan_binary_for(path: str | Path, marker: bytes, limit: int = _SCAN_LIMIT_BYTES) -> str | None:
    """The printable text after ``marker`` (and an optional ':') in the first ``limit`` bytes of a file,
    starting with a digit: b'librknnrt version' finds '2.3.0 (c949ad889d@2024-11-07T11:35:33)'."""
    pattern = re.compile(re.escape(marker) + rb":?\s*(\d[\x20-\x7e]{0,120})")
    buf = b""
    try:
        with open(path, "rb") as f:
            while True:
                chunk = f.read(min(_SCAN_CHUNK_BYTES, limit - f.tell()))
                last = not chunk or f.tell() >= limit
                buf += chunk
                m = pattern.search(buf)
                if m and (last or m.start() < len(buf) - _SCAN_OVERLAP_BYTES):
                    return m.group(1).decode("ascii").strip()
                if last:
                    return None
                buf = buf[-_SCAN_OVERLAP_BYTES:]
    except OSError:
        return None


def npu_runtime(root: str | Path = "/") -> dict[str, Any]:
    """RKNPU kernel driver version (debugfs/procfs/module, when readable) and librknnrt.so version."""
    driver = next(((rel, text) for rel in _NPU_DRIVER_FILES if (text := _read(root, rel))), (None, None))
    lib = next((rel for rel in _LIBRKNNRT_FILES if _exists(root, rel)), None)
    return {"driver_version": driver[1], "driver_version_file": "/" + driver[0] if driver[0] else None,
            "librknnrt_path": "/" + lib if lib else None,
            "librknnrt_version": scan_binary_for(Path(root) / lib, b"librknnrt version") if lib else None}


def os_name(root: str | Path = "/") -> str | None:
    """PRETTY_NAME from os-release, e.g. 'Debian GNU/Linux 12 (bookworm)'."""
    for rel in ("etc/os-release", "usr/lib/os-release"):
        m = re.search(r'^PRETTY_NAME=(.*)$', _read(root, rel) or "", re.M)
        if m:
            return m.group(1).strip().strip("\"'") or None
    return None


def virtualization(root: str | Path = "/") -> dict[str, Any]:
    """Signs of a VM (cpuinfo hypervisor flag, DMI vendor, QEMU's ARM 'virt' board) or a container."""
    vm_evidence = []
    if any("hypervisor" in b.get("flags", "").split() for b in _cpuinfo_blocks(root)):
        vm_evidence.append("hypervisor flag in /proc/cpuinfo")
    for rel in ("sys/class/dmi/id/sys_vendor", "sys/class/dmi/id/product_name"):
        value = _read(root, rel) or ""
        if any(v in value.lower() for v in _VM_VENDORS):
            vm_evidence.append(f"/{rel}: {value}")
    if "linux,dummy-virt" in board_info(root)["compatible"]:
        vm_evidence.append("device tree: linux,dummy-virt")
    container_evidence = ["/" + rel for rel in (".dockerenv", "run/.containerenv") if _exists(root, rel)]
    return {"vm": bool(vm_evidence), "container": bool(container_evidence), "vm_evidence": vm_evidence,
            "container_evidence": container_evidence}


def _memory(root: str | Path) -> dict[str, int | None]:
    """MemTotal/MemAvailable in bytes from /proc/meminfo, psutil on the real machine as a fallback."""
    text = _read(root, "proc/meminfo") or ""
    found = {k: int(v) * 1024 for k, v in re.findall(r"^(MemTotal|MemAvailable):\s+(\d+)\s*kB", text, re.M)}
    if not found and _is_real_root(root):
        vm = _psutil_call("virtual_memory")
        found = {"MemTotal": vm.total, "MemAvailable": vm.available} if vm is not None else {}
    return {"total_bytes": found.get("MemTotal"), "available_bytes": found.get("MemAvailable")}


def capture_environment(root: str | Path = "/") -> dict[str, Any]:
    """Everything a results file records about the machine and software, JSON-ready.

    Keys: timestamp, hostname, kernel, os, machine, python, cpu, board, cpufreq, devfreq, thermal,
    memory, blas, versions, npu, env_vars, virtualization. Unreadable values are None.
    """
    uname = platform.uname()
    return {
        "timestamp": _utc_now(),
        "hostname": uname.node or None,
        "kernel": f"{uname.system} {uname.release} {uname.version}".strip() or None,
        "os": os_name(root),
        "machine": uname.machine or None,
        "python": {"implementation": platform.python_implementation(), "version": platform.python_version()},
        "cpu": cpu_info(root),
        "board": board_info(root),
        "cpufreq": cpufreq_state(root),
        "devfreq": devfreq_state(root),
        "thermal": thermal_state(root),
        "memory": _memory(root),
        "blas": blas_info(),
        "versions": library_versions(),
        "npu": npu_runtime(root),
        "env_vars": {k: os.environ[k] for k in _RECORDED_VARS if k in os.environ},
        "virtualization": virtualization(root),
    }


# ---- warnings -------------------------------------------------------------------------------------

def _mhz(khz: int | None) -> str:
    return f"{khz / 1000:.0f} MHz" if khz else "unknown"


def _cpus_by(rows: list[dict[str, Any]], key: Any) -> dict[Any, list[int]]:
    """Group CPU numbers by key(row), in first-seen order."""
    groups: dict[Any, list[int]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row["cpu"])
    return groups


def _brace(cpus: list[int]) -> str:
    """Shell path fragment for several CPUs: 'cpu4' or 'cpu{4,5,6,7}'."""
    return f"cpu{cpus[0]}" if len(cpus) == 1 else "cpu{" + ",".join(map(str, cpus)) + "}"


def _governor_warnings(env: dict[str, Any]) -> list[str]:
    known = [r for r in env.get("cpufreq") or [] if r.get("governor")]
    if not known:
        return [_GOVERNOR_NOTE]
    slow = _cpus_by([r for r in known if r["governor"] != "performance"], lambda r: r["governor"])
    if not slow:
        return []
    which = ", ".join(f"'{gov}' on CPUs {format_cpu_list(cpus)}" for gov, cpus in slow.items())
    return [f"CPU frequency governor is not 'performance' ({which}): clocks follow the load, so timings vary "
            "and can be too slow. "
            "Fix: echo performance | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor"]


def _devfreq_warning(dev: dict[str, Any]) -> str:
    name, gov = dev["name"], dev["governor"]
    what = "DRAM controller" if dev["kind"] == "dram" else "NPU"
    text = f"devfreq device '{name}' ({what}) uses governor '{gov}', not 'performance'"
    if gov == "dmc_ondemand":
        text += (": on RK3588, dmc_ondemand keeps DRAM at 528 MHz under CPU load, so memory-bound layers look "
                 "far slower than the hardware allows (ThomasKaiser/sbc-reviews issue #2)")
    elif dev["kind"] == "dram":
        text += ": the DRAM clock follows its own load estimate, so memory bandwidth varies between runs"
    else:
        text += ": the NPU clock ramps up with load, so short calls run at a low clock"
    available = dev.get("available_governors")
    if available and "performance" not in available:
        text += f" (this kernel offers only: {' '.join(available)})"
    return text + f". Fix: echo performance | sudo tee /sys/class/devfreq/{name}/governor"


def _devfreq_warnings(env: dict[str, Any]) -> list[str]:
    return [_devfreq_warning(d) for d in env.get("devfreq") or []
            if d.get("kind") in ("dram", "npu") and d.get("governor") not in (None, "performance")]


def _cap_warnings(state: dict[str, Any]) -> list[str]:
    """scaling_max_freq below cpuinfo_max_freq: thermal throttling or a cap someone set."""
    capped = [r for r in state.get("cpufreq") or []
              if r.get("max_khz") and r.get("cpuinfo_max_khz") and r["max_khz"] < r["cpuinfo_max_khz"]]
    return [f"CPUs {format_cpu_list(cpus)} are capped at {_mhz(cap)}, below their hardware maximum {_mhz(hw)} "
            f"(thermal throttling, or a limit that was set). Fix: cool the board, then "
            f"echo {hw} | sudo tee /sys/devices/system/cpu/{_brace(cpus)}/cpufreq/scaling_max_freq"
            for (cap, hw), cpus in _cpus_by(capped, lambda r: (r["max_khz"], r["cpuinfo_max_khz"])).items()]


def _fallen(before: list[dict], after: list[dict], id_key: str, value_key: str) -> list[tuple[Any, int, int]]:
    """(id, before, after) for rows at governor 'performance' whose value fell by more than _DROP."""
    old = {r.get(id_key): r for r in before}
    out = []
    for new in after:
        prev = old.get(new.get(id_key)) or {}
        a, b = new.get(value_key), prev.get(value_key)
        if new.get("governor") == prev.get("governor") == "performance" and a and b and a < b * (1 - _DROP):
            out.append((new[id_key], b, a))
    return out


def _drop_warnings(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[str]:
    if not before or not after:
        return []
    warnings = []
    cpus = _fallen(before.get("cpufreq") or [], after.get("cpufreq") or [], "cpu", "cur_khz")
    if cpus:
        groups = _cpus_by([{"cpu": c, "pair": (b, a)} for c, b, a in cpus], lambda r: r["pair"])
        which = "; ".join(f"CPUs {format_cpu_list(c)} {_mhz(b)} -> {_mhz(a)}" for (b, a), c in groups.items())
        warnings.append(f"CPU clocks fell during the run ({which}) although the governor is 'performance': the "
                        "board throttled (heat or power supply) and later samples ran slower. Fix: add cooling "
                        "and rerun; watch it with: watch -n1 cat /sys/devices/system/cpu/cpu*/cpufreq/scaling_cur_freq")
    for name, b, a in _fallen(before.get("devfreq") or [], after.get("devfreq") or [], "name", "cur_hz"):
        warnings.append(f"devfreq '{name}' clock fell during the run ({b / 1e6:.0f} -> {a / 1e6:.0f} MHz): throttled. "
                        f"Fix: add cooling and rerun; watch it with: watch -n1 cat /sys/class/devfreq/{name}/cur_freq")
    return warnings


def _temperature_warnings(env: dict[str, Any], before: dict | None, after: dict | None) -> list[str]:
    peak: dict[str, dict[str, Any]] = {}
    for state in (env, before, after):
        for z in (state or {}).get("thermal") or []:
            if z.get("temp_c") is not None and z["temp_c"] > peak.get(z["zone"], {}).get("temp_c", float("-inf")):
                peak[z["zone"]] = z
    warnings = []
    hot = [z for z in peak.values() if z["temp_c"] >= _HOT_C]
    if hot:
        which = ", ".join(f"{z['type'] or z['zone']} {z['temp_c']:.1f} C" for z in hot)
        warnings.append(f"Hot: {which} (at or above {_HOT_C:.0f} C). RK3588 boards typically throttle at 85 C "
                        "(sbc-bench), so clocks may drop mid-run. Fix: add a heatsink or fan and let the board "
                        "cool before measuring; check with: cat /sys/class/thermal/thermal_zone*/temp")
    old = {z["zone"]: z.get("temp_c") for z in (before or {}).get("thermal") or []}
    for z in (after or {}).get("thermal") or []:
        b, a = old.get(z["zone"]), z.get("temp_c")
        if b is not None and a is not None and a - b > _RISE_C:
            warnings.append(f"{z['type'] or z['zone']} heated by {a - b:.1f} C during the run ({b:.1f} -> {a:.1f} C): "
                            "sustained load is driving the board towards throttling. Fix: add cooling, or let it "
                            "cool between runs (check: cat /sys/class/thermal/thermal_zone*/temp)")
    return warnings


def _env_var_warnings(env: dict[str, Any]) -> list[str]:
    set_vars = {k: v for k, v in (env.get("env_vars") or {}).items() if k in _THREAD_VARS}
    if not set_vars:
        return []
    which = ", ".join(f"{k}={v}" for k, v in set_vars.items())
    return [f"{which} set in the environment: BLAS/OpenMP libraries use these thread counts whatever the "
            f"benchmark asks for. If unintended, fix: unset {' '.join(set_vars)}"]


def _vm_warnings(env: dict[str, Any]) -> list[str]:
    virt = env.get("virtualization") or {}
    if not virt.get("vm"):
        return []
    evidence = "; ".join(virt.get("vm_evidence") or [])
    return [f"Running in a virtual machine ({evidence}): the numbers are the VM's (its virtual CPUs and share of "
            "memory bandwidth), not the host hardware's, and clocks/governors/temperatures are hidden. "
            "Fix: run on the board itself for device figures."]


def environment_warnings(env: dict[str, Any], before: dict[str, Any] | None = None,
                         after: dict[str, Any] | None = None) -> list[str]:
    """Plain-words warnings, each with the command that fixes it. Unknown values give no warning
    (one note when no cpufreq governor could be read). before/after are snapshot_dynamic() results."""
    latest = after or before or env
    return (_governor_warnings(env) + _devfreq_warnings(env) + _cap_warnings(latest)
            + _drop_warnings(before, after) + _temperature_warnings(env, before, after)
            + _env_var_warnings(env) + _vm_warnings(env))


# ---- report lines ---------------------------------------------------------------------------------

def _si_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _cores_line(cpu: dict[str, Any]) -> str:
    counts = f"{cpu.get('logical_cpus') or 'unknown'} logical, {cpu.get('physical_cores') or 'unknown'} physical"
    clusters = [c for c in cpu.get("clusters") or [] if c.get("cpus")]
    if len(clusters) < 2:
        return counts
    return f"{counts}; clusters: {'; '.join(map(_cluster_text, clusters))}"


def _cluster_text(cluster: dict[str, Any]) -> str:
    """'big 4-7 (Cortex-A76, 2400 MHz)'."""
    details = ", ".join(x for x in (cluster.get("core"), _mhz(cluster.get("max_khz"))) if x != "unknown" and x)
    return f"{cluster['name']} {format_cpu_list(cluster['cpus'])}" + (f" ({details})" if details else "")


def _governors_line(env: dict[str, Any]) -> str:
    groups = _cpus_by([r for r in env.get("cpufreq") or [] if r.get("governor")], lambda r: r["governor"])
    return ", ".join(f"{gov} (CPUs {format_cpu_list(cpus)})" for gov, cpus in groups.items()) or "unknown"


def _devfreq_text(dev: dict[str, Any]) -> str:
    clock = f", {dev['cur_hz'] / 1e6:.0f} MHz" if dev.get("cur_hz") else ""
    return f"{dev['name']}: {dev.get('governor') or 'unknown'}{clock}"


def _devfreq_line(env: dict[str, Any], kind: str) -> str:
    return "; ".join(_devfreq_text(d) for d in env.get("devfreq") or [] if d.get("kind") == kind) or "unknown"


def _blas_line(env: dict[str, Any]) -> str:
    libs = [b for b in env.get("blas") or [] if b.get("user_api") == "blas"]
    return "; ".join(f"{b.get('internal_api')} {b.get('version') or ''} ({b.get('architecture') or 'arch unknown'}, "
                     f"{b.get('num_threads')} threads)" for b in libs) or "unknown"


def _temperature_line(env: dict[str, Any]) -> str:
    zones = [z for z in env.get("thermal") or [] if z.get("temp_c") is not None]
    if not zones:
        return "unknown"
    top = max(zones, key=lambda z: z["temp_c"])
    return f"max {top['temp_c']:.1f} C ({top.get('type') or top['zone']}) over {len(zones)} zones"


def _virtualization_line(env: dict[str, Any]) -> str:
    virt = env.get("virtualization") or {}
    found = [f"{k} ({'; '.join(virt.get(k + '_evidence') or [])})" for k in ("vm", "container") if virt.get(k)]
    return ", ".join(found) or "none detected"


def summarize_environment(env: dict[str, Any]) -> list[tuple[str, str]]:
    """Short (label, value) lines for a report; 'unknown' for what could not be read."""
    cpu, board, npu, mem = (env.get(k) or {} for k in ("cpu", "board", "npu", "memory"))
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v) or "unknown"
    python = env.get("python") or {}
    os_parts = [env.get("os") or "unknown", env.get("kernel") or "unknown kernel", env.get("machine")]
    npu_bits = [f"devfreq {_devfreq_line(env, 'npu')}", f"driver {npu.get('driver_version') or 'unknown'}",
                f"librknnrt {npu.get('librknnrt_version') or 'unknown'}"]
    lines = [
        ("CPU", cpu.get("model") or "unknown"),
        ("Board", (board.get("model") or "unknown") + (" (RK3588)" if board.get("rk3588") else "")),
        ("Cores", _cores_line(cpu)),
        ("Last-level cache", _si_bytes(cpu.get("llc_bytes"))),
        ("Memory", f"{_si_bytes(mem.get('total_bytes'))} total, {_si_bytes(mem.get('available_bytes'))} available"),
        ("BLAS", _blas_line(env)),
        ("CPU governors", _governors_line(env)),
        ("DRAM governor", _devfreq_line(env, "dram")),
        ("NPU", "; ".join(npu_bits)),
        ("Temperatures", _temperature_line(env)),
        ("Libraries", versions),
        ("Python", f"{python.get('implementation') or ''} {python.get('version') or 'unknown'}".strip()),
        ("OS", ", ".join(p for p in os_parts if p)),
        ("Virtualization", _virtualization_line(env)),
    ]
    if env.get("env_vars"):
        lines.append(("Environment variables", ", ".join(f"{k}={v}" for k, v in env["env_vars"].items())))
    return lines
