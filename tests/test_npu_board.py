"""Host-driven board runs (``analyze --backends rknn``) and NPU core-mask series.

Nobody here has an RK3588: the eval_perf parser is tested on output captured on real boards and pasted
in public places (tests/data/eval_perf/*.log, each with its source and toolkit version in its header:
rknn-toolkit2 1.5.0's 1.x table, the 1.6.0 and 2.0.0b0 runtimes' 2.x table, and toolkits failing inside
their own eval_perf), besides a sample constructed by hand in the documented format
(tests/data/rknn_eval_perf_m1_k1024_n1024_fp16.log, said so in its header); the plumbing with a stand-in
for the worker's answer, and the no-board path with the real rknn-toolkit2 (its init_runtime fails
without a board) when the toolkit environment is installed."""

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from rwkvprobe.errors import InputError
from rwkvprobe.measure.analyze import AnalyzeSettings, plan_series
from rwkvprobe.model.profile import layer_list, parse_profile
from rwkvprobe.npu import adb, board, cores, evalperf, toolkit
from rwkvprobe.report import sections

DATA = Path(__file__).parent / "data"
FAKE = Path(__file__).parent / "fake_rknnlite"
SAMPLE = DATA / "rknn_eval_perf_m1_k1024_n1024_fp16.log"


# ------------------------------------------------------------------------------------------------
# eval_perf's table


def test_parse_eval_perf_sample():
    perf = evalperf.parse_eval_perf(SAMPLE.read_text())
    assert [r["op"] for r in perf["layers"]] == ["InputOperator", "Reshape", "Conv", "Reshape", "OutputOperator"]
    conv = perf["layers"][2]
    assert (conv["time_us"], conv["ddr_cycles"], conv["npu_cycles"], conv["total_cycles"]) == (118, 88833, 32768, 88833)
    assert conv["target"] == "NPU" and conv["rw_kb"] == 2050 and conv["name"] == "Conv:C#2"
    assert conv["workload"] == [100.0, 0.0, 0.0] and conv["mac_usage"] == [2.71, 0.0, 0.0]
    # a blank MacUsage (CPU operators) and a backslash one (Reshape) do not shift the later columns
    assert perf["layers"][0]["mac_usage"] is None and perf["layers"][0]["rw_kb"] == 0
    assert perf["layers"][1]["mac_usage"] is None and perf["layers"][1]["rw_kb"] == 2
    assert perf["total_us"] == 174 and perf["total_from"] == "Total Operator Elapsed Per Frame Time(us)"
    assert perf["total_us"] == sum(r["time_us"] for r in perf["layers"])
    assert perf["npu_us"] == 21 + 118 + 12 and perf["rw_kb"] == 2056.0
    assert [x["op"] for x in perf["ranking"]] == ["Conv", "Reshape", "OutputOperator", "InputOperator"]
    assert perf["ranking"][1] == {"op": "Reshape", "calls": 2, "cpu_us": 0.0, "gpu_us": 0.0, "npu_us": 33.0,
                                  "total_us": 33.0, "ratio_pct": 18.97}


def test_parse_eval_perf_in_the_runtime_log_format_with_colours():
    """The same table as the runtime's own log prints it: 'D RKNN: [time] ' before each line, colours."""
    text = "\n".join(f"D RKNN: [10:00:00.000] \x1b[0m{line}" for line in SAMPLE.read_text().splitlines()
                     if not line.startswith("#"))
    perf = evalperf.parse_eval_perf(text)
    assert len(perf["layers"]) == 5 and perf["total_us"] == 174 and perf["layers"][2]["time_us"] == 118


def test_parse_eval_perf_fallbacks():
    # perf_debug=False: only a total
    perf = evalperf.parse_eval_perf("Total Time(us): 1234\n")
    assert perf["total_us"] == 1234 and perf["total_from"] == "Total Time(us)" and perf["layers"] == []
    # no total line: the sum of the layers, said so
    body = "\n".join(line for line in SAMPLE.read_text().splitlines() if not line.startswith("Total Operator"))
    perf = evalperf.parse_eval_perf(body)
    assert perf["total_us"] == 174 and perf["total_from"] == "sum of the per-layer times"
    # frequency lists printed with fix_freq
    perf = evalperf.parse_eval_perf("CPU Current Frequency List:\n    - 2256000\n    - 1800000\nNPU Current Frequency List:\n"
                                 "    - 1000000\n")
    assert perf["frequencies"] == {"CPU": [2256000, 1800000], "NPU": [1000000]}
    nothing = evalperf.parse_eval_perf("E eval_perf: The runtime has not been initialized\n")
    assert nothing["total_us"] is None and nothing["layers"] == []


