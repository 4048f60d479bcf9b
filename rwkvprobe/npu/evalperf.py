"""rknn-toolkit2's ``eval_perf`` output parsed (the per-layer table and its totals), and the toolkit's
failures turned into one line."""

from __future__ import annotations

import re

EVAL_PERF_SOURCE = "board, eval_perf"


EVAL_PERF_DETAIL = ("the board's own time per frame, eval_perf(fix_freq=True) after init_runtime(perf_debug=True): "
                    "the driver's per-operator times (per-layer timing on, which the toolkit says may slow a run)")


WALL_SOURCE = "host wall clock per inference() call over adb: adb transport and input/output copies included"


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
        at = next((i for i, t in enumerate(tokens) if _CYCLES.match(t)), None)
        if at is not None:
            row["ddr_cycles"], row["npu_cycles"], row["total_cycles"] = map(int, tokens[at].split("/"))
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
