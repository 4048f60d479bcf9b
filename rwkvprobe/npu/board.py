"""NPU series: core-mask lists, and host-driven board runs with rknn-toolkit2 (the ``rknn`` series).

``--npu-cores 0,1,0_1_2`` measures each core mask as its own series, labelled ``rknnlite[core0]``,
``rknnlite[core1]``, ``rknnlite[cores0-2]`` (the runtime's automatic choice keeps the plain name,
``rknnlite``), for the on-board rknnlite backend and for the ``rknn`` series alike.

``analyze --backends rknn [--device-id ID]`` drives an RK3588 from this machine over adb with
rknn-toolkit2 in its own environment (``rwkvprobe toolkit install``): the worker
(``rknn_worker.py``, mode ``board``) loads each ``.rknn`` (from ``--rknn DIR`` or converted on the fly),
``init_runtime(target='rk3588', device_id=..., perf_debug=True, core_mask=...)``, checks one
``inference`` against a float64 reference, times ``inference`` calls with the host's wall clock (adb
transport and copies included: kept beside the board time, never used for the verdict) and reads
the board's own time with ``eval_perf(is_print=True, fix_freq=True)``: the per-layer table and
"Total Operator Elapsed Per Frame Time(us)", stored with the source label "board, eval_perf". The
adb server the toolkit starts is stopped afterwards (``adb kill-server`` with the wheel's own adb),
also when the run fails. Simulator times are never recorded.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path

from rwkvprobe.backends import Backend
from rwkvprobe.errors import InputError

#: the host-driven series' backend name (rknn-toolkit2's ``RKNN`` API, beside rknn-toolkit-lite2's RKNNLite)
BACKEND = "rknn"
#: backends whose series are expanded per core mask
NPU_BACKENDS = ("rknnlite", BACKEND)
TARGET = "rk3588"
#: --npu-cores value -> the RKNN / RKNNLite constant (the two libraries use the same names and values)
CORE_MASKS = {"auto": "NPU_CORE_AUTO", "0": "NPU_CORE_0", "1": "NPU_CORE_1", "2": "NPU_CORE_2",
              "0_1": "NPU_CORE_0_1", "0_1_2": "NPU_CORE_0_1_2", "all": "NPU_CORE_ALL"}
#: --npu-cores value -> the series label's suffix; auto keeps the plain backend name
MASK_LABELS = {"auto": None, "0": "core0", "1": "core1", "2": "core2", "0_1": "cores0-1", "0_1_2": "cores0-2",
               "all": "all"}
EVAL_PERF_SOURCE = "board, eval_perf"
EVAL_PERF_DETAIL = ("the board's own time per frame, eval_perf(fix_freq=True) after init_runtime(perf_debug=True): "
                    "the driver's per-operator times (per-layer timing on, which the toolkit says may slow a run)")
WALL_SOURCE = "host wall clock per inference() call over adb: adb transport and input/output copies included"
NO_BOARD = ("no RK3588 board found over adb: connect one (USB, or 'adb connect IP:PORT' for a network board) "
            "so that 'adb devices' lists it, or use --device rk3588 for the modelled verdict")
#: wall-clock calls and eval_perf repeats per point (quick / full)
CALLS = {True: 5, False: 20}
PERF_REPEATS = {True: 1, False: 3}


# ------------------------------------------------------------------------------------------------
# Core masks and series labels


def parse_core_masks(text: str | None) -> list[str]:
    """'0,1,0_1_2' -> ['0', '1', '0_1_2']; one value (the old form) still works. InputError otherwise."""
    values = [p.strip().lower() for p in ("auto" if text is None else text).split(",") if p.strip()]
    bad = [v for v in values if v not in CORE_MASKS]
    if bad or not values:
        raise InputError(f"--npu-cores {text!r}: {'unknown core mask ' + repr(bad[0]) if bad else 'no core mask'}; "
                         f"expected one or more of {', '.join(CORE_MASKS)}, separated by commas (e.g. 0,1,0_1_2)")
    return list(dict.fromkeys(values))


def series_label(backend: str, mask: str) -> str:
    """``rknnlite`` (auto), ``rknnlite[core0]``, ``rknn[cores0-2]``, ..."""
    suffix = MASK_LABELS[mask]
    return f"{backend}[{suffix}]" if suffix else backend


def split_label(label: str) -> tuple[str, str | None]:
    """A series label -> (backend, core mask); the mask is None for a backend without core masks."""
    base, _, rest = label.partition("[")
    if base not in NPU_BACKENDS:
        return label, None
    if not rest:
        return base, "auto"
    suffix = rest.rstrip("]")
    for mask, s in MASK_LABELS.items():
        if s == suffix:
            return base, mask
    raise InputError(f"series label {label!r}: unknown core mask {suffix!r}")


def series_labels(backend: str, masks: list[str]) -> list[str]:
    """One series per core mask for the NPU backends, the backend itself otherwise."""
    if backend not in NPU_BACKENDS:
        return [backend]
    return [series_label(backend, m) for m in masks]


def instantiate(label: str, settings):
    """The in-process backend of a series label, with its core mask and .rknn folder set."""
    from rwkvprobe.backends import get_backend

    base, mask = split_label(label)
    backend = get_backend(base, settings.threads)
    if base == "rknnlite":
        backend.rknn_dir = settings.rknn_dir
        backend.core_mask = mask
        backend.name = label  # measure_point labels its points with the series
    return backend


def split_board(pairs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(in-process pairs, host-driven board pairs)."""
    board = [p for p in pairs if split_label(p[0])[0] == BACKEND]
    return [p for p in pairs if p not in board], board