# ------------------------------------------------------------------------------------------------
# eval_perf output captured on real boards (tests/data/eval_perf: source and version in each header)

CAPTURED = DATA / "eval_perf"


def _captured(name):
    text = (CAPTURED / name).read_text(encoding="utf-8")
    head = [line for line in text.splitlines() if line.startswith("#")]
    assert head[0].startswith("# source: ") and head[1].startswith("# toolkit: "), name
    return text


# name -> (layout, rows, printed total, its label, NPU time, rows per op from the ranking table)
CAPTURES = {
    "rk3588_tk1.5.0_yolov5s_python.log": (evalperf.FORMAT_1X, 82, 27987, "Total Operator Elapsed Time(us)", 27761,
                                          {"ConvRelu": 50, "Concat": 13, "OutputOperator": 3}),
    "rk3588_rt1.6.0_yolov8n_cpp.log": (evalperf.FORMAT_2X, 108, 128441, "Total Operator Elapsed Per Frame Time(us)",
                                       127303, {"ConvExSwish": 57, "Concat": 13, "OutputOperator": 9}),
    "rk3588_tk2.0.0b0_yolov8n_cores012.log": (evalperf.FORMAT_2X, 108, 96186,
                                              "Total Operator Elapsed Per Frame Time(us)", 95641,
                                              {"ConvExSwish": 57, "Concat": 13, "OutputOperator": 9}),
}


@pytest.mark.parametrize("name", sorted(CAPTURES))
def test_parse_eval_perf_captured_on_boards(name):
    """Every row read, and the numbers agree with the capture's own totals and ranking table."""
    layout, rows, total, label, npu, calls = CAPTURES[name]
    perf = evalperf.parse_eval_perf(_captured(name))
    assert perf["format"] == layout and perf["unread_rows"] == []
    assert [r["id"] for r in perf["layers"]] == list(range(1, rows + 1))
    assert perf["total_us"] == total and perf["total_from"] == label
    # the board's own per-operator times add up to its printed per-frame total, and to the ranking table's
    assert sum(r["time_us"] for r in perf["layers"]) == total
    assert sum(r["total_us"] for r in perf["ranking"]) == total
    assert perf["npu_us"] == npu == sum(r["npu_us"] for r in perf["ranking"])
    for op, n in calls.items():
        assert sum(1 for r in perf["layers"] if r["op"] == op) == n
        assert next(r["calls"] for r in perf["ranking"] if r["op"] == op) == n
    assert evalperf.eval_perf_problem(_captured(name), "x") is None


def test_parse_eval_perf_1x_columns():
    """rknn-toolkit2 1.5.0: three cycle columns, WorkLoad with '- Up:', Task columns before RW(KB), memory in MB,
    two rows the paste wrapped onto a second line joined again."""
    perf = evalperf.parse_eval_perf(_captured("rk3588_tk1.5.0_yolov5s_python.log"))
    conv = perf["layers"][1]
    assert (conv["op"], conv["dtype"], conv["target"]) == ("ConvRelu", "UINT8", "NPU")
    assert (conv["ddr_cycles"], conv["npu_cycles"], conv["total_cycles"], conv["time_us"]) == (851599, 345600, 851599,
                                                                                               4041)
    assert conv["mac_usage"] is None  # 1.x prints one MacUsage number, not the 2.x per-core list
    assert conv["workload"] == [100.0, 0.0, 0.0] and conv["rw_kb"] == 4918.31 and conv["name"] == "Conv:Conv_0"
    wrapped = {r["id"]: r for r in perf["layers"]}
    assert (wrapped[41]["total_cycles"], wrapped[41]["time_us"], wrapped[41]["rw_kb"]) == (281551, 203, 1626.06)
    assert (wrapped[50]["total_cycles"], wrapped[50]["time_us"], wrapped[50]["name"]) == (149958, 277,
                                                                                           "Concat:Concat_94")
    assert perf["rw_kb"] is None and perf["rw_mb"] == 88.4914  # printed in MB: never converted by a guess
    assert perf["ranking"][0] == {"op": "ConvRelu", "calls": 50, "cpu_us": 0.0, "gpu_us": None, "npu_us": 19301.0,
                                  "total_us": 19301.0, "ratio_pct": 68.96}


