"""The records of a results file, typed: one TypedDict per record, and the check that a loaded file matches.

A results file (results.py) is one of three kinds, each a top-level record:

- ``AnalyzeResults``: the header (``Header``), ``AnalyzeSettings``, the ``Profile`` and its layers, the
  memory ``Bandwidth`` probed before the layers and the ``BandwidthProbe`` s after, one ``Ceiling`` per
  backend and dtype (its overhead, compute and GEMV ``Point`` s), the layer ``Point`` s (``measurements``),
  the ``Skipped`` series, the timed non-matmul block (``Nonmatmul``), whole-block graphs (``BlockGraphs``)
  and the checks against a real forward pass (``Validation``).
- ``BandwidthResults``: the header, ``BandwidthSettings`` and one ``Bandwidth``.
- ``SweepResults``: the header, ``SweepSettings``, the grid's ``SweepPoint`` s, ``Skipped`` series, one
  ``SweepRun`` per run (resumes add runs) and, when the budget ran out, ``Stopped``.

Which keys are required: those that every writer has put in every file since schema 1 (from a run's first
save on, so an interrupted run's file has them too) and that the code reading the file indexes without a
default. Every other key is ``NotRequired``: added in schema 2, written only in some runs (a failed or
skipped point, --quick, a board, a what-if series, the end of a run), or only shown (environment, command),
so readers ``.get()`` it. Keys not declared here are allowed: a newer minor addition must not break a reader.

``check(data, source)`` checks a loaded file against its kind's record (required keys, and the type of every
declared key that is present, down to each sample) and raises ``InputError`` with one line naming the file
and the field: ``results.json: field measurements[3].timing.samples: expected a list of numbers, got 'abc'``.
"""

import functools
import sys
import types
from typing import Any, Literal, Union, get_args, get_origin

from rwkvprobe.errors import InputError

if sys.version_info >= (3, 11):
    from typing import NotRequired, TypedDict, get_type_hints, is_typeddict
else:  # typing's TypedDict on 3.10 knows no NotRequired
    from typing_extensions import NotRequired, TypedDict, get_type_hints, is_typeddict

# NB: no ``from __future__ import annotations`` here: the checker reads these annotations at run time.

# ------------------------------------------------------------------------------------------------
# Shared by the points of analyze and sweep


class Timing(TypedDict):
    """timing.measure(): the summary of every sample (board points: eval_perf's times, with a source)."""

    median_seconds: float
    samples: list[float]
    n: NotRequired[int]
    min_seconds: NotRequired[float]
    mean_seconds: NotRequired[float]
    stdev_seconds: NotRequired[float]
    q1_seconds: NotRequired[float]  # schema 1 files from before they were kept lack these two
    q3_seconds: NotRequired[float]
    iqr_seconds: NotRequired[float]
    spread: NotRequired[float]
    noisy: NotRequired[bool]
    stalled: NotRequired[int]  # calls slower than 3x the point's fastest (timing.STALL_FACTOR)
    warmup_calls: NotRequired[int]
    warming: NotRequired[int]  # of the warm-up calls, leading samples still warming up (timing.warming)
    copies: NotRequired[int]
    source: NotRequired[str]  # board points: eval_perf, or the host's wall time
    detail: NotRequired[str]


class Check(TypedDict):
    """backends.check_runner(): the output against float64 (board points: where="board")."""

    ok: bool
    rel_err: NotRequired[Union[float, None]]  # None: the output had the wrong shape
    tolerance: NotRequired[float]
    detail: NotRequired[str]
    quantization_rel_err: NotRequired[float]
    format: NotRequired[str]
    where: NotRequired[str]
    against: NotRequired[str]
    reused: NotRequired[bool]  # a recheck's: the check of the point's first timing, same kernel and weights


class Rotation(TypedDict):
    """timing.Rotation.describe(): the weight copies a point rotates over and the eviction read between calls."""

    copies: int
    flush_bytes: NotRequired[int]
    cold: NotRequired[bool]
    note: NotRequired[str]  # board points


class Contention(TypedDict):
    """contention.between(): what other processes took of the CPUs while a point was timed (schema 2)."""

    wall_seconds: float
    cpus: int
    other_cpu_seconds: float
    steal_cpu_seconds: float
    other_share: float
    steal_share: float
    contended: bool
    canary_seconds: NotRequired[float]  # contention.canary() before the point and after it, the faster


