"""sweep: size grids and their errors, memory refusal, projections, and a small real sweep end to end."""

import json

import pytest
from conftest import run_module

from rwkvprobe.backends import Workload
from rwkvprobe.cli import app as cli_module
from rwkvprobe.errors import InputError
from rwkvprobe.measure import sweep
from rwkvprobe.verdict.fit import summarize_sweep


@pytest.fixture(autouse=True)
def onnx_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def sweep_cli(cli, monkeypatch):
    """The real CLI (``main``: one line and exit 2 on bad input), with ``sweep`` registered if cli.py has not yet."""
    if "sweep" not in {c.name for c in cli_commands()}:
        from typer.models import CommandInfo

        monkeypatch.setattr(cli_module.app, "registered_commands",
                            [*cli_module.app.registered_commands,
                             CommandInfo(name="sweep", callback=sweep.sweep_command)])
    return cli


def cli_commands():
    return cli_module.app.registered_commands


# ------------------------------------------------------------------------------------------------
# Grids


@pytest.mark.parametrize("text, sizes", [
    ("128:2048:128", list(range(128, 2049, 128))),
    ("128:1000:256", [128, 384, 640, 896]),  # STOP off the grid: the last size below it
    ("64:64:1", [64]),
    ("512,128, 256,128", [128, 256, 512]),
    ("1000", [1000]),
])
def test_parse_sizes(text, sizes):
    assert sweep.parse_sizes(text) == sizes


@pytest.mark.parametrize("text, words", [
    ("4096:128:128", "START 4096 is above STOP 128"),
    ("128:2048:0", "STEP must be a positive integer"),
    ("128:2048:-128", "STEP must be a positive integer"),
    ("128.5:2048:128", "must be integers"),
    ("a:b:c", "must be integers"),
    ("128:2048", "expected START:STOP:STEP"),
    ("0:2048:128", "positive"),
    ("-128:2048:128", "positive"),
    ("1:100000:1", "at most 1000"),
    ("128,abc", "positive integers"),
    ("128,0", "positive integers"),
    ("", "positive integers"),
    ("1048576:4194304:1048576", "above the largest supported"),
])
def test_parse_sizes_refuses_bad_ranges(text, words):
    with pytest.raises(InputError, match=words):
        sweep.parse_sizes(text)


def test_grid_shapes():
    assert sweep.make_grid([256]).shape(256) == (256, 256, 256)
    ffn = sweep.make_grid([256], m="1", n="4k")
    assert ffn.shape(256) == (1, 256, 1024) and ffn.describe() == "M = 1, K = n, N = 4K"
    down = sweep.make_grid([256], m="64", k="4n")
    assert down.shape(256) == (64, 1024, 256)
    fixed_k = sweep.make_grid([256], m="1", k="2048")
    assert fixed_k.shape(256) == (1, 2048, 256)


@pytest.mark.parametrize("kwargs, words", [
    ({"m": "square", "k": "64"}, "with --m square"),
    ({"m": "0"}, "--m"),
    ({"m": "1.5"}, "--m"),
    ({"m": "1", "k": "4n", "n": "4k"}, "each is defined by the other"),
    ({"m": "1", "k": "512", "n": "1024"}, "neither K nor N follows the size"),
    ({"m": "1", "n": "4x"}, "--n"),
    ({"m": "1", "k": "0"}, "--k"),
])
def test_bad_grids(kwargs, words):
    with pytest.raises(InputError, match=words):
        sweep.make_grid([128, 256], **kwargs)


def test_memory_check_refuses_sizes_whose_buffers_do_not_fit():
    grid = sweep.make_grid([128, 65536])
    with pytest.raises(InputError, match="size 65536 .* needs about .* GB of memory"):
        sweep.check_memory(grid, [("numpy", "fp32")], 32 * 2**20, cold=True, available=8 * 10**9)
    sweep.check_memory(sweep.make_grid([128, 1024]), [("numpy", "fp32")], 32 * 2**20, cold=True,
                       available=8 * 10**9)


def test_memory_estimate_counts_rotation_copies():
    w = Workload(1, 4096, 4096, "fp32")
    one = sweep.point_memory_bytes(w, 1, "numpy")
    four = sweep.point_memory_bytes(w, 4, "numpy")
    assert four - one >= 3 * w.weight_bytes
    assert sweep.point_memory_bytes(w, 1, "onnxruntime") > one


def test_projected_call_interpolates_and_extrapolates_by_flops():
    pts = [{"flops": 1e6, "seconds": 1e-4}, {"flops": 1e9, "seconds": 1e-2}]
    assert sweep.projected_call(pts, 1e3) == 1e-4  # below the smallest: its time (overhead)
    assert sweep.projected_call(pts, 1e9) == pytest.approx(1e-2)
    assert 1e-4 < sweep.projected_call(pts, 5e8) < 1e-2
    assert sweep.projected_call(pts, 4e9) == pytest.approx(4e-2)  # the largest point's rate beyond
    assert sweep.projected_call([], 1e6) is None