# ------------------------------------------------------------------------------------------------
# eval_perf's table

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LOG_PREFIX = re.compile(r"^[DIWE] RKNN: \[[^\]]*\]\s?")
_CYCLES = re.compile(r"^(\d+)/(\d+)/(\d+)$")
_NUM = re.compile(r"^\d+(?:\.\d+)?$")
_WORKLOAD = re.compile(r"^\d+(?:\.\d+)?%(?:/\d+(?:\.\d+)?%)+$")
_MAC = re.compile(r"^\d+(?:\.\d+)?(?:/\d+(?:\.\d+)?)+$")
#: 2.x "Total Operator Elapsed Per Frame Time(us): N"; 1.x "Total Operator Elapsed Time(us): N"
_TOTAL_US = re.compile(r"(Total Operator Elapsed (?:Per Frame )?Time)\s*\(us\):\s*(\d+(?:\.\d+)?)")
_TOTAL_RW = re.compile(r"Total Memory Read/Write Per Frame Size\s*\(KB\):\s*(\d+(?:\.\d+)?)")
_TOTAL_RW_MB = re.compile(r"Total Memory RW Amount\s*\(MB\):\s*(\d+(?:\.\d+)?)")
_SUMMARY_US = re.compile(r"^Total Time\s*\(us\):\s*(\d+(?:\.\d+)?)")
_FREQ = re.compile(r"^(CPU|NPU|DDR) Current Frequency List:?")
#: 1.x WorkLoad cells end in " - Up:12.3%" (the theoretical gain): one cell, three tokens
_UP = re.compile(r"\s+-\s+Up:\s*\S+")
#: column names the 1.x tables print with a space inside
_TWO_WORD = ("DDR Cycles", "NPU Cycles", "Total Cycles", "Task Number", "Task Size", "Regcmd Size", "Call Number",
             "CPU Time(us)", "GPU Time(us)", "NPU Time(us)", "Total Time(us)", "Time Ratio(%)")
TARGETS = ("CPU", "NPU", "GPU")
#: the two table layouts read (rknn-toolkit2 1.x: three cycle columns; 2.x: one Cycles(DDR/NPU/Total) column)
FORMAT_1X = "rknn-toolkit2 1.x layer table"
FORMAT_2X = "rknn-toolkit2 2.x layer table"


def _header_tokens(line: str) -> list[str]:
    for name in _TWO_WORD:
        line = line.replace(name, name.replace(" ", ""))
    return line.split()


def _row_starts(tokens: list[str]) -> bool:
    return len(tokens) > 3 and tokens[0].isdigit() and tokens[3] in TARGETS


def _row_complete(tokens: list[str], header: list[str] | None) -> bool:
    """Has the row all its columns (one may be blank: MacUsage of a CPU operator)? A row the paste
    wrapped onto the next line is not complete until that line is joined."""
    if header:
        return len(tokens) >= len(header) - 1
    return _layer_row(tokens, None) is not None


def _layer_row(tokens: list[str], header: list[str] | None) -> dict | None:
    """One row of the per-layer table, or None.

    Columns (RKNPU User Guide, model performance evaluation): ID, OpType, DataType, Target,
    InputShape, OutputShape, the cycles (2.x: one Cycles(DDR/NPU/Total) cell; 1.x: DDR Cycles, NPU
    Cycles and Total Cycles), Time(us), MacUsage(%), WorkLoad(0/1/2), (1.x: Task Number, Task Size,
    Regcmd Size), RW(KB), FullName. Every column up to Time(us) is one token (a shape list has no
    spaces; an absent one is printed as a backslash); MacUsage may be blank, so the later columns are
    found by their form, RW(KB) as the one before FullName.
    """
    if len(tokens) < 8 or not _row_starts(tokens):
        return None
    row = {"id": int(tokens[0]), "op": tokens[1], "dtype": tokens[2], "target": tokens[3],
           "input_shape": tokens[4], "output_shape": tokens[5], "ddr_cycles": None, "npu_cycles": None,
           "total_cycles": None, "time_us": None, "mac_usage": None, "workload": None, "rw_kb": None,
           "name": tokens[-1]}
    if header and "DDRCycles" in header:  # 1.x: three cycle columns
        ci = header.index("DDRCycles")
        cycles = tokens[ci:ci + 3]
        if len(cycles) < 3 or not all(c.isdigit() for c in cycles):
            return None
        row["ddr_cycles"], row["npu_cycles"], row["total_cycles"] = map(int, cycles)
    else:
        ci = next((i for i, t in enumerate(tokens) if _CYCLES.match(t)), None)
        if ci is not None:
            row["ddr_cycles"], row["npu_cycles"], row["total_cycles"] = map(int, tokens[ci].split("/"))
    if header and "Time(us)" in header:
        ti = header.index("Time(us)")
    else:
        ti = ci + 1 if ci is not None else None
    if ti is None or ti >= len(tokens) - 1 or not _NUM.match(tokens[ti]):
        return None
    row["time_us"] = float(tokens[ti])
    rest = tokens[ti + 1:-1]  # between Time(us) and FullName
    for t in rest:
        if _WORKLOAD.match(t) and row["workload"] is None:
            row["workload"] = [float(x.rstrip("%")) for x in t.split("/")]
        elif _MAC.match(t) and row["workload"] is None and row["mac_usage"] is None:
            row["mac_usage"] = [float(x) for x in t.split("/")]
    if rest and _NUM.match(rest[-1]) and (not header or header[-2].startswith("RW")):
        row["rw_kb"] = float(rest[-1])
    return row