class OverheadSeconds(TypedDict):
    prepare: float
    check: float
    timing: float
    #: of prepare and check: generating the seeded base weight, where this point did (the first of its shape)
    base_weight: NotRequired[float]


class Remeasured(TypedDict):
    """A contended point measured again (schema 2): the first measurement's contention and time."""

    contention: Contention
    median_seconds: Union[float, None]
    waited_for_quiet_seconds: NotRequired[float]


class HeavyRecheck(TypedDict):
    """A headline point carrying a large share of its series' decode, measured again later in the run: both medians."""

    median_seconds: float
    again_median_seconds: Union[float, None]
    decode_share: float


class NearLineRecheck(TypedDict):
    """A headline point near the kernel-limited line, measured again later in the run: both medians."""

    median_seconds: float
    again_median_seconds: Union[float, None]
    kernel_share: float


class SlowRecheck(TypedDict):
    """A point far slower than its ceilings predict, measured again: both medians and the projection."""

    median_seconds: float
    again_median_seconds: Union[float, None]
    projected_seconds: float


class PutOff(TypedDict):
    """A point due while the canary ran contention.CANARY_SLOW x this run's best or more: timed after the others
    (once); the canary's ratio when it was put off."""

    canary_ratio: float


class MachineSlowRecheck(TypedDict):
    """A point timed while the machine ran slow (its canary over contention.CANARY_SLOW x the run's best),
    measured again after the others: both medians, and the canary's ratio each time."""

    median_seconds: float
    again_median_seconds: Union[float, None]
    canary_ratio: float
    again_canary_ratio: Union[float, None]


class SecondWindow(TypedDict):
    """A decode point of a heavy shape (analyze's HEAVY_WEIGHT_SHARE) timed a second time once every point had its
    first: both medians (the faster kept as the point's timing), and, where the second was put off while the machine
    ran slow, the canary's ratio then."""

    median_seconds: float
    again_median_seconds: Union[float, None]
    put_off: NotRequired[PutOff]


class Point(TypedDict):
    """points.measure_point() (and npu/board.py's points): one M x K x N matmul of one series, checked, then
    timed. A point that failed has ``error`` and no timing; one projected too slow has ``skipped``."""

    backend: str
    at: NotRequired[float]  # analyze: epoch seconds when it was timed
    dtype: str
    m: int
    k: int
    n: int
    flops: float
    bytes: float
    check: Union[Check, None]
    timing: Union[Timing, None]
    error: NotRequired[Union[str, None]]
    rotation: NotRequired[Rotation]
    bytes_per_weight: NotRequired[float]
    weight_dtype: NotRequired[str]
    format: NotRequired[str]
    skipped: NotRequired[str]
    contention: NotRequired[Contention]
    overhead_seconds: NotRequired[OverheadSeconds]
    remeasured: NotRequired[Remeasured]
    slow_recheck: NotRequired[SlowRecheck]
    near_line_recheck: NotRequired[NearLineRecheck]
    heavy_recheck: NotRequired[HeavyRecheck]
    series_heavy_recheck: NotRequired[HeavyRecheck]  # the same for any series' heaviest points
    machine_slow_recheck: NotRequired[MachineSlowRecheck]
    second_window: NotRequired[SecondWindow]
    put_off: NotRequired[PutOff]
    source: NotRequired[str]  # board points: eval_perf
    host_wall: NotRequired[Timing]  # board points: the host's wall time over adb
    eval_perf: NotRequired[dict[str, Any]]  # board points: rknn-toolkit2's eval_perf, parsed


class Skipped(TypedDict):
    """A series not measured: its backend, its dtype (None: the whole backend) and why."""

    backend: str
    dtype: Union[str, None]
    reason: str


# ------------------------------------------------------------------------------------------------
# analyze


class ProfileLayer(TypedDict):
    name: str
    kind: str
    k: int
    n: int
    count: int
    stored: int


class Embedding(TypedDict):
    rows: int
    dim: int


class Profile(TypedDict):
    """analyze.profile_json(): the profile and its layers, so a report renders without the profile file."""

    name: str
    layers: list[ProfileLayer]
    path: NotRequired[str]
    source: NotRequired[str]
    version: NotRequired[Union[int, None]]  # None: a 'layers:' profile
    n_layer: NotRequired[int]
    n_embd: NotRequired[int]
    vocab_size: NotRequired[int]
    head_size: NotRequired[int]
    dim_ffn: NotRequired[int]
    lora: NotRequired[dict[str, int]]
    total_params: NotRequired[int]
    embedding: NotRequired[Embedding]
    other_params: NotRequired[int]


