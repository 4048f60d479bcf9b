"""Modelled devices: a device profile (YAML, every figure with a source) turned into ceilings.

``rwkvprobe analyze PROFILE --device rk3588`` builds a results file whose ceilings come from the
device profile instead of measurements, so the same verdict code models the board. Every series is
named ``... (modelled)`` and the report says that no figure was measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from rwkvprobe.errors import InputError
from rwkvprobe.measure import onnxblock
from rwkvprobe.model.profile import profiles_dir
from rwkvprobe.results import new_results


def devices_dir() -> Path:
    return profiles_dir() / "devices"


def shipped_devices() -> list[str]:
    return sorted(p.stem for p in devices_dir().glob("*.yaml"))


def _figure(data: dict, path: str, where: str) -> dict:
    """A {value, source} figure; refused with one line when the value or its source is missing."""
    if not isinstance(data, dict) or "value" not in data or not isinstance(data.get("source"), str):
        raise InputError(f"{path}: key '{where}': expected {{value: <number>, source: <text>}}")
    value = data["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise InputError(f"{path}: key '{where}.value': expected a positive number, got {value!r}")
    return {"value": float(value), "source": data["source"]}


def load_device(name_or_path: str) -> dict:
    """A shipped device by name (``rk3588``) or a device YAML file, validated."""
    path = Path(name_or_path)
    if not path.suffix:
        path = devices_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            raise InputError(f"--device {name_or_path}: unknown device (shipped: {', '.join(shipped_devices())}, "
                             "or give a device YAML file)")
    p = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"{p}: cannot read device profile: {e.strerror or e}") from None
    except yaml.YAMLError:
        raise InputError(f"{p}: not valid YAML") from None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise InputError(f"{p}: key 'name': expected a device name")
    try:
        cpu, dram, npu = data["cpu"], data["dram"], data["npu"]
        dev: dict[str, Any] = {
            "name": data["name"], "path": p, "source": data.get("source", ""),
            "cpu_peak_gflops": {d: _figure(v, p, f"cpu.peak_gflops.{d}") for d, v in cpu["peak_gflops"].items()},
            "cpu_overhead_seconds": _figure(cpu["per_call_overhead_seconds"], p, "cpu.per_call_overhead_seconds"),
            "cpu_clusters": cpu.get("clusters", []),
            "dram_gbps": _figure(dram["sustained_gbps"], p, "dram.sustained_gbps"),
            "dram_theoretical_gbps": _figure(dram["theoretical_gbps"], p, "dram.theoretical_gbps"),
            "npu_matmul_gflops": {d: _figure(v, p, f"npu.matmul_gflops.{d}") for d, v in npu["matmul_gflops"].items()},
            "npu_peak_gflops": {d: _figure(v, p, f"npu.peak_gflops.{d}") for d, v in npu["peak_gflops"].items()},
            "npu_overhead_seconds": _figure(npu["per_call_overhead_seconds"], p, "npu.per_call_overhead_seconds"),
            "npu_clock_mhz": _figure(npu["clock_mhz"], p, "npu.clock_mhz"),
            "npu_cores": int(npu.get("cores", 1)),
            "published": data.get("published", []),
        }
    except (KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{p}: key {e}: missing or malformed (see profiles/devices/rk3588.yaml)") from None
    return dev


def npu_matmul_gflops(dev: dict, dtype: str) -> tuple[float, str]:
    """What one NPU matmul call reaches: the measured fp16 figure; int8 modelled at twice it."""
    m = dev["npu_matmul_gflops"]
    if dtype in m:
        return m[dtype]["value"], m[dtype]["source"]
    if dtype == "int8" and "fp16" in m:
        return 2 * m["fp16"]["value"], m["fp16"]["source"] + "; int8 modelled at twice the fp16 rate (datasheet ratio)"
    raise InputError(f"{dev['path']}: no NPU matmul rate for {dtype}")


def modelled_results(dev: dict, layers_json: dict, tokens: list[int], compiler: dict | None = None) -> dict:
    """A results file for ``analyze --device``: every ceiling from the device profile, no measurement."""
    results = new_results("analyze", environment={}, settings={"tokens": tokens, "threads": None, "cold": True,
                                                               "device": dev["name"]})
    results["modelled"] = True
    results["device"] = dev
    results["profile"] = layers_json
    bw = dev["dram_gbps"]["value"]
    results["bandwidth"] = {"engine": "modelled from the device profile", "modelled": True, "source": dev["dram_gbps"]["source"],
                            "array_bytes": 0, "trials": 0,
                            "runs": [{"threads": "all", "cluster": "-", "kernels": {"read": {"best_gbps": bw, "avg_gbps": bw}}}]}
    ceilings = []
    for d in ("fp32", "fp16", "int8"):
        if d in dev["cpu_peak_gflops"]:
            c = dev["cpu_peak_gflops"][d]
            ceilings.append({"backend": "CPU A76x4 (modelled)", "dtype": d, "peak_gflops": c["value"], "gemv_gbps": None,
                             "overhead_seconds": dev["cpu_overhead_seconds"]["value"], "modelled": True,
                             "source": c["source"]})
    for d in ("fp16", "int8"):
        gflops, src = npu_matmul_gflops(dev, d)
        over = dev["npu_overhead_seconds"]
        ceilings.append({"backend": "NPU, a call per matmul (modelled)", "dtype": d, "peak_gflops": gflops,
                         "gemv_gbps": None, "overhead_seconds": over["value"], "modelled": True,
                         "source": f"{src}; overhead: {over['source']}"})
        ceilings.append({"backend": "NPU, fused calls (modelled)", "dtype": d, "peak_gflops": gflops, "gemv_gbps": None,
                         "overhead_seconds": 0.0, "modelled": True,
                         "source": f"{src}; per-call overhead taken as 0, as when layers are fused into few calls"})
    results["ceilings"] = ceilings
    results["measurements"] = []
    results["skipped"] = []
    if compiler:
        results["compiler_estimates"] = compiler
    return results


def compiler_estimates(convert_manifest: dict, dev: dict) -> dict:
    """Per-shape RKNN compiler cycle totals turned into time at the device profile's NPU clock."""
    clock = dev["npu_clock_mhz"]["value"] * 1e6
    models = []
    for m in convert_manifest.get("models", []):
        c = m.get("cycles")
        if not c or not c.get("total_cycles"):
            continue
        sim = m.get("simulator") or {}
        models.append({"dtype": m["dtype"], "m": m["m"], "k": m["k"], "n": m["n"], "ddr_cycles": c["ddr_cycles"],
                       "npu_cycles": c["npu_cycles"], "total_cycles": c["total_cycles"], "bound": c["bound"],
                       "seconds": c["total_cycles"] / clock, "simulator_ok": sim.get("ok"),
                       "simulator_rel_err": sim.get("rel_err")})
    return {"label": "RKNN compiler estimate", "toolkit": convert_manifest.get("toolkit", {}),
            "target": convert_manifest.get("target"), "clock_mhz": dev["npu_clock_mhz"]["value"],
            "clock_source": dev["npu_clock_mhz"]["source"], "models": models}