def _ranking_row(tokens: list[str], header: list[str] | None) -> dict | None:
    """One row of the Operator Time Consuming Ranking table (2.x: with GPUTime; 1.x: without)."""
    cols = header[1:] if header else ["CallNumber", "CPUTime(us)", "GPUTime(us)", "NPUTime(us)", "TotalTime(us)",
                                      "TimeRatio(%)"]
    values = tokens[1:]
    if tokens[0] in ("OpType", "Total") or len(values) < len(cols) - 1 or \
            not all(_NUM.match(v.rstrip("%")) for v in values[:len(cols)]):
        return None
    got = dict(zip(cols, (float(v.rstrip("%")) for v in values)))
    if "CallNumber" not in got or "TotalTime(us)" not in got:
        return None
    return {"op": tokens[0], "calls": int(got["CallNumber"]), "cpu_us": got.get("CPUTime(us)"),
            "gpu_us": got.get("GPUTime(us)"), "npu_us": got.get("NPUTime(us)"), "total_us": got["TotalTime(us)"],
            "ratio_pct": got.get("TimeRatio(%)")}


def parse_eval_perf(text: str) -> dict:
    """The board's timing that ``eval_perf()`` prints (and returns as a string), as numbers.

    Reads the table of rknn-toolkit2 2.x (one Cycles(DDR/NPU/Total) column, "Total Operator Elapsed
    Per Frame Time(us)") and of 1.x (three cycle columns, WorkLoad with "- Up:", "Total Operator
    Elapsed Time(us)", "Total Memory RW Amount(MB)"); tests/data/eval_perf holds captures of both.

    ``layers``: the per-layer table (perf_debug=True) with ``time_us`` and the compiler's cycles;
    ``total_us``: the "Total Operator Elapsed ... Time(us)" line (else the perf_debug=False "Total
    Time(us)" line, else the sum of the layer times when every row was read; ``total_from`` says
    which); ``rw_kb`` / ``rw_mb``: the per-frame memory traffic as printed; ``ranking``: the
    Operator Time Consuming Ranking table; ``frequencies``: the CPU/NPU/DDR frequency lists printed
    with fix_freq; ``format``: which table layout; ``unread_rows``: IDs of layer rows that could not
    be read (a row is never guessed). Lines of the runtime's own log format (``D RKNN: [time] ...``),
    terminal colours and rows a paste wrapped onto two lines are accepted.
    """
    layers: list[dict] = []
    ranking: list[dict] = []
    unread: list[str] = []
    freqs: dict[str, list[int]] = {}
    total_us = summary_us = rw_kb = rw_mb = total_from = fmt = None
    section = header = rank_header = freq = pending = None

    def flush() -> None:
        nonlocal pending
        if pending is not None:
            row = _layer_row(pending, header)
            if row is None:
                unread.append(pending[0])
            else:
                layers.append(row)
        pending = None

    for raw in text.splitlines():
        s = _LOG_PREFIX.sub("", _ANSI.sub("", raw)).strip()
        if not s or set(s) <= set("-=*"):
            continue
        if freq and s.startswith("-"):
            value = s.lstrip("- ").strip()
            if value.isdigit():
                freqs[freq].append(int(value))
            continue
        freq = None
        if m := _FREQ.match(s):
            flush()
            freq = m.group(1)
            freqs[freq] = [int(v) for v in re.findall(r"\d+", s[m.end():])]
            continue
        if m := _TOTAL_US.search(s):
            flush()
            total_us, total_from, section = float(m.group(2)), m.group(1) + "(us)", None
            continue
        if m := _TOTAL_RW.search(s):
            rw_kb = float(m.group(1))
            continue
        if m := _TOTAL_RW_MB.search(s):
            rw_mb = float(m.group(1))
            continue
        if m := _SUMMARY_US.match(s):
            flush()
            summary_us = float(m.group(1))
            continue
        if "Information Table" in s:
            flush()
            section = "layers" if s.startswith("Network Layer") else None
            header = None
            continue
        if "Time Consuming Ranking" in s or "Time-Consuming Ranking" in s:
            flush()
            section, rank_header = "ranking", None
            continue
        tokens = _UP.sub("", s).split()
        if tokens[0] == "ID" and "OpType" in tokens:  # 1.x prints no title above its layer table
            flush()
            section, header = "layers", _header_tokens(_UP.sub("", s))
            fmt = FORMAT_1X if "DDRCycles" in header else FORMAT_2X if "Cycles(DDR/NPU/Total)" in header else None
            continue
        if section == "layers":
            if _row_starts(tokens):
                flush()
                pending = tokens
            elif pending is not None:  # the rest of a row the paste wrapped
                pending = pending + tokens
            if pending is not None and _row_complete(pending, header):
                flush()
        elif section == "ranking":
            if tokens[0] == "OpType":
                rank_header = _header_tokens(s)
            elif (row := _ranking_row(tokens, rank_header)) is not None:
                ranking.append(row)
    flush()
    if total_us is None and summary_us is not None:
        total_us, total_from = summary_us, "Total Time(us)"
    elif total_us is None and layers and not unread:
        total_us, total_from = sum(r["time_us"] for r in layers), "sum of the per-layer times"
    return {"layers": layers, "total_us": total_us, "total_from": total_from, "rw_kb": rw_kb, "rw_mb": rw_mb,
            "npu_us": sum(r["time_us"] for r in layers if r["target"] == "NPU") if layers and not unread else None,
            "ranking": ranking, "frequencies": freqs, "format": fmt, "unread_rows": unread}