def test_parse_eval_perf_2x_all_cores():
    """The 2.x table with core mask 0_1_2: per-core MacUsage and the WorkLoad split over three cores."""
    perf = evalperf.parse_eval_perf(_captured("rk3588_tk2.0.0b0_yolov8n_cores012.log"))
    first_conv = perf["layers"][1]
    assert first_conv["time_us"] == 9524 and first_conv["mac_usage"] == [0.77, 0.77, 0.77]
    assert (first_conv["ddr_cycles"], first_conv["npu_cycles"], first_conv["total_cycles"]) == (1222645, 4700160,
                                                                                                4700160)
    spread = [r for r in perf["layers"] if r["workload"] == [33.3, 33.3, 33.3]]
    assert spread and all(r["op"] in ("Add", "Concat", "ConvClip", "Split", "Conv", "ConvSigmoid", "Resize",
                                      "MaxPool") for r in spread)
    assert perf["layers"][0]["mac_usage"] is None and perf["layers"][0]["rw_kb"] == 0
    assert perf["rw_kb"] == 165476


def test_eval_perf_row_never_guessed():
    """A row cut short (and no total line) gives no time at all, and says which row, rather than a wrong sum."""
    lines = [ln for ln in _captured("rk3588_rt1.6.0_yolov8n_cpp.log").splitlines()
             if not ln.startswith(("#", "Total Operator"))]
    i = next(i for i, ln in enumerate(lines) if ln.startswith("7 "))
    lines[i] = lines[i][:90]  # row 7 loses its Time(us) and everything after
    text = "\n".join(lines)
    perf = evalperf.parse_eval_perf(text)
    assert perf["unread_rows"] == ["7"] and perf["total_us"] is None and perf["npu_us"] is None
    problem = evalperf.eval_perf_problem(text, "1.6.0")
    assert problem.startswith("rknn-toolkit2 1.6.0: ") and "ID 7" in problem and "\n" not in problem


@pytest.mark.parametrize("name, version, expected", [
    ("tk1.5.0_format_perf_detail_failure.log", "1.5.0",
     "rknn-toolkit2 1.5.0 failed inside its own eval_perf (format_perf_detail: ValueError: substring not found): "
     "a fault of the toolkit's own table formatting with perf_debug=True (seen with 1.5.0, rknn-toolkit2 issue #219): "
     "use another rknn-toolkit2 version; no board time for this point"),
    ("tk2.0.0b0_ddr_freq_failure.log", "2.0.0b0",
     "rknn-toolkit2 2.0.0b0 failed inside its own eval_perf (get_ddr_freq: ValueError: invalid literal for int() "
     "with base 10: 'cat: /sys/class/devfreq/dmc/cur_freq: 没有那个文件或目录'): the board's kernel does not give "
     "the DDR frequency that eval_perf(fix_freq=True) reads (no /sys/class/devfreq/dmc); no board time for this point"),
    ("tk2.3.2_perf_detail_empty.log", "2.3.2",
     "rknn-toolkit2 2.3.2 failed inside its own eval_perf (eval_perf: ValueError: Performance information is empty, "
     "some mistakes may happened.); no board time for this point"),
])
def test_toolkit_failing_inside_eval_perf_one_line(name, version, expected):
    text = _captured(name)
    assert evalperf.parse_eval_perf(text)["total_us"] is None
    assert evalperf.eval_perf_problem(text, version) == expected