class AnalyzeSettings(TypedDict):
    """analyze.AnalyzeSettings.to_json(), plus what the run adds (pinned CPUs, the what-if series)."""

    tokens: list[int]
    threads: int
    backends: NotRequired[Union[list[str], None]]
    dtypes: NotRequired[Union[list[str], None]]
    cpus: NotRequired[Union[list[int], None]]
    cold: NotRequired[bool]
    budget_seconds: NotRequired[float]
    quick: NotRequired[bool]
    rknn_dir: NotRequired[Union[str, None]]
    npu_cores: NotRequired[str]
    device_id: NotRequired[Union[str, None]]
    block_size: NotRequired[int]
    quantize: NotRequired[Union[list[str], None]]
    nonmatmul_seconds: NotRequired[Union[float, None]]
    history: NotRequired[bool]  # the machine's earlier runs' bandwidth probes taken up (measure/history.py)
    later_window: NotRequired[bool]  # the torch layer pass's second window of rounds (layerpass.LATER_WINDOW)
    pinned_cpus: NotRequired[Union[list[int], None]]
    whatif_series: NotRequired[list[list[str]]]  # schema 2: [backend, dtype] pairs
    whatif_missing: NotRequired[Union[str, None]]


class ComputeAgain(TypedDict):
    """A series' peak measured again after a layer ran faster than it (schema 2)."""

    after: str
    compute: list[Point]
    peak_gflops: Union[float, None]


class Ceiling(TypedDict):
    """points.measure_ceilings() (board: npu/board.run_series): one backend and dtype's per-call overhead,
    peak compute and cold GEMV, and their summary (None where the measurement failed)."""

    backend: str
    dtype: str
    compute: NotRequired[list[Point]]
    gemv: NotRequired[Union[Point, None]]
    overhead: NotRequired[Union[Point, None]]
    peak_gflops: NotRequired[Union[float, None]]
    gemv_gbps: NotRequired[Union[float, None]]
    overhead_seconds: NotRequired[Union[float, None]]
    light: NotRequired[bool]  # schema 2: a what-if series
    gemv_skipped: NotRequired[str]  # schema 2
    compute_again: NotRequired[ComputeAgain]  # schema 2
    source: NotRequired[str]  # board series
    bandwidth_gbps: NotRequired[float]  # board series measured from a PC: the NPU's own W
    bandwidth_source: NotRequired[str]


class KernelSummary(TypedDict):
    """bandwidth.summarize(): one STREAM kernel's trials."""

    best_gbps: float
    avg_gbps: NotRequired[float]
    bytes_per_trial: NotRequired[int]
    seconds: NotRequired[list[float]]
    min_seconds: NotRequired[float]
    max_seconds: NotRequired[float]
    best_gbps_by_method: NotRequired[dict[str, float]]  # the numba engine: bandwidth.kernel_methods, each best


class BandwidthRun(TypedDict):
    """One thread count on one CPU set (bandwidth.measure_bandwidth's runs)."""

    kernels: dict[str, KernelSummary]
    threads: NotRequired[int]
    cpus: NotRequired[list[Union[int, None]]]
    cluster: NotRequired[Union[str, None]]
    check_ok: NotRequired[bool]
    triad_block_elements: NotRequired[Union[int, None]]
    workers: NotRequired[list[dict[str, Any]]]
    engine: NotRequired[str]  # schema 2


class CacheScan(TypedDict):
    """cachesize.scan(): one thread's read rate of buffers of 1, 2, 4, 8, 11, 16, ... MiB, and the DRAM reference last."""

    sizes_bytes: list[int]
    read_gbps: list[float]
    rounds: NotRequired[int]
    seconds: NotRequired[float]


class Cache(TypedDict):
    """cachesize.decide(): the last-level cache a run's cold measurements are sized by, and why."""

    bytes: Union[int, None]
    reported_bytes: Union[int, None]
    how: str
    scan: NotRequired[CacheScan]


