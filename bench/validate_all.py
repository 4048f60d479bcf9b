"""validate across RWKV versions and sizes: is the prediction right in its parts, not only in total?

Runs ``rwkvprobe validate`` (the reference forward pass against analyze's prediction) for each profile
and prints one table: decode predicted vs measured, the split (weight matmuls, everything else), each
with its ratio, and the chunk prefill (matmuls at M = chunk plus the sequential state update).

Targets (issue 16): matmuls and everything else each within 20% of the real pass, decode total within
10%, prefill within 15%. A ratio is predicted / measured (time). The real decode is the median of the unprofiled
tokens of the real pass's profiled rounds (the ones its split comes from, timed between the prediction's own rounds);
the tokens it timed back to back before them are shown beside it.

    python bench/validate_all.py                                  # 0.1B and 0.4B of RWKV-4, 5.2, 6, 7 (fp32)
    python bench/validate_all.py --large                          # and their 1.5B (about 15 min more)
    python bench/validate_all.py --profiles profiles/rwkv-1b5.yaml --dtype bf16 --threads 2
    python bench/validate_all.py --json /tmp/validate_all.json

RWKV-5.2 and RWKV-6 ship no 0.1B profile (and RWKV-6 no 0.4B): for those the defaults use profiles of the
same layout at 0.1B/0.4B shapes, written to a temporary folder (``--synthetic`` lists them); every figure
is still a measurement of that architecture's real forward pass with random weights.

Each profile's run takes about 30 s (0.1B) to 2 min (0.4B) and 3-4 min (1.5B) on 2 cores; on a shared machine the timings
are noisy (the script prints the spread of the decoded tokens next to each row).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "profiles"
SHIPPED = ["rwkv4-169m.yaml", "rwkv4-430m.yaml", "rwkv5-0b4.yaml", "rwkv-0b1.yaml", "rwkv-0b4.yaml"]
#: --large: the 1.5B of each version (all shipped), about 3-4 min each on 2 cores (6 GB of fp32 weights a run)
LARGE = ["rwkv4-1b5.yaml", "rwkv5-1b5.yaml", "rwkv6-1b5.yaml", "rwkv-1b5.yaml"]
#: same-layout profiles at sizes the project does not ship (name -> YAML body)
SYNTHETIC = {
    "rwkv5-0b1": {"name": "RWKV-5.2 0.1B-shaped (synthetic)", "version": 5, "n_layer": 12, "n_embd": 768,
                  "vocab_size": 65536, "head_size": 64, "source": "bench/validate_all.py: RWKV-5.2 layout, 0.1B shapes"},
    "rwkv6-0b1": {"name": "RWKV-6 0.1B-shaped (synthetic)", "version": 6, "n_layer": 12, "n_embd": 768,
                  "vocab_size": 65536, "head_size": 64, "lora": {"mix": 32, "decay": 64},
                  "source": "bench/validate_all.py: RWKV-6 layout, 0.1B shapes"},
    "rwkv6-0b4": {"name": "RWKV-6 0.4B-shaped (synthetic)", "version": 6, "n_layer": 24, "n_embd": 1024,
                  "vocab_size": 65536, "head_size": 64, "lora": {"mix": 32, "decay": 64},
                  "source": "bench/validate_all.py: RWKV-6 layout, 0.4B shapes"},
}
TARGET_PART, TARGET_TOTAL, TARGET_PREFILL = 0.20, 0.10, 0.15


def run_one(profile: Path, dtype: str, threads: int | None, tokens: int, chunk: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "rwkvprobe", "validate", str(profile), "--dtype", dtype, "--tokens", str(tokens),
           "--chunk", str(chunk), "--out", str(out)]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"profile": str(profile), "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    data = json.loads((out / "results.json").read_text())
    v = data["validation"][-1]
    return {"profile": str(profile), "name": data["profile"]["name"], "version": data["profile"]["version"],
            "validation": v, "lines": proc.stdout.strip().splitlines()}


def _phase(v: dict) -> str:
    """The DRAM bandwidth around the real pass against the analyze run's (a different phase moves every figure)."""
    b = v.get("bandwidth") or {}
    if not b.get("real_pass_gbps") or not b.get("analyze_gbps"):
        return "-"
    real = sum(b["real_pass_gbps"]) / len(b["real_pass_gbps"])
    return f"{real:.0f}/{b['analyze_gbps']:.0f} GB/s ({real / b['analyze_gbps']:.2f})"


