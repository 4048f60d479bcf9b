"""Whole-block graphs through the RKNN compiler: the compiler's block estimate in analyze --device, and (with the
toolkit installed, as CI has it) a real conversion of a tiny RWKV-7 checked in the simulator."""

import json
import os
from pathlib import Path

import pytest

from rwkvprobe.errors import InputError
from rwkvprobe.measure import onnxblock
from rwkvprobe.model.profile import parse_profile
from rwkvprobe.npu import toolkit
from rwkvprobe.npu.device import block_estimates, load_device
from rwkvprobe.report.sections import block_estimate_lines, npu_bandwidth_lines

DATA = Path(__file__).parent / "data"
TINY = {"name": "t", "source": "t", "version": 7, "n_layer": 3, "n_embd": 128, "vocab_size": 256, "head_size": 64,
        "lora": {"decay": 16, "aaa": 16, "mv": 8, "gate": 32}}


def _manifest(profile, graphs=("block0", "block", "head")):
    cycles = toolkit.parse_cycles((DATA / "rknn_build_rwkv7_block_fp16.log").read_text())
    return {"kind": "rknn-convert-blocks", "target": "rk3588", "toolkit": {"rknn-toolkit2": "2.5.0"},
            "profile": profile.name, "settings": onnxblock.settings_key(profile, 0),
            "graphs": [{"graph": g, "dtype": "fp16", "cycles": cycles, "simulator": {"ok": True, "rel_err": 1e-3},
                        "cpu_ops": ["Exp", "Max", "ReduceSumSquare", "Reshape"]} for g in graphs]}


def test_block_estimate_is_block0_plus_later_blocks_plus_head_at_the_npu_clock():
    p = parse_profile(TINY)
    dev = load_device("rk3588")
    est = block_estimates(_manifest(p), dev, p)
    clock = dev["npu_clock_mhz"]["value"] * 1e6
    per_graph = 22362 / clock  # the real build log's cycle total for one block
    (d,) = est["decode"]
    assert d["dtype"] == "fp16" and d["seconds_per_token"] == pytest.approx(4 * per_graph)  # every fake graph has the same table
    assert d["how"] == "block0 + 2 x block + head, one call each"
    g = est["graphs"][0]
    assert g["op_kinds"][0]["op"] == "ConvAdd" and g["op_kinds"][0]["cycles"] == 7025
    assert sum(k["share"] for k in g["op_kinds"]) == pytest.approx(1.0)
    assert "Exp" in g["no_estimate_ops"] and g["bound"] == "DDR"
    line = block_estimate_lines({"compiler_block_estimates": est})[0]
    assert line.startswith("NPU fp16 decode, RKNN compiler estimate (whole blocks): 0.09 ms/token")
    assert "modelled, not measured" in line


def test_block_estimate_refuses_graphs_of_another_profile():
    p = parse_profile(TINY)
    other = parse_profile({**TINY, "n_embd": 256, "name": "u"})
    with pytest.raises(InputError, match=r"converted for 't' with other settings \(dimensions, or an older graph version\) than 'u'"):
        block_estimates(_manifest(p), load_device("rk3588"), other)


def test_block_manifest_missing_or_foreign(tmp_path):
    assert toolkit.read_blocks_manifest(tmp_path) is None
    (tmp_path / toolkit.BLOCKS_MANIFEST).write_text(json.dumps({"kind": "rknn-convert"}))
    with pytest.raises(InputError, match="not an RKNN block conversion manifest"):
        toolkit.read_blocks_manifest(tmp_path)


def test_convert_block_refuses_other_versions_before_the_toolkit(cli, tmp_path, monkeypatch):
    from conftest import ROOT

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("RWKVPROBE_TOOLKIT_DIR", str(tmp_path / "none"))
    code, _, err = cli("convert", "profiles/rwkv5-0b4.yaml", "--block", "--out", tmp_path / "o")
    assert code == 2
    assert err == "rwkvprobe: error: --block: whole-block graphs are written for RWKV-4/7; profiles/rwkv5-0b4.yaml is RWKV-5\n"


def _toolkit_or_skip():
    if not toolkit.installed():
        if os.environ.get("RWKVPROBE_REQUIRE_TOOLKIT") == "1":
            pytest.fail(f"the RKNN toolkit environment is required here but missing at {toolkit.toolkit_dir()}")
        pytest.skip("RKNN toolkit environment not installed (rwkvprobe toolkit install)")


