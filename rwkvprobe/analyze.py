"""``rwkvprobe analyze``: environment, bandwidth, ceilings, then every unique layer shape measured.

The results file is rewritten (atomically) after every point, so an interrupted run keeps what it
measured and ``--resume DIR`` measures only what is missing.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from rwkvprobe import system
from rwkvprobe.backends import BACKEND_NAMES, Workload, available_backends, backend_class, get_backend
from rwkvprobe.errors import InputError
from rwkvprobe.fsutil import ensure_writable_dir
from rwkvprobe.measure import measure_ceilings, measure_point, onnx_cache_dir
from rwkvprobe.profile import LayerList
from rwkvprobe.results import load_results, new_results, save_results
from rwkvprobe.timing import TimingPolicy, plan_rotation, set_affinity

RESULTS = "results.json"
#: a point projected to take longer than this many times its budget for one call is skipped
SKIP_FACTOR = 4.0


@dataclass
class AnalyzeSettings:
    backends: list[str] | None  # None: every usable backend
    dtypes: list[str] | None  # None: each backend's defaults
    tokens: list[int]
    threads: int
    cpus: list[int] | None
    cold: bool = True
    budget_seconds: float = 150.0
    quick: bool = False
    rknn_dir: Path | None = None  # .rknn models for the rknnlite and rknn backends ('rwkvprobe convert')
    npu_cores: str = "auto"  # core masks, comma-separated: one series each (board.parse_core_masks)
    device_id: str | None = None  # the adb device ID of the board for the rknn backend (board.py)
    block_size: int = 32  # blockwise-quantized weights
    quantize: list[str] = field(default_factory=lambda: ["att", "ffn", "custom"])  # kinds stored quantized
    onnx_dir: Path = field(default_factory=onnx_cache_dir)

    def to_json(self) -> dict:
        return {"backends": self.backends, "dtypes": self.dtypes, "tokens": self.tokens, "threads": self.threads,
                "cpus": self.cpus, "cold": self.cold, "budget_seconds": self.budget_seconds, "quick": self.quick,
                "rknn_dir": str(self.rknn_dir) if self.rknn_dir else None, "npu_cores": self.npu_cores,
                "device_id": self.device_id,
                "block_size": self.block_size, "quantize": self.quantize}


def default_out_dir(layers: LayerList) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("rwkvprobe-out") / f"{layers.profile.stem}-{stamp}"


def plan_series(settings: AnalyzeSettings) -> tuple[list[tuple[str, str]], list[dict]]:
    """(series, dtype) pairs to measure, and the skipped ones with the reason.

    The NPU backends give one series per core mask of ``npu_cores`` (``rknnlite[core0]``, ...).
    """
    from rwkvprobe import board

    masks = board.parse_core_masks(getattr(settings, "npu_cores", "auto"))  # sweep's settings have none
    usable, unavailable = available_backends()
    skipped = []
    if settings.backends is None:  # every usable one, except those run only when named (torch-linear)
        names = [b for b in usable if not getattr(backend_class(b), "opt_in", False)]
        skipped += [{"backend": b, "dtype": None, "reason": why} for b, why in unavailable.items()]
    else:
        names = []
        for b in settings.backends:
            if b == board.BACKEND:  # host-driven: rknn-toolkit2 in its environment, a board over adb
                if not hasattr(settings, "device_id"):
                    raise InputError("--backends rknn (a board driven over adb) is for 'rwkvprobe analyze'")
                board.check_ready(settings)
                names.append(b)
                continue
            if b not in BACKEND_NAMES:
                raise InputError(f"--backends: unknown backend '{b}' "
                                 f"(expected {', '.join(BACKEND_NAMES + (board.BACKEND,))})")
            get_backend(b, settings.threads)  # raises one line naming the extra when it cannot run
            if b == "rknnlite" and settings.rknn_dir is None:
                raise InputError("--backends rknnlite needs --rknn DIR: the .rknn models 'rwkvprobe convert' wrote")
            names.append(b)
    pairs = []
    for b in names:
        cls = board.RknnBoardBackend if b == board.BACKEND else backend_class(b)
        wanted = settings.dtypes or list(cls.default_dtypes)
        for d in wanted:
            if d not in cls.dtypes:
                skipped.append({"backend": b, "dtype": d, "reason": f"{b} has no {d} matmul"})
            elif (why := cls.dtype_unavailable(d)) is not None:
                skipped.append({"backend": b, "dtype": d, "reason": why})
            else:
                pairs += [(label, d) for label in board.series_labels(b, masks)]
    if not pairs:
        raise InputError("nothing to measure: no backend here supports the requested dtypes "
                         f"({', '.join(settings.dtypes or [])})")
    return pairs, skipped


def check_dtypes(dtypes: list[str] | None) -> None:
    from rwkvprobe.backends import DTYPES

    for d in dtypes or []:
        if d not in DTYPES:
            raise InputError(f"--dtypes: unknown dtype '{d}' (expected {', '.join(DTYPES)})")


def _projected(c: dict, w: Workload, bandwidth_bps: float | None) -> float | None:
    if not c.get("peak_gflops"):
        return None
    t = w.flops / (c["peak_gflops"] * 1e9)
    if c.get("gemv_gbps"):
        t = max(t, w.bytes_moved / (c["gemv_gbps"] * 1e9))
    elif bandwidth_bps:
        t = max(t, w.bytes_moved / bandwidth_bps)
    return t + (c.get("overhead_seconds") or 0.0)


class Analysis:
    """One analyze run; ``run()`` measures what ``results`` still lacks, saving after each point."""

    def __init__(self, layers: LayerList, settings: AnalyzeSettings, out_dir: Path, results: dict | None = None):
        self.layers = layers
        self.settings = settings
        self.out_dir = out_dir
        self.path = out_dir / RESULTS
        self.results = results

    # -- set-up ------------------------------------------------------------------------------
    @classmethod
    def start(cls, layers: LayerList, settings: AnalyzeSettings, out_dir: Path | None) -> "Analysis":
        out = ensure_writable_dir(out_dir or default_out_dir(layers))
        if (out / RESULTS).exists():
            raise InputError(f"{out / RESULTS} exists: use --resume {out} to complete it, or another --out")
        return cls(layers, settings, out)

    @classmethod
    def resume(cls, layers: LayerList, settings: AnalyzeSettings, out_dir: Path) -> "Analysis":
        out = ensure_writable_dir(out_dir)
        results = load_results(out / RESULTS, kinds=("analyze",))
        if results.get("profile", {}).get("name") != layers.profile.name:
            raise InputError(f"{out / RESULTS}: holds profile {results.get('profile', {}).get('name')!r}, "
                             f"not {layers.profile.name!r}")
        old = results.get("settings", {})
        for key in ("tokens", "threads", "cold"):
            if old.get(key) != settings.to_json()[key]:
                raise InputError(f"--resume {out}: it was run with {key}={old.get(key)!r}, "
                                 f"not {settings.to_json()[key]!r}; use the same options")
        return cls(layers, settings, out, results)

    def save(self) -> None:
        save_results(self.path, self.results)

    # -- the run -------------------------------------------------------------------------------
    def run(self, progress) -> dict:
        """Measure everything missing; ``progress`` is a Progress-like reporter (see cli)."""
        s = self.settings
        t_start = time.perf_counter()
        pinned = set_affinity(s.cpus)
        llc = system.llc_bytes()
        if self.results is None:
            env = system.capture_environment()
            self.results = new_results("analyze", env, s.to_json())
            self.results["settings"]["pinned_cpus"] = pinned
            self.results["profile"] = profile_json(self.layers)
            self.results["before"] = system.snapshot_dynamic()
            self.results.update({"bandwidth": None, "ceilings": [], "measurements": [], "skipped": []})
        r = self.results
        pairs, skipped = plan_series(s)
        known_skips = {(x["backend"], x["dtype"]) for x in r["skipped"]}
        r["skipped"] += [x for x in skipped if (x["backend"], x["dtype"]) not in known_skips]
        from rwkvprobe import board

        pairs, board_pairs = board.split_board(pairs)  # the rknn series run in the toolkit worker
        backends = {label: board.instantiate(label, s) for label in {b for b, _ in pairs}}
        r["backends"] = {name: b.describe() for name, b in backends.items()}
        r["backends"].update(board.describe(board_pairs, s))
        self.save()

        stages = r.setdefault("stage_seconds", {})
        mark = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            stages[name] = stages.get(name, 0.0) + now - mark
            mark = now

        lap("setup")
        quick = s.quick
        if not r.get("bandwidth"):
            progress.stage("memory bandwidth")
            from rwkvprobe.bandwidth import measure_bandwidth

            r["bandwidth"] = measure_bandwidth(threads=[s.threads], trials=3 if quick else 5, cpus=s.cpus,
                                               kernels=("copy", "triad", "read"), progress=progress.note)
            self.save()
        bw_bps = max((run["kernels"]["read"]["best_gbps"] for run in r["bandwidth"]["runs"]), default=0) * 1e9
        lap("bandwidth")
        if board_pairs:
            board.run_series(self, board_pairs, progress)
            lap("board")

        ceiling_policy = TimingPolicy(budget_seconds=0.15 if quick else 0.4, min_samples=3)
        have = {(c["backend"], c["dtype"]) for c in r["ceilings"]}
        todo = [p for p in pairs if p not in have]
        for i, (b, d) in enumerate(todo):
            progress.stage(f"ceilings {i + 1}/{len(todo)}: {b} {d}")
            r["ceilings"].append(measure_ceilings(backends[b], d, llc, ceiling_policy, s.onnx_dir, progress.note,
                                                  block_size=s.block_size))
            self.save()
        ceilings = {(c["backend"], c["dtype"]): c for c in r["ceilings"]}
        lap("ceilings")
        self._measure_nonmatmul(pairs, llc, quick, progress)
        lap("non-matmul")
        self._measure_block_graphs(pairs, llc, quick, progress)
        lap("block graphs")

        # the layer points: shape-outermost so one base weight serves every backend and dtype
        done = {(p["backend"], p["dtype"], p["m"], p["k"], p["n"]) for p in r["measurements"]}
        points = [(m, k, n, b, d) for (k, n) in self.layers.unique_shapes() for m in s.tokens for (b, d) in pairs
                  if (b, d, m, k, n) not in done]
        elapsed = time.perf_counter() - t_start
        remaining = max(s.budget_seconds - elapsed, 1.0)
        per_point = min(1.0, max(0.05, remaining / max(len(points), 1) / 2.5))  # prepare + check ~1.5x
        policy = TimingPolicy(budget_seconds=per_point, min_samples=3)
        self._write_models(points)
        progress.begin_points(len(points))
        for m, k, n, b, d in points:
            w = backends[b].workload(m, k, n, d, s.block_size)
            proj = _projected(ceilings[(b, d)], w, bw_bps)
            label = f"{b} {d} M={m} {k}x{n}"
            # the check runs every weight copy once, then warm-up and the minimum samples follow
            calls = plan_rotation(w.weight_bytes, llc, s.cold).copies + policy.min_samples + 1
            if proj is not None and proj * calls > SKIP_FACTOR * per_point:
                point = {"backend": b, "dtype": d, "m": m, "k": k, "n": n, "flops": w.flops, "bytes": w.bytes_moved,
                         "skipped": f"projected {proj:.2f} s a call ({calls} calls at least) from this backend's "
                                    f"measured ceilings (per-point budget {per_point:.2f} s); raise --budget to measure it",
                         "check": None, "timing": None, "error": None}
            else:
                point = measure_point(backends[b], w, llc, policy, s.cold, s.onnx_dir)
            r["measurements"].append(point)
            self.save()
            progress.advance(label)
        lap("layers")
        r["after"] = system.snapshot_dynamic()
        r["warnings"] = system.environment_warnings(r["environment"], r.get("before"), r["after"])
        r["elapsed_seconds"] = r.get("elapsed_seconds", 0.0) + (time.perf_counter() - t_start)
        self.save()
        return r

    def _measure_nonmatmul(self, pairs, llc, quick: bool, progress) -> None:
        """One block's non-matmul decode work, timed in torch (nonmatmul.py), for the torch series."""
        from rwkvprobe import nonmatmul

        r, profile = self.results, self.layers.profile
        if profile.version not in nonmatmul.VERSIONS:
            return
        have = {(x["backend"], x["dtype"]) for x in r.setdefault("nonmatmul", [])}
        wanted = {(b, nonmatmul.block_dtype(d)) for b, d in pairs if b in nonmatmul.BACKENDS}
        for b, d in sorted(wanted - have):
            progress.stage(f"non-matmul block: {b} {d}")
            r["nonmatmul"].append(nonmatmul.measure_series(profile, b, d, 0.3 if quick else 0.8, llc,
                                                           self.settings.cold))
            self.save()

    def _measure_block_graphs(self, pairs, llc, quick: bool, progress) -> None:
        """Whole-block ONNX graphs (onnxblock.py) timed in onnxruntime, for its fp32/fp16 series (RWKV-7)."""
        from rwkvprobe import onnxblock

        r, profile = self.results, self.layers.profile
        if profile.version not in onnxblock.VERSIONS or profile.n_layer < 2:
            return
        have = {(x["backend"], x["dtype"]) for x in r.setdefault("block_graphs", [])}
        wanted = sorted({(b, d) for b, d in pairs if b == onnxblock.BACKEND and d in onnxblock.DTYPES} - have)
        folder = Path(self.settings.onnx_dir) / "blocks" / hashlib.sha256(
            onnxblock.settings_key(profile, 0).encode()).hexdigest()[:12]
        for b, d in wanted:
            progress.stage(f"block graphs: {b} {d}")
            policy = TimingPolicy(budget_seconds=0.8 if quick else 2.0, min_samples=5)
            # --quick: one later block (the graph n_layer - 1 blocks run; a few seconds even for 1.5B); otherwise
            # block 0, the head (the chained decode step) and the full-model graph too
            kinds = ("block",) if quick else onnxblock.KINDS
            r["block_graphs"].append(onnxblock.measure_graphs(profile, folder, d, self.settings.threads, policy, llc,
                                                              self.settings.cold, kinds))
            self.save()

    def _write_models(self, points) -> None:
        """The ONNX models onnxruntime will run (reused from the cache folder when already there)."""
        from rwkvprobe import onnxgen

        # quantized models are made by the backend from the fp32 one
        need = sorted({(m, k, n, d if d in onnxgen.ONNX_DTYPES else "fp32") for m, k, n, b, d in points
                       if b == "onnxruntime"})
        folder = ensure_writable_dir(self.settings.onnx_dir)
        for m, k, n, d in need:
            spec = onnxgen.ModelSpec(m, k, n, d)
            if not (folder / spec.filename).is_file():
                onnxgen.check_resources([spec], folder)
                onnxgen.write_model(spec, folder, onnxgen.DEFAULT_OPSET)