def test_eval_perf_without_any_time_names_the_version():
    problem = evalperf.eval_perf_problem(_captured("tk2.3.2_no_time_unknown_freq.log"), "2.3.2")
    assert problem.startswith("rknn-toolkit2 2.3.2: eval_perf printed no time in a format this parser reads")
    assert "IOCTL_CMD_PERF_RUN fail" in problem and "\n" not in problem
    perf = evalperf.parse_eval_perf(_captured("tk2.3.2_no_time_unknown_freq.log"))
    assert perf["frequencies"] == {"CPU": [], "NPU": [], "DDR": []}  # 'Unknown' is not a number


def test_toolkit_failure_in_the_worker_becomes_the_points_one_line(tmp_path):
    """The worker keeps eval_perf's exception per repeat; the point carries our one line, no traceback, no time."""
    job = {"id": "j", "label": "rknn", "dtype": "fp16", "m": 1, "k": 1024, "n": 1024, "perf_repeats": 1}
    trace = _captured("tk1.5.0_format_perf_detail_failure.log")
    res = {"id": "j", "ok": True, "check": {"rel_err": 1e-4, "finite": True}, "wall_seconds": [0.004],
           "eval_perf": [{"log": None, "returned": None, "error": "substring not found", "traceback": trace}]}
    point = board._point(job, res, tmp_path, toolkit.SIM_TOLERANCE, "1.5.0")
    assert point["timing"] is None and "eval_perf" not in point
    assert point["error"].startswith("rknn-toolkit2 1.5.0 failed inside its own eval_perf (format_perf_detail: ")
    assert "\n" not in point["error"] and "Traceback" not in point["error"]
    # an error the worker caught without a traceback still names the version
    res["eval_perf"] = [{"log": None, "returned": None, "error": "RuntimeError: boom"}]
    point = board._point(job, res, tmp_path, toolkit.SIM_TOLERANCE, "2.5.0")
    assert point["error"].startswith("rknn-toolkit2 2.5.0 failed inside its own eval_perf (eval_perf: RuntimeError: boom)")


def test_worker_keeps_eval_perfs_exception_per_repeat(tmp_path):
    """rknn_worker.board_job with a stand-in RKNN whose eval_perf fails inside format_perf_detail (as 1.5.0):
    the job keeps its check and wall times, the repeat keeps the error and the traceback; the host turns it
    into one line."""
    from rwkvprobe.backends import onnxgen
    from rwkvprobe.npu import rknn_worker

    spec = onnxgen.ModelSpec(1, 64, 32, "fp32")
    onnxgen.write_model(spec, tmp_path, onnxgen.DEFAULT_OPSET)
    onnx_path = str(tmp_path / spec.filename)

    class FakeRKNN:
        NPU_CORE_0 = 1

        def __init__(self, verbose=False):
            pass

        def load_rknn(self, path):
            return 0

        def init_runtime(self, **kw):
            return 0

        def get_sdk_version(self):
            return "fake"

        def inference(self, inputs):
            return [rknn_worker._reference(onnx_path, inputs[0])]

        def format_perf_detail(self):
            "substring".index("not there")

        def eval_perf(self, is_print=True, fix_freq=True):
            return self.format_perf_detail()

        def release(self):
            pass

    job = {"id": "j", "label": "rknn[core0]", "dtype": "fp16", "m": 1, "k": 64, "n": 32, "core_mask": "NPU_CORE_0",
           "calls": 2, "perf_repeats": 2, "seed": 7, "rknn": "x.rknn", "onnx": onnx_path}
    res = rknn_worker.board_job(FakeRKNN, job, {"log_dir": str(tmp_path)}, {})
    assert res["ok"] and res["check"]["rel_err"] == 0.0 and len(res["wall_seconds"]) == 2
    assert [r["error"] for r in res["eval_perf"]] == ["ValueError: substring not found"] * 2
    assert "format_perf_detail" in res["eval_perf"][0]["traceback"]
    point = board._point(job, res, tmp_path, toolkit.SIM_TOLERANCE, "1.5.0")
    assert point["error"].startswith("rknn-toolkit2 1.5.0 failed inside its own eval_perf (format_perf_detail: "
                                     "ValueError: substring not found)")
    assert point["timing"] is None and point["check"]["ok"] and "\n" not in point["error"]


# ------------------------------------------------------------------------------------------------
# Core masks -> series