class Bandwidth(TypedDict):
    """bandwidth.measure_bandwidth(): STREAM bandwidth per thread count and CPU cluster."""

    runs: list[BandwidthRun]
    at: NotRequired[float]  # analyze's first probe: epoch seconds
    array_bytes: NotRequired[int]
    elements: NotRequired[int]
    llc_bytes: NotRequired[Union[int, None]]  # what the arrays are sized by (cache["bytes"])
    cache: NotRequired[Cache]
    trials: NotRequired[int]
    warmup_trials: NotRequired[int]
    engine: NotRequired[str]
    engine_tuning: NotRequired[str]  # numba engine: stream_kernels.vector_tuning()
    scalar: NotRequired[float]
    byte_counting: NotRequired[str]
    total_seconds: NotRequired[float]
    when: NotRequired[str]  # analyze: "before the layers"


class EarlierProbe(TypedDict):
    """A read probe of an earlier run on this machine (measure/history.py)."""

    at: float  # epoch seconds
    read_best_gbps: float
    array_bytes: NotRequired[Union[int, None]]
    command: NotRequired[str]


class _History(TypedDict):
    """What history.py hands a run of the machine's earlier runs: the file, its age limit, the machine."""

    path: str
    max_age_days: float
    machine: dict[str, Any]


class BandwidthHistory(_History):
    """history.earlier_probes(): the machine's earlier probes a run's verdict counts beside its own."""

    probes: list[EarlierProbe]


class EarlierCanary(TypedDict):
    """One earlier run's canary (history.record's canary): its best and the median around its points."""

    at: float
    best_seconds: float
    median_seconds: NotRequired[Union[float, None]]
    command: NotRequired[str]


class CanaryHistory(_History):
    """history.earlier_canaries(): the machine's earlier runs' canaries, against which a run's own is read."""

    runs: list[EarlierCanary]


class BandwidthProbe(TypedDict):
    """bandwidth.probe_read(), with when and at what second of the run analyze took it (schema 2)."""

    read_best_gbps: float
    check_ok: bool
    read_avg_gbps: NotRequired[float]
    seconds: NotRequired[list[float]]
    threads: NotRequired[int]
    cpus: NotRequired[Union[list[int], None]]
    trials: NotRequired[int]
    engine: NotRequired[str]
    array_bytes: NotRequired[int]
    when: NotRequired[str]
    at_seconds: NotRequired[float]
    at: NotRequired[float]  # epoch seconds: the verdict judges each layer at the bandwidth around it


class NonmatmulSeq(TypedDict):
    """A prefill chunk's work outside its weight matmuls: nonmatmul.measure_seq() (one bare block's sequential
    work, schema 2) or layerpass.measure_chunk() (``method`` "layer-pass": a ring of layers over the chunk,
    profiler split, its rounds kept)."""

    chunk: int
    seconds_per_block: float
    seconds_per_chunk: float
    timing: NotRequired[Timing]  # measure_seq
    what: NotRequired[str]
    method: NotRequired[str]
    version: NotRequired[Union[int, None]]
    blocks: NotRequired[int]
    cold: NotRequired[bool]
    ring_layers: NotRequired[int]
    weight_matmuls_per_layer: NotRequired[float]
    rounds: NotRequired[list["LayerPassRound"]]
    spread: NotRequired[float]
    #: validate measuring its prediction: timed between the real pass's prefill rounds; "separate": what analyze's
    #: own chunk layer pass had recorded (validate.take_interleaved_chunk)
    interleaved: NotRequired[dict[str, Any]]


class LayerPassRound(TypedDict):
    """layerpass.measure(): one round, per ring layer: the plain time, its weight matmuls' profiled time, the rest;
    a round with the tail (every other one) spreads the tail over the ring's layers and says what it added."""

    layer_seconds: float
    weight_matmul_seconds: float
    non_matmul_seconds: float
    tail: NotRequired[bool]
    tail_seconds: NotRequired[float]  # the pass's rest less the ring rounds' median, per token
    canary_seconds: NotRequired[float]  # contention.torch_canary() as the round began
    window: NotRequired[int]  # the later window's rounds (analyze: after the layer points; layerpass.later_window)