def block_estimates(blocks_manifest: dict, dev: dict, profile) -> dict:
    """The RKNN compiler's own whole-block estimate (``convert --block``) as NPU decode time per token: block 0,
    n_layer - 1 later blocks and the head, each graph's cycle total at the device's NPU clock, no per-call overhead
    added (one call per graph). Also the op kinds that take the cycles and the ops the compiler sends to the CPU."""

    if blocks_manifest.get("settings") != onnxblock.settings_key(profile, 0):
        raise InputError(f"--rknn: the block graphs there were converted for {blocks_manifest.get('profile')!r} "
                         f"with other settings (dimensions, or an older graph version) than {profile.name!r}: run 'rwkvprobe convert PROFILE --block' for it")
    clock = dev["npu_clock_mhz"]["value"] * 1e6
    graphs, per_dtype = [], {}
    for g in blocks_manifest.get("graphs", []):
        c = g.get("cycles") or {}
        if not c.get("total_cycles"):
            continue
        by: dict = {}
        for o in c.get("ops", []):
            by[o["op"]] = by.get(o["op"], 0) + o["total_cycles"]
        zero = sorted({o["op"] for o in c.get("ops", []) if not o["total_cycles"]
                       and o["op"] not in ("InputOperator", "OutputOperator")})
        sim = g.get("simulator") or {}
        graphs.append({"graph": g["graph"], "dtype": g["dtype"], "ddr_cycles": c["ddr_cycles"], "npu_cycles": c["npu_cycles"],
                       "total_cycles": c["total_cycles"], "bound": c["bound"], "seconds": c["total_cycles"] / clock,
                       "op_kinds": sorted(({"op": k, "cycles": v, "share": v / c["total_cycles"]} for k, v in by.items() if v),
                                          key=lambda x: -x["cycles"]),
                       "no_estimate_ops": zero, "cpu_ops": g.get("cpu_ops", []), "simulator_ok": sim.get("ok"),
                       "simulator_rel_err": sim.get("rel_err")})
        per_dtype.setdefault(g["dtype"], {})[g["graph"]] = graphs[-1]
    decode = []
    L = profile.n_layer
    for dt, gs in sorted(per_dtype.items()):
        if all(k in gs for k in ("block0", "block", "head")):
            t = gs["block0"]["seconds"] + (L - 1) * gs["block"]["seconds"] + gs["head"]["seconds"]
            decode.append({"dtype": dt, "seconds_per_token": t, "tokens_per_second": 1 / t,
                           "how": f"block0 + {L - 1} x block + head, one call each",
                           "model_graph_seconds": (gs.get("model") or {}).get("seconds"),
                           "all_simulator_ok": all(x["simulator_ok"] for x in gs.values())})
    return {"label": "RKNN compiler estimate (whole blocks)", "toolkit": blocks_manifest.get("toolkit", {}),
            "target": blocks_manifest.get("target"), "clock_mhz": dev["npu_clock_mhz"]["value"],
            "clock_source": dev["npu_clock_mhz"]["source"], "graphs": graphs, "decode": decode}