_EXC_LINE = re.compile(r"^(?:E \w+: )?((?:[A-Za-z_][\w.]*)?(?:Error|Exception)): (.+)$")
_FRAME = re.compile(r'^File "[^"]*", line \d+, in ([\w.<>]+)')
#: what rwkvprobe knows of a toolkit's failure inside eval_perf, by the function that raised
_FAILURE_HINTS = {
    "format_perf_detail": "a fault of the toolkit's own table formatting with perf_debug=True (seen with 1.5.0, "
                          "rknn-toolkit2 issue #219): use another rknn-toolkit2 version",
    "get_ddr_freq": "the board's kernel does not give the DDR frequency that eval_perf(fix_freq=True) reads "
                    "(no /sys/class/devfreq/dmc)",
    "get_hardware_freq": "the toolkit could not read the board's frequencies for eval_perf(fix_freq=True)",
}


def toolkit_failure(text: str) -> tuple[str, str] | None:
    """(function, 'Error: message') of an exception the toolkit raised or logged inside eval_perf, from
    the traceback text; None when the text holds none."""
    lines = [_LOG_PREFIX.sub("", _ANSI.sub("", ln)).strip() for ln in (text or "").splitlines()]
    for i in range(len(lines) - 1, -1, -1):
        m = _EXC_LINE.match(lines[i])
        if not m or not any(_FRAME.match(x) for x in lines[:i]):
            continue
        frame = next((f.group(1) for x in reversed(lines[:i]) if (f := _FRAME.match(x))), "")
        func = frame.rsplit(".", 1)[-1]
        if func in ("e", "error_catch_wrapper"):  # the toolkit's logger re-raising its own message
            func = next((f.group(1).rsplit(".", 1)[-1] for x in reversed(lines[:i]) if (f := _FRAME.match(x))
                         and f.group(1).rsplit(".", 1)[-1] not in ("e", "error_catch_wrapper")), func)
        return func, f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2).strip()}"
    return None


def eval_perf_problem(text: str, toolkit_version: str | None, error: str | None = None) -> str | None:
    """Why eval_perf gave no board time, in one line that names the toolkit version; None when
    :func:`parse_eval_perf` reads a time from ``text``. ``error``: what the call raised, if it did."""
    version = f"rknn-toolkit2 {toolkit_version or 'of unknown version'}"
    failed = toolkit_failure(text)
    if failed is None and error:
        failed = ("eval_perf", " ".join(str(error).split())[:200])
    if failed is not None:
        func, what = failed
        hint = _FAILURE_HINTS.get(func)
        return (f"{version} failed inside its own eval_perf ({func}: {' '.join(what.split())[:200]})"
                + (f": {hint}" if hint else "") + "; no board time for this point")
    perf = parse_eval_perf(text or "")
    if perf["total_us"] is not None:
        return None
    if perf["unread_rows"]:
        return (f"{version}: eval_perf printed no total and {len(perf['unread_rows'])} layer row(s) this parser "
                f"cannot read (ID {', '.join(perf['unread_rows'][:5])}); no board time for this point")
    said = next((ln.strip()[:160] for ln in (text or "").splitlines()
                 if re.match(r"^(?:[EW] |W RKNNAPI|E RKNNAPI)", ln.strip())), None)
    return (f"{version}: eval_perf printed no time in a format this parser reads (no 'Total Operator Elapsed "
            f"... Time(us)', 'Total Time(us)' or layer table" + (f"; it said: {said}" if said else "")
            + "); no board time for this point")