def test_point_cost_grows_with_copies_and_size():
    small = sweep.point_cost(Workload(128, 128, 128, "fp32"), "numpy", 1e-5, 0.2, 32 * 2**20, True, 50e9)
    big = sweep.point_cost(Workload(2048, 2048, 2048, "fp32"), "numpy", 0.1, 0.2, 32 * 2**20, True, 50e9)
    assert 0.2 <= small < 1 and big > 1


# ------------------------------------------------------------------------------------------------
# The command: bad input is one line and exit 2, before anything is written


@pytest.mark.parametrize("args, words", [
    (["--sizes", "4096:128:128"], "START 4096 is above STOP 128"),
    (["--sizes", "128:2048:0"], "STEP must be a positive integer"),
    (["--sizes", "128.0:256:64"], "must be integers"),
    (["--sizes", "1024,2048,500000"], "needs about"),
    (["--m", "square", "--n", "4k"], "with --m square"),
    (["--backends", "numpy,cuda9"], "unknown backend 'cuda9'"),
    (["--dtypes", "fp8"], "unknown dtype 'fp8'"),
    (["--budget", "0"], "--budget"),
    (["--threads", "0"], "--threads"),
])
def test_bad_sweep_input_one_line_exit_2(sweep_cli, tmp_path, args, words):
    out = tmp_path / "run"
    code, stdout, err = sweep_cli("sweep", *args, "--out", out)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rwkvprobe: error:") and words in lines[0], err
    assert not out.exists()


def test_registered_sweep_command_via_python_dash_m(tmp_path):
    if "sweep" not in {c.name for c in cli_commands()}:
        pytest.skip("cli.py does not register `sweep` yet")
    proc = run_module("sweep", "--sizes", "4096:128:128", "--out", tmp_path / "run")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "rwkvprobe: error: --sizes '4096:128:128': START 4096 is above STOP 128; expected START <= STOP, "
        "e.g. 128:2048:128 or 128,256,512"]


