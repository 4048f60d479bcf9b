"""A validation (``rwkvprobe validate``) in plain words: the target and the sentences the command prints and
the report's "Prediction checked" section shows. Imports nothing of the project: validate (which measures)
and report (which renders) both use it, so neither imports the other for it."""

from __future__ import annotations

import statistics

from rwkvprobe.errors import InputError
from rwkvprobe.model.profile import LayerList
from rwkvprobe.verdict.roofline import nonmatmul_entry, verdict_of

#: the prediction counts as confirmed when predicted / measured is within this fraction of 1
TARGET = 0.15
#: a real pass whose per-token times spread more than this (IQR / median) ran on a busy machine
NOISY = 0.10
#: the real pass's DRAM bandwidth (the probes around it) this far from the analyze run's (the median of its
#: probes): the two were timed in different phases of the machine, and the ratio says so before anything else
PHASE_APART = 0.15
#: the machine's own speed (a fixed matmul on torch's threads, timed beside each side's rounds) this far apart between
#: the prediction's timed rounds and the real pass's (the ratio of their medians): the two sides ran on a machine at
#: two speeds. This project's 2-vCPU VM runs two-thread work 1.3-2x slower for seconds at a time, and the part of a
#: token outside its matmuls, made of small ops, moves most with it
MACHINE_APART = 0.2
#: what a ggml series' check is, said wherever it is shown
GGML_NOTE = ("the real pass is BlinkDL's reference package (torch), not a ggml engine such as rwkv.cpp: it checks "
             "that ggml's per-layer times add up to a forward pass of the same model, not ggml's own graph")


