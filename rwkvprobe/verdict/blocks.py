"""Whole blocks timed in onnxruntime against the per-layer prediction of the same series (the report's
block-graph section renders this)."""

from __future__ import annotations

from rwkvprobe.measure.onnxblock import KINDS
from rwkvprobe.verdict.roofline import row_seconds


def block_comparison(results: dict, verdict: dict) -> list[dict]:
    """Per measured series: each graph measured as one graph beside the sum of its matmuls (measured per shape in
    the same series) and its non-matmul work (as the series' decode figure counts it)."""
    rows = []
    series = {(s["backend"], s["dtype"]): s for s in verdict.get("series", [])}
    for b in results.get("block_graphs") or []:
        s = series.get((b["backend"], b["dtype"]))
        L = b["n_layer"]
        decode = (s or {}).get("model", {}).get("decode") or {}
        per_layer = {r["layer"]: r for r in (s or {}).get("rows", []) if r["m"] == 1}

        later = [r for r in per_layer.values() if r["kind"] != "head"]
        first = [r for r in later if r["count"] >= L]  # v1/v2 run in every block but the first
        other = decode.get("non_matmul_seconds")
        nm_block = other / L if other is not None else None
        sums = {"block0": sum(row_seconds(r) for r in first) if first else None,
                "block": sum(row_seconds(r) for r in later) if later else None,
                "head": sum(row_seconds(r) for r in per_layer.values() if r["kind"] == "head") or None,
                "model": decode.get("seconds_per_token")}
        for kind in KINDS:
            if kind not in b["graphs"]:  # not asked for (analyze --quick leaves the full model out)
                continue
            gm = b["graphs"][kind]
            mm = sums[kind]
            total = None
            if mm is not None:
                total = mm if kind in ("model", "head") else mm + (nm_block or 0.0)
            mine = {"head": [r for r in per_layer.values() if r["kind"] == "head"], "block0": first,
                    "block": later, "model": list(per_layer.values())}[kind]
            modelled = (not decode.get("non_matmul_measured", False) and kind != "head") or \
                any(not r.get("measured") for r in mine)
            rows.append({"backend": b["backend"], "dtype": b["dtype"], "kind": kind, "graph_seconds": gm.get("seconds"),
                         "status": gm.get("skipped") or gm.get("error"), "sum_seconds": total,
                         "sum_partly_modelled": modelled and total is not None,
                         "ratio": gm["seconds"] / total if gm.get("seconds") and total else None})
        if b.get("chained_seconds_per_token"):
            rows.append({"backend": b["backend"], "dtype": b["dtype"], "kind": f"chained: block0 + {L - 1} x block + head",
                         "graph_seconds": b["chained_seconds_per_token"], "status": None, "sum_seconds": sums["model"],
                         "sum_partly_modelled": not decode.get("fully_measured", True) or not decode.get("non_matmul_measured"),
                         "ratio": b["chained_seconds_per_token"] / sums["model"] if sums["model"] else None})
    return rows
