"""The modelled RK3588 (profiles/devices/rk3588.yaml) against every published RK3588 figure it can express.

    python bench/device_model_check.py [--markdown] [--rknn DIR]

For each figure: the modelled value, the published one, and modelled / published. No parameter is fitted to
any figure: every modelled value comes from the device profile (each figure there has its own source) and the
model's shapes, through the same roofline rule analyze --device uses (per layer t0 + max(FLOPs/P, bytes/W)).
Where the two differ by more than 25% the row says which assumption of the model the figure contradicts.
``--rknn DIR`` (from ``rwkvprobe convert profiles/rwkv-1b5.yaml --block``) adds the RKNN compiler's own
whole-block estimate for RWKV-7 1.5B.

Each published figure was checked at its source (see SOURCES); where the source could not be reached from
here, the row says so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rwkvprobe.model.profile import layer_list, load_profile, profile_json  # noqa: E402
from rwkvprobe.npu.device import load_device, modelled_results  # noqa: E402
from rwkvprobe.verdict.roofline import verdict_of  # noqa: E402

TOLERANCE = 0.25

SOURCES = {
    "rkllm": "airockchip/rknn-llm benchmark.md (RK3588 table, w8a8, seqlen 128, 64 new tokens; checked at commit 878f936)",
    "rkllama": "invisiofficial/rk-llama.cpp issue #9 'Some benchmarks' (Radxa ITX 'with DDR5 32GB', llama-bench -t 4 on "
               "CPUs 4-7; gemma4 E2B: 4.65 B params, Q8_0 4.69 GiB, Q4_0 2.82 GiB; checked in the issue text)",
    "chang_gemv": "Martin Chang, 'Porting RWKV to RK3588 NPU' (Skymizer talk), via rk3588-facts.md: NOT re-checked, "
                  "the talk is not in the stored sources",
    "chang_900": "clehaxze.tw gemlog 2024-02-14 'Benchmarking RK3588 NPU matrix multiplication performance EP3' "
                 "(900 GFLOPS fp16 at 128x1024x8192; checked in the post)",
}

# Gemma-4 E2B, expressed by its bytes: its layer shapes have no source reachable from here, so the streamed
# weights are the llama-bench parameter count less the per-layer-embedding table, which decode reads one row of
# per layer (a lookup, not a stream): vocab 262144 x 35 layers x 256 (model configs of the E2B conversions).
GEMMA_PARAMS = 4.65e9
GEMMA_PLE = 262144 * 35 * 256
GEMMA_STREAMED = GEMMA_PARAMS - GEMMA_PLE
GEMMA_CALLS = 35 * 7 + 1  # q, k, v, o, gate, up, down per decoder layer, and the head: one NPU call each
GGUF_BYTES_PER_WEIGHT = {"Q8_0": 34 / 32, "Q4_0": 18 / 32}  # ggml blocks of 32: scale + 32 x 8 or 4 bits


def _series(profile: str, dev: dict) -> dict:
    ll = layer_list(load_profile(ROOT / profile))
    _, verdict = verdict_of(modelled_results(dev, profile_json(ll), [1, 64], None))
    return {(s["backend"], s["dtype"]): s["model"]["decode"]["tokens_per_second"] for s in verdict["series"]}


def rows(dev: dict, rknn: Path | None = None) -> list[dict]:
    W = dev["dram_gbps"]["value"] * 1e9
    npu_t0 = dev["npu_overhead_seconds"]["value"]
    cpu_t0 = dev["cpu_overhead_seconds"]["value"]
    p_npu16 = dev["npu_matmul_gflops"]["fp16"]["value"] * 1e9
    p_npu8 = 2 * p_npu16  # device.npu_matmul_gflops: int8 at twice the fp16 rate
    p_cpu8 = dev["cpu_peak_gflops"]["int8"]["value"] * 1e9
    p_cpu16 = dev["cpu_peak_gflops"]["fp16"]["value"] * 1e9
    out = []

    def row(what, source, unit, published, modelled, model, off_because=""):
        ratio = modelled / published
        out.append({"what": what, "source": source, "unit": unit, "published": published, "modelled": modelled,
                    "ratio": ratio, "model": model, "off": abs(ratio - 1) > TOLERANCE,
                    "contradicts": off_because if abs(ratio - 1) > TOLERANCE else ""})

    rwkv = _series("profiles/rwkv-1b5.yaml", dev)
    tiny = _series("profiles/example-layers.yaml", dev)
    per_call = ("one NPU call per matmul, each with the fixed per-call overhead: RKLLM runs whole layers in few "
                "calls (the fused row holds)")
    row("RKLLM RWKV-7 1.5B w8a8 decode", SOURCES["rkllm"], "tokens/s", 13.82, rwkv[("NPU, fused calls (modelled)", "int8")],
        "NPU int8, fused calls (no per-call overhead)")
    row("RKLLM RWKV-7 1.5B w8a8 decode", SOURCES["rkllm"], "tokens/s", 13.82,
        rwkv[("NPU, a call per matmul (modelled)", "int8")], "NPU int8, a call per matmul", per_call)
    if rknn is not None:
        from rwkvprobe.npu import toolkit
        from rwkvprobe.npu.device import block_estimates

        manifest = toolkit.read_blocks_manifest(rknn)
        if manifest:
            est = block_estimates(manifest, dev, load_profile(ROOT / "profiles/rwkv-1b5.yaml"))
            for d in est["decode"]:
                if d["dtype"] == "int8":
                    row("RKLLM RWKV-7 1.5B w8a8 decode", SOURCES["rkllm"], "tokens/s", 13.82, d["tokens_per_second"],
                        "RKNN compiler's whole-block estimate, int8 (w8a8)" + (
                            "" if d["all_simulator_ok"] else "; a graph missed its simulator check"),
                        "that the compiler's DDR cycles at the 1 GHz NPU clock are the block's time: its cycle table "
                        "gives elementwise and CPU-side ops no cycles, and its DDR model is not the board's")
    row("RKLLM TinyLlama 1.1B w8a8 decode", SOURCES["rkllm"], "tokens/s", 24.43, tiny[("NPU, fused calls (modelled)", "int8")],
        "NPU int8, fused calls (profiles/example-layers.yaml)",
        "DRAM bandwidth 20 GB/s sustained for the NPU: RKLLM reads TinyLlama's weights faster than that")
    row("RKLLM TinyLlama 1.1B w8a8 decode", SOURCES["rkllm"], "tokens/s", 24.43,
        tiny[("NPU, a call per matmul (modelled)", "int8")], "NPU int8, a call per matmul", per_call)

    for fmt, cpu_pub, npu_pub in (("Q8_0", 7.67, 7.74), ("Q4_0", 12.44, 8.77)):
        nbytes = GEMMA_STREAMED * GGUF_BYTES_PER_WEIGHT[fmt]
        row(f"rk-llama.cpp gemma-4 E2B tg128 {fmt}, CPU (4 A76)", SOURCES["rkllama"], "tokens/s", cpu_pub,
            1 / (nbytes / W + GEMMA_CALLS * cpu_t0), f"CPU: {nbytes / 1e9:.2f} GB streamed per token over W",
            "DRAM 20 GB/s (LPDDR4x boards) on an LPDDR5 board, and a dequantizing kernel that keeps up with memory")
        npu_bytes = GEMMA_STREAMED * 1.0
        row(f"rk-llama.cpp gemma-4 E2B tg128 {fmt}, NPU", SOURCES["rkllama"], "tokens/s", npu_pub,
            1 / (npu_bytes / W + GEMMA_CALLS * npu_t0),
            f"NPU: int8 weights ({npu_bytes / 1e9:.2f} GB) over W + {GEMMA_CALLS} calls x {npu_t0 * 1e3:.1f} ms",
            "that the NPU path reads the weights as int8 whatever the GGUF format: Q4_0 runs faster there than "
            "Q8_0, so it reads fewer bytes (or keeps layers on the CPU)" if fmt == "Q4_0" else
            "the per-call overhead of a standalone matmul call, and 20 GB/s")
    flops = 2 * GEMMA_STREAMED
    row("rk-llama.cpp gemma-4 E2B pp512 Q8_0, CPU (4 A76)", SOURCES["rkllama"], "tokens/s", 54.74,
        1 / (flops / p_cpu8), "CPU: 2 x streamed params FLOP per token at the int8 (SDOT) peak",
        "the CPU's int8 SDOT peak (a ceiling no real GEMM reaches) as the prefill rate: llama.cpp's Q8_0 kernels "
        "reach well under half of it")
    row("rk-llama.cpp gemma-4 E2B pp512 Q8_0, NPU", SOURCES["rkllama"], "tokens/s", 105.94,
        1 / (flops / p_npu8), "NPU: FLOP per token at int8 = 2 x the measured 900 GFLOPS fp16",
        "int8 matmuls at twice the best measured fp16 rate (128x1024x8192, native layout), and every matmul on "
        "the NPU: llama.cpp's shapes and layouts, and its CPU-side attention, reach far less")

    k = n = 1024
    f = 2 * k * n
    b16 = k * n * 2 + (k + n) * 2
    row("seed GEMV 1x1024x1024 fp16, NPU", SOURCES["chang_gemv"], "ms", 0.2,
        (npu_t0 + max(f / p_npu16, b16 / W)) * 1e3, "t0 + max(F/P, bytes/W), NPU fp16",
        "nothing independent: the profile's 0.2 ms per-call overhead is this very call's time, and the model adds "
        "the weight read on top of it (counted twice)")
    row("seed GEMV 1x1024x1024 fp16, CPU", SOURCES["chang_gemv"], "ms", 0.1,
        (cpu_t0 + max(f / p_cpu16, b16 / W)) * 1e3, "t0 + max(F/P, bytes/W), CPU fp16")
    m, k, n = 128, 1024, 8192
    f = 2 * m * k * n
    b16 = k * n * 2 + (m * k + m * n) * 2
    t = npu_t0 + max(f / p_npu16, b16 / W)
    row("seed matmul 128x1024x8192 fp16, NPU", SOURCES["chang_900"], "GFLOPS", 900.0, f / t / 1e9,
        "F / (t0 + max(F/P, bytes/W)) (circular: P is this figure)")
    return out


def _fmt(x: float) -> str:
    return f"{x:.3g}" if x < 10 else f"{x:.1f}"


def table(out: list[dict], markdown: bool) -> str:
    head = ["published figure", "unit", "published", "modelled", "modelled/published", "model", "where >25% off: contradicts"]
    lines = []
    if markdown:
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in out:
        cells = [r["what"], r["unit"], _fmt(r["published"]), _fmt(r["modelled"]), f"{r['ratio']:.2f}" + (" **off**" if r["off"] else ""),
                 r["model"], r["contradicts"] or "-"]
        lines.append("| " + " | ".join(cells) + " |" if markdown else "  ".join(cells))
    lines.append("")
    lines.append("Sources: " + "; ".join(f"[{k}] {v}" for k, v in SOURCES.items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument("--rknn", type=Path, help="a 'rwkvprobe convert profiles/rwkv-1b5.yaml --block' folder")
    ap.add_argument("--device", default="rk3588")
    args = ap.parse_args(argv)
    from rwkvprobe.errors import InputError

    try:
        dev = load_device(args.device)
        out = rows(dev, args.rknn)
    except InputError as e:
        print(f"device_model_check: error: {e}", file=sys.stderr)
        return 2
    print(f"Modelled {dev['name']} ({dev['path']}) against published figures; every modelled value is modelled, "
          f"not measured; nothing fitted.")
    print(table(out, args.markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