def test_estimate_measures_and_writes_nothing(sweep_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = sweep_cli("sweep", "--sizes", "64:128:64", "--backends", "numpy", "--estimate")
    assert code == 0, err
    assert "estimated run time about" in err
    assert not (tmp_path / "rwkvprobe-out").exists()


# ------------------------------------------------------------------------------------------------
# End to end


@pytest.mark.slow
def test_small_sweep_writes_results_csv_report_and_plots(sweep_cli, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = sweep_cli("sweep", "--sizes", "64:256:64", "--backends", "numpy", "--budget", "20",
                                  "--out", out)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == "rwkvprobe-results" and results["kind"] == "sweep"
    assert results["settings"]["grid"]["sizes"] == [64, 128, 192, 256]
    assert results["settings"]["cold"] is False  # square grids run warm, as the article
    assert results["environment"]["cpu"]["logical_cpus"] >= 1
    assert [p["size"] for p in results["measurements"]] == [64, 128, 192, 256]
    for p in results["measurements"]:
        assert p["check"]["ok"] and p["timing"]["n"] == len(p["timing"]["samples"]) >= 3
    assert results["runs"][0]["estimate_seconds"] > 0
    assert "fits" not in results  # computed when rendered (report.sweep), never stored twice
    [series] = summarize_sweep(results["measurements"])["series"]
    assert series["fits"]["roofline"]["ok"] and series["fits"]["power_law"]["ok"]
    csv_lines = (out / "sweep.csv").read_text().splitlines()
    assert csv_lines[0].startswith("backend,dtype,size,m,k,n,") and len(csv_lines) == 5
    assert all(",ok," in line for line in csv_lines[1:])
    report = (out / "sweep.md").read_text()
    for heading in ("## Summary", "## Fitted cost models", "## Reaching the peak", "## Measurements", "## Environment"):
        assert heading in report
    for png in ("sweep_time.png", "sweep_gflops.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "numpy fp32" in stdout and "wrote" in stdout

    # re-rendered from the results file alone, elsewhere: the same report
    from rwkvprobe.report.sweep import render_sweep

    again = render_sweep(results, tmp_path / "elsewhere")
    assert again.read_text() == report

    # resuming a complete sweep measures nothing more
    code, _, err = sweep_cli("sweep", "--resume", out, "--budget", "20")
    assert code == 0, err
    assert len(json.loads((out / "results.json").read_text())["measurements"]) == 4


@pytest.mark.slow
def test_budget_stops_cleanly_and_resume_completes(sweep_cli, tmp_path):
    out = tmp_path / "run"
    # a budget the calibration alone uses up: nothing fits, the run stops and says how to go on
    code, stdout, err = sweep_cli("sweep", "--sizes", "64:192:64", "--backends", "numpy", "--budget", "0.01",
                                  "--out", out, "--m", "8", "--n", "2k")
    assert code == 0, err
    assert "--resume" in err
    partial = json.loads((out / "results.json").read_text())
    assert partial["stopped"]["reason"] == "budget" and len(partial["stopped"]["not_measured"]) == 3
    assert partial["settings"]["cold"] is True  # fixed M: cold, as decode
    assert "budget ran out" in (out / "sweep.md").read_text()
    code, _, err = sweep_cli("sweep", "--resume", out, "--budget", "30")
    assert code == 0, err
    final = json.loads((out / "results.json").read_text())
    assert "stopped" not in final
    assert sorted((p["m"], p["k"], p["n"]) for p in final["measurements"]) == [
        (8, 64, 128), (8, 128, 256), (8, 192, 384)]
    # a different grid cannot be resumed into the same folder
    code, _, err = sweep_cli("sweep", "--resume", out, "--sizes", "64:256:64")
    assert code == 2 and "--resume" in err and "--sizes" in err


# ------------------------------------------------------------------------------------------------
# NPU core masks: one series per mask, as analyze (the fake RKNNLite of tests/fake_rknnlite: plumbing only,
# none of its times is an NPU's)


@pytest.fixture
def fake_npu(monkeypatch, tmp_path):
    """The fake RKNNLite, the board checks answered as on an RK3588, the masks init_runtime was given, and a
    folder of fake .rknn models (fp16 weights as .npy) for the grid M=1, K=N=32 and 64."""
    import sys
    from pathlib import Path

    import numpy as np

    from rwkvprobe.backends import rknnlite_backend as rb
    from rwkvprobe.backends.onnxgen import weight_matrix

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fake_rknnlite"))
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
    folder = tmp_path / "rknn"
    folder.mkdir()
    models = []
    for size in (32, 64):
        name = f"matmul_m1_k{size}_n{size}_fp16.rknn"
        with open(folder / name, "wb") as f:
            np.save(f, weight_matrix(size, size, "fp16"))
        models.append({"dtype": "fp16", "m": 1, "k": size, "n": size, "file": name, "ok": True})
    (folder / "manifest.json").write_text(json.dumps({"schema": 1, "kind": "rknn-convert", "models": models}))
    return masks, folder


def test_sweep_npu_cores_one_series_per_mask(sweep_cli, tmp_path, fake_npu):
    masks, models = fake_npu
    out = tmp_path / "run"
    code, stdout, err = sweep_cli("sweep", "--backends", "rknnlite", "--rknn", models, "--npu-cores", "0,1,0_1_2",
                                  "--dtypes", "fp16", "--m", "1", "--sizes", "32,64", "--budget", "20", "--out", out)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    labels = ["rknnlite[core0]", "rknnlite[core1]", "rknnlite[cores0-2]"]
    assert results["settings"]["npu_cores"] == "0,1,0_1_2" and results["settings"]["rknn_dir"] == str(models)
    assert sorted(results["backends"]) == sorted(labels)
    assert {lbl: results["backends"][lbl]["core_mask"] for lbl in labels} == {
        "rknnlite[core0]": "0", "rknnlite[core1]": "1", "rknnlite[cores0-2]": "0_1_2"}
    got = {(p["backend"], p["size"]) for p in results["measurements"]}
    assert got == {(lbl, size) for lbl in labels for size in (32, 64)}
    assert all(p["check"]["ok"] for p in results["measurements"])
    # each mask reached init_runtime as its own RKNNLite constant: NPU_CORE_0, _1, _0_1_2; never AUTO
    assert set(masks) == {1, 2, 7}
    assert {s["backend"] for s in summarize_sweep(results["measurements"])["series"]} == set(labels)
    for lbl in labels:
        assert lbl in (out / "sweep.md").read_text()
    # --resume takes the masks and the models from the folder: nothing is left to measure
    masks.clear()
    code, _, err = sweep_cli("sweep", "--resume", out, "--budget", "20")
    assert code == 0, err
    assert len(json.loads((out / "results.json").read_text())["measurements"]) == 6


@pytest.mark.parametrize("value", ["0,9", ",", "core1"])
def test_sweep_bad_npu_cores_one_line_exit_2(sweep_cli, tmp_path, value):
    code, out, err = sweep_cli("sweep", "--backends", "numpy", "--sizes", "32", "--npu-cores", value,
                               "--out", tmp_path / "r")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--npu-cores" in err
    assert not (tmp_path / "r").exists()


def test_sweep_rknnlite_needs_rknn_dir(sweep_cli, tmp_path, fake_npu):
    code, out, err = sweep_cli("sweep", "--backends", "rknnlite", "--dtypes", "fp16", "--sizes", "32", "--m", "1",
                               "--out", tmp_path / "r")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--rknn DIR" in err