def test_core_mask_lists():
    assert cores.parse_core_masks("0,1,0_1_2") == ["0", "1", "0_1_2"]
    assert cores.parse_core_masks("auto") == ["auto"]  # the one-mask form still works
    assert cores.parse_core_masks(" 0_1 , 0_1,ALL ") == ["0_1", "all"]
    for bad in ("0,9", "", ",", "0-2", "core0"):
        with pytest.raises(InputError, match="--npu-cores") as e:
            cores.parse_core_masks(bad)
        assert "\n" not in str(e.value)


def test_series_labels_round_trip():
    labels = {m: cores.series_label("rknnlite", m) for m in cores.CORE_MASKS}
    assert labels == {"auto": "rknnlite", "0": "rknnlite[core0]", "1": "rknnlite[core1]", "2": "rknnlite[core2]",
                      "0_1": "rknnlite[cores0-1]", "0_1_2": "rknnlite[cores0-2]", "all": "rknnlite[all]"}
    for mask, label in labels.items():
        assert cores.split_label(label) == ("rknnlite", mask)
        assert cores.split_label(label.replace("rknnlite", "rknn")) == ("rknn", mask)
    assert cores.split_label("numpy") == ("numpy", None)
    assert cores.series_labels("onnxruntime", ["0", "1"]) == ["onnxruntime"]
    assert cores.series_labels("rknn", ["0", "0_1_2"]) == ["rknn[core0]", "rknn[cores0-2]"]
    assert cores.split_board([("numpy", "fp32"), ("rknn[core0]", "fp16"), ("rknn", "int8")]) == (
        [("numpy", "fp32")], [("rknn[core0]", "fp16"), ("rknn", "int8")])


def test_core_masks_match_the_rknnlite_backend():
    from rwkvprobe.backends import rknnlite_backend as rb

    assert cores.CORE_MASKS == rb.CORE_MASKS


@pytest.mark.parametrize("value", ["0,9", "", "0,,x", "core1"])
def test_cli_bad_core_masks_one_line_exit_2(cli, tmp_path, value):
    prof = tmp_path / "p.yaml"
    prof.write_text("name: x\nsource: t\nlayers:\n  - {name: a, k: 64, n: 64, count: 1}\n")
    code, out, err = cli("analyze", prof, "--backends", "numpy", "--npu-cores", value, "--out", tmp_path / "r")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--npu-cores" in err
    assert not (tmp_path / "r").exists()


def test_cli_device_id_needs_the_rknn_backend(cli, tmp_path):
    prof = tmp_path / "p.yaml"
    prof.write_text("name: x\nsource: t\nlayers:\n  - {name: a, k: 64, n: 64, count: 1}\n")
    code, out, err = cli("analyze", prof, "--backends", "numpy", "--device-id", "abc", "--out", tmp_path / "r")
    assert code == 2 and "--device-id is for --backends rknn" in err and len(err.strip().splitlines()) == 1


@pytest.fixture
def fake_board_lite(monkeypatch):
    """The fake RKNNLite (tests/fake_rknnlite), with the board checks answered as on an RK3588."""
    from rwkvprobe.backends import rknnlite_backend as rb

    monkeypatch.syspath_prepend(str(FAKE))
    for name in [m for m in sys.modules if m.startswith("rknnlite")]:
        monkeypatch.delitem(sys.modules, name)
    import rknnlite.api as api

    monkeypatch.setattr(rb, "missing_runtime", lambda: None)
    masks = []
    real_init = api.RKNNLite.init_runtime

    def init_runtime(self, target=None, device_id=None, async_mode=False, core_mask=api.RKNNLite.NPU_CORE_AUTO):
        masks.append(core_mask)
        return real_init(self, target, device_id, async_mode, core_mask)

    monkeypatch.setattr(api.RKNNLite, "init_runtime", init_runtime)
    return masks