def summary_lines(v: dict, name: str) -> list[str]:
    """Plain sentences: predicted vs measured, the ratio, and where the gap is."""
    p, m, s = v["predicted"]["decode_seconds"], v["measured"]["decode"]["median"], v["split"]
    d = v["measured"]["decode"]
    verdict = "within" if v["within_target"] else "OUTSIDE"
    series = v.get("prediction_series", v["backend"])
    layout = f" ({series}: weights [N, K] as the reference keeps this version on a CPU)" if series != v["backend"] else ""
    rest_source = ("from analyze's timed non-matmul block" if s.get("rest_predicted_measured")
                   else "modelled as bytes over bandwidth")
    if s.get("rest_separate_seconds") is not None:
        rest_source += (f", its layer pass timed between the real pass's profiled rounds ({s['rest_separate_seconds'] * 1e3:.2f}"
                        " ms as analyze timed it before the real pass)")
    lines = [
        f"{name} decode, {v['backend']} {v['dtype']}, {v['threads']} threads: predicted {p * 1e3:.1f} ms/token{layout}, "
        f"measured {m * 1e3:.1f} ms/token (median of {len(d['samples'])} tokens{_timed_how(v)}, IQR {d['q1'] * 1e3:.1f}-"
        f"{d['q3'] * 1e3:.1f}{_back_to_back(v)}) in the reference forward pass ({v['reference']}, random weights): predicted/measured "
        f"{v['predicted_over_measured']:.2f}, {verdict} the {v['target']:.0%} target.",
        f"Gap {(m - p) * 1e3:+.1f} ms/token: weight matmuls {(s['matmul_forward_seconds'] - s['matmul_predicted_seconds']) * 1e3:+.1f} ms "
        f"({s['matmul_forward_seconds'] * 1e3:.1f} ms inside the forward pass, timed by torch.profiler, vs "
        f"{s['matmul_predicted_seconds'] * 1e3:.1f} ms from analyze's per-layer measurements"
        + (f", its points timed again between the real pass's profiled rounds ({s['matmul_separate_seconds'] * 1e3:.1f} ms"
           " as analyze timed them before the real pass)" if s.get("matmul_separate_seconds") is not None else "")
        + "); everything else "
        f"{(s['rest_forward_seconds'] - s['rest_predicted_seconds']) * 1e3:+.1f} ms ({s['rest_forward_seconds'] * 1e3:.1f} ms "
        f"in the forward pass vs {s['rest_predicted_seconds'] * 1e3:.2f} ms "
        f"{rest_source}: "
        "elementwise ops, norms, the RNN state update, framework overhead).",
    ]
    if v.get("prefill"):
        pre = v["prefill"]
        if pre.get("predicted_with_state"):
            lines.append(
                f"Prefill chunk of {pre['chunk']}: predicted {pre['predicted_tokens_per_second']:.0f} tokens/s (matmuls at "
                f"M={pre['chunk']}, the head once for the last token, {pre['predicted_matmul_seconds'] * 1e3:.1f} ms"
                + (f" with the points timed between the real pass's prefill rounds ({pre['matmul_separate_seconds'] * 1e3:.1f}"
                   " ms as analyze timed them)" if pre.get("matmul_separate_seconds") is not None else "")
                + " + "
                "the sequential state update "
                f"{pre['predicted_state_seconds'] * 1e3:.1f} ms a chunk"
                + (f", its layer pass timed between the real pass's prefill rounds ({pre['state_separate_seconds'] * 1e3:.1f}"
                   " ms as analyze timed it before the real pass)" if pre.get("state_separate_seconds") is not None else "")
                + f"), measured {pre['measured_tokens_per_second']:.0f} tokens/s"
                + (f" (median of {pre['measured_rounds']} chunks)" if pre.get("measured_rounds") else "")
                + f": predicted/measured time {pre['predicted_over_measured']:.2f}, "
                f"{'within' if pre['within_target'] else 'OUTSIDE'} the {v['target']:.0%} target."
                + (f" In the forward pass: weight matmuls {pre['matmul_forward_seconds'] * 1e3:.1f} ms, everything else "
                   f"{(pre['measured_seconds'] - pre['matmul_forward_seconds']) * 1e3:.1f} ms a chunk (torch.profiler)."
                   if pre.get("matmul_forward_seconds") is not None else ""))
        else:
            tps = pre.get("predicted_tokens_per_second", pre.get("predicted_tokens_per_second_matmuls_only"))
            lines.append(f"Prefill chunk of {pre['chunk']}: measured {pre['measured_tokens_per_second']:.0f} tokens/s; "
                         f"analyze's matmul-only figure {tps:.0f} tokens/s "
                         "(an upper bound: it leaves out the sequential state update).")
    if s["rest_forward_seconds"] <= 0.01 * m:
        lines.append("Warning: the profiled weight matmuls took (almost) the whole token: the machine's load changed "
                     "between the profiled and the unprofiled tokens, so this split is not trustworthy; rerun on a "
                     "quiet machine.")
    apart = phase_apart(v)
    if apart is not None and abs(apart) > PHASE_APART:
        b = v["bandwidth"]
        lines.append(f"Note: the machine's DRAM bandwidth read {min(b['real_pass_gbps']):.1f}-"
                     f"{max(b['real_pass_gbps']):.1f} GB/s around the real pass against {b['analyze_gbps']:.1f} GB/s "
                     f"(median) during analyze's measurements, {apart:+.0%}: the prediction and the real pass were "
                     "timed in different phases of this machine, and layers near the bandwidth ceiling move with it; "
                     "a miss may be the machine's rather than the prediction's (rerun validate with --results to "
                     "check).")
    machine = v.get("machine") or {}
    if machine.get("ratio") and abs(machine["ratio"] - 1) > MACHINE_APART:
        lines.append(f"Note: the machine's own speed (a fixed matmul on torch's threads) took {machine['real_pass_seconds'] * 1e6:.0f}"
                     f" us during the real pass against {machine['prediction_seconds'] * 1e6:.0f} us during the "
                     f"prediction's timed rounds (medians), {machine['ratio']:.2f}x: the two sides ran while the machine "
                     "ran at different speeds, and the part outside the matmuls (small ops) moves most with it; a miss "
                     "may be the machine's rather than the prediction's (rerun validate).")
    spread = (d["q3"] - d["q1"]) / d["median"]
    if spread > NOISY:
        lines.append(f"Warning: the decoded tokens' times spread {spread:.0%} (IQR/median): something else was using "
                     "the CPUs during the real pass; rerun on a quiet machine before trusting the ratio.")
    if v.get("points_skipped"):
        lines.append("Note: analyze's points could not be timed again beside the real pass ("
                     + "; ".join(f"{k}: {x}" for k, x in v["points_skipped"].items())
                     + "): the matmul prediction there is analyze's own, timed before the real pass.")
    if v["backend"] == "ggml":
        lines.append(f"Note ({v['backend']} {v['dtype']}): {GGML_NOTE}.")
    if not v["measured"].get("logits_finite", True):
        lines.append("Note: the random-weight model produced non-finite logits; timings may not be representative.")
    return lines


def _timed_how(v: dict) -> str:
    """How the compared tokens were timed, in words (nothing for older validations' back-to-back tokens)."""
    if v["measured"]["decode"].get("timed") != "rounds":
        return ""
    return (", the unprofiled ones of the rounds that give the split below"
            + (", timed between the prediction's rounds" if v["split"].get("matmul_separate_seconds") is not None
               or v["split"].get("rest_separate_seconds") is not None else ""))


def _back_to_back(v: dict) -> str:
    b = v["measured"].get("decode_back_to_back")
    return f"; {b['median'] * 1e3:.1f} ms/token back to back, {len(b['samples'])} tokens before the rounds" if b else ""


