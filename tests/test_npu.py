"""NPU path on x86: the RKNN compiler's cycle table, the modelled RK3588, and (with the toolkit
environment installed, as CI has it) real ONNX -> RKNN conversions checked in the simulator."""

import json
import os
from pathlib import Path

import pytest
from conftest import PROFILES

from rwkvprobe.errors import InputError
from rwkvprobe.model.profile import layer_list, load_profile, parse_profile, profile_json
from rwkvprobe.npu import toolkit
from rwkvprobe.npu.device import compiler_estimates, load_device, modelled_results
from rwkvprobe.report.markdown import render, verdict_lines
from rwkvprobe.verdict.roofline import build_verdict

DATA = Path(__file__).parent / "data"


def test_parse_cycle_table_from_a_real_build_log():
    """The log is what rknn-toolkit2 2.5.0 printed building a 1x1024x1024 fp16 MatMul for rk3588."""
    c = toolkit.parse_cycles((DATA / "rknn_build_m1_k1024_n1024_fp16.log").read_text())
    conv = [o for o in c["ops"] if o["op"] == "Conv"]
    assert len(conv) == 1 and (conv[0]["ddr_cycles"], conv[0]["npu_cycles"], conv[0]["total_cycles"]) == (88833, 32768, 88833)
    assert conv[0]["bound"] == "DDR" and conv[0]["rw_kb"] == 2050
    assert [o["op"] for o in c["ops"]] == ["InputOperator", "Reshape", "Conv", "Reshape", "OutputOperator"]
    assert c["bound"] == "DDR" and c["total_cycles"] == 88833


def test_parse_cycle_table_compute_bound_prefill():
    c = toolkit.parse_cycles((DATA / "rknn_build_m64_k1024_n1024_fp16.log").read_text())
    assert c["npu_cycles"] == 131072 and c["ddr_cycles"] == 99742 and c["bound"] == "NPU"


def test_parse_cycles_of_nothing():
    assert toolkit.parse_cycles("no table here")["ops"] == []


def test_toolkit_missing_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("RWKVPROBE_TOOLKIT_DIR", str(tmp_path / "none"))
    with pytest.raises(InputError, match="rwkvprobe toolkit install"):
        toolkit.require_toolkit()


def test_convert_refuses_fp32(monkeypatch, tmp_path):
    ll = layer_list(load_profile(PROFILES / "rwkv-0b1.yaml"))
    with pytest.raises(InputError, match="fp16 or int8"):
        toolkit.convert(ll, tmp_path, ["fp32"], [1])


def test_device_profile_has_a_source_for_every_figure():
    dev = load_device("rk3588")
    figures = [dev["cpu_overhead_seconds"], dev["dram_gbps"], dev["dram_theoretical_gbps"], dev["npu_overhead_seconds"],
               dev["npu_clock_mhz"], *dev["cpu_peak_gflops"].values(), *dev["npu_matmul_gflops"].values(),
               *dev["npu_peak_gflops"].values()]
    assert all(f["source"] and f["value"] > 0 for f in figures)
    assert dev["dram_gbps"]["value"] < dev["dram_theoretical_gbps"]["value"]


@pytest.mark.parametrize("text, words", [
    ("name: x\n", "key"),
    ("name: x\ncpu: {}\ndram: {}\nnpu: {}\n", "missing or malformed"),
    ("[1, 2]\n", "key 'name'"),
])
def test_bad_device_profile(tmp_path, text, words):
    path = tmp_path / "dev.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=words):
        load_device(str(path))


def test_unknown_device_name():
    with pytest.raises(InputError, match="unknown device.*rk3588"):
        load_device("rk9999")


def test_modelled_rk3588_is_labelled_modelled_everywhere(tmp_path):
    ll = layer_list(load_profile(PROFILES / "rwkv-1b5.yaml"))
    dev = load_device("rk3588")
    results = modelled_results(dev, profile_json(ll), [1])
    verdict = build_verdict(results, ll)
    assert {s["backend"] for s in verdict["series"]} == {"CPU A76x4 (modelled)", "NPU, a call per matmul (modelled)",
                                                         "NPU, fused calls (modelled)"}
    assert all(not r["measured"] for s in verdict["series"] for r in s["rows"])
    lines = verdict_lines(results)
    assert "modelled" in lines[0] and "measured" not in lines[0].replace("modelled", "")
    # decode at 20 GB/s of int8 weights: bandwidth-bound, near 1.39 GB / 20 GB/s = 70 ms (modelled)
    fused = next(s for s in verdict["series"] if s["backend"].startswith("NPU, fused") and s["dtype"] == "int8")
    assert fused["model"]["decode"]["seconds_per_token"] == pytest.approx(1.39e9 / 20e9, rel=0.05)
    assert any("13.8 tokens/s" in line for line in lines)  # the published RKLLM figure beside it
    report = render(results, tmp_path).read_text()
    assert "Modelled, not measured" in report and "Modelled ceilings" in report
    assert "Measured ceilings" not in report


def test_compiler_estimates_time_at_the_npu_clock():
    dev = load_device("rk3588")
    manifest = {"target": "rk3588", "toolkit": {"rknn-toolkit2": "2.5.0"}, "models": [
        {"dtype": "fp16", "m": 1, "k": 1024, "n": 1024, "simulator": {"ok": True, "rel_err": 4e-4},
         "cycles": toolkit.parse_cycles((DATA / "rknn_build_m1_k1024_n1024_fp16.log").read_text())}]}
    est = compiler_estimates(manifest, dev)
    assert est["models"][0]["seconds"] == pytest.approx(88833 / 1e9)
    assert est["models"][0]["bound"] == "DDR"


def _toolkit_or_skip():
    if not toolkit.installed():
        if os.environ.get("RWKVPROBE_REQUIRE_TOOLKIT") == "1":
            pytest.fail(f"the RKNN toolkit environment is required here but missing at {toolkit.toolkit_dir()}")
        pytest.skip("RKNN toolkit environment not installed (rwkvprobe toolkit install)")


@pytest.mark.slow
def test_real_conversion_and_simulator_check(tmp_path):
    """rknn-toolkit2 itself: fp16 and int8 builds of small shapes, checked in its simulator."""
    _toolkit_or_skip()
    ll = layer_list(parse_profile({"name": "small", "source": "test", "layers": [
        {"name": "a", "k": 256, "n": 512, "count": 2}, {"name": "b", "k": 512, "n": 256, "count": 2}]}))
    manifest = toolkit.convert(ll, tmp_path, ["fp16", "int8"], [1, 16], progress=lambda m: None)
    assert len(manifest["models"]) == 2 * 2 * 2
    for m in manifest["models"]:
        assert (tmp_path / m["file"]).stat().st_size > 0
        assert m["simulator"]["tolerance"] == toolkit.SIM_TOLERANCE[m["dtype"]]
        if m["dtype"] == "fp16":
            assert m["ok"] and m["simulator"]["rel_err"] < 5e-3, m
        assert m["cycles"]["total_cycles"] > 0 and m["cycles"]["bound"] in ("DDR", "NPU")
    saved = json.loads((tmp_path / "manifest.json").read_text())
    assert saved["kind"] == "rknn-convert" and saved["toolkit"]["rknn-toolkit2"] == toolkit.TOOLKIT_VERSION
    # a second run reuses what is there
    again = toolkit.convert(ll, tmp_path, ["fp16"], [1], progress=lambda m: None)
    assert len(again["models"]) == 2