def test_rknnlite_series_per_core_mask(fake_board_lite, tmp_path):
    """Each mask is its own series: its own label in the points, its own constant given to init_runtime."""
    import json

    import numpy as np

    from rwkvprobe.backends import Workload
    from rwkvprobe.backends.onnxgen import weight_matrix
    from rwkvprobe.measure.points import measure_point
    from rwkvprobe.measure.timing import TimingPolicy

    with open(tmp_path / "m.rknn", "wb") as f:
        np.save(f, weight_matrix(64, 96, "fp16"))
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": 1, "kind": "rknn-convert", "models": [
        {"dtype": "fp16", "m": 1, "k": 64, "n": 96, "file": "m.rknn", "ok": True}]}))
    settings = AnalyzeSettings(backends=["rknnlite"], dtypes=["fp16"], tokens=[1], threads=1, cpus=None,
                               rknn_dir=tmp_path, npu_cores="auto,0,0_1_2")
    pairs, skipped = plan_series(settings)
    assert pairs == [("rknnlite", "fp16"), ("rknnlite[core0]", "fp16"), ("rknnlite[cores0-2]", "fp16")]
    points = []
    for label, d in pairs:
        backend = board.instantiate(label, settings)
        assert backend.name == label and backend.describe()["name"] == label
        points.append(measure_point(backend, Workload(1, 64, 96, d), None, TimingPolicy(budget_seconds=0.02)))
    assert [p["backend"] for p in points] == [label for label, _ in pairs]
    assert all(p["check"]["ok"] for p in points)
    assert set(fake_board_lite) == {0, 1, 7}  # NPU_CORE_AUTO, NPU_CORE_0, NPU_CORE_0_1_2


# ------------------------------------------------------------------------------------------------
# The host-driven run's plumbing, with the worker's answer stood in


def _fake_response(jobs, rel_err=4e-4):
    text = SAMPLE.read_text()
    return {"sdk_version": "RKNN VERSION: API 2.5.0 DRV 2.5.0", "adb": {"stopped": True}, "jobs": [
        {"id": j["id"], "ok": True, "check": {"rel_err": rel_err, "finite": True},
         "wall_seconds": [0.004, 0.005, 0.0045], "eval_perf": [{"returned": text, "log": None}] * j["perf_repeats"]}
        for j in jobs]}


def test_run_series_stores_board_times_apart_from_wall_times(tmp_path, monkeypatch):
    from rwkvprobe.verdict.roofline import build_verdict

    ll = layer_list(parse_profile({"name": "small", "source": "t", "layers": [{"name": "a", "k": 1024, "n": 1024,
                                                                                "count": 2}]}))
    settings = AnalyzeSettings(backends=["rknn"], dtypes=["fp16"], tokens=[1], threads=1, cpus=None, quick=True,
                               npu_cores="0,0_1_2", device_id="ABC123")
    shapes = [*toolkit.ceiling_specs(), (1, 1024, 1024)]
    models = {("fp16", m, k, n): {"dtype": "fp16", "m": m, "k": k, "n": n, "file": f"m{m}_{k}_{n}.rknn",
                                  "onnx": f"onnx/m{m}_{k}_{n}.onnx", "ok": True} for m, k, n in shapes}
    for e in models.values():
        (tmp_path / e["file"]).write_bytes(b"rknn")
        (tmp_path / "onnx").mkdir(exist_ok=True)
        (tmp_path / e["onnx"]).write_bytes(b"onnx")
    monkeypatch.setattr(board, "_models", lambda analysis, dtypes, progress: (tmp_path, models))
    monkeypatch.setattr(adb, "on_board", lambda: False)
    sent = {}

    def run_jobs(jobs, device_id, log_dir):
        sent.update(jobs=jobs, device_id=device_id)
        return _fake_response(jobs)

    monkeypatch.setattr(board, "run_jobs", run_jobs)
    results = {"ceilings": [], "measurements": [], "settings": settings.to_json(),
               "bandwidth": {"runs": [{"kernels": {"read": {"best_gbps": 50.0}}}]}}
    analysis = SimpleNamespace(settings=settings, results=results, layers=ll, out_dir=tmp_path, save=lambda: None)
    progress = SimpleNamespace(stage=lambda t: None, note=lambda t: None)
    board.run_series(analysis, [("rknn[core0]", "fp16"), ("rknn[cores0-2]", "fp16")], progress)

    assert sent["device_id"] == "ABC123"
    assert {j["core_mask"] for j in sent["jobs"]} == {"NPU_CORE_0", "NPU_CORE_0_1_2"}
    assert len(sent["jobs"]) == 2 * len(shapes)
    layer_points = results["measurements"]
    assert [p["backend"] for p in layer_points] == ["rknn[core0]", "rknn[cores0-2]"]
    p = layer_points[0]
    assert p["timing"]["source"] == "board, eval_perf" and p["timing"]["median_seconds"] == pytest.approx(174e-6)
    assert p["host_wall"]["median_seconds"] == pytest.approx(0.0045) and "adb" in p["host_wall"]["source"]
    assert p["check"]["ok"] and p["check"]["where"] == "board" and p["eval_perf"]["npu_us"] == 151
    assert len(results["ceilings"]) == 2 and all(c["source"] == "board, eval_perf" for c in results["ceilings"])
    c = results["ceilings"][0]
    assert c["bandwidth_gbps"] == c["gemv_gbps"] and c["overhead_seconds"] == pytest.approx(174e-6)
    # the verdict times the rknn series by the board, with the board's bandwidth, not this machine's 50 GB/s
    verdict = build_verdict(results, ll)
    s = next(x for x in verdict["series"] if x["backend"] == "rknn[core0]")
    assert s["bandwidth_gbps"] == pytest.approx(c["gemv_gbps"]) and s["rows"][0]["seconds"] == pytest.approx(174e-6)
    section = "\n".join(sections.board_section(results))
    assert "Board measurements" in section and "174 µs" in section and "host wall over adb" in section
    assert "ABC123" in section
    # a second call finds nothing missing and runs nothing
    sent.clear()
    board.run_series(analysis, [("rknn[core0]", "fp16"), ("rknn[cores0-2]", "fp16")], progress)
    assert sent == {}


