"""The results file: versioned JSON, one file per run, written atomically, checked once when loaded.

Layout (records.py types every record and checks a loaded file against it): a header (schema, schema_version,
kind, rwkvprobe_version, created, command, environment, settings; before/after snapshots, warnings and
elapsed_seconds once a run ends), then by kind:

- analyze: profile (its layers), bandwidth (STREAM before the layers) and bandwidth_probes, ceilings (per
  backend and dtype: overhead, compute and GEMV points, and their summary), measurements (one point per layer
  shape, M, backend and dtype, every raw sample kept), skipped, backends, stage_seconds, nonmatmul (the timed
  non-matmul block), block_graphs, validation (rwkvprobe validate), board and compiler_estimates (the NPU).
- bandwidth: bandwidth (per thread count and CPU cluster), npu_bandwidth (--npu).
- sweep: measurements (points with their grid size), skipped, runs (one log per run or resume), stopped
  (the budget ran out), fits.

Schema history (bump SCHEMA_VERSION and add a line when the layout changes):
- 1 (rwkvprobe 0.1.0): kind, command, environment (+ after snapshot, warnings), settings, profile and
  layers, bandwidth, ceilings per backend and dtype, measurements with every raw sample, skipped; later
  additions within 1: nonmatmul (timed non-matmul block), validation, board (eval_perf), compiler_estimates.
- 2: bandwidth_probes (the read bandwidth probed again between and after the layers: when, trials, best),
  per-point contention (other processes' CPU time and steal while timed) and remeasured, ceilings with
  compute_again, gemv_skipped and light, settings.whatif_series (the measured int8/int4 what-if), nonmatmul
  seq (prefill's sequential state update), block_graphs (whole blocks in onnxruntime), ggml's series.
  Version-1 files still load: every field added in 2 is NotRequired in records.py. Later additions within 2: a
  point's put_off (timed after the others: the machine ran slow when it was due), the layer-pass rounds'
  canary_seconds, a validation's machine (the machine's speed beside each side), and, where validate measured
  its own prediction, a non-matmul entry's interleaved (its layer pass timed between the real pass's rounds) and a
  validation split's rest_separate_seconds; then its points timed there too (a validation's points_between, its
  prediction's rows, and the split's and prefill's matmul_separate_seconds); then a validation's measured decode
  from the profiled rounds' unprofiled tokens (its timed "rounds"), the tokens timed back to back beside it
  (measured.decode_back_to_back); a point's series_heavy_recheck; the ggml graph's second timing after the layer
  points (its non-matmul entry's windows, elapsed_seconds); canary_history (the machine's earlier runs' canaries)
  and a recheck's reused check; cache (the last-level cache the cold measurements are sized by, in analyze's
  results, its bandwidth record and each sweep run); a point's weight_dtype (the float type the backend held the
  weight in where not its dtype: onnxruntime's fp16 on x86, whose bytes count at fp32); a point's second_window
  (analyze's heavy decode points timed twice, the second once every point had its first).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, cast, overload

from rwkvprobe import __version__
from rwkvprobe.errors import InputError
from rwkvprobe.fsutil import atomic_write_text, read_input_text
from rwkvprobe.records import AnalyzeResults, BandwidthResults, Results, SweepResults, check

SCHEMA = "rwkvprobe-results"
SCHEMA_VERSION = 2
KINDS = ("analyze", "bandwidth", "sweep")


def new_results(kind: str, environment: dict | None = None, settings: dict | None = None) -> dict:
    if kind not in KINDS:
        raise ValueError(kind)
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "rwkvprobe_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "command": ["rwkvprobe", *sys.argv[1:]],
        "environment": environment or {},
        "settings": settings or {},
    }


def save_results(path: str | Path, data: dict, compact: bool = False) -> None:
    """Write atomically: an interrupted write never leaves a damaged file in place of an earlier one.

    ``compact``: on one line, written by json's C encoder (an indented file takes its pure-Python one, twice the
    time: a run's saves after each point use this, its last save is indented for people to read)."""
    text = json.dumps(data, indent=None if compact else 1, allow_nan=False, default=_jsonable)
    atomic_write_text(path, text + "\n")


def _jsonable(value):
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in results JSON")


def load_results(path: str | Path, kinds: tuple[str, ...] = KINDS) -> dict[str, Any]:
    """load_record() for the callers that still pass results around as plain dicts: the same checks, the
    same checked record, typed as a dict (typing it as the record here would turn every ``dict`` parameter
    it reaches into a mypy error; callers move to load_record() as their own annotations become records)."""
    return cast("dict[str, Any]", load_record(path, kinds))


@overload
def load_record(path: str | Path, kinds: tuple[Literal["analyze"]]) -> AnalyzeResults: ...
@overload
def load_record(path: str | Path, kinds: tuple[Literal["bandwidth"]]) -> BandwidthResults: ...
@overload
def load_record(path: str | Path, kinds: tuple[Literal["sweep"]]) -> SweepResults: ...
@overload
def load_record(path: str | Path, kinds: tuple[str, ...] = KINDS) -> Results: ...
def load_record(path: str | Path, kinds: tuple[str, ...] = KINDS) -> Results:
    """Read and check a results file once, at the edge: its schema, version and kind, then every record
    against its TypedDict (records.check). A corrupt, foreign, newer or damaged file is refused with one line
    (a damaged one names the field); a file of schema 1 loads (what schema 2 added is NotRequired)."""
    p = Path(path)
    text = read_input_text(p, "results file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{p}: not a results file (invalid JSON: {e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise InputError(f"{p}: not an rwkvprobe results file (no \"schema\": \"{SCHEMA}\")")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InputError(f"{p}: results file has an invalid schema_version {version!r}")
    if version > SCHEMA_VERSION:
        raise InputError(f"{p}: results schema {version} is newer than this rwkvprobe understands "
                         f"({SCHEMA_VERSION}): upgrade rwkvprobe")
    if data.get("kind") not in kinds:
        raise InputError(f"{p}: results of kind {data.get('kind')!r}, expected {' or '.join(kinds)}")
    return check(data, str(p))