def phase_apart(v: dict) -> float | None:
    """How far the real pass's DRAM bandwidth (the mean of the probes around it) was from the analyze run's,
    as a fraction of the latter (None: not probed, older validations)."""
    b = v.get("bandwidth") or {}
    if not b.get("real_pass_gbps") or not b.get("analyze_gbps"):
        return None
    return sum(b["real_pass_gbps"]) / len(b["real_pass_gbps"]) / b["analyze_gbps"] - 1


def machine_speeds(prediction: list[float] | None, real_pass: list[float] | None) -> dict | None:
    """The medians of the machine's speed (contention.torch_canary, seconds) beside the prediction's timed
    rounds and beside the real pass, and real over prediction (None where either side has none)."""
    if not prediction or not real_pass:
        return None
    a, b = statistics.median(prediction), statistics.median(real_pass)
    return {"prediction_seconds": a, "real_pass_seconds": b, "ratio": b / a}


def prediction(results: dict, ll: LayerList, backend: str, dtype: str) -> dict:
    """analyze's per-token figures for one backend and dtype (matmuls measured, the rest modelled)."""

    stored, verdict = verdict_of(results)
    if [(x.k, x.n, x.count) for x in stored.layers] != [(x.k, x.n, x.count) for x in ll.layers]:
        raise InputError(f"the results file holds {stored.profile.name!r}, whose layers differ from "
                         f"{ll.profile.name!r}: pass the analyze results of the same profile")
    for s in verdict["series"]:
        if s["backend"] == backend and s["dtype"] == dtype and s["model"].get("decode"):
            d = s["model"]["decode"]
            out = {"decode_seconds": d["seconds_per_token"], "matmul_seconds": d["matmul_seconds"],
                   "non_matmul_seconds": d["non_matmul_seconds"], "non_matmul_measured": d["non_matmul_measured"],
                   "fully_measured": d["fully_measured"],
                   # by weight matrix, as the real pass's profile counts them: a batched row's call is batch matrices
                   "per_call": {f"{r['k']}x{r['n'] // r.get('batch', 1)}":
                                r["seconds"] / r.get("batch", 1) if r["measured"] else None
                                for r in s["rows"] if r["m"] == 1}}
            out["prefill"] = {p["chunk"]: {**p, "once": sorted(x.name for x in ll.layers if x.chunk_rows(p["chunk"]) != p["chunk"])}
                              for p in s["model"].get("prefill", [])}
            # the measured rows, for with_timed_matmuls to put the points timed again beside the real pass in
            out["rows"] = [{"layer": r["layer"], "m": r["m"], "k": r["k"], "n": r["n"], "count": r["count"],
                            "seconds": r["seconds"], **({"batch": r["batch"]} if r.get("batch") else {})}
                           for r in s["rows"] if r.get("measured")]
            # the machine's speed beside the timed non-matmul rounds of the decode (layerpass; older files: none)
            block = nonmatmul_entry(results, backend, dtype) or {}
            out["canary_seconds"] = [r["canary_seconds"] for r in block.get("rounds") or [] if r.get("canary_seconds")]
            return out
    raise InputError(f"the results file has no measured {backend} {dtype} decode: run rwkvprobe analyze "
                     f"{ll.profile.path or 'PROFILE'} --backends {backend} --dtypes {dtype}")


def with_timed_matmuls(pred: dict, timed: list[dict]) -> dict:
    """``pred`` (prediction()) with its measured layer rows at the times of ``timed`` (per m, k, n, the median
    seconds of a call: the points timed again between the real pass's rounds, forward_worker), the decode's and each
    chunk's matmul time and total moved by the difference, and what analyze had given kept beside them
    (``matmul_separate_seconds``). A row with no such figure, or a modelled one, keeps its time."""
    by_key = {(x["m"], x["k"], x["n"]): x["median_seconds"] for x in timed}
    out = {**pred, "prefill": {c: dict(p) for c, p in pred["prefill"].items()}}

    def moved(rows: list[dict]) -> tuple[float, bool]:
        hit = [r for r in rows if (r["m"], r["k"], r["n"]) in by_key]
        return sum((by_key[(r["m"], r["k"], r["n"])] - r["seconds"]) * r["count"] for r in hit), bool(hit)
    decode = [r for r in pred.get("rows", []) if r["m"] == 1]
    delta, hit = moved(decode)
    if hit:
        out.update(matmul_separate_seconds=pred["matmul_seconds"], matmul_seconds=pred["matmul_seconds"] + delta,
                   decode_seconds=pred["decode_seconds"] + delta)
        out["per_call"] = {**pred["per_call"], **{f"{r['k']}x{r['n'] // r.get('batch', 1)}":
                                                  by_key[(1, r["k"], r["n"])] / r.get("batch", 1)
                                                  for r in decode if (1, r["k"], r["n"]) in by_key}}
    for c, pre in out["prefill"].items():
        rows = [r for r in pred.get("rows", []) if r["m"] == c] + [r for r in decode if r["layer"] in pre["once"]]
        delta, hit = moved(rows)
        if hit:
            seconds = pre.get("seconds", pre["matmul_seconds"]) + delta
            pre.update(matmul_separate_seconds=pre["matmul_seconds"], matmul_seconds=pre["matmul_seconds"] + delta,
                       seconds=seconds, tokens_per_second=c / seconds)
    return out