def test_wrong_board_output_is_recorded_not_timed(tmp_path, monkeypatch):
    job = {"id": "j", "label": "rknn", "dtype": "fp16", "m": 1, "k": 1024, "n": 1024, "perf_repeats": 1}
    res = _fake_response([job], rel_err=0.5)["jobs"][0]
    point = board._point(job, res, tmp_path, toolkit.SIM_TOLERANCE)
    assert point["check"]["ok"] is False and point["timing"] is None and "relative error" in point["check"]["detail"]


# ------------------------------------------------------------------------------------------------
# No board, with the real toolkit


def _toolkit_or_skip():
    if not toolkit.installed():
        if os.environ.get("RWKVPROBE_REQUIRE_TOOLKIT") == "1":
            pytest.fail(f"the RKNN toolkit environment is required here but missing at {toolkit.toolkit_dir()}")
        pytest.skip("RKNN toolkit environment not installed (rwkvprobe toolkit install)")


def _no_new_adb_server(before, timeout=10.0):
    """No adb server (zombies aside) that was not running before: what the toolkit started was stopped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and adb.adb_servers() - before:
        time.sleep(0.2)
    return not (adb.adb_servers() - before)


def test_toolkit_missing_refuses_rknn_in_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("RWKVPROBE_TOOLKIT_DIR", str(tmp_path / "none"))
    prof = tmp_path / "p.yaml"
    prof.write_text("name: x\nsource: t\nlayers:\n  - {name: a, k: 64, n: 64, count: 1}\n")
    code, out, err = cli("analyze", prof, "--backends", "rknn", "--out", tmp_path / "r")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "rwkvprobe toolkit install" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_no_board_cli_one_line_exit_2_and_no_adb_left(tmp_path):
    """The real toolkit's adb finds no board: one line, exit 2, nothing written, no adb server left."""
    _toolkit_or_skip()
    from conftest import run_module

    if adb.on_board():
        pytest.skip("runs on an RK3588 itself")
    before = adb.adb_servers()
    prof = tmp_path / "p.yaml"
    prof.write_text("name: x\nsource: t\nlayers:\n  - {name: a, k: 64, n: 64, count: 1}\n")
    proc = run_module("analyze", prof, "--backends", "rknn", "--npu-cores", "0,0_1_2", "--out", tmp_path / "r")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"rwkvprobe: error: {adb.NO_BOARD}"]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "r").exists()
    assert _no_new_adb_server(before)


