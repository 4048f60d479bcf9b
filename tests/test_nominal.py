"""% of nominal: only from a device profile's sourced figures; unknown elsewhere. And the device-model check."""

import subprocess
import sys

import pytest
from conftest import ROOT

from rwkvprobe.model.profile import layer_list, load_profile, profile_json
from rwkvprobe.npu.device import load_device, modelled_results
from rwkvprobe.report import sections
from rwkvprobe.verdict import nominal


def _measured(board=None):
    return {"environment": {"cpu": {"model": "Some CPU"}, "board": board or {}},
            "ceilings": [{"backend": "numpy", "dtype": "fp32", "peak_gflops": 76.8, "gemv_gbps": 20.0},
                         {"backend": "rknnlite", "dtype": "fp16", "peak_gflops": 600.0, "gemv_gbps": 16.9}],
            "bandwidth": {"runs": [{"kernels": {"read": {"best_gbps": 10.0}}}, {"kernels": {"read": {"best_gbps": 16.9}}}]}}


def test_unknown_nominal_on_a_machine_without_a_device_profile():
    rows = nominal.rows(_measured())
    assert [r["ceiling"] for r in rows] == ["numpy fp32 GFLOP/s", "rknnlite fp16 GFLOP/s",
                                            "rknnlite fp16 GB/s (cold GEMV)", "DRAM GB/s (read kernel, best)"]
    assert all(r["nominal"] is None and r["percent"] is None for r in rows)
    md = "\n".join(sections.nominal_section(_measured()))
    assert "% of nominal: unknown" in md and "none describes Some CPU" in md
    assert "| DRAM GB/s (read kernel, best) | 16.9 GB/s | unknown | unknown | - |" in md


def test_a_board_run_on_rk3588_takes_the_device_profiles_nominal_figures():
    rows = {r["ceiling"]: r for r in nominal.rows(_measured({"rk3588": True}))}
    cpu = rows["numpy fp32 GFLOP/s"]
    assert cpu["nominal"] == 153.6 and cpu["percent"] == pytest.approx(50.0)
    assert "Cortex-A76" in cpu["source"] and "device tree" in cpu["source"]
    assert rows["rknnlite fp16 GFLOP/s"]["percent"] == pytest.approx(20.0)  # 600 of 3000
    assert rows["DRAM GB/s (read kernel, best)"]["percent"] == pytest.approx(16.9 / 33.8 * 100)
    assert rows["rknnlite fp16 GB/s (cold GEMV)"]["nominal"] == 33.8


def test_modelled_device_ceilings_against_their_nominal():
    dev = load_device("rk3588")
    r = modelled_results(dev, profile_json(layer_list(load_profile(ROOT / "profiles/rwkv-0b1.yaml"))), [1])
    rows = {x["ceiling"]: x for x in nominal.rows(r)}
    assert rows["NPU, fused calls (modelled) fp16 GFLOP/s"]["percent"] == pytest.approx(30.0)
    assert rows["DRAM GB/s (read kernel, best) (modelled)"]["percent"] == pytest.approx(20 / 33.8 * 100)


def test_device_model_check_prints_every_published_figure_without_fitting():
    proc = subprocess.run([sys.executable, "bench/device_model_check.py", "--markdown"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for fig in ("| RKLLM RWKV-7 1.5B w8a8 decode | tokens/s | 13.8 |", "| RKLLM TinyLlama 1.1B w8a8 decode | tokens/s | 24.4 |",
                "| rk-llama.cpp gemma-4 E2B tg128 Q8_0, CPU (4 A76) | tokens/s | 7.67 |",
                "| rk-llama.cpp gemma-4 E2B tg128 Q8_0, NPU | tokens/s | 7.74 |",
                "| rk-llama.cpp gemma-4 E2B tg128 Q4_0, CPU (4 A76) | tokens/s | 12.4 |",
                "| rk-llama.cpp gemma-4 E2B tg128 Q4_0, NPU | tokens/s | 8.77 |",
                "| rk-llama.cpp gemma-4 E2B pp512 Q8_0, CPU (4 A76) | tokens/s | 54.7 |",
                "| rk-llama.cpp gemma-4 E2B pp512 Q8_0, NPU | tokens/s | 105.9 |",
                "| seed GEMV 1x1024x1024 fp16, NPU | ms | 0.2 |", "| seed GEMV 1x1024x1024 fp16, CPU | ms | 0.1 |",
                "| seed matmul 128x1024x8192 fp16, NPU | GFLOPS | 900.0 |"):
        assert fig in out, fig
    sys.path.insert(0, str(ROOT / "bench"))
    import device_model_check as dmc

    rows = dmc.rows(load_device("rk3588"))
    for r in rows:
        assert r["ratio"] == pytest.approx(r["modelled"] / r["published"])
        assert r["off"] == (abs(r["ratio"] - 1) > 0.25)
        assert bool(r["contradicts"]) == r["off"]  # every row more than 25% off names the assumption it contradicts