def compare(pred: dict, real: dict, chunk: int) -> dict:
    prof = real["profiled"]
    # the decode time compared with: the profiled rounds' unprofiled tokens (forward_worker.profile_decode's
    # ``plain``), timed in the same phases of the machine as the split's share and as the prediction's rounds; the
    # tokens timed back to back before them kept beside it. Older workers: the back-to-back tokens
    paired = prof.get("plain")
    decode = {**paired, "timed": "rounds"} if paired else {**real["decode"], "timed": "back to back"}
    measured = decode["median"]
    predicted = pred["decode_seconds"]
    # the weight-matmul share of a token, paired in time with unprofiled tokens (forward_worker.profile_decode),
    # applied to the measured decode time; older workers gave the profiled matmul time alone
    matmul_real = prof["matmul_share"] * measured if "matmul_share" in prof else prof["weight_matmul_seconds_per_token"]
    shapes = []
    for x in sorted(prof["by_shape"], key=lambda x: -x["seconds_per_call"] * x["calls_per_token"]):
        key = f"{x['k']}x{x['n']}"
        a = pred["per_call"].get(key)
        shapes.append({"shape": key, "calls_per_token": x["calls_per_token"], "forward_seconds_per_call": x["seconds_per_call"],
                       "analyze_seconds_per_call": a, "ratio": a / x["seconds_per_call"] if a else None})
    out = {
        "predicted": pred, "measured": {"decode": decode, "prefill": real.get("prefill"),
                                        "logits_finite": real.get("logits_finite"),
                                        **({"decode_back_to_back": real["decode"]} if paired else {})},
        "predicted_over_measured": predicted / measured,
        "within_target": abs(predicted / measured - 1) <= TARGET, "target": TARGET,
        "split": {"matmul_forward_seconds": matmul_real, "matmul_predicted_seconds": pred["matmul_seconds"],
                  "rest_forward_seconds": measured - matmul_real,
                  "rest_predicted_seconds": pred["non_matmul_seconds"],
                  "rest_predicted_measured": pred.get("non_matmul_measured", False),
                  "state_matmul_seconds": prof.get("other_matmul_seconds_per_token"),
                  # the points timed again between the real pass's rounds: what analyze's own had given
                  # (with_timed_matmuls)
                  **({"matmul_separate_seconds": pred["matmul_separate_seconds"]}
                     if "matmul_separate_seconds" in pred else {})},
        "by_shape": shapes,
        "reference": real.get("reference"), "torch": real.get("torch"), "load_seconds": real.get("load_seconds"),
        "machine": machine_speeds(pred.get("canary_seconds"), real.get("canary_seconds")),
    }
    pre = pred["prefill"].get(chunk)
    if real.get("prefill") and pre:
        measured_tps = real["prefill"]["tokens_per_second"]
        with_state = bool(pre.get("with_state"))
        out["prefill"] = {"chunk": chunk, "measured_tokens_per_second": measured_tps,
                          "predicted_tokens_per_second": pre["tokens_per_second"],
                          "predicted_with_state": with_state,
                          "predicted_state_seconds": pre.get("state_seconds"),
                          "predicted_matmul_seconds": pre["matmul_seconds"],
                          **({"matmul_separate_seconds": pre["matmul_separate_seconds"]}
                             if "matmul_separate_seconds" in pre else {}),
                          "measured_seconds": real["prefill"]["median"],
                          "measured_rounds": len(real["prefill"].get("samples") or []),
                          "predicted_modelled": pre["modelled"],
                          # predicted time over measured time, as for decode
                          "predicted_over_measured": measured_tps / pre["tokens_per_second"],
                          # the chunk's split as profile_prefill measured it (older workers: none)
                          "matmul_forward_seconds": (real["prefill"]["matmul_share"] * real["prefill"]["median"]
                                                     if "matmul_share" in real["prefill"] else None),
                          "within_target": with_state and abs(measured_tps / pre["tokens_per_second"] - 1) <= TARGET}
    return out