# ------------------------------------------------------------------------------------------------
# adb: find the wheel's own, see whose server runs, stop ours


def adb_path() -> str | None:
    """The adb that rknn-toolkit2 bundles in the toolkit environment (the one it starts), else PATH's."""
    from rwkvprobe.npu import toolkit

    machine = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(
        platform.machine().lower(), platform.machine().lower())
    pattern = str(toolkit.toolkit_dir() / "lib" / "python*" / "site-packages" / "rknn" / "3rdparty" /
                  "platform-tools" / "adb" / "*" / "adb")
    found = sorted(glob.glob(pattern))
    for p in found:
        if machine in Path(p).parent.name:
            return p
    return found[0] if found else shutil.which("adb")


def adb_servers() -> set[int]:
    """PIDs of running adb servers (``adb ... fork-server server``), zombies left out."""
    import psutil

    pids = set()
    for p in psutil.process_iter(["name", "cmdline", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmd = p.info["cmdline"] or []
            if (p.info["name"] == "adb" or (cmd and os.path.basename(cmd[0]) == "adb")) and "fork-server" in cmd:
                pids.add(p.pid)
        except (psutil.Error, TypeError):
            continue
    return pids


def stop_adb(adb: str | None, before: set[int], wait: float = 5.0) -> dict:
    """Stop an adb server started since ``before`` was taken (``adb kill-server``); leave one that was there."""
    import psutil

    ours = adb_servers() - before
    note = {"started": sorted(ours), "stopped": False, "kept_running": sorted(before & adb_servers())}
    if not ours:
        note["stopped"] = True
        return note
    if adb:
        try:
            subprocess.run([adb, "kill-server"], capture_output=True, timeout=15)
        except (OSError, subprocess.SubprocessError):
            pass
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and adb_servers() & ours:
        time.sleep(0.1)
    for pid in adb_servers() & ours:  # kill-server did not take: end the servers we started, by their id
        try:
            psutil.Process(pid).terminate()
        except psutil.Error:
            pass
    note["stopped"] = not (adb_servers() & ours)
    return note


DEVICE_TREE = "/proc/device-tree/compatible"


def on_board() -> bool:
    """Is this machine itself an RK3588 (the full toolkit run on the board)?"""
    try:
        return platform.machine() == "aarch64" and b"rockchip,rk3588" in Path(DEVICE_TREE).read_bytes()
    except OSError:
        return False


def adb_devices(adb: str) -> tuple[list[str], dict[str, str]]:
    """(serials ready for use, {serial: state} of those that are not: unauthorized, offline, ...)."""
    proc = subprocess.run([adb, "devices"], capture_output=True, text=True, timeout=60)
    ready, other = [], {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) < 2 or line.startswith(("List of devices", "*")):
            continue
        if parts[1] == "device":
            ready.append(parts[0])
        else:
            other[parts[0]] = parts[1]
    return ready, other


_PROBED: dict[tuple, list[str]] = {}


def probe_board(device_id: str | None) -> list[str]:
    """The boards adb lists (the wheel's adb; the server it starts is stopped again); InputError if none fits.

    On an RK3588 itself (the full toolkit on the board) adb may have nothing to list: init_runtime decides.
    """
    key = (device_id, str(adb_path()))
    if key in _PROBED:
        return _PROBED[key]
    if on_board():
        return []
    adb = adb_path()
    if adb is None:
        raise InputError("no adb found: the rknn-toolkit2 wheel in the toolkit environment has none and none is on "
                         "PATH (reinstall it: 'rwkvprobe toolkit install')")
    before = adb_servers()
    try:
        ready, other = adb_devices(adb)
    except (OSError, subprocess.SubprocessError) as e:
        raise InputError(f"{adb} devices failed ({e}): {NO_BOARD}") from None
    finally:
        stop_adb(adb, before)
    if device_id is not None and device_id not in ready:
        if device_id in other:
            raise InputError(f"board {device_id} is {other[device_id]} over adb: accept the USB debugging prompt "
                             "on the board or reconnect it")
        raise InputError(f"no board with ID {device_id!r} over adb (ready: {', '.join(ready) or 'none'}): "
                         "use an ID that 'adb devices' lists")
    if not ready:
        if other:
            raise InputError(f"no usable board over adb ({', '.join(f'{k} is {v}' for k, v in other.items())}): "
                             "accept the USB debugging prompt on the board or reconnect it")
        raise InputError(NO_BOARD)
    if device_id is None and len(ready) > 1:
        raise InputError(f"{len(ready)} boards over adb ({', '.join(ready)}): choose one with --device-id")
    _PROBED[key] = ready
    return ready


# ------------------------------------------------------------------------------------------------
# The backend as analyze plans it (its work runs in the toolkit worker, not in this process)


class RknnBoardBackend(Backend):
    """rknn-toolkit2 driving an RK3588 over adb: planned like a backend, run by :func:`run_series`."""

    name = BACKEND
    dtypes = ("fp16", "int8")
    default_dtypes = ("fp16",)
    formats = {"int8": "rknn8"}  # w8a8, as rknnlite
    notes = {"fp16": "the NPU computes in fp16; the board's eval_perf time per frame (host adb wall time beside it)",
             "int8": "w8a8 (activations quantized too); the board's eval_perf time per frame"}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        from rwkvprobe.npu import toolkit

        if not toolkit.installed():
            return (f"the RKNN toolkit environment is not installed ({toolkit.toolkit_dir()}): run "
                    "'rwkvprobe toolkit install'")
        return None


def check_ready(settings) -> None:
    """Refuse in one line, before anything is written: no toolkit environment, or no board over adb."""
    from rwkvprobe.npu import toolkit

    toolkit.require_toolkit()
    probe_board(getattr(settings, "device_id", None))


def describe(pairs: list[tuple[str, str]], settings) -> dict:
    from rwkvprobe.npu import toolkit

    out = {}
    for label in dict.fromkeys(b for b, _ in pairs):
        _, mask = split_label(label)
        out[label] = {"name": label, "rknn-toolkit2": toolkit.TOOLKIT_VERSION, "target": TARGET,
                      "device_id": getattr(settings, "device_id", None), "core_mask": mask,
                      "rknn_dir": str(settings.rknn_dir) if settings.rknn_dir else "converted on the fly",
                      "timing": f"{EVAL_PERF_SOURCE}; {WALL_SOURCE} kept beside it"}
    return out


# ------------------------------------------------------------------------------------------------
# The run


def _models(analysis, dtypes: list[str], progress) -> tuple[Path, dict]:
    """(folder, {(dtype, m, k, n): manifest entry}) of the .rknn models: --rknn DIR, or converted now."""
    from rwkvprobe.measure.points import onnx_cache_dir
    from rwkvprobe.npu import toolkit

    s = analysis.settings
    if s.rknn_dir is not None:
        folder = Path(s.rknn_dir)
        manifest = toolkit.read_convert_manifest(folder)
        if manifest.get("target", TARGET) != TARGET:
            raise InputError(f"{folder}: converted for {manifest.get('target')}, not {TARGET}")
    else:
        folder = onnx_cache_dir().parent / f"rknn-board-{TARGET}"
        progress.stage(f"board: converting the models for {TARGET} (reused when already there)")
        manifest = toolkit.convert(analysis.layers, folder, dtypes, s.tokens, TARGET, simulate=False,
                                   progress=progress.note, with_ceilings=True)
    return folder, {(e["dtype"], e["m"], e["k"], e["n"]): e for e in manifest["models"]}


def _onnx_for(folder: Path, entry: dict, onnx_dir: Path) -> Path:
    """The ONNX model a .rknn was converted from (its float64 reference), regenerated if it is gone."""
    from rwkvprobe.measure import onnxgen

    if entry.get("onnx") and (folder / entry["onnx"]).is_file():
        return folder / entry["onnx"]
    spec = onnxgen.ModelSpec(entry["m"], entry["k"], entry["n"], "fp32")
    path = Path(onnx_dir) / spec.filename
    if not path.is_file():
        onnxgen.write_model(spec, Path(onnx_dir), onnxgen.DEFAULT_OPSET)
    return path


def run_jobs(jobs: list[dict], device_id: str | None, log_dir: Path) -> dict:
    """Run the board jobs in the toolkit worker; the adb server it starts is stopped whatever happens.

    InputError (one line) when no job reached the board: no board, or the runtime did not start.
    """
    from rwkvprobe.npu import toolkit

    py = toolkit.require_toolkit()
    adb = adb_path()
    before = adb_servers()
    try:
        response = toolkit._run_worker(py, {"mode": "board", "target": TARGET, "device_id": device_id,
                                            "log_dir": str(log_dir), "jobs": jobs})
    finally:
        response_adb = stop_adb(adb, before)  # the worker stops its own; this is the safety net
    response["adb_host_check"] = response_adb
    if jobs and not any(j.get("ok") for j in response.get("jobs", [])):
        first = next((j for j in response.get("jobs", []) if j.get("error")), None)
        if response.get("no_board") or (first and first.get("runtime_failed") and not first.get("devices")):
            raise InputError(NO_BOARD)
        why = (first or {}).get("error") or response.get("error") or "no result"
        raise InputError(f"the board run failed: {str(why).splitlines()[0][:300]}")
    return response


def _point(job: dict, res: dict | None, out_dir: Path, tolerance: dict, toolkit_version: str | None = None) -> dict:
    from rwkvprobe.backends import Workload
    from rwkvprobe.measure.timing import summarize

    w = Workload(job["m"], job["k"], job["n"], job["dtype"], scheme="rknn8" if job["dtype"] == "int8" else "")
    point = {"backend": job["label"], "dtype": job["dtype"], "m": job["m"], "k": job["k"], "n": job["n"],
             "flops": w.flops, "bytes": w.bytes_moved, "bytes_per_weight": w.bytes_per_weight, "format": w.label,
             "rotation": {"copies": 1, "note": "one loaded model on the board; the NPU reads its weights from "
                                               "DRAM every run (no host cache in the way)"},
             "check": None, "timing": None, "error": None, "source": EVAL_PERF_SOURCE}
    if res is None:
        point["error"] = job.get("error") or "not run"
        return point
    if res.get("check"):
        tol = tolerance[job["dtype"]]
        c = res["check"]
        ok = bool(c.get("finite")) and c.get("rel_err") is not None and c["rel_err"] <= tol
        point["check"] = {"ok": ok, "rel_err": c.get("rel_err"), "tolerance": tol, "where": "board",
                          "detail": "" if ok else ("non-finite output" if not c.get("finite")
                                                   else f"relative error {c['rel_err']:.2e} > {tol:.0e}")}
    if not res.get("ok"):
        point["error"] = str(res.get("error") or "failed").splitlines()[0][:300]
        return point
    if res.get("wall_seconds"):
        point["host_wall"] = {**summarize(res["wall_seconds"]), "samples": res["wall_seconds"], "source": WALL_SOURCE}
    perfs, logs, problems = [], [], []
    for rep in res.get("eval_perf", []):
        log = Path(rep["log"]) if rep.get("log") else None
        if log is not None:
            logs.append(os.path.relpath(log, out_dir))
        text = rep.get("returned") or ""
        parsed = parse_eval_perf(text)
        if parsed["total_us"] is None and log is not None and log.is_file():
            text = log.read_text(errors="replace") + "\n" + text
            parsed = parse_eval_perf(text)
        if parsed["total_us"] and not rep.get("error"):
            perfs.append(parsed)
            continue
        problems.append(eval_perf_problem((rep.get("traceback") or "") + "\n" + text, toolkit_version, rep.get("error"))
                        or f"rknn-toolkit2 {toolkit_version}: eval_perf printed a zero time")
    if not perfs:
        where = ", ".join(logs) or "the worker log"
        point["error"] = (problems[0] if problems else "eval_perf was not run") + f" (see {where})"
        return point
    if point["check"] and point["check"]["ok"]:
        samples = [p["total_us"] * 1e-6 for p in perfs]
        point["timing"] = {**summarize(samples), "samples": samples, "source": EVAL_PERF_SOURCE,
                           "detail": EVAL_PERF_DETAIL}
    last = perfs[-1]
    point["eval_perf"] = {"total_us": [p["total_us"] for p in perfs], "total_from": last["total_from"],
                          "npu_us": last["npu_us"], "rw_kb": last["rw_kb"], "rw_mb": last["rw_mb"],
                          "format": last["format"], "frequencies": last["frequencies"],
                          "layers": last["layers"], "logs": logs}
    return point


def run_series(analysis, pairs: list[tuple[str, str]], progress) -> None:
    """Measure the ``rknn`` series on the board: the ceiling shapes and every missing layer point."""
    from rwkvprobe.fsutil import ensure_writable_dir
    from rwkvprobe.measure.points import summarize_ceilings
    from rwkvprobe.npu import toolkit

    s, r = analysis.settings, analysis.results
    have = {(c["backend"], c["dtype"]) for c in r["ceilings"]}
    done = {(p["backend"], p["dtype"], p["m"], p["k"], p["n"]) for p in r["measurements"]}
    ceiling_shapes = toolkit.ceiling_specs()
    layer_shapes = [(m, k, n) for (k, n) in analysis.layers.unique_shapes() for m in s.tokens]
    wanted = []  # (label, dtype, shape, role)
    for label, d in pairs:
        if (label, d) not in have:
            wanted += [(label, d, shape, "ceiling") for shape in ceiling_shapes]
        wanted += [(label, d, shape, "layer") for shape in layer_shapes if (label, d, *shape) not in done]
    if not wanted:
        return
    folder, models = _models(analysis, sorted({d for _, d in pairs}), progress)
    log_dir = ensure_writable_dir(analysis.out_dir / "board")
    quick = bool(s.quick)
    jobs, seen = [], {}
    for label, d, (m, k, n), _role in wanted:
        key = (label, d, m, k, n)
        if key in seen:
            continue
        _, mask = split_label(label)
        job = {"id": f"{label.replace('[', '_').replace(']', '')}_m{m}_k{k}_n{n}_{d}", "label": label, "dtype": d,
               "m": m, "k": k, "n": n, "core_mask": CORE_MASKS[mask], "calls": CALLS[quick],
               "perf_repeats": PERF_REPEATS[quick], "seed": 7}
        entry = models.get((d, m, k, n))
        if entry is None or not entry.get("ok", True) or not (folder / entry["file"]).is_file():
            job["error"] = (f"no {d} .rknn for M={m} {k}x{n} in {folder}" if entry is None
                            else f"its conversion failed: {entry.get('error') or 'see its build log'}")
        else:
            job["rknn"] = str(folder / entry["file"])
            job["onnx"] = str(_onnx_for(folder, entry, s.onnx_dir))
        seen[key] = job
        jobs.append(job)
    runnable = [j for j in jobs if "rknn" in j]
    progress.stage(f"board: {len(runnable)} models on the {TARGET} over adb "
                   f"({', '.join(dict.fromkeys(label for label, _ in pairs))})")
    response = run_jobs(runnable, getattr(s, "device_id", None), log_dir) if runnable else {"jobs": []}
    results = {res["id"]: res for res in response.get("jobs", [])}
    tol = toolkit.SIM_TOLERANCE  # the NPU against float64: fp16 rounding, w8a8 quantization
    version = (response.get("versions") or {}).get("rknn-toolkit2") or toolkit.TOOLKIT_VERSION
    points = {key: _point(job, results.get(job["id"]), analysis.out_dir, tol, version) for key, job in seen.items()}
    r.setdefault("board", {}).update({"device_id": getattr(s, "device_id", None), "target": TARGET,
                                      "sdk_version": response.get("sdk_version"),
                                      "adb": response.get("adb"), "adb_host_check": response.get("adb_host_check")})
    overhead, *compute, gemv = ceiling_shapes
    for label, d in pairs:
        if (label, d) not in have:
            c = {"backend": label, "dtype": d, "source": EVAL_PERF_SOURCE,
                 "overhead": points.get((label, d, *overhead)),
                 "compute": [points[(label, d, *shape)] for shape in compute if (label, d, *shape) in points],
                 "gemv": points.get((label, d, *gemv))}
            c.update(summarize_ceilings(c))
            if not on_board() and c.get("gemv_gbps"):
                # this machine's DRAM is not the board's: the series' W is what the NPU streams on the board
                c["bandwidth_gbps"] = c["gemv_gbps"]
                c["bandwidth_source"] = "the board's cold GEMV (M=1, 4096x8192) on the NPU, eval_perf"
            r["ceilings"].append(c)
    for label, d, shape, role in wanted:
        if role == "layer" and (label, d, *shape) not in done:
            r["measurements"].append(points[(label, d, *shape)])
            done.add((label, d, *shape))
    analysis.save()


# ------------------------------------------------------------------------------------------------
# Report


def report_section(results: dict) -> list[str]:
    """The board measurements: eval_perf time beside the host's wall time over adb, per point."""
    points = [p for p in results.get("measurements", []) if p.get("source") == EVAL_PERF_SOURCE]
    for c in results.get("ceilings", []):
        if c.get("source") == EVAL_PERF_SOURCE:
            points += [p for p in [c.get("overhead"), *(c.get("compute") or []), c.get("gemv")] if p]
    if not points:
        return []
    board = results.get("board") or {}

    def us(x):
        return f"{x:.0f} µs" if x is not None else "-"

    rows = []
    for p in points:
        perf = p.get("eval_perf") or {}
        t = (p.get("timing") or {}).get("median_seconds")
        wall = (p.get("host_wall") or {}).get("median_seconds")
        npu = [r for r in perf.get("layers", []) if r.get("target") == "NPU"]
        load = ("/".join(f"{x:.0f}%" for x in npu[0]["workload"]) if npu and npu[0].get("workload") else "-")
        status = ("WRONG" if p.get("check") and not p["check"]["ok"] else (p.get("error") or "ok"))
        rows.append(f"| {p['backend']} {p['dtype']} | {p['m']}x{p['k']}x{p['n']} | {us(t * 1e6 if t else None)} | "
                    f"{us(perf.get('npu_us'))} | {us(wall * 1e6 if wall else None)} | {load} | {status[:80]} |")
    return ["## Board measurements (rknn-toolkit2 over adb)", "",
            f"Board {board.get('device_id') or '(the only one connected)'}, target {board.get('target', TARGET)}"
            + (f", runtime {' '.join(str(board['sdk_version']).split())}" if board.get("sdk_version") else "") + ". "
            f"Board time: {EVAL_PERF_DETAIL}; this is the time the verdict uses. Host wall time: {WALL_SOURCE}: "
            "shown for reference only, never used as an NPU time. Simulator times are never reported. "
            "Raw eval_perf output is in board/ beside results.json.", "",
            "| series | MxKxN | board time (eval_perf) | NPU ops (eval_perf) | host wall over adb | NPU core load (0/1/2) | status |",
            "|---|---|---|---|---|---|---|", *rows, ""]
