"""analyze end to end on small profiles: outputs, resume after an interrupted run, bad input."""

import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest
from conftest import PROFILES, ROOT, run_module

from rwkvprobe.measure import cachesize
from rwkvprobe.model.profile import layers_from_json
from rwkvprobe.verdict.roofline import verdict_of

SMALL = """name: small test model
source: test
layers:
  - {name: a, k: 256, n: 512, count: 4}
  - {name: b, k: 512, n: 256, count: 4}
  - {name: c, k: 256, n: 96, count: 2}
  - {name: head, k: 256, n: 2048, count: 1}
"""
FAST = ["--backends", "numpy", "--quick", "--budget", "8"]


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    return path


@pytest.fixture(autouse=True)
def onnx_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_analyze_writes_results_report_and_plots(cli, small, tmp_path):
    out = tmp_path / "run"
    code, stdout, stderr = cli("analyze", small, "--out", out, *FAST, "--tokens", "1,8")
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == "rwkvprobe-results" and results["kind"] == "analyze"
    assert results["environment"]["cpu"]["logical_cpus"] >= 1
    assert len(results["measurements"]) == 4 * 2  # 4 unique shapes x 2 token counts, one backend/dtype
    for p in results["measurements"]:
        assert p["check"]["ok"] and len(p["timing"]["samples"]) == p["timing"]["n"] >= 1
    report = (out / "report.md").read_text()
    assert "## Verdict" in report and "decode on this machine is" in report
    for name in ("roofline.png", "layers.png", "share.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "decode on this machine is" in stdout
    # the cold measurements sized by one last-level cache (measure/cachesize.py), recorded and named in the report
    cache = results["cache"]
    assert cache == cachesize.decide() and cache["bytes"] <= (cache["reported_bytes"] or cache["bytes"])
    for p in results["measurements"]:
        w = p["k"] * p["n"] * p["bytes_per_weight"]
        assert p["rotation"]["copies"] * (w + p["rotation"]["flush_bytes"]) >= 4 * cache["bytes"]
    assert f"at least 4x the last-level cache ({cache['bytes'] / 2**20:.0f} MiB, {cache['how']})" in report
    # every layer of the profile is named with its bound
    for layer in ("| a |", "| b |", "| c |", "| head |"):
        assert layer in report


def test_report_rerenders_from_results_alone(cli, small, tmp_path):
    out = tmp_path / "run"
    assert cli("analyze", small, "--out", out, *FAST)[0] == 0
    other = tmp_path / "elsewhere"
    code, stdout, stderr = cli("report", out / "results.json", "--out", other)
    assert code == 0, stderr
    assert (other / "report.md").read_text().split("\n", 3)[3] == (out / "report.md").read_text().split("\n", 3)[3]


def _wait_for_file(path, proc, timeout=120):
    """Whether ``path`` appears while ``proc`` runs (within ``timeout`` s)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        if path.exists():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_interrupted_run_keeps_points_and_resume_completes_it(small, tmp_path):
    out = tmp_path / "run"
    # the run waits after its 2nd point until interrupted (tests-only hook), and says so with a file: the interrupt
    # lands in that wait, on a fast machine or a slow one
    # its cache size set outright (measure/cachesize.py): the resumed run, without the setting, keeps it
    held = tmp_path / "held"
    env = dict(os.environ, PYTHONPATH=str(ROOT), RWKVPROBE_TEST_HOLD_AFTER_POINTS="2", RWKVPROBE_TEST_HOLD_MARK=str(held),
               RWKVPROBE_LLC_BYTES=str(24 << 20), PYTHONFAULTHANDLER="1")
    args = [sys.executable, "-m", "rwkvprobe", "analyze", str(small), "--out", str(out), "--backends", "numpy",
            "--tokens", "1,8,16", "--budget", "60"]
    # Ctrl-C's default in the child: a shell without job control starts background commands (a CI script run with
    # `&`) with SIGINT ignored, children inherit that, and Python then installs no handler: the run slept on
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert _wait_for_file(held, proc), "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # where it hangs: faulthandler prints every thread's stack on SIGABRT
        proc.send_signal(signal.SIGABRT)
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"the interrupted run did not end within 120 s; its threads:\n{stderr[-6000:]}")
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    text = (out / "results.json").read_text()
    assert text.count("\n") == 1  # saved as the run goes: compact, by json's C encoder
    partial = json.loads(text)
    done = {(p["m"], p["k"], p["n"]): p["timing"]["samples"] for p in partial["measurements"]}
    assert len(done) == 2  # interrupted exactly where the run was held

    resumed = run_module("analyze", small, "--resume", out, "--backends", "numpy", "--tokens", "1,8,16",
                         "--budget", "60", env={"PYTHONPATH": str(ROOT)})
    assert resumed.returncode == 0, resumed.stderr
    text = (out / "results.json").read_text()
    assert text.count("\n") > 100  # a run's last save is indented, for people to read
    final = json.loads(text)
    points = {(p["m"], p["k"], p["n"]): p["timing"]["samples"] for p in final["measurements"]}
    assert len(points) == len(final["measurements"]) == 12  # nothing measured twice
    for key, samples in done.items():
        assert points[key] == samples  # what was measured before the interruption is kept as it was
    assert (out / "report.md").is_file()
    assert final["cache"]["bytes"] == 24 << 20 and final["cache"]["how"] == "set by RWKVPROBE_LLC_BYTES"
    assert all(p["rotation"]["copies"] * (p["k"] * p["n"] * p["bytes_per_weight"] + p["rotation"]["flush_bytes"])
               >= 4 * (24 << 20) for p in final["measurements"])


@pytest.mark.parametrize("args, words", [
    (["--backends", "numpy,cuda9"], "unknown backend 'cuda9'"),
    (["--dtypes", "fp8"], "unknown dtype 'fp8'"),
    (["--tokens", "0"], "--tokens"),
    (["--threads", "0"], "--threads"),
    (["--budget", "-1"], "--budget"),
    (["--cpus", "9999"], "--cpus"),
    (["--quantize", "att,bogus"], "--quantize"),
    (["--block-size", "7"], "--block-size"),
    (["--out", "/proc/rwkvprobe-nope"], "/proc/rwkvprobe-nope"),
])
def test_bad_analyze_input_one_line_exit_2(cli, small, tmp_path, args, words):
    if "--out" not in args:
        args = args + ["--out", str(tmp_path / "run")]
    code, out, err = cli("analyze", small, *args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("rwkvprobe: error:") and words in lines[-1], err
    assert len([line for line in lines if "error" in line]) == 1
    assert not (tmp_path / "run" / "results.json").exists()


def test_missing_optional_backend_names_extra(cli, small, tmp_path):
    import importlib.util

    if importlib.util.find_spec("tinygrad"):
        pytest.skip("tinygrad installed")
    code, out, err = cli("analyze", small, "--backends", "tinygrad", "--out", tmp_path / "r")
    assert code == 2 and "pip install 'rwkvprobe[tinygrad]'" in err and len(err.strip().splitlines()) == 1


def test_existing_results_are_not_overwritten(cli, small, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text('{"keep": "me"}')
    code, _, err = cli("analyze", small, "--out", out, *FAST)
    assert code == 2 and "--resume" in err
    assert (out / "results.json").read_text() == '{"keep": "me"}'


@pytest.mark.parametrize("content, words", [
    ("{not json", "invalid JSON"),
    ('{"schema": "something-else"}', "not an rwkvprobe results file"),
    ('[1, 2, 3]', "not an rwkvprobe results file"),
    ('{"schema": "rwkvprobe-results", "schema_version": 99, "kind": "analyze"}', "newer than this rwkvprobe"),
    ('{"schema": "rwkvprobe-results", "schema_version": 1, "kind": "bandwidth"}', "expected analyze"),
])
def test_corrupt_or_foreign_results(cli, small, tmp_path, content, words):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text(content)
    (out / "report.md").write_text("earlier report")
    for args in (("report", out / "results.json"), ("analyze", small, "--resume", out, *FAST)):
        code, stdout, err = cli(*args)
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1 and words in err
    assert (out / "results.json").read_text() == content
    assert (out / "report.md").read_text() == "earlier report"


def test_resume_refuses_other_options(cli, small, tmp_path):
    out = tmp_path / "run"
    assert cli("analyze", small, "--out", out, *FAST)[0] == 0
    before = (out / "results.json").read_text()
    code, _, err = cli("analyze", small, "--resume", out, *FAST, "--tokens", "1,4")
    assert code == 2 and "tokens" in err
    assert (out / "results.json").read_text() == before


@pytest.mark.slow
def test_headline_quick_command_on_rwkv_0b1(tmp_path):
    proc = run_module("analyze", PROFILES / "rwkv-0b1.yaml", "--quick", "--backends", "numpy,onnxruntime",
                      "--out", tmp_path / "run", env={"XDG_CACHE_HOME": str(tmp_path / "cache")}, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "run" / "report.md").read_text()
    assert "RWKV-7 0.1B decode on this machine is" in report
    assert "att.receptance" in report and "head" in report


def test_backend_without_a_quantized_kernel_falls_back_to_the_labelled_bound(cli, small, tmp_path):
    """numpy has no int4 kernel: that series is skipped with the reason, and the report shows the
    int4 figure only as the modelled upper bound of the numpy fp32 layers."""
    out = tmp_path / "run"
    code, _, err = cli("analyze", small, "--out", out, "--backends", "numpy", "--dtypes", "fp32,int4", "--quick",
                       "--budget", "8")
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert any(s["backend"] == "numpy" and s["dtype"] == "int4" for s in results["skipped"])
    assert not any(p["dtype"] == "int4" for p in results["measurements"])
    report = (out / "report.md").read_text()
    assert "- numpy int4:" in report  # skipped, with the reason
    what_if = report.split("## Quantization what-if (*modelled*)")[1].split("##")[0]
    assert "| numpy fp32 | int4 |" in what_if and "upper bounds" in what_if
    assert "## Quantized weights, measured" not in report  # nothing measured is claimed


def test_low_ceilings_are_probed_again_and_kept(cli, small, tmp_path, monkeypatch):
    """Disturbed first probes (here: 10x too low) and a peak measured 100x too low: the layers that beat them
    make analyze probe the bandwidth and measure the peak again at once, and every probe is kept."""
    from rwkvprobe.measure import analyze, bandwidth
    from rwkvprobe.measure import points as measure

    real_bw, real_probe, real_ceil = bandwidth.measure_bandwidth, bandwidth.ReadProbe.probe, measure.measure_ceilings

    def low_bandwidth(*args, **kwargs):  # the full probe
        result = real_bw(*args, **kwargs)
        for run in result["runs"]:
            for k in run["kernels"].values():
                k["best_gbps"] /= 10
        return result

    probes = []

    def low_probe(self, trials):  # and the read probes, the first (just before the layer points) disturbed
        result = real_probe(self, trials)
        probes.append(self)
        if len(probes) == 1:
            result["read_best_gbps"] /= 10
        return result

    calls = []

    def low_peak(*args, **kwargs):
        c = real_ceil(*args, **kwargs)
        calls.append(kwargs.get("gemv"))
        if len(calls) == 1:
            c["peak_gflops"] /= 100
        return c

    monkeypatch.setattr(bandwidth, "measure_bandwidth", low_bandwidth)
    monkeypatch.setattr(bandwidth.ReadProbe, "probe", low_probe)
    monkeypatch.setattr(analyze, "measure_ceilings", low_peak)
    out = tmp_path / "run"
    code, stdout, stderr = cli("analyze", small, "--out", out, *FAST, "--tokens", "1,8")
    assert code == 0, stderr
    r = json.loads((out / "results.json").read_text())
    # one array and team for every read probe of the run, closed at its end
    assert len(probes) == len(r["bandwidth_probes"]) >= 3 and all(x is probes[0] for x in probes)
    assert probes[0].team.a is None
    again = [p for p in r["bandwidth_probes"] if p["when"].startswith("again after")]
    assert again and len(again) <= analyze.MAX_REPROBES and "GB/s" in again[0]["when"]
    assert r["bandwidth_probes"][-1]["when"] == "after the layers"
    assert all(p["check_ok"] and p["trials"] == analyze.BANDWIDTH_TRIALS for p in r["bandwidth_probes"])
    assert r["bandwidth"]["trials"] == analyze.BANDWIDTH_TRIALS  # STREAM's 10 trials in --quick too
    (c,) = r["ceilings"]
    assert c["compute_again"]["after"].startswith("numpy fp32 M=") and len(calls) == 2
    # the second measurement (not cut down) is far above the first: it is the ceiling now
    assert c["peak_gflops"] == c["compute_again"]["peak_gflops"] > 0
    assert "- (--quick)" in (out / "report.md").read_text()  # no GEMV ceiling in --quick


@pytest.mark.slow
def test_default_run_measures_the_int8_int4_what_if_on_decode_shapes(cli, small, tmp_path):
    """No --dtypes: onnxruntime's int8 and int4 formats are measured too, decode shapes only, and the verdict
    leads with them (backend and format named), the bytes-only figure beside them."""
    out = tmp_path / "run"
    code, stdout, err = cli("analyze", small, "--out", out, "--backends", "numpy,onnxruntime", "--quick",
                            "--budget", "8", "--tokens", "1,8")
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    whatif = {tuple(x) for x in results["settings"]["whatif_series"]}
    assert {d for _, d in whatif} & {"int8-a8", "int8"} and {d for _, d in whatif} & {"int4-a8", "int4"}
    assert {b for b, _ in whatif} == {"onnxruntime"}
    quantized = [p for p in results["measurements"] if (p["backend"], p["dtype"]) in whatif]
    assert quantized and {p["m"] for p in quantized} == {1}  # decode shapes only
    assert "what-if points" in results["stage_seconds"]
    assert all(c.get("light") for c in results["ceilings"] if (c["backend"], c["dtype"]) in whatif)
    flat = " ".join(stdout.split())
    assert "Smaller weights, measured" in flat and "onnxruntime int" in flat and "Bytes-only upper bound" in flat


def test_plan_whatif_only_without_dtypes():
    from rwkvprobe.measure.analyze import AnalyzeSettings, plan_whatif

    def settings(dtypes):
        return AnalyzeSettings(backends=None, dtypes=dtypes, tokens=[1], threads=1, cpus=None)

    pairs = [("numpy", "fp32"), ("onnxruntime", "fp32")]
    got, why = plan_whatif(settings(None), pairs)
    assert why is None and len(got) == 2 and all(b == "onnxruntime" for b, _ in got)
    assert plan_whatif(settings(["fp32"]), pairs) == ([], "--dtypes named no quantized format")
    assert plan_whatif(settings(["fp32", "int4"]), pairs) == ([], None)  # measured as a full series instead
    got, why = plan_whatif(settings(None), [("numpy", "fp32")])
    assert got == [] and "onnxruntime" in why


def test_quick_leaves_the_onnxruntime_what_if_out_where_quantized_series_are_measured_and_a_full_resume_adds_it(
        tmp_path):
    """--quick with full quantized series planned (ggml's q8_0 and q4_0 by default) plans no what-if and says why,
    naming them; without them it plans the what-if as before; a full run resuming that quick one plans it."""
    from rwkvprobe.measure.analyze import Analysis, AnalyzeSettings, plan_whatif
    from rwkvprobe.model.profile import layer_list, load_profile
    from rwkvprobe.model.quant import QUICK_WHATIF_LEFT_OUT

    def settings(quick, backends=None):
        return AnalyzeSettings(backends=backends, dtypes=None, tokens=[1], threads=1, cpus=None, quick=quick)

    pairs = [("onnxruntime", "fp32"), ("ggml", "fp16"), ("ggml", "q8_0"), ("ggml", "q4_0")]
    got, why = plan_whatif(settings(True), pairs)
    assert got == [] and why.startswith(QUICK_WHATIF_LEFT_OUT) and "ggml q8_0 and ggml q4_0" in why
    assert len(plan_whatif(settings(False), pairs)[0]) == 2  # the default run measures both
    got, why = plan_whatif(settings(True), pairs[:2])  # no quantized series: the what-if is --quick's only one
    assert why is None and {b for b, _ in got} == {"onnxruntime"} and len(got) == 2
    layers = layer_list(load_profile(PROFILES / "rwkv-0b1.yaml"))
    why_quick = plan_whatif(settings(True), pairs)[1]
    for quick, planned in ((True, 0), (False, 2)):  # resumed as a quick run, then as a full one
        resumed = {"settings": {"whatif_series": [], "whatif_missing": why_quick}, "skipped": []}
        (tmp_path / f"run{quick}").mkdir()
        a = Analysis(layers, settings(quick, ["onnxruntime"]), tmp_path / f"run{quick}", resumed)
        _, _, whatif, _ = a._setup([0])
        assert len(whatif) == planned and len(a.results["settings"]["whatif_series"]) == planned, quick


def test_whatif_points_rotate_fewer_copies_but_stay_cold():
    from rwkvprobe.measure.timing import LLC_FACTOR, plan_rotation

    llc = 32 * 1024**2
    full = plan_rotation(2.6e6, llc, True)
    few = plan_rotation(2.6e6, llc, True, max_copies=4)
    assert full.copies == 16 and few.copies == 4
    # between two uses of one buffer at least LLC_FACTOR x the cache still passes: the flush makes up the rest
    assert few.copies * (2.6e6 + few.flush_bytes) >= LLC_FACTOR * llc


def test_the_setup_still_to_come_is_projected_from_a_fixed_cost_and_a_cost_per_weight_byte():
    """Preparing and checking a point costs a fixed part plus a part growing with its weight (the head's 0.5 GB
    costs seconds): the plan sets that aside for the points to come, so a run whose head comes last keeps its
    budget."""
    from rwkvprobe.measure.analyze import _setup_projection

    assert _setup_projection([], [1e9]) == 0.0
    spent = [(0.1, 1e6), (0.2, 101e6), (0.3, 201e6)]  # 0.1 s fixed, 1 ms per MB beyond it
    fixed, rate = 0.1, (0.1 + 0.2) / (1e6 + 101e6 + 201e6)
    assert _setup_projection(spent, [500e6, 1e6]) == pytest.approx(2 * fixed + rate * 501e6)
    assert _setup_projection(spent, [500e6]) > 5 * _setup_projection(spent, [1e6])


def _quick_numpy_run(cli, small, out) -> dict:
    """A quick numpy-only analyze of ``small`` into ``out`` with a budget that leaves room for rechecks on a slow
    shared machine (each needs one more point's time); its results."""
    code, _, stderr = cli("analyze", small, "--out", out, "--backends", "numpy", "--quick", "--budget", "30")
    assert code == 0, stderr
    return json.loads((out / "results.json").read_text())


def _scaled(point: dict, factor: float) -> dict:
    """``point`` with its median time multiplied by ``factor`` (a fake slow or fast timing)."""
    point["timing"] = dict(point["timing"], median_seconds=point["timing"]["median_seconds"] * factor)
    return point


def _slow_first_point(analyze, monkeypatch) -> list[tuple[int, int]]:
    """analyze.measure_point with the first timed point's median 1000x its real time; the (k, n) it slowed."""
    real = analyze.measure_point
    slowed: list[tuple[int, int]] = []

    def slow_once(*args, **kwargs):
        p = real(*args, **kwargs)
        if not slowed and p.get("timing"):
            slowed.append((p["k"], p["n"]))
            _scaled(p, 1000)
        return p

    monkeypatch.setattr(analyze, "measure_point", slow_once)
    return slowed


def test_a_point_far_slower_than_its_ceilings_predict_is_measured_again(cli, small, tmp_path, monkeypatch):
    """One point's first timing 1000x its real time (as a ggml GEMV once ran 11-23 ms a call for 0.04 ms of work):
    analyze measures it again after the others, keeps the faster, records both, and the report's stability line says
    so. No near-line recheck here: a real timing near the kernel-limited line was once measured a third time in CI
    (that chain is test_a_point_measured_again_twice_keeps_both_records)."""
    from rwkvprobe.measure import analyze

    slowed = _slow_first_point(analyze, monkeypatch)
    monkeypatch.setattr(analyze, "SECOND_WINDOWS", False)  # its own recheck, not a second window, measures again
    monkeypatch.setattr(analyze, "NEAR_LINE_RECHECKS", 0)
    out = tmp_path / "run"
    r = _quick_numpy_run(cli, small, out)
    (p,) = [p for p in r["measurements"] if p.get("slow_recheck")]
    x = p["slow_recheck"]
    assert (p["k"], p["n"]) == slowed[0] and x["median_seconds"] > analyze.contention.SLOW_POINT_FACTOR * x["projected_seconds"]
    assert p["timing"]["median_seconds"] == x["again_median_seconds"] < x["median_seconds"] / 100
    assert "1 point(s) over 10x slower than their series' ceilings predict were measured again" in (
        out / "report.md").read_text()


def test_a_far_slow_point_is_measured_again_when_only_the_finish_reserve_is_left(cli, small, tmp_path, monkeypatch):
    """The plan spent (what is left of --budget covers no recheck that keeps the whole finish reserve): a point timed
    at 1000x its real time is still measured again, from the part of the reserve the headline's rechecks may use,
    as it moves the headline as much as they do (two ggml f16 points of 15 µs timed at 16 ms a call beside another
    process made ggml's decodes 780 ms a token). The rechecks that keep the whole reserve are not made."""
    from rwkvprobe.measure import analyze

    slowed = _slow_first_point(analyze, monkeypatch)
    reserves = []

    def only_the_reserve_left(self, point, t_start, reserve=analyze.FINISH_RESERVE_SECONDS):
        reserves.append(reserve)
        return reserve <= analyze.HEADLINE_RESERVE_SECONDS

    monkeypatch.setattr(analyze.Analysis, "_budget_has", only_the_reserve_left)
    monkeypatch.setattr(analyze, "NEAR_LINE_RECHECKS", 0)
    monkeypatch.setattr(analyze, "HEAVY_RECHECKS", 0)
    r = _quick_numpy_run(cli, small, tmp_path / "run")
    (p,) = [p for p in r["measurements"] if p.get("slow_recheck")]
    assert (p["k"], p["n"]) == slowed[0]
    assert p["timing"]["median_seconds"] == p["slow_recheck"]["again_median_seconds"] < \
        p["slow_recheck"]["median_seconds"] / 100
    assert analyze.FINISH_RESERVE_SECONDS in reserves  # asked, and refused, for the others
    assert not any(q.get("machine_slow_recheck") or q.get("series_heavy_recheck") for q in r["measurements"])


def test_a_point_measured_again_twice_keeps_both_records(cli, small, tmp_path, monkeypatch):
    """A decode point far slower than its ceilings predict at first (x1000), then twice its time when measured again,
    then its own time near the kernel-limited line: the far-slow recheck keeps the second timing, the near-line
    recheck the third, and the point carries both records (the second replaced the first's dict)."""
    from rwkvprobe.measure import analyze
    from rwkvprobe.verdict import roofline

    monkeypatch.setattr(analyze, "SECOND_WINDOWS", False)  # its own recheck, not a second window, measures again
    monkeypatch.setattr(roofline, "kernel_share", lambda row: 0.5)
    real, calls = analyze.measure_point, []

    def scripted(backend, w, *args, **kwargs):
        p = real(backend, w, *args, **kwargs)
        if w.m == 1 and p.get("timing") and (not calls or calls[0] == (w.k, w.n)):
            calls.append((w.k, w.n))
            _scaled(p, {1: 1000.0, 2: 2.0}.get(len(calls), 0.5))
        return p

    monkeypatch.setattr(analyze, "measure_point", scripted)
    r = _quick_numpy_run(cli, small, tmp_path / "run")
    assert len(calls) == 3
    (p,) = [p for p in r["measurements"] if (p["m"], p["k"], p["n"]) == (1, *calls[0])]
    assert p["slow_recheck"]["again_median_seconds"] < p["slow_recheck"]["median_seconds"] / 100
    assert p["near_line_recheck"]["median_seconds"] == p["slow_recheck"]["again_median_seconds"]
    assert p["timing"]["median_seconds"] == p["near_line_recheck"]["again_median_seconds"]


def test_a_point_timed_while_the_machine_ran_slow_is_measured_again(cli, small, tmp_path, monkeypatch):
    """The canary (contention.canary) made 3x its best around the first decode point only, as a shared host's cores
    slow down for seconds with no steal or other process seen: analyze measures that point again after the others,
    keeps the faster, records both with the canary's ratio, and the stability line says so; no other point is
    measured again for it."""
    from rwkvprobe.measure import analyze, contention

    slow = {"on": False}
    monkeypatch.setattr(analyze, "SECOND_WINDOWS", False)  # its own recheck, not a second window, measures again
    monkeypatch.setattr(contention, "canary", lambda: 3e-4 if slow["on"] else 1e-4)
    real, chosen = analyze.measure_point, []

    def slow_first_decode_point(backend, w, *args, **kwargs):
        if not chosen and w.m == 1:
            chosen.append((w.k, w.n))
            slow["on"] = True
        try:
            return real(backend, w, *args, **kwargs)
        finally:
            slow["on"] = False

    monkeypatch.setattr(analyze, "measure_point", slow_first_decode_point)
    monkeypatch.setattr(analyze, "NEAR_LINE_RECHECKS", 0)  # the kept timing is this recheck's alone
    monkeypatch.setattr(analyze, "HEAVY_RECHECKS", 0)
    out = tmp_path / "run"
    r = _quick_numpy_run(cli, small, out)
    assert r["canary_reference_seconds"] == 1e-4
    (p,) = [p for p in r["measurements"] if p.get("machine_slow_recheck")]
    x = p["machine_slow_recheck"]
    assert (p["m"], p["k"], p["n"]) == (1, *chosen[0]) and x["canary_ratio"] == pytest.approx(3.0)
    assert p["timing"]["median_seconds"] == min(x["median_seconds"], x["again_median_seconds"])
    kept_new = p["timing"]["median_seconds"] == x["again_median_seconds"] != x["median_seconds"]
    assert x["again_canary_ratio"] == (pytest.approx(1.0) if kept_new else None)
    report = (out / "report.md").read_text()
    assert "the machine's own speed (a fixed matmul timed around each point) was at most" in report
    assert "1 point(s) timed while the machine ran slow were measured again after the others" in report
    # the kept timing's own canary decides the flag in the layer tables
    assert ("(machine slow)" in report) is (not kept_new)


def test_a_point_due_while_the_machine_runs_slow_is_timed_after_the_others(cli, small, tmp_path, monkeypatch):
    """The canary says the machine runs slow as the first layer point comes up (contention.slow_now): that point
    is put off, timed after every other point, once, with the canary's ratio recorded; the stability line counts
    it; the others are timed in their order, none put off."""
    from rwkvprobe.measure import analyze, contention

    calls: list[float | None] = []
    real_slow_now = contention.slow_now

    def slow_first(best):
        calls.append(best)
        real_slow_now(best)  # the real canary still runs: only its verdict is scripted
        return 2.0 if len(calls) == 1 else None

    monkeypatch.setattr(contention, "slow_now", slow_first)
    monkeypatch.setattr(analyze, "SECOND_WINDOWS", False)  # each point timed once (no second window)
    out = tmp_path / "run"
    r = _quick_numpy_run(cli, small, out)
    points = [p for p in r["measurements"] if p.get("timing")]
    assert len(points) == len(r["measurements"]) >= 3
    put_off = [p for p in points if p.get("put_off")]
    assert len(put_off) == 1 and put_off[0]["put_off"] == {"canary_ratio": 2.0}
    # timed last of the layer points (the file keeps them in the order they were first timed; a recheck after them
    # replaces a point in its place)
    assert r["measurements"][-1].get("put_off")
    # the canary's best so far is compared with: the run's reference as the points began
    assert calls[0] == r["canary_reference_seconds"]
    # asked once for every point, the put-off one not again
    assert len(calls) == len(points)
    assert "1 point(s) were put off while it ran 1.25x slower than its best or more" in (out / "report.md").read_text()


def test_a_machine_slow_throughout_puts_each_point_off_once(cli, small, tmp_path, monkeypatch):
    """A canary slow for the whole run: every layer point is put off once, then timed (in the plan's order); the
    run ends with each point timed exactly once."""
    from rwkvprobe.measure import analyze, contention

    monkeypatch.setattr(contention, "slow_now", lambda best: 3.0)
    monkeypatch.setattr(analyze, "NEAR_LINE_RECHECKS", 0)
    monkeypatch.setattr(analyze, "HEAVY_RECHECKS", 0)
    r = _quick_numpy_run(cli, small, tmp_path / "run")
    keys = [(p["m"], p["k"], p["n"]) for p in r["measurements"]]
    assert len(keys) == len(set(keys)) >= 3
    assert all(p["put_off"] == {"canary_ratio": 3.0} and p.get("timing") for p in r["measurements"])


def test_slow_now_compares_the_canary_with_the_best_so_far(monkeypatch):
    from rwkvprobe.measure import contention

    monkeypatch.setattr(contention, "canary", lambda: 1.3e-4)
    assert contention.slow_now(1e-4) == pytest.approx(1.3)
    assert contention.slow_now(1.1e-4) is None  # 1.18x: under CANARY_SLOW
    assert contention.slow_now(None) is None


def _first_time_per_token(results: dict, record: str) -> dict:
    """{call shape: seconds a token} of the decode points by their timing when the recheck ``record`` chose (the
    rechecks after it, heavy and machine-slow, may have replaced a timing since: on a loaded CI machine a point
    timed while the machine ran slow is)."""
    order = ("near_line_recheck", "heavy_recheck", "machine_slow_recheck", "series_heavy_recheck")

    def then(p: dict) -> float:
        for key in order[order.index(record):]:
            if p.get(key):
                return p[key]["median_seconds"]
        return p["timing"]["median_seconds"]

    first = {(p["k"], p["n"]): then(p) for p in results["measurements"] if p["m"] == 1 and p.get("timing")}
    per_token: dict = {}
    for x in layers_from_json(results["profile"]).layers:
        per_token[x.call_shape] = per_token.get(x.call_shape, 0.0) + first[x.call_shape] * x.calls
    return per_token


def test_headline_points_near_the_kernel_limited_line_are_measured_again(cli, small, tmp_path, monkeypatch):
    """Three of the four decode shapes of the fastest series made to sit near the kernel-limited line
    (kernel_share 0.5), shape b far from it (0.0), at most two rechecks: the two near shapes holding the most of
    the decode are measured again after the others, the faster median kept, both recorded, and the stability
    line says so; b is left alone."""
    from rwkvprobe.measure import analyze
    from rwkvprobe.verdict import roofline

    monkeypatch.setattr(roofline, "kernel_share", lambda row: 0.0 if (row["k"], row["n"]) == (512, 256) else 0.5)
    monkeypatch.setattr(analyze, "NEAR_LINE_RECHECKS", 2)
    out = tmp_path / "run"
    r = _quick_numpy_run(cli, small, out)
    again = [p for p in r["measurements"] if p.get("near_line_recheck")]
    assert len(again) == 2
    for p in again:
        x = p["near_line_recheck"]
        assert p["m"] == 1 and x["kernel_share"] == 0.5
        assert p["timing"]["median_seconds"] == min(x["median_seconds"], x["again_median_seconds"])
    # the most time a token first, among the near shapes only
    per_token = _first_time_per_token(r, "near_line_recheck")
    chosen = {(p["k"], p["n"]) for p in again}
    assert (512, 256) not in chosen
    left = [t for shape, t in per_token.items() if shape not in chosen | {(512, 256)}]
    assert min(per_token[c] for c in chosen) >= max(left)
    assert "2 point(s) of the fastest series near the kernel-limited line" in (out / "report.md").read_text()


def _heavy_rechecked(results: dict, record: str) -> list[dict]:
    """The points measured again under ``record`` (heavy_recheck, series_heavy_recheck), each checked: a decode point
    carrying HEAVY_SHARE or more of its series' matmul time, the faster of its two medians kept."""
    from rwkvprobe.verdict import roofline

    again = [p for p in results["measurements"] if p.get(record)]
    for p in again:
        x = p[record]
        assert p["m"] == 1 and x["decode_share"] >= roofline.HEAVY_SHARE
        assert p["timing"]["median_seconds"] == min(x["median_seconds"], x["again_median_seconds"])
    return again


def test_the_headlines_heaviest_points_are_measured_again(cli, small, tmp_path, monkeypatch):
    """With no point near the kernel-limited line, the fastest series' decode points carrying a tenth or more of its
    matmul time (roofline.heavy_points), at most two: measured again after the others, the most time a token first,
    the faster median kept, both recorded, and the stability line says so."""
    from rwkvprobe.measure import analyze
    from rwkvprobe.verdict import roofline

    monkeypatch.setattr(analyze, "SECOND_WINDOWS", False)  # its own recheck, not a second window, measures again
    monkeypatch.setattr(roofline, "kernel_share", lambda row: 0.0)
    monkeypatch.setattr(analyze, "HEAVY_RECHECKS", 2)
    floors: dict = {}  # the sample floor each layer point was first timed with
    real = analyze.measure_point

    def recorded(backend, w, llc, policy, *args, **kwargs):
        floors.setdefault((w.m, w.k, w.n), policy.floor_samples)
        return real(backend, w, llc, policy, *args, **kwargs)

    monkeypatch.setattr(analyze, "measure_point", recorded)
    out = tmp_path / "run"
    r = _quick_numpy_run(cli, small, out)
    assert not any(p.get("near_line_recheck") for p in r["measurements"])
    again = _heavy_rechecked(r, "heavy_recheck")
    assert len(again) == 2
    # the most time a token first, by the first timings
    per_token = _first_time_per_token(r, "heavy_recheck")
    chosen = {(p["k"], p["n"]) for p in again}
    assert min(per_token[c] for c in chosen) >= max(t for shape, t in per_token.items() if shape not in chosen)
    assert again[0]["heavy_recheck"]["decode_share"] == pytest.approx(
        per_token[(again[0]["k"], again[0]["n"])] / sum(per_token.values()))
    assert "2 point(s) carrying 10% or more of the fastest series' matmul time were measured again" in (
        out / "report.md").read_text()
    # the decode points of the heaviest shapes (5% or more of the weights a token: all but c) were timed with the
    # sample floor, the others and the chunk's points without (timing.TimingPolicy.floor_samples is tested there)
    assert floors == {(m, k, n): analyze.HEAVY_SAMPLES if m == 1 and (k, n) != (256, 96) else 0
                      for m, k, n in floors} and len(floors) >= 4


def test_heavy_decode_points_are_timed_in_two_windows_the_faster_kept(cli, small, tmp_path, monkeypatch):
    """The decode points of the shapes holding 5% or more of a token's weights (a, b and the head; not c, 3%) are
    timed twice: a second window once every point has had its first, reusing its check; the faster median kept, both
    recorded; the stability line counts them. Each first window made 1.5x slow (a slow phase of the machine, not far
    slow): the kept timing is the faster of the two. No other recheck runs here."""
    from rwkvprobe.measure import analyze, contention
    from rwkvprobe.verdict import roofline

    monkeypatch.setattr(roofline, "kernel_share", lambda row: 0.0)
    monkeypatch.setattr(contention, "CANARY_SLOW", float("inf"))
    for name in ("NEAR_LINE_RECHECKS", "HEAVY_RECHECKS", "SERIES_HEAVY_RECHECKS"):
        monkeypatch.setattr(analyze, name, 0)
    real, calls = analyze.measure_point, []

    def scripted(backend, w, *args, checked=None, **kwargs):
        p = real(backend, w, *args, checked=checked, **kwargs)
        calls.append(((w.m, w.k, w.n), checked is not None))
        if checked is None and w.m == 1 and p.get("timing"):
            _scaled(p, 1.5)
        return p

    monkeypatch.setattr(analyze, "measure_point", scripted)
    out = tmp_path / "run"
    r = _quick_numpy_run(cli, small, out)
    twice = {(p["m"], p["k"], p["n"]) for p in r["measurements"] if p.get("second_window")}
    assert twice == {(1, 256, 512), (1, 512, 256), (1, 256, 2048)}
    for p in r["measurements"]:
        if p.get("second_window"):
            x = p["second_window"]
            assert x["again_median_seconds"] is not None
            assert p["timing"]["median_seconds"] == min(x["median_seconds"], x["again_median_seconds"])
            if p["timing"]["median_seconds"] != x["median_seconds"]:
                assert p["check"]["reused"]  # the second window's timing, on the first's check
    # every second window after every point's first
    first = {}
    for i, (key, again) in enumerate(calls):
        if not again:
            first.setdefault(key, i)
    seconds = [i for i, (key, again) in enumerate(calls) if again]
    assert len(seconds) == 3 and min(seconds) > max(first.values())
    assert "3 decode point(s) of the heaviest shapes were timed in two windows" in (out / "report.md").read_text()


def test_every_series_heaviest_points_are_measured_again_with_the_budget_left(cli, small, tmp_path, monkeypatch):
    """After the headline's rechecks (none here: HEAVY_RECHECKS 0), every series' heaviest decode points
    (roofline.series_heavy_points), at most SERIES_HEAVY_RECHECKS: measured again, the heaviest first, the faster
    median kept, both recorded with the point's share of its series' matmul time, and the stability line says so. (No
    point is taken for timed while the machine ran slow, CANARY_SLOW out of reach: on a loaded machine those rechecks,
    which come first, would take heavy points out of this one's choice.)"""
    from rwkvprobe.measure import analyze, contention
    from rwkvprobe.verdict import roofline

    monkeypatch.setattr(analyze, "SECOND_WINDOWS", False)  # its own recheck, not a second window, measures again
    monkeypatch.setattr(roofline, "kernel_share", lambda row: 0.0)
    monkeypatch.setattr(contention, "CANARY_SLOW", float("inf"))
    monkeypatch.setattr(analyze, "HEAVY_RECHECKS", 0)
    monkeypatch.setattr(analyze, "SERIES_HEAVY_RECHECKS", 2)
    out = tmp_path / "run"
    r = _quick_numpy_run(cli, small, out)
    assert not any(p.get("heavy_recheck") or p.get("near_line_recheck") for p in r["measurements"])
    again = _heavy_rechecked(r, "series_heavy_recheck")
    assert len(again) == 2
    assert not any(p.get("machine_slow_recheck") or p.get("put_off") for p in r["measurements"])
    per_token = _first_time_per_token(r, "series_heavy_recheck")
    chosen = {(p["k"], p["n"]) for p in again}
    # the heaviest first, leaving out any a far-slow recheck (slow_recheck) had measured twice already
    twice = {(p["k"], p["n"]) for p in r["measurements"] if p["m"] == 1 and p.get("slow_recheck")}
    assert min(per_token[c] for c in chosen) >= max(t for shape, t in per_token.items() if shape not in chosen | twice)
    assert "2 point(s) carrying 10% or more of another series' matmul time were measured again with the budget left" \
        in (out / "report.md").read_text()


def test_the_headlines_rechecks_may_use_the_finish_reserve_and_the_others_may_not():
    """With 5.5 s of a 10 s budget left and a point costing 1 s to measure again: the headline's rechecks (near the
    line, heaviest: the verdict rests on them) run, keeping HEADLINE_RESERVE_SECONDS for the finish; the others
    (machine slow, far slow) keep the whole FINISH_RESERVE_SECONDS and do not."""
    from types import SimpleNamespace

    from rwkvprobe.measure import analyze
    from rwkvprobe.model.profile import layer_list, load_profile

    assert analyze.HEADLINE_RESERVE_SECONDS < 4.5 < analyze.FINISH_RESERVE_SECONDS
    point = {"backend": "numpy", "dtype": "fp32", "m": 1, "k": 64, "n": 32, "timing": {"median_seconds": 1e-3},
             "check": {"ok": True}, "overhead_seconds": {"prepare": 0.5, "check": 0.25, "timing": 0.25}}
    run = analyze.Analysis.__new__(analyze.Analysis)
    run.settings = SimpleNamespace(budget_seconds=10.0)
    run.layers = layer_list(load_profile(PROFILES / "rwkv-0b1.yaml"))
    run.results = {"measurements": [point]}
    run.save_soon = lambda: None
    t_start = time.perf_counter() - 4.5
    assert not run._budget_has(point, t_start)
    assert run._budget_has(point, t_start, analyze.HEADLINE_RESERVE_SECONDS)
    again = []
    run._again_as_before = lambda p, backends, llc: (again.append(p) or p, 1e-3)
    notes = SimpleNamespace(note=lambda text: None)
    key = ("numpy", "fp32", 1, 64, 32)
    run._recheck_headline(lambda r, layers: [(key, 0.4)], 3, "heavy_recheck", "decode_share", "{:.0%}",
                          {"numpy": None}, None, t_start, notes, 0)
    assert again == [point] and point["heavy_recheck"]["decode_share"] == 0.4
    del point["heavy_recheck"]
    run._recheck_all_slow([(0, 1e-4, None, None, "numpy fp32", None)], {"numpy": None}, None, t_start, notes)
    assert again == [point] and "slow_recheck" not in point  # not measured again: the finish reserve is kept


def test_analyze_judges_with_the_machines_earlier_probes_and_records_its_own(cli, small, tmp_path, monkeypatch):
    """The machine's bandwidth history (measure/history.py): an earlier run's probe of this machine far above what
    memory gives now is the DRAM ceiling of this run, said so in the report; this run's probes are added for the
    next; --no-history leaves both out."""
    from rwkvprobe.measure import bandwidth, history

    path = tmp_path / "history.json"
    monkeypatch.setenv(history.HISTORY_ENV, str(path))
    engine = bandwidth.engine_name()
    earlier = [{"at": time.time() - 3600, "read_best_gbps": 9999.0, "array_bytes": 2**27}]
    assert history.record(earlier, 1, None, engine, "an earlier run")
    out = tmp_path / "run"
    code, stdout, stderr = cli("analyze", small, "--out", out, *FAST, "--threads", "1")
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    assert [p["read_best_gbps"] for p in results["bandwidth_history"]["probes"]] == [9999.0]
    assert results["settings"]["history"] is True
    report = (out / "report.md").read_text()
    assert "probe(s) of this machine's earlier runs" in report and "is the best of all, 9999.0 GB/s" in report
    assert "memory read slower during this run than usual on this machine" in report
    own = len(bandwidth.read_probes(results, history=False))
    assert own >= 2  # the full probe before the layers, and at least the one after them
    recorded = history.earlier_probes(1, None, engine)["probes"]
    assert len(recorded) == 1 + own and recorded[0]["command"] == "an earlier run"
    assert recorded[-1]["command"] == " ".join(results["command"])  # one line (in-process: pytest's argv)
    # a second run takes up both runs' probes
    assert cli("analyze", small, "--out", tmp_path / "again", *FAST, "--threads", "1")[0] == 0
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert len(again["bandwidth_history"]["probes"]) == 1 + own
    # other threads: another setup, not taken up
    assert history.earlier_probes(2, None, engine)["probes"] == []
    before = path.read_bytes()
    assert cli("analyze", small, "--out", tmp_path / "alone", *FAST, "--threads", "1", "--no-history")[0] == 0
    alone = json.loads((tmp_path / "alone" / "results.json").read_text())
    assert "bandwidth_history" not in alone and alone["settings"]["history"] is False
    assert "earlier runs" not in (tmp_path / "alone" / "report.md").read_text()
    assert path.read_bytes() == before
    # a history that cannot be written: the run completes, with one note that says how to fix it
    monkeypatch.setenv(history.HISTORY_ENV, str(tmp_path / "run" / "results.json" / "history.json"))
    code, _, stderr = cli("analyze", small, "--out", tmp_path / "blocked", *FAST, "--threads", "1")
    assert code == 0, stderr
    blocked = json.loads((tmp_path / "blocked" / "results.json").read_text())
    assert any("bandwidth history" in w and "could not be written" in w and history.HISTORY_ENV in w
               for w in blocked["warnings"])


def test_the_heaviest_decode_shapes_take_a_floor_of_samples(small, tmp_path):
    """The call shapes holding 5% or more of the weights a token (a, b and the head of the small profile, 2**19
    each, 31% each; c 3%) are the ones whose decode points take HEAVY_SAMPLES samples at least."""
    from rwkvprobe.measure import analyze
    from rwkvprobe.model.profile import layer_list, load_profile

    settings = analyze.AnalyzeSettings(backends=["numpy"], dtypes=None, tokens=[1], threads=1, cpus=None)
    a = analyze.Analysis(layer_list(load_profile(small)), settings, tmp_path / "run")
    assert a._heavy_shapes() == {(256, 512), (512, 256), (256, 2048)}


@pytest.mark.parametrize("case", ["after", "before", "no room"])
def test_the_torch_layer_pass_gets_a_second_window_later_in_the_run(cli, tmp_path, monkeypatch, case):
    """The torch series' decode layer pass times as many rounds again (without the tail) later in the run: after the
    layer points, or before the first point whose weights outweigh its ring ("before": a ring of 1 byte), and its
    figure is the median over both windows; where the budget has no room for that window, the entry says why and
    keeps the first window's figure. The rings are let go either way."""
    pytest.importorskip("torch")
    from rwkvprobe.measure import analyze, layerpass

    if case == "no room":  # a window that would cost more than any budget
        monkeypatch.setattr(layerpass, "later_window_seconds", lambda rounds: 1e6)
    if case == "before":
        real_init = layerpass.Rounds.__init__

        def light(self, *args, **kwargs):
            real_init(self, *args, **kwargs)
            self.ring_bytes = 1
        monkeypatch.setattr(layerpass.Rounds, "__init__", light)
    seen: list = []
    real_measure = analyze.Analysis._measure_later_windows

    def spy(self, t_start, progress):
        seen.append(([rounds for _, rounds in self._windows], len(self.results["measurements"])))
        real_measure(self, t_start, progress)
        assert not self._windows
    monkeypatch.setattr(analyze.Analysis, "_measure_later_windows", spy)
    tiny = tmp_path / "tiny7.yaml"  # an RWKV profile: its layer pass is what is timed
    tiny.write_text("name: tiny7\nsource: test\nversion: 7\nn_layer: 3\nn_embd: 128\nvocab_size: 256\n"
                    "head_size: 64\nlora: {decay: 16, aaa: 16, mv: 8, gate: 32}\n")
    out = tmp_path / "run"
    code, _, stderr = cli("analyze", tiny, "--out", out, "--backends", "torch", "--dtypes", "fp32", "--quick",
                          "--budget", "20")
    assert code == 0, stderr
    r = json.loads((out / "results.json").read_text())
    (entry,) = [x for x in r["nonmatmul"] if x["backend"] == "torch"]
    assert entry["method"] == "layer-pass" and len(seen) == 1 and len(seen[0][0]) == 1
    # when: before the first layer point, or after the last
    assert seen[0][1] == (0 if case == "before" else len(r["measurements"])) and r["measurements"]
    rounds = entry["rounds"]
    first = [x for x in rounds if "window" not in x and not x.get("tail")]
    later = [x for x in rounds if x.get("window") == 1]
    plain = [x["non_matmul_seconds"] for x in rounds if not x.get("tail")]
    assert entry["seconds_per_block"] == pytest.approx(statistics.median(plain))
    if case != "no room":
        assert len(later) == len(first) and not any(x.get("tail") for x in later)
        assert len(entry["windows"]) == 2 and "later_window_skipped" not in entry
        assert "stage_seconds" in r and r["stage_seconds"]["non-matmul"] > 0
    else:
        assert not later and "windows" not in entry
        assert entry["later_window_skipped"].endswith("the window needs about 1000000.00 s")


def test_the_ggml_block_is_timed_again_and_the_fastest_kept(small, tmp_path, monkeypatch):
    """Analysis._time_block_again (plumbing, a fake ggml timing): each call times the ggml block graph once more
    while the budget has what its first timing took, up to BLOCK_WINDOWS timings in all, every one recorded in
    ``windows`` and the fastest kept (seconds a block and a token, its timing); a slower one changes nothing; a
    failed check (None) is recorded and not kept; without the budget the entry says why and stays as it was. Other
    series' entries are left alone."""
    from rwkvprobe.measure import analyze, ggml_block
    from rwkvprobe.model.profile import layer_list, load_profile
    from rwkvprobe.progress import Silent
    from rwkvprobe.report.markdown import stability_line

    draws = iter([90e-6, None, 80e-6])

    def fake(profile, threads, budget, llc, cold):
        x = next(draws)
        return {"backend": "ggml", "dtype": "fp32", "engine": "ggml", "seconds_per_block": x,
                "seconds_per_token": None if x is None else 2 * x, "timing": {"median_seconds": x}}
    monkeypatch.setattr(ggml_block, "measure_series", fake)
    settings = analyze.AnalyzeSettings(backends=["numpy"], dtypes=None, tokens=[1], threads=1, cpus=None,
                                       budget_seconds=100.0)
    a = analyze.Analysis(layer_list(load_profile(small)), settings, tmp_path / "run")
    entry = {"backend": "ggml", "dtype": "fp32", "engine": "ggml", "seconds_per_block": 130e-6,
             "seconds_per_token": 260e-6, "timing": {"median_seconds": 130e-6}, "elapsed_seconds": 0.4}
    torch_entry = {"backend": "torch", "dtype": "fp32", "seconds_per_block": 1e-3, "seconds_per_token": 2e-3}
    a.results = {"nonmatmul": [entry, torch_entry]}
    monkeypatch.setattr(a, "save", lambda: None)
    now = time.perf_counter()
    a._time_block_again(None, now, Silent())
    assert entry["windows"] == [130e-6, 90e-6] and entry["seconds_per_block"] == 90e-6
    assert entry["seconds_per_token"] == 180e-6 and entry["timing"] == {"median_seconds": 90e-6}
    a._time_block_again(None, now, Silent())  # its check failed: recorded, not kept
    assert entry["windows"] == [130e-6, 90e-6, None] and entry["seconds_per_block"] == 90e-6
    a._time_block_again(None, now, Silent())  # BLOCK_WINDOWS reached: the 80 µs draw is never taken
    assert len(entry["windows"]) == analyze.BLOCK_WINDOWS == 3 and entry["seconds_per_block"] == 90e-6
    assert "windows" not in torch_entry
    assert stability_line(a.results).endswith("the ggml block graph was timed 3 times, before and among or after the "
                                              "layer points: 130, 90, not timed (its check failed) µs a block (the "
                                              "fastest kept).")
    # no room: the budget less the headline reserve is below the block's first timing
    entry2 = {"backend": "ggml", "dtype": "fp32", "engine": "ggml", "seconds_per_block": 130e-6,
              "seconds_per_token": 260e-6, "elapsed_seconds": 1e6}
    a.results = {"nonmatmul": [entry2]}
    a._time_block_again(None, now, Silent())
    assert "windows" not in entry2 and entry2["seconds_per_block"] == 130e-6
    assert entry2["later_window_skipped"].endswith("the block needs about 1000000.00 s")


@pytest.mark.parametrize("fp16_peak", [1e-3, 1e9])
def test_quick_leaves_out_a_dtype_far_slower_than_fp32(cli, small, tmp_path, monkeypatch, fp16_peak):
    """--quick with the default dtypes: a series whose measured peak is below 1/QUICK_SLOW_DTYPE_FACTOR of its
    backend's fp32 peak (torch fp16 on an x86 CPU without fp16 arithmetic) is left out after its ceilings: no
    non-matmul block, no points, no series in the verdict; its ceiling is kept, marked, and the report's skipped
    list says why. A series as fast as fp32 is measured."""
    pytest.importorskip("torch")
    from rwkvprobe.measure import analyze

    real = analyze.measure_ceilings

    def faked(backend, dtype, *args, **kwargs):
        c = real(backend, dtype, *args, **kwargs)
        if dtype == "fp16":
            c["peak_gflops"] = fp16_peak
        return c

    monkeypatch.setattr(analyze, "measure_ceilings", faked)
    out = tmp_path / "run"
    code, _, stderr = cli("analyze", small, "--out", out, "--backends", "torch", "--quick", "--budget", "20")
    assert code == 0, stderr
    r = json.loads((out / "results.json").read_text())
    (c16,) = [c for c in r["ceilings"] if c["dtype"] == "fp16"]
    fp16_points = [p for p in r["measurements"] if p["dtype"] == "fp16"]
    fp16_blocks = [x for x in r.get("nonmatmul") or [] if x.get("dtype") == "fp16"]
    series = {(s["backend"], s["dtype"]) for s in verdict_of(r)[1]["series"]}
    report = (out / "report.md").read_text()
    if fp16_peak > 1:
        assert not c16.get("left_out") and fp16_points and ("torch", "fp16") in series
        assert "left out of --quick" not in report
    else:
        assert c16["left_out"].startswith("left out of --quick: its measured peak, 0.001 GFLOP/s, is 1/")
        assert not fp16_points and not fp16_blocks and series == {("torch", "fp32")}
        assert any(x["dtype"] == "fp16" and x["reason"] == c16["left_out"] for x in r["skipped"])
        assert f"- torch fp16: {c16['left_out']}" in report
        # resumed as a full run (same tokens): the series is no longer left out
        code, _, stderr = cli("analyze", small, "--resume", out, "--backends", "torch", "--tokens", "1",
                              "--budget", "20")
        assert code == 0, stderr
        r = json.loads((out / "results.json").read_text())
        (c16,) = [c for c in r["ceilings"] if c["dtype"] == "fp16"]
        assert "left_out" not in c16 and not any("left out of --quick" in x["reason"] for x in r["skipped"])
        assert ("torch", "fp16") in {(s["backend"], s["dtype"]) for s in verdict_of(r)[1]["series"]}


def test_the_cached_base_weight_is_freed_before_the_points_that_load_theirs_from_a_file(cli, small, tmp_path,
                                                                                          monkeypatch):
    """onnxruntime loads a float point's weight from its model file: in each shape analyze times it after the series
    that read the seeded base weight (numpy here, though named second), and frees the cached base weight before it
    (a 1.5B's fp32 head: 0.5 GB beside the 1 GB its session held while loading, a run's peak of memory). The
    onnxruntime points are still checked against float64 and pass."""
    from rwkvprobe.backends import base_weight
    from rwkvprobe.measure import analyze, contention

    monkeypatch.setattr(contention, "canary", lambda: 1e-4)  # never slow: no point put off, the plan's order kept
    real, calls = analyze.measure_point, []

    def recorded(backend, w, *args, **kwargs):
        p = real(backend, w, *args, **kwargs)
        calls.append((backend.name, w.dtype, w.m, w.k, w.n, int(base_weight.holds(w.k, w.n))))
        return p

    monkeypatch.setattr(analyze, "measure_point", recorded)
    out = tmp_path / "run"
    code, _, stderr = cli("analyze", small, "--out", out, "--backends", "onnxruntime,numpy", "--dtypes", "fp32",
                          "--quick", "--budget", "30")
    assert code == 0, stderr
    firsts = []  # each (backend, shape)'s first window, in the order timed
    for b, _d, m, k, n, cached in calls:
        assert cached == (0 if b == "onnxruntime" else 1), (b, k, n)
        if (b, m, k, n) not in [x[:4] for x in firsts]:
            firsts.append((b, m, k, n))
    shapes = {(m, k, n) for _, m, k, n in firsts}
    assert len(shapes) == 4 and len(firsts) == 8
    for shape in shapes:
        assert [x[0] for x in firsts if x[1:] == shape] == ["numpy", "onnxruntime"], shape
    r = json.loads((out / "results.json").read_text())
    assert all(p["check"]["ok"] for p in r["measurements"] if p["backend"] == "onnxruntime")


def test_the_points_that_read_a_costly_kept_base_weight_are_timed_before_it_is_freed(monkeypatch):
    """_next_point takes the queue's first point, unless that would free or replace a base weight kept now that cost
    REGENERATE_SECONDS or more to generate while a point that reads it waits further on: then that point. A weight
    cheap to generate again, or none kept, leaves the queue's order as it is."""
    import collections

    from rwkvprobe.backends import base_weight
    from rwkvprobe.measure import analyze

    points = [(1, 64, 32, "numpy", "fp32"), (1, 64, 32, "onnxruntime", "fp32"), (1, 32, 64, "numpy", "fp32"),
              (4, 64, 32, "torch", "fp32"), (1, 64, 32, "ggml", "q4_0")]

    def order(queue):
        q, out = collections.deque(queue), []
        while q:
            out.append(analyze._next_point(q, points))
        return out

    base_weight.cache_clear()
    base_weight(64, 32)
    monkeypatch.setattr(analyze, "REGENERATE_SECONDS", 0.0)
    # onnxruntime would free it (its weight comes from its model file), numpy 32x64 replace it: torch M=4 and the
    # ggml q4_0 (whose quantization reads it) first
    assert order([1, 2, 3, 4]) == [3, 4, 1, 2]
    assert order([0, 1, 2]) == [0, 1, 2]  # the first reads it: nothing to pull
    monkeypatch.setattr(analyze, "REGENERATE_SECONDS", base_weight.seconds(64, 32) + 1.0)  # cheap to generate again
    assert order([1, 2, 3, 4]) == [1, 2, 3, 4]
    base_weight.cache_clear()
    monkeypatch.setattr(analyze, "REGENERATE_SECONDS", 0.0)
    assert order([1, 2, 3, 4]) == [1, 2, 3, 4]  # nothing kept


def test_a_point_put_off_while_its_base_weight_is_kept_is_timed_before_it_is_freed(cli, small, tmp_path, monkeypatch):
    """The machine slow once, as the second point of the first shape comes up (torch M=1): it is timed after the
    last point of its shape that reads the same weight (torch M=4), not after every other shape, where its weight
    would be generated again (a 1.5B's fp32 head: 3.5 s on this project's VM). Each shape's weight generated once
    (second windows and rechecks left out here: they come after the first windows)."""
    from rwkvprobe.backends import base_weight, onnxgen
    from rwkvprobe.measure import analyze, contention

    monkeypatch.setattr(contention, "canary", lambda: 1e-4)  # never slow but where slow_now says so
    monkeypatch.setattr(analyze, "REGENERATE_SECONDS", 0.0)  # every weight counts as costly to generate again
    monkeypatch.setattr(analyze, "SECOND_WINDOWS", False)
    for name in ("_recheck_all_slow", "_recheck_near_line", "_recheck_heavy", "_recheck_series_heavy"):
        monkeypatch.setattr(analyze.Analysis, name, lambda *args, **kwargs: None)
    monkeypatch.setattr(analyze.Analysis, "_remeasure", lambda self, point, *args, **kwargs: point)
    asked: list = []
    monkeypatch.setattr(contention, "slow_now", lambda best: (asked.append(best), 2.0 if len(asked) == 2 else None)[1])
    real_point, real_weight, calls = analyze.measure_point, onnxgen.weight_matrix, []

    def recorded(backend, w, *args, **kwargs):
        calls.append(("point", backend.name, w.m, w.k, w.n))
        return real_point(backend, w, *args, **kwargs)

    def generated(k, n, dtype="fp32"):
        calls.append(("weight", k, n))
        return real_weight(k, n, dtype)

    monkeypatch.setattr(analyze, "measure_point", recorded)
    monkeypatch.setattr("rwkvprobe.backends.weight_matrix", generated)
    base_weight.cache_clear()
    out = tmp_path / "run"
    code, _, stderr = cli("analyze", small, "--out", out, "--backends", "numpy,torch", "--dtypes", "fp32",
                          "--tokens", "1,4", "--quick", "--budget", "30")
    assert code == 0, stderr
    layers = calls[next(i for i, c in enumerate(calls) if c[0] == "point"):]  # after the ceilings' own shapes
    points = [c[1:] for c in layers if c[0] == "point"]
    assert points[:4] == [("numpy", 1, 256, 512), ("numpy", 4, 256, 512), ("torch", 4, 256, 512),
                          ("torch", 1, 256, 512)], points
    assert len(points) == len(set(points)) == 16  # 4 shapes at M=1 and 4, two backends
    weights = [c[1:] for c in layers if c[0] == "weight"]
    assert sorted(weights) == sorted({(k, n) for _, _, k, n in points}), weights  # each shape's weight once
    r = json.loads((out / "results.json").read_text())
    (p,) = [p for p in r["measurements"] if (p["backend"], p["m"], p["k"], p["n"]) == ("torch", 1, 256, 512)]
    assert p["put_off"] == {"canary_ratio": 2.0}


def test_a_rechecks_cost_counts_generating_its_base_weight_again_where_another_is_kept(monkeypatch):
    """_budget_has: a point with 0.3 s of prepare and timing on record, whose 64x32 base weight cost 3 s to generate,
    fits 1 s of budget while its weight is kept, and not while another shape's is (generated again: 3.3 s); the point
    that generated it has those 3 s in its prepare, counted once either way."""
    from types import SimpleNamespace

    from rwkvprobe.backends import base_weight
    from rwkvprobe.measure import analyze

    monkeypatch.setattr(base_weight, "seconds", lambda k, n: 3.0 if (k, n) == (64, 32) else 0.0)
    run = analyze.Analysis.__new__(analyze.Analysis)
    run.settings = SimpleNamespace(budget_seconds=10.0)
    t_start = time.perf_counter() - (10.0 - analyze.FINISH_RESERVE_SECONDS - 1.0)  # 1 s left
    later = {"backend": "numpy", "dtype": "fp32", "m": 1, "k": 64, "n": 32,
             "overhead_seconds": {"prepare": 0.2, "check": 0.5, "timing": 0.1}}
    first = {**later, "overhead_seconds": {"prepare": 3.2, "check": 0.5, "timing": 0.1, "base_weight": 3.0}}
    onnx = {**later, "backend": "onnxruntime"}  # loads its weight from its model file
    base_weight.cache_clear()
    base_weight(64, 32)
    assert run._budget_has(later, t_start) and run._budget_has(first, t_start)
    base_weight(32, 64)
    assert not run._budget_has(later, t_start) and not run._budget_has(first, t_start)
    assert run._budget_has(onnx, t_start)
    base_weight.cache_clear()


def test_the_budget_counts_from_the_commands_start_where_it_is_known(cli, small, tmp_path, monkeypatch):
    """Where rwkvprobe is the process's entry point (process.COMMAND_START), --budget counts from the command's start:
    a command that began 1000 s before its run has no budget left for the heavy points' second windows, and the
    results say how long the command ran before the run. Run inside another program (COMMAND_START None), the budget
    counts from the run's start."""
    from rwkvprobe import process

    outs = {}
    for started in (None, time.perf_counter() - 1000.0):
        monkeypatch.setattr(process, "COMMAND_START", started)
        out = tmp_path / f"run-{started is None}"
        code, _, stderr = cli("analyze", small, "--out", out, "--backends", "numpy", "--quick", "--budget", "14")
        assert code == 0, stderr
        outs[started is None] = json.loads((out / "results.json").read_text())
    late, normal = outs[False], outs[True]
    assert late["before_run_seconds"] >= 1000.0 and "before_run_seconds" not in normal
    assert any(p.get("second_window") for p in normal["measurements"])
    assert not any(p.get("second_window") for p in late["measurements"])
    assert late["measurements"] and all(p["check"]["ok"] for p in late["measurements"])  # every point still timed


def test_process_start_is_this_processs_start_with_its_imports():
    """process.process_start() in a fresh process: before its imports, after the parent started it."""
    code = ("import time; import numpy, rich\n"
            "from rwkvprobe.process import process_start\n"
            "t = process_start(); print(time.perf_counter() - t)")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    wall = time.perf_counter() - t0
    ago = float(done.stdout)
    assert 0.0 < ago <= wall + 0.02  # /proc counts in 10 ms steps


def test_a_command_run_as_the_process_freezes_what_it_made_and_one_run_inside_a_program_does_not(cli):
    """rwkvprobe as the process's entry point (the console script) takes what its imports and its command made out of
    the garbage collector's way (process.settle: gc.freeze, so that the exit's collection and the plots' do not walk
    torch's objects); called inside another program (these tests), the program's objects are left as they were."""
    code = ("import atexit, gc, sys\n"
            "atexit.register(lambda: print('frozen', gc.get_freeze_count()))\n"
            "from rwkvprobe.cli.app import main\n"
            "sys.argv = ['rwkvprobe', 'profile', 'list']\n"
            "main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Shipped profiles" in done.stdout and int(done.stdout.rsplit("frozen", 1)[1]) > 10_000
    before = gc.get_freeze_count()
    code, out, stderr = cli("profile", "list")
    assert code == 0 and "Shipped profiles" in out, stderr
    assert gc.get_freeze_count() == before


def test_analyze_settles_once_its_backends_are_made_and_before_it_measures(cli, small, tmp_path, monkeypatch):
    """The run's process.settle comes after the backends are made (their modules imported: torch's, onnx's) and
    before the first measurement, so that what the measuring makes stays collectable."""
    from rwkvprobe import process

    out, seen = tmp_path / "run", []
    monkeypatch.setattr(process, "settle", lambda: seen.append(json.loads((out / "results.json").read_text())))
    code, _, stderr = cli("analyze", small, "--out", out, *FAST)
    assert code == 0, stderr
    assert len(seen) == 2  # the run's, then the command's at its end
    assert "numpy" in seen[0]["backends"] and seen[0]["bandwidth"] is None and not seen[0]["measurements"]
    assert seen[1]["measurements"]


def test_the_checks_keep_references_of_one_shape_at_a_time_among_the_layer_points(cli, small, tmp_path, monkeypatch):
    """The float64 references kept for the checks (backends.References) are of the shape being timed only: the
    layer points go shape by shape, and a 1.5B's prefill shapes keep 64 MB copies of their weights. The ceilings,
    backend by backend over the same shapes, keep several and reuse them. (A CI run put torch's M = 8 point off past
    the next shape: whether the points reuse one depends on the machine.)"""
    from rwkvprobe.backends import References
    from rwkvprobe.measure import analyze

    seen = {"points": [], "ceilings": []}
    stage = ["ceilings"]
    real_call, real_points = References.__call__, analyze.Analysis._measure_points

    def call(self, workload, a_cast, w_cast):
        before = self.computed
        out = real_call(self, workload, a_cast, w_cast)
        seen[stage[0]].append(({w.shape for _, w, _ in self._kept}, self.computed > before))
        return out

    def points(self, *args, **kwargs):
        stage[0] = "points"
        try:
            return real_points(self, *args, **kwargs)
        finally:
            stage[0] = "after"
    monkeypatch.setattr(References, "__call__", call)
    monkeypatch.setattr(analyze.Analysis, "_measure_points", points)
    seen["after"] = []
    code, _, stderr = cli("analyze", small, "--out", tmp_path / "run", "--backends", "numpy,torch", "--quick",
                          "--budget", "8", "--tokens", "1,8")
    assert code == 0, stderr
    kept_in_points = [shapes for shapes, _ in seen["points"] if shapes]
    assert kept_in_points and all(len(shapes) == 1 for shapes in kept_in_points)
    # the ceilings (numpy's shapes, then torch's, in that order whatever the machine does; among the points a point
    # put off while the machine runs slow comes after another shape): several kept, one backend's reused by the other
    assert max(len(shapes) for shapes, _ in seen["ceilings"]) > 1
    assert any(not computed for _, computed in seen["ceilings"])