@pytest.mark.slow
def test_real_block_conversion_checked_in_the_simulator(cli, tmp_path, write_yaml):
    """rknn-toolkit2 itself: a tiny RWKV-7's block graphs (fp16) built, checked against onnxruntime's fp32 output,
    with the per-op cycle table; then analyze --device rk3588 --rknn uses the whole-block estimate."""
    _toolkit_or_skip()
    p = parse_profile({**TINY, "n_layer": 2})
    manifest = toolkit.convert_blocks(p, tmp_path / "rk", ["fp16"], progress=lambda m: None)
    assert sorted(g["graph"] for g in manifest["graphs"]) == ["block", "block0", "head", "model"]
    for g in manifest["graphs"]:
        assert g["ok"], g
        assert (tmp_path / "rk" / g["file"]).stat().st_size > 0
        assert g["simulator"]["rel_err"] < toolkit.SIM_TOLERANCE["fp16"]
        assert set(g["simulator"]["per_output"]) == {n for n, _ in onnxblock.graph_io(p, g["graph"])[1]}
        assert g["cycles"]["total_cycles"] > 0
    block = next(g for g in manifest["graphs"] if g["graph"] == "block")
    assert "Exp" in block["cpu_ops"]  # rknn-toolkit2 2.5.0 runs the decay's Exp on the CPU
    prof = write_yaml("name: tiny\nsource: t\nversion: 7\nn_layer: 2\nn_embd: 128\nvocab_size: 256\nhead_size: 64\n"
                      "lora: {decay: 16, aaa: 16, mv: 8, gate: 32}\n")
    code, out, err = cli("analyze", prof, "--device", "rk3588", "--rknn", tmp_path / "rk", "--out", tmp_path / "an")
    assert code == 0, err
    assert "NPU fp16 decode, RKNN compiler estimate (whole blocks):" in out
    report = (tmp_path / "an" / "report.md").read_text()
    assert "## RKNN compiler estimate (whole blocks)" in report and "| block | fp16 |" in report


# ------------------------------------------------------------------------------------------------
# bandwidth --npu


def test_npu_bandwidth_from_the_compilers_gemv_table():
    """The real GEMV build log: three K tiles, DDR-bound; bytes over DDR cycles at the NPU clock."""
    from rwkvprobe.npu.bandwidth import compiler_bandwidth

    c = toolkit.parse_cycles((DATA / "rknn_build_npu_bw_gemv_fp16.log").read_text())
    bw = compiler_bandwidth(c, 1e9)
    assert bw["ddr_cycles"] == 1064737 + 1065430 + 710748
    assert bw["bytes"] == (24579 + 24595 + 16402) * 1024
    assert bw["gbps"] == pytest.approx(bw["bytes"] / (bw["ddr_cycles"] / 1e9) / 1e9)
    assert 20 < bw["gbps"] < 30 and bw["note"] is None


def test_npu_bandwidth_says_no_estimate_for_elementwise_ops():
    from rwkvprobe.npu.bandwidth import compiler_bandwidth

    c = toolkit.parse_cycles((DATA / "rknn_build_npu_bw_add_fp16.log").read_text())
    bw = compiler_bandwidth(c, 1e9)
    assert bw["gbps"] is None and bw["ddr_cycles"] == 0
    assert bw["note"].startswith("no estimate: the compiler gives these ops no DDR cycles")
    assert bw["bytes"] > 3 * 16e6  # A, B and C at 16 MB each in fp16


def test_bandwidth_npu_without_toolkit_is_one_line_before_measuring(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("RWKVPROBE_TOOLKIT_DIR", str(tmp_path / "none"))
    code, out, err = cli("bandwidth", "--npu", "--threads", "1", "--trials", "1")
    assert code == 2 and out == ""
    assert err.startswith("rwkvprobe: error: the RKNN toolkit environment is not installed") and err.count("\n") == 1


@pytest.mark.slow
def test_bandwidth_npu_with_the_real_compiler(tmp_path):
    _toolkit_or_skip()
    from rwkvprobe.npu import bandwidth as npubw

    r = npubw.measure("rk3588", out=tmp_path, progress=lambda m: None)
    by = {g["graph"]: g for g in r["graphs"]}
    assert set(by) == {"add", "copy", "gemv"} and all(g["ok"] for g in by.values()), r
    assert r["label"].startswith("RKNN compiler estimate")
    assert by["gemv"]["compiler"]["gbps"] > 0 and by["gemv"]["compiler"]["bytes"] > 64e6
    lines = npu_bandwidth_lines(r)
    assert any(line.strip().startswith("gemv") and "GB/s" in line for line in lines)
