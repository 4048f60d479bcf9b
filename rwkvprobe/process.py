"""Where a command is this process (the console script, ``python -m rwkvprobe``): when it started, and what it may do
to the interpreter that a program calling rwkvprobe's functions (the tests) must not see done to its own."""

from __future__ import annotations

import gc
import os
import time

#: True where rwkvprobe is the process's entry point (cli.app.main called without arguments: enter())
ENTRY = False
#: time.perf_counter() at the start of this process, where rwkvprobe is its entry point, so that analyze's --budget
#: counts the command's wall time, the interpreter's start and the imports included (2-3 s of a quick run on a
#: 2-vCPU VM); None where rwkvprobe runs inside another program (the tests call main with their arguments) or the
#: start cannot be read (process_start)
COMMAND_START: float | None = None


def process_start() -> float | None:
    """time.perf_counter() at this process's start: its start time in /proc/self/stat against /proc/uptime, both
    counted from boot in 10 ms steps (psutil's create time adds the boot time, which Linux gives in whole seconds);
    None where they cannot be read (not Linux) or read as the future or over a minute ago."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        ago = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return time.perf_counter() - ago if 0.0 <= ago < 60.0 else None


def enter() -> None:
    """rwkvprobe is this process's entry point: ENTRY and COMMAND_START set."""
    global ENTRY, COMMAND_START
    ENTRY, COMMAND_START = True, process_start()


def settle() -> None:
    """Where rwkvprobe is the process: the objects made so far (the imported modules: torch's and onnx's are some
    250 thousand) taken out of the garbage collector's way for the rest of the process (gc.freeze), as they live to
    its end. A full collection over them cost 0.1 s (four while the modules were imported, two in the report's plots:
    0.5 s of a quick run; none fell while the layers were timed in the runs logged, but nothing kept one out), the
    interpreter's collection at exit 0.4 s. Frozen objects are still freed when nothing refers to them; only cycles
    among them stay. Elsewhere nothing is done: the calling program's garbage stays collectable."""
    if ENTRY:
        gc.freeze()