def _machine(v: dict) -> str:
    """The machine's own speed (the canary on torch's threads, median) during the real pass over during the prediction's rounds:
    far from 1, the two sides ran while the machine ran at different speeds."""
    m = v.get("machine") or {}
    if not m.get("ratio"):
        return "-"
    return f"{m['real_pass_seconds'] * 1e6:.0f}/{m['prediction_seconds'] * 1e6:.0f} us ({m['ratio']:.2f})"


def _apart(t: float | None, real: float, digits: int = 1) -> str:
    """A part of the prediction as analyze timed it before the real pass (validate predicts with the same part
    timed between the real pass's rounds), over the real pass's."""
    if t is None or real <= 0:
        return ""
    return f"; timed apart {t * 1e3:.{digits}f} ({t / real:.2f})"


def _total_apart(v: dict) -> str:
    """The decode total as analyze's own points and layer pass, timed before the real pass, gave it."""
    s = v["split"]
    if s.get("matmul_separate_seconds") is None and s.get("rest_separate_seconds") is None:
        return ""
    t = ((s.get("matmul_separate_seconds") or s["matmul_predicted_seconds"])
         + (s.get("rest_separate_seconds") or s["rest_predicted_seconds"]))
    return _apart(t, v["measured"]["decode"]["median"])


def _back_to_back(v: dict) -> str:
    """The real pass's tokens timed back to back before its rounds (the compared ones are the rounds'), and the
    prediction over them."""
    b = v["measured"].get("decode_back_to_back")
    return f"; back to back {b['median'] * 1e3:.1f} ({v['predicted']['decode_seconds'] / b['median']:.2f})" if b else ""