@pytest.mark.slow
def test_no_board_real_init_runtime_fails_cleanly_and_adb_is_stopped(tmp_path):
    """A real .rknn, the real worker: init_runtime(target='rk3588') fails without a board -> one line."""
    _toolkit_or_skip()
    if adb.on_board():
        pytest.skip("runs on an RK3588 itself")
    ll = layer_list(parse_profile({"name": "tiny", "source": "t", "layers": [{"name": "a", "k": 64, "n": 64,
                                                                              "count": 1}]}))
    manifest = toolkit.convert(ll, tmp_path / "rknn", ["fp16"], [1], simulate=False, progress=lambda m: None)
    e = manifest["models"][0]
    assert e["ok"], e
    job = {"id": "tiny", "label": "rknn[core0]", "dtype": "fp16", "m": 1, "k": 64, "n": 64,
           "core_mask": "NPU_CORE_0", "calls": 2, "perf_repeats": 1, "seed": 7,
           "rknn": str(tmp_path / "rknn" / e["file"]), "onnx": str(tmp_path / "rknn" / e["onnx"])}
    before = adb.adb_servers()
    with pytest.raises(InputError) as err:
        board.run_jobs([job], None, tmp_path / "logs")
    assert str(err.value) == adb.NO_BOARD
    assert _no_new_adb_server(before)


@pytest.mark.slow
def test_an_adb_server_already_running_is_left_alone(tmp_path):
    """Stop what we start, only that: a server the user had running keeps running after the probe."""
    _toolkit_or_skip()
    if adb.on_board():
        pytest.skip("runs on an RK3588 itself")
    adb_exe = adb.adb_path()
    before = adb.adb_servers()
    subprocess.run([adb_exe, "start-server"], capture_output=True, timeout=60)
    try:
        theirs = adb.adb_servers() - before
        assert theirs, "adb start-server started nothing"
        adb._PROBED.clear()
        with pytest.raises(InputError, match="no RK3588 board found over adb"):
            adb.probe_board(None)
        assert theirs <= adb.adb_servers()
    finally:
        adb.stop_adb(adb_exe, before)
    assert _no_new_adb_server(before)


@pytest.mark.slow
def test_analyze_with_rknn_series_end_to_end(cli, tmp_path, monkeypatch):
    """analyze --backends rknn,numpy with the worker's answer stood in: results, report and verdict."""
    import json

    prof = tmp_path / "p.yaml"
    prof.write_text("name: x\nsource: t\nlayers:\n  - {name: a, k: 1024, n: 1024, count: 4}\n")

    def models(analysis, dtypes, progress):
        shapes = [*toolkit.ceiling_specs(), *[(m, 1024, 1024) for m in analysis.settings.tokens]]
        out = {}
        for m, k, n in shapes:
            e = {"dtype": "fp16", "m": m, "k": k, "n": n, "file": f"m{m}_{k}_{n}.rknn", "ok": True}
            (tmp_path / e["file"]).write_bytes(b"rknn")
            out[("fp16", m, k, n)] = e
        return tmp_path, out

    monkeypatch.setattr(board, "check_ready", lambda settings: None)  # toolkit and board as if present
    monkeypatch.setattr(board.RknnBoardBackend, "unavailable_reason", classmethod(lambda cls: None))
    monkeypatch.setattr(board, "_models", models)
    monkeypatch.setattr(board, "_onnx_for", lambda folder, entry, onnx_dir: tmp_path / "x.onnx")
    monkeypatch.setattr(board, "run_jobs", lambda jobs, device_id, log_dir: _fake_response(jobs))
    code, out, err = cli("analyze", prof, "--backends", "rknn,numpy", "--dtypes", "fp16,fp32", "--quick",
                         "--npu-cores", "0,0_1_2", "--device-id", "ABC", "--out", tmp_path / "r")
    assert code == 0, err
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["settings"]["npu_cores"] == "0,0_1_2" and results["settings"]["device_id"] == "ABC"
    assert {p["backend"] for p in results["measurements"]} == {"rknn[core0]", "rknn[cores0-2]", "numpy"}
    assert set(results["backends"]) == {"rknn[core0]", "rknn[cores0-2]", "numpy"}
    report = (tmp_path / "r" / "report.md").read_text()
    assert "### rknn[core0] fp16" in report and "Board measurements" in report
    assert "No NPU backend ran" not in report