def layers_from_json(data: dict) -> LayerList:
    """The LayerList stored in a results file (so reports render without the profile file)."""
    from rwkvprobe.profile import Layer, Profile

    try:
        profile = Profile(name=data["name"], source=data.get("source", ""), path=data.get("path", ""),
                          version=data.get("version"), n_layer=data.get("n_layer", 0), n_embd=data.get("n_embd", 0),
                          vocab_size=data.get("vocab_size", 0), head_size=data.get("head_size", 0),
                          dim_ffn=data.get("dim_ffn", 0), lora=data.get("lora") or {})
        layers = tuple(Layer(x["name"], x["kind"], int(x["k"]), int(x["n"]), int(x["count"]), int(x["stored"]))
                       for x in data["layers"])
        emb = data.get("embedding") or {}
        return LayerList(profile, layers, emb.get("rows", 0), emb.get("dim", 0), data.get("other_params", 0))
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"results file: the profile block is incomplete ({e})") from None


def profile_json(layers: LayerList) -> dict:
    p = layers.profile
    return {
        "name": p.name, "path": p.path, "source": p.source, "version": p.version, "n_layer": p.n_layer,
        "n_embd": p.n_embd, "vocab_size": p.vocab_size, "head_size": p.head_size, "dim_ffn": p.dim_ffn,
        "lora": p.lora, "total_params": layers.total_params,
        "layers": [{"name": x.name, "kind": x.kind, "k": x.k, "n": x.n, "count": x.count, "stored": x.stored}
                   for x in layers.layers],
        "embedding": {"rows": layers.embedding_rows, "dim": layers.embedding_dim},
        "other_params": layers.other_params,
    }