class Nonmatmul(TypedDict):
    """nonmatmul.measure_series() / ggml_block.measure_series(): one block's non-matmul decode work, timed."""

    backend: str
    dtype: str
    seconds_per_token: Union[float, None]  # None: the ggml graph's check failed, not timed
    seconds_per_block: NotRequired[Union[float, None]]
    version: NotRequired[Union[int, None]]
    blocks: NotRequired[int]
    cold: NotRequired[bool]
    timing: NotRequired[Union[Timing, None]]
    what: NotRequired[str]
    engine: NotRequired[str]  # "ggml": its own graph
    check: NotRequired[Check]
    graph_nodes: NotRequired[int]
    stand_in: NotRequired[str]
    seq: NotRequired[dict[str, NonmatmulSeq]]  # by chunk length
    method: NotRequired[str]  # "layer-pass" (layerpass.py): timed in the per-layer structure, profiler split
    layer_pass_skipped: NotRequired[str]  # why the bare block stands in for the layer pass (too slow a series)
    ring_layers: NotRequired[int]
    tail_seconds: NotRequired[float]  # the token's tail (output norm, head) outside the head's matmul, per token
    weight_matmuls_per_layer: NotRequired[float]  # what the profiler split off as weight matmuls, per layer
    rounds: NotRequired[list[LayerPassRound]]
    spread: NotRequired[float]
    #: the median per layer outside the matmuls of each window of rounds (seconds_per_block: over all of them); the
    #: ggml graph's: the median per block of each of its timings, before, halfway through and after the layer points
    #: (seconds_per_block: the fastest; None where a later one's check failed)
    windows: NotRequired[list[Union[float, None]]]
    later_window_skipped: NotRequired[str]  # why a decode layer pass (or the ggml graph) had no later window (the budget)
    elapsed_seconds: NotRequired[float]  # the ggml graph: building, checking and timing it
    #: validate measuring its prediction: these figures come from the layer pass timed between the real pass's
    #: rounds; "separate": what analyze's own layer pass had recorded (validate.take_interleaved)
    interleaved: NotRequired[dict[str, Any]]


class BlockGraph(TypedDict):
    """One whole-block ONNX graph timed in onnxruntime: timed, or an error, or skipped (too big)."""

    seconds: NotRequired[float]
    weight_bytes: NotRequired[int]
    rotation: NotRequired[Rotation]
    timing: NotRequired[Timing]
    file: NotRequired[str]
    error: NotRequired[str]
    skipped: NotRequired[str]


class BlockGraphs(TypedDict):
    """onnxblock.measure_graphs(): one series' block graphs (schema 2)."""

    backend: str
    dtype: str
    graphs: dict[str, BlockGraph]
    threads: NotRequired[int]
    cold: NotRequired[bool]
    n_layer: NotRequired[int]
    onnxruntime: NotRequired[str]
    chained_seconds_per_token: NotRequired[float]


class ValidationPrediction(TypedDict):
    """validate.prediction(): analyze's per-token figures for the validated series."""

    decode_seconds: float
    matmul_seconds: float
    non_matmul_seconds: float
    non_matmul_measured: NotRequired[bool]
    fully_measured: NotRequired[bool]
    per_call: NotRequired[dict[str, Union[float, None]]]
    prefill: NotRequired[dict[str, dict[str, Any]]]  # by chunk length: the verdict's prefill entry
    canary_seconds: NotRequired[list[float]]  # contention.torch_canary() beside the timed non-matmul rounds
    #: the measured layer rows (layer, m, k, n, count, seconds): validation.with_timed_matmuls puts the points timed
    #: again beside the real pass in them
    rows: NotRequired[list[dict[str, Any]]]
    #: validate measuring its own prediction: the decode's matmul time from analyze's points, timed before the real
    #: pass (matmul_seconds is from the same points timed between the real pass's rounds)
    matmul_separate_seconds: NotRequired[float]


class DecodeTiming(TypedDict):
    """forward_worker: the reference forward pass's per-token times."""

    median: float
    q1: float
    q3: float
    samples: list[float]
    min: NotRequired[float]
    #: "rounds": the unprofiled tokens of forward_worker.profile_decode's rounds (the ones compared with); "back to
    #: back": the tokens timed one after another before them (older validations compared with these)
    timed: NotRequired[str]


class ValidationMeasured(TypedDict):
    decode: DecodeTiming  # the tokens the prediction is compared with
    prefill: NotRequired[Union[dict[str, Any], None]]
    logits_finite: NotRequired[Union[bool, None]]
    decode_back_to_back: NotRequired[DecodeTiming]  # beside the rounds' tokens: those timed back to back before them


class ValidationSplit(TypedDict):
    matmul_forward_seconds: float
    matmul_predicted_seconds: float
    rest_forward_seconds: float
    rest_predicted_seconds: float
    rest_predicted_measured: NotRequired[bool]
    state_matmul_seconds: NotRequired[Union[float, None]]
    #: validate measuring its prediction: the rest analyze's own layer pass predicted before the real pass (the
    #: prediction uses the one timed between the real pass's rounds: validate.take_interleaved)
    rest_separate_seconds: NotRequired[float]
    #: and the weight matmuls as analyze's points gave them before the real pass (the prediction uses the same points
    #: timed between the real pass's rounds: validation.with_timed_matmuls)
    matmul_separate_seconds: NotRequired[float]


