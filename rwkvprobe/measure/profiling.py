"""torch.profiler as validate's real pass and analyze's layer pass use it: the profile taken without kineto's
console lines, and its weight matmuls found by shape and timed by their self time (forward_worker, layerpass)."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

#: the reference package's matmul-family ATen ops (the profiler names them this way)
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::mv", "aten::addmv", "aten::baddbmm", "aten::dot")


def weight_matmul_shape(name: str, input_shapes, shapes: set, batched: dict):
    """(K, N, matrices per call) when a profiled matmul op multiplies by stored weights, else None."""
    ins = [list(s) for s in (input_shapes or []) if s]
    if name == "aten::addmm" and len(ins) >= 3:
        ins = ins[1:]
    if len(ins) < 2:
        return None
    a, w = ins[0], ins[1]
    if len(w) == 2 and len(a) == 2 and (w[0], w[1]) in shapes and a[1] == w[0]:
        return (w[0], w[1], 1)
    if len(w) == 3 and batched.get((w[1], w[2])) == w[0]:  # RWKV-6's five token-shift matrices in one bmm
        return (w[1], w[2], w[0])
    return None


#: what kineto writes to stderr as each profile starts and stops (torch 2.13: "USDT:<date> <pid>:<tid>
#: SyncActivityProfilerHandler.cpp:52] profiler_start"), whatever its log level: two lines a profile on the user's
#: console (a quick analyze printed twelve) and in a worker's error tail
KINETO_NOISE = re.compile(r"^USDT:.*\] profiler_(start|stop)\s*$")


@contextlib.contextmanager
def _kineto_lines_held_back():
    """Run the block with file descriptor 2 going to a temporary file, then pass on what it wrote there, less
    kineto's start and stop lines (KINETO_NOISE). Where there is no temporary file or no stderr to redirect, the
    block runs as it is (the lines get through)."""
    try:
        held = tempfile.TemporaryFile()
    except OSError:
        yield
        return
    with held:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # stderr closed, or None
            yield
            return
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            held.seek(0)
            rest = [line for line in held.read().decode(errors="replace").splitlines(keepends=True)
                    if not KINETO_NOISE.match(line)]
            if rest:
                sys.stderr.write("".join(rest))
                sys.stderr.flush()


@contextlib.contextmanager
def cpu_profile():
    """torch's CPU profiler with input shapes, as ``torch.profiler.profile(activities=[CPU], record_shapes=True)``
    runs it: the autograd profiler that one wraps, entered directly (the same kineto events; torch.profiler's start
    looks up ``torch._inductor``, whose import took 1-1.5 s of a process's first profile), with kineto's start and
    stop lines held back. Read the events with matmul_events or ``key_averages()``."""
    from torch.autograd.profiler import profile

    prof = profile(record_shapes=True)
    with _kineto_lines_held_back():
        prof.__enter__()
    try:
        yield prof
    finally:
        with _kineto_lines_held_back():
            prof.__exit__(None, None, None)


def matmul_events(prof) -> list[tuple[str, list, float]]:
    """(op name, input shapes, self microseconds) of every matmul-family op (MATMUL_OPS) a profile recorded, read
    from the profiler's raw events: an op's self time is its duration less its direct children's on its thread, as
    the profiler's own event tree counts it, without building that tree for every op (key_averages spent 0.4-0.7 s
    on each profile of a 64-token chunk's pass: 6,600 events, most of them the state loop's small ops)."""
    threads: dict = {}
    for e in prof.kineto_results.events():
        if not e.is_async():
            threads.setdefault(e.start_thread_id(), []).append(e)
    out = []
    for events in threads.values():
        events.sort(key=lambda e: (e.start_ns(), -e.end_ns()))  # a parent before the children it contains
        stack: list = []  # [event, its children's nanoseconds]
        for e in events:
            while stack and stack[-1][0].end_ns() <= e.start_ns():
                done, inner = stack.pop()
                if done.name() in MATMUL_OPS:
                    out.append((done.name(), done.shapes(), (done.duration_ns() - inner) / 1e3))
            if stack:
                stack[-1][1] += e.duration_ns()
            stack.append([e, 0])
        for done, inner in stack:
            if done.name() in MATMUL_OPS:
                out.append((done.name(), done.shapes(), (done.duration_ns() - inner) / 1e3))
    return out


def weight_shapes(layer_shapes: list, n_layer: int) -> tuple[set, dict]:
    """(the (K, N) of every weight matrix, {(K, N): matrices per call} of the batched ones) as the profiler sees
    them, from the layer list's (K, N, runs per token): RWKV-6 runs its five token-shift matrices in one bmm."""
    shapes = {(k, nn) for k, nn, _ in layer_shapes}
    batched = {(k, nn): count // n_layer for k, nn, count in layer_shapes if count > n_layer}
    return shapes, batched


def weight_matmul_us(prof, shapes: set, batched: dict, per_shape: dict) -> tuple[float, float]:
    """(microseconds in weight matmuls, in other matmul-family ops) of a profile; ``per_shape`` gains the
    weight matmuls' calls and microseconds by shape."""
    matmul_us = other_us = 0.0
    for name, input_shapes, us in matmul_events(prof):
        shape = weight_matmul_shape(name, input_shapes, shapes, batched)
        if shape is None:
            other_us += us
            continue
        d = per_shape.setdefault(f"{shape[0]}x{shape[1]}", {"k": shape[0], "n": shape[1], "calls": 0, "us": 0.0})
        d["calls"] += shape[2]  # counted per weight matrix, as the layer list counts them
        d["us"] += us
        matmul_us += us
    return matmul_us, other_us