def row(x: dict) -> list[str]:
    if "error" in x:
        return [Path(x["profile"]).stem, "error: " + x["error"]]
    v = x["validation"]
    s, d = v["split"], v["measured"]["decode"]
    mm = s["matmul_predicted_seconds"] / s["matmul_forward_seconds"]
    rest = s["rest_predicted_seconds"] / s["rest_forward_seconds"] if s["rest_forward_seconds"] > 0 else float("inf")
    total = v["predicted_over_measured"]
    ok = abs(mm - 1) <= TARGET_PART and abs(rest - 1) <= TARGET_PART and abs(total - 1) <= TARGET_TOTAL
    out = [Path(x["profile"]).stem, f"v{x['version']}", v["dtype"], str(v["threads"]),
           f"{s['matmul_predicted_seconds'] * 1e3:.1f}/{s['matmul_forward_seconds'] * 1e3:.1f} ({mm:.2f})"
           + _apart(s.get("matmul_separate_seconds"), s["matmul_forward_seconds"]),
           f"{s['rest_predicted_seconds'] * 1e3:.1f}/{s['rest_forward_seconds'] * 1e3:.1f} ({rest:.2f})"
           + _apart(s.get("rest_separate_seconds"), s["rest_forward_seconds"]),
           f"{v['predicted']['decode_seconds'] * 1e3:.1f}/{d['median'] * 1e3:.1f} ({total:.2f})" + _total_apart(v)
           + _back_to_back(v),
           f"{(d['q3'] - d['q1']) / d['median']:.0%}", _phase(v), _machine(v), "yes" if ok else "no"]
    pre = v.get("prefill")
    if pre:
        r = pre["predicted_over_measured"]
        label = "" if pre.get("predicted_with_state") else " matmuls only"
        mm_real = pre.get("matmul_forward_seconds")
        parts = "-"
        if mm_real is not None and pre.get("predicted_with_state"):
            rest_real = pre["measured_seconds"] - mm_real
            parts = (f"{pre['predicted_matmul_seconds'] * 1e3:.0f}/{mm_real * 1e3:.0f} "
                     f"({pre['predicted_matmul_seconds'] / mm_real:.2f})"
                     + _apart(pre.get("matmul_separate_seconds"), mm_real, 0)
                     + f", {pre['predicted_state_seconds'] * 1e3:.0f}/{rest_real * 1e3:.0f} "
                     f"({pre['predicted_state_seconds'] / rest_real:.2f})"
                     + _apart(pre.get("state_separate_seconds"), rest_real, 0))
        apart = ""
        if pre.get("matmul_separate_seconds") is not None or pre.get("state_separate_seconds") is not None:
            t = ((pre.get("matmul_separate_seconds") or pre["predicted_matmul_seconds"])
                 + (pre.get("state_separate_seconds") or pre.get("predicted_state_seconds") or 0.0))
            apart = f"; timed apart {pre['chunk'] / t:.0f} tok/s ({t / pre['measured_seconds']:.2f})"
        out += [f"{pre['predicted_tokens_per_second']:.0f}/{pre['measured_tokens_per_second']:.0f} tok/s ({r:.2f}){label}"
                + apart,
                parts, "yes" if pre.get("within_target") else "no"]
    else:
        out += ["-", "-", "-"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", nargs="*", help="profile files (default: the 0.1B and 0.4B of each version)")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--json", type=Path, default=None, help="also write every validation to this file")
    ap.add_argument("--synthetic", action="store_true", help="list the synthetic profiles and exit")
    ap.add_argument("--large", action="store_true", help="add the 1.5B of each version (%s)" % ", ".join(LARGE))
    args = ap.parse_args()
    if args.synthetic:
        for k, body in SYNTHETIC.items():
            print(k, json.dumps(body))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="validate-all-"))
    if args.profiles:
        profiles = [Path(p) for p in args.profiles]
    else:
        import yaml

        profiles = []
        for name, body in SYNTHETIC.items():
            path = tmp / f"{name}.yaml"
            path.write_text(yaml.safe_dump(body))
            profiles.append(path)
        profiles += [PROFILES / p for p in SHIPPED]
        profiles.sort(key=lambda p: p.stem)
    if args.large:  # the 1.5B not already named (``--profiles profiles/rwkv-1b5.yaml --large`` ran it twice)
        named = {p.resolve() for p in profiles}
        profiles += [PROFILES / p for p in LARGE if (PROFILES / p).resolve() not in named]
    results = []
    for p in profiles:
        print(f"validate {p.stem} ...", file=sys.stderr, flush=True)
        x = run_one(p, args.dtype, args.threads, args.tokens, args.chunk, tmp / p.stem)
        results.append(x)
        print("  " + " | ".join(row(x)), file=sys.stderr, flush=True)
    header = ["profile", "version", "dtype", "threads", "matmuls ms pred/real (ratio; timed apart from the real pass)",
              "everything else ms pred/real (ratio; timed apart from the real pass)",
              "decode ms pred/real (ratio; both parts timed apart; the real tokens timed back to back)", "token spread (IQR)",
              "DRAM GB/s real pass/analyze (ratio)", "canary real pass/prediction (ratio)",
              f"parts within {TARGET_PART:.0%}, total within {TARGET_TOTAL:.0%}",
              f"prefill chunk {args.chunk} pred/real (ratio of times; both parts timed apart)",
              "prefill ms matmuls, sequential rest: pred/real (ratio; timed apart from the real pass)", f"prefill within {TARGET_PREFILL:.0%}"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for x in results:
        print("| " + " | ".join(row(x)) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