class ValidationShape(TypedDict):
    shape: str
    calls_per_token: float
    forward_seconds_per_call: float
    analyze_seconds_per_call: Union[float, None]
    ratio: Union[float, None]


class ValidationPrefill(TypedDict):
    chunk: int
    measured_tokens_per_second: float
    predicted_tokens_per_second: NotRequired[float]
    predicted_tokens_per_second_matmuls_only: NotRequired[float]  # early schema 1 files
    predicted_with_state: NotRequired[bool]
    predicted_state_seconds: NotRequired[Union[float, None]]
    predicted_matmul_seconds: NotRequired[float]
    measured_seconds: NotRequired[float]
    measured_rounds: NotRequired[int]  # the real chunk's plain timings (forward_worker.profile_prefill)
    predicted_modelled: NotRequired[bool]
    predicted_over_measured: NotRequired[float]
    within_target: NotRequired[bool]
    matmul_forward_seconds: NotRequired[Union[float, None]]  # the chunk's weight matmuls, torch.profiler
    #: the sequential part as analyze's own layer pass had it, timed before the real pass (the prediction uses the
    #: one timed between the real pass's prefill rounds: validate.take_interleaved_chunk)
    state_separate_seconds: NotRequired[Union[float, None]]
    #: the chunk's matmuls as analyze's points gave them before the real pass (the prediction uses the same points
    #: timed between the real pass's prefill rounds: validation.with_timed_matmuls)
    matmul_separate_seconds: NotRequired[float]


class ValidationBandwidth(TypedDict):
    """validate: the read-bandwidth probes around the real pass and the analyze run's median probe."""

    real_pass_gbps: list[float]
    analyze_gbps: Union[float, None]


class ValidationMachine(TypedDict):
    """validation.machine_speeds(): the machine's speed (contention.torch_canary, medians) beside each side."""

    prediction_seconds: float
    real_pass_seconds: float
    ratio: float


class Validation(TypedDict):
    """validate.compare() plus what validate_command adds, stored by validate.record(): the prediction of one
    backend and dtype against the reference forward pass (verdict/validation.summary_lines reads it)."""

    backend: str
    dtype: str
    threads: int
    predicted: ValidationPrediction
    measured: ValidationMeasured
    predicted_over_measured: float
    within_target: bool
    target: float
    split: ValidationSplit
    bandwidth: NotRequired[ValidationBandwidth]
    by_shape: NotRequired[list[ValidationShape]]
    tokens: NotRequired[int]
    prediction_series: NotRequired[str]
    created: NotRequired[str]
    command: NotRequired[list[str]]
    reference: NotRequired[Union[str, None]]
    torch: NotRequired[Union[str, None]]
    load_seconds: NotRequired[Union[float, None]]
    prefill: NotRequired[ValidationPrefill]
    #: validate measuring its own prediction: analyze's points timed again between the real pass's rounds
    #: (points.PointRounds.result), "decode" and "chunk"
    points_between: NotRequired[dict[str, list[dict[str, Any]]]]
    points_skipped: NotRequired[dict[str, str]]  # "decode"/"chunk": why they could not be built beside the real pass
    machine: NotRequired[Union[ValidationMachine, None]]


# ------------------------------------------------------------------------------------------------
# bandwidth and sweep settings, sweep records


class BandwidthSettings(TypedDict):
    """The bandwidth command's options (None: its default)."""

    size: NotRequired[Union[int, None]]
    threads: NotRequired[Union[list[int], None]]
    trials: NotRequired[int]
    cpus: NotRequired[Union[list[int], None]]
    engine: NotRequired[str]


class SweepGrid(TypedDict):
    """sweep.Grid.to_json(): which (M, K, N) each size stands for."""

    sizes: list[int]
    m: str
    k: str
    n: str
    describe: NotRequired[str]


class SweepSettings(TypedDict):
    """sweep.SweepSettings.to_json(), plus the pinned CPUs."""

    grid: SweepGrid
    threads: int
    sizes_text: NotRequired[str]
    backends: NotRequired[Union[list[str], None]]
    dtypes: NotRequired[Union[list[str], None]]
    cpus: NotRequired[Union[list[int], None]]
    cold: NotRequired[bool]
    budget_seconds: NotRequired[float]
    rknn_dir: NotRequired[Union[str, None]]
    npu_cores: NotRequired[str]
    pinned_cpus: NotRequired[Union[list[int], None]]


class SweepPoint(Point):
    """A sweep point: a Point and the grid size it stands for."""

    size: int


class CalibrationPoint(TypedDict):
    size: int
    flops: float
    seconds: float


class Calibration(TypedDict):
    """sweep.calibrate(): one or two timed shapes per series, to project every point's call time."""

    backend: str
    dtype: str
    points: list[CalibrationPoint]
    error: NotRequired[str]


class SweepContention(TypedDict):
    """sweep.contention(): what others took of the CPUs over a whole sweep run."""

    others_share: float
    steal_share: float
    cpus: int
    loadavg_before: NotRequired[Union[float, None]]


class SweepRun(TypedDict):
    """One sweep run's log (a resumed sweep adds one); the last four keys come when the run ends."""

    started: str
    budget_seconds: float
    calibration: NotRequired[list[Calibration]]
    reference_gflops: NotRequired[float]
    per_point_seconds: NotRequired[float]
    estimate_seconds: NotRequired[float]
    points_planned: NotRequired[int]
    skipped_for_cost: NotRequired[int]
    cache: NotRequired[Cache]  # the last-level cache its cold points were sized by (measure/cachesize.py)
    elapsed_seconds: NotRequired[float]
    left_out_for_budget: NotRequired[int]
    contention: NotRequired[Union[SweepContention, None]]


class NotMeasured(TypedDict):
    size: int
    backend: str
    dtype: str


class Stopped(TypedDict):
    """A sweep whose budget ran out: the points left for --resume."""

    reason: str
    budget_seconds: float
    not_measured: list[NotMeasured]


# ------------------------------------------------------------------------------------------------
# The files


class Header(TypedDict):
    """results.new_results(): what every results file starts with (each kind adds its ``kind``)."""

    schema: Literal["rwkvprobe-results"]
    schema_version: int
    rwkvprobe_version: NotRequired[str]
    created: NotRequired[str]
    command: NotRequired[list[str]]
    environment: NotRequired[dict[str, Any]]  # system.capture_environment(): shown, read with defaults
    before: NotRequired[dict[str, Any]]  # system.snapshot_dynamic()
    after: NotRequired[dict[str, Any]]  # the end of a run
    warnings: NotRequired[list[str]]  # the end of a run
    elapsed_seconds: NotRequired[float]  # the end of a run


class AnalyzeResults(Header):
    """``rwkvprobe analyze`` (validate adds ``validation``; a board run adds ``board``)."""

    kind: Literal["analyze"]
    before_run_seconds: NotRequired[float]  # the command's start (its imports) to the run's, where --budget counts it
    settings: AnalyzeSettings
    profile: Profile
    bandwidth: Union[Bandwidth, None]  # None until the first probe ends
    ceilings: list[Ceiling]
    measurements: list[Point]
    skipped: NotRequired[list[Skipped]]
    backends: NotRequired[dict[str, dict[str, Any]]]  # each backend's describe()
    stage_seconds: NotRequired[dict[str, float]]
    bandwidth_probes: NotRequired[list[BandwidthProbe]]  # schema 2
    bandwidth_history: NotRequired[BandwidthHistory]  # the machine's earlier probes (measure/history.py)
    canary_reference_seconds: NotRequired[float]  # contention.canary(), the best of a few as the points began
    canary_history: NotRequired[CanaryHistory]  # the machine's earlier runs' canaries (measure/history.py)
    cache: NotRequired[Cache]  # the last-level cache the cold measurements are sized by (measure/cachesize.py)
    nonmatmul: NotRequired[list[Nonmatmul]]
    block_graphs: NotRequired[list[BlockGraphs]]  # schema 2
    validation: NotRequired[list[Validation]]
    board: NotRequired[dict[str, Any]]  # npu/board.py: the adb device and SDK
    compiler_estimates: NotRequired[dict[str, Any]]  # model/device.py


class BandwidthResults(Header):
    """``rwkvprobe bandwidth -o FILE``."""

    kind: Literal["bandwidth"]
    settings: BandwidthSettings
    bandwidth: Bandwidth
    npu_bandwidth: NotRequired[dict[str, Any]]  # --npu: npu/bandwidth.measure()


class SweepResults(Header):
    """``rwkvprobe sweep``."""

    kind: Literal["sweep"]
    settings: SweepSettings
    measurements: list[SweepPoint]
    skipped: list[Skipped]
    runs: list[SweepRun]
    stopped: NotRequired[Stopped]
    fits: NotRequired[dict[str, Any]]  # fit.summarize_sweep(), written for other tools


Results = Union[AnalyzeResults, BandwidthResults, SweepResults]
RECORDS: dict[str, Any] = {"analyze": AnalyzeResults, "bandwidth": BandwidthResults, "sweep": SweepResults}


# ------------------------------------------------------------------------------------------------
# The check


class Mismatch(Exception):
    """Where and how a value does not match its declared type (turned into one InputError line)."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path, self.message = path, message


def check(data: Any, source: str) -> Results:
    """``data`` (a loaded file whose schema and kind results.load_results checked) against its kind's record;
    one line naming ``source`` and the field when it does not match."""
    record = RECORDS[data["kind"]]
    try:
        check_value(data, record, "")
    except Mismatch as e:
        raise InputError(f"{source}: field {e.path}: {e.message}") from None
    return data


def check_value(value: Any, tp: Any, path: str) -> None:
    """Raise Mismatch unless ``value`` (parsed JSON) matches the type ``tp``."""
    if tp is Any:
        return
    if is_typeddict(tp):
        if not isinstance(value, dict):
            raise Mismatch(path or "(top level)", f"expected {describe(tp)}, got {show(value)}")
        hints = _hints(tp)
        for key in sorted(tp.__required_keys__):
            if key not in value:
                raise Mismatch(_join(path, key), "missing")
        for key, sub in hints.items():
            if key in value:
                check_value(value[key], sub, _join(path, key))
        return
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return
        fits = [a for a in args if a is not type(None) and _same_kind(value, a)]
        if len(fits) == 1:  # report the mismatch inside the one member the value could be
            check_value(value, fits[0], path)
            return
        for a in fits:
            try:
                check_value(value, a, path)
                return
            except Mismatch:
                pass
        raise Mismatch(path, f"expected {describe(tp)}, got {show(value)}")
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return
        raise Mismatch(path, f"expected {describe(tp)}, got {show(value)}")
    if origin is list:
        if not isinstance(value, list):
            raise Mismatch(path, f"expected {describe(tp)}, got {show(value)}")
        for i, item in enumerate(value):
            check_value(item, args[0], f"{path}[{i}]")
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise Mismatch(path, f"expected {describe(tp)}, got {show(value)}")
        for key, item in value.items():
            check_value(item, args[1], _join(path, str(key)))
        return
    if not _scalar_ok(value, tp):
        raise Mismatch(path, f"expected {describe(tp)}, got {show(value)}")


def _scalar_ok(value: Any, tp: Any) -> bool:
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:  # JSON writes 2.0 as 2.0 but a count as 2: an int is a number too
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    raise TypeError(f"records: no check for {tp!r}")  # a record declared with a type the checker lacks


def _same_kind(value: Any, tp: Any) -> bool:
    """Whether ``value`` is the JSON kind ``tp`` stands for (object, array, string, number, boolean)."""
    if tp is Any:
        return True
    origin = get_origin(tp)
    if is_typeddict(tp) or origin is dict:
        return isinstance(value, dict)
    if origin is list:
        return isinstance(value, list)
    if origin is Literal:
        return any(type(value) is type(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return any(_same_kind(value, a) for a in get_args(tp))
    return _scalar_ok(value, tp)


@functools.lru_cache(maxsize=None)
def _hints(td: Any) -> dict[str, Any]:
    return get_type_hints(td)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_WORDS = {bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"),
          str: ("a string", "strings"), type(None): ("null", "nulls")}


def describe(tp: Any, plural: bool = False) -> str:
    """The type in words: 'a list of numbers', 'an object or null'."""
    if tp is Any:
        return "values" if plural else "any value"
    if is_typeddict(tp):
        return "objects" if plural else "an object"
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a, plural) for a in args)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin is list:
        return "lists" if plural else f"a list of {describe(args[0], True)}"
    if origin is dict:
        return "objects" if plural else f"an object of {describe(args[1], True)}"
    return _WORDS[tp][1 if plural else 0]


def show(value: Any) -> str:
    """A value as the one-line message shows it: JSON's null/true/false, a string quoted and cut short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"a list of {len(value)}" if value else "an empty list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
