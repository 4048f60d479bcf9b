"""The machine's bandwidth history (measure/history.py): kept between runs, taken up by the verdict, never
stopping a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from roofline_fixtures import make_results, series_of, work
from test_ceilings import LAYERS, _check_invariant, _with_probes

from rwkvprobe.measure import history
from rwkvprobe.measure.bandwidth import best_read_gbps, read_probes, sustained_read_gbps
from rwkvprobe.report.markdown import stability_line
from rwkvprobe.verdict.roofline import build_verdict, main_bound

KEY = {"host": "board", "cpu": "Cortex-A76", "logical_cpus": 8, "memory_gib": 16, "arch": "aarch64"}
NOW = 1_800_000_000.0
DAY = 86400.0


def _probes(*gbps: float, at: float = NOW - 60) -> list[dict]:
    return [{"at": at + i, "read_best_gbps": g, "array_bytes": 2**27} for i, g in enumerate(gbps)]


def test_a_run_takes_up_the_same_machines_earlier_probes_only(tmp_path):
    path = tmp_path / "h.json"
    assert history.record(_probes(70.0, 72.0), 2, None, "numba", "rwkvprobe analyze x", now=NOW, path=path, key=KEY)
    assert history.record(_probes(40.0, at=NOW - 30), 1, None, "numba", now=NOW, path=path, key=KEY)  # 1 thread
    assert history.record(_probes(50.0, at=NOW - 20), 2, [4, 5], "numba", now=NOW, path=path, key=KEY)  # pinned
    assert history.record(_probes(90.0, at=NOW - 10), 2, None, "numba", now=NOW, path=path,
                          key=dict(KEY, host="another"))
    assert history.record(_probes(95.0, at=NOW - 5), 2, None, "numpy-threads", now=NOW, path=path, key=KEY)
    got = history.earlier_probes(2, None, "numba", now=NOW, path=path, key=KEY)
    assert got is not None and got["path"] == str(path) and got["machine"] == KEY
    assert [p["read_best_gbps"] for p in got["probes"]] == [70.0, 72.0]
    assert got["probes"][0]["command"] == "rwkvprobe analyze x"
    assert [p["read_best_gbps"] for p in history.earlier_probes(2, [4, 5], "numba", now=NOW, path=path,
                                                                key=KEY)["probes"]] == [50.0]
    assert [p["read_best_gbps"] for p in history.earlier_probes(1, None, "numba", now=NOW, path=path,
                                                                key=KEY)["probes"]] == [40.0]


def test_old_probes_are_neither_taken_up_nor_kept(tmp_path):
    path = tmp_path / "h.json"
    old = NOW - (history.MAX_AGE_DAYS + 1) * DAY
    history.record(_probes(99.0, at=old) + _probes(60.0), 2, None, "numba", now=NOW, path=path, key=KEY)
    got = history.earlier_probes(2, None, "numba", now=NOW, path=path, key=KEY)
    assert [p["read_best_gbps"] for p in got["probes"]] == [60.0]
    history.record(_probes(61.0, at=NOW), 2, None, "numba", now=NOW, path=path, key=KEY)
    assert 99.0 not in [p["read_best_gbps"] for p in json.loads(path.read_text())["probes"]]


def test_the_newest_probes_are_kept_and_a_resumed_run_adds_its_first_probes_once(tmp_path, monkeypatch):
    path = tmp_path / "h.json"
    monkeypatch.setattr(history, "MAX_PROBES", 5)
    first = _probes(1.0, 2.0, 3.0, at=NOW - 100)
    history.record(first, 2, None, "numba", now=NOW, path=path, key=KEY)
    history.record(first + _probes(4.0, 5.0, 6.0, at=NOW - 50), 2, None, "numba", now=NOW, path=path, key=KEY)
    kept = [p["read_best_gbps"] for p in json.loads(path.read_text())["probes"]]
    assert kept == [2.0, 3.0, 4.0, 5.0, 6.0]


def test_the_cap_keeps_each_setups_best_probe(tmp_path, monkeypatch):
    """The ceiling a run judges at is the best probe of its setup: a cap keeping only the newest dropped it (92.8 GB/s
    became 74.1 here within a day). Each setup's best stays; the rest is the newest."""
    path = tmp_path / "h.json"
    monkeypatch.setattr(history, "MAX_PROBES", 3)
    history.record(_probes(9.0, 1.0, at=NOW - 300), 2, None, "numba", now=NOW, path=path, key=KEY)
    history.record(_probes(8.0, at=NOW - 250), 1, None, "numba", now=NOW, path=path, key=KEY)  # another setup
    history.record(_probes(2.0, 3.0, 4.0, at=NOW - 100), 2, None, "numba", now=NOW, path=path, key=KEY)
    kept = [(p["read_best_gbps"], p["threads"]) for p in json.loads(path.read_text())["probes"]]
    assert kept == [(9.0, 2), (8.0, 1), (2.0, 2), (3.0, 2), (4.0, 2)]
    assert max(p["read_best_gbps"] for p in history.earlier_probes(2, None, "numba", now=NOW, path=path,
                                                                   key=KEY)["probes"]) == 9.0
    # past MAX_AGE_DAYS the best goes too
    later = NOW + history.MAX_AGE_DAYS * 86400 - 200
    history.record(_probes(5.0, at=later - 1), 2, None, "numba", now=later, path=path, key=KEY)
    assert [p["read_best_gbps"] for p in json.loads(path.read_text())["probes"]] == [3.0, 4.0, 5.0]


@pytest.mark.parametrize("text", ["not json {", "[]", '{"format": 99, "probes": []}', '{"format": 1, "probes": 3}',
                                  '{"format": 1, "probes": [{"at": "x", "read_best_gbps": 5}, 7, '
                                  '{"at": 1, "read_best_gbps": -2}]}'])
def test_a_malformed_history_counts_as_empty_and_is_written_over(tmp_path, text):
    path = tmp_path / "h.json"
    path.write_text(text)
    assert history.earlier_probes(2, None, "numba", now=NOW, path=path, key=KEY)["probes"] == []
    assert history.record(_probes(30.0), 2, None, "numba", now=NOW, path=path, key=KEY)
    assert [p["read_best_gbps"] for p in history.earlier_probes(2, None, "numba", now=NOW, path=path,
                                                                key=KEY)["probes"]] == [30.0]


def test_a_history_that_cannot_be_written_never_stops_a_run(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert history.record(_probes(30.0), 2, None, "numba", now=NOW, path=blocker / "h.json", key=KEY) is False
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        assert history.record(_probes(30.0), 2, None, "numba", now=NOW, path=ro / "h.json", key=KEY) is False


def test_the_environment_names_the_file_or_turns_it_off(tmp_path, monkeypatch):
    monkeypatch.setenv(history.HISTORY_ENV, "off")
    assert history.history_path() is None
    assert history.earlier_probes(2, None, "numba") is None
    assert history.record(_probes(30.0), 2, None, "numba") is False
    monkeypatch.setenv(history.HISTORY_ENV, str(tmp_path / "mine.json"))
    assert history.history_path() == tmp_path / "mine.json"
    monkeypatch.delenv(history.HISTORY_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert history.history_path() == tmp_path / "cache" / "rwkvprobe" / "bandwidth-history.json"


def test_the_machine_key_names_this_machine():
    key = history.machine_key()
    assert key["logical_cpus"] == os.cpu_count() and key["arch"] and key["memory_gib"] >= 1


# ------------------------------------------------------------------------------------------------
# The verdict: a run in a slow memory phase judged like one in a fast phase


def _gemv_at(gbps: float):
    def t(m, k, n):
        return work(m, k, n, "fp32")[1] / (gbps * 1e9)
    return t


def _run(probes: list[float], earlier: list[float] | None = None) -> dict:
    """Layers reading 34 GB/s whatever the memory gave (the dev VM: the same speeds in both phases)."""
    r = _with_probes(make_results(LAYERS, bw_gbps=probes[0], peak_gflops=1e4, overhead=0.0, time_of=_gemv_at(34.0)),
                     probes)
    if earlier is not None:
        r["bandwidth_history"] = {"path": "h.json", "max_age_days": history.MAX_AGE_DAYS, "machine": KEY,
                                  "probes": _probes(*earlier)}
    return r


#: a machine's last days of read probes (GB/s): mostly 31-44, some minutes at 68-73 (a phase), a burst of 62.5 once
MACHINE = [31.0, 33.5, 34.0, 34.6, 35.0, 36.1, 36.8, 38.0, 39.0, 41.0, 44.0, 44.4, 33.0, 35.5, 37.2, 40.5, 69.3, 70.8,
           72.9, 68.9, 62.5]


def _bound(r: dict) -> str | None:
    return main_bound(series_of(build_verdict(r, LAYERS))["model"]["decode"]["share_by_bound"])


def test_a_run_in_either_memory_phase_is_judged_at_what_the_machine_gives_most_of_the_time():
    """The dev VM: one run's probes read 68-73 GB/s, the next run's 36-44, the layers 34 GB/s in both. Each judged
    at its own probes, the first was mixed (half kernel-limited) and the second bandwidth-bound. With the machine's
    earlier probes taken up, both are judged at the middle of all of them (what the machine gives most of the time),
    whichever phase the run fell in: the same verdict, the same shares, and W still the best probe of all."""
    fast = [69.3, 69.6, 70.8, 72.9, 68.9, 67.9]
    slow = [44.4, 44.1, 44.4, 36.8, 35.9, 36.1]
    alone = [_bound(_run(p)) for p in (fast, slow)]
    assert alone[0] != alone[1]  # the flip the history is for
    runs = [_run(p, earlier=MACHINE) for p in (fast, slow)]
    verdicts = [build_verdict(r, LAYERS) for r in runs]
    for r, v, own in zip(runs, verdicts, (fast, slow)):
        _check_invariant(v)
        assert v["bandwidth_gbps"] == best_read_gbps(r) == pytest.approx(72.9)
        assert v["earlier_probe_count"] == len(MACHINE)
        assert len(read_probes(r, history=False)) == len(own)
        everything = sorted(MACHINE + own)
        assert sustained_read_gbps(r) == pytest.approx(everything[(len(everything) - 1) // 2])
        assert 36.0 < sustained_read_gbps(r) < 45.0  # neither run's own phase
    shares = [series_of(v)["model"]["decode"]["share_by_bound"] for v in verdicts]
    assert main_bound(shares[0]) == main_bound(shares[1]) == "bandwidth-bound"
    assert shares[1] == pytest.approx(shares[0], abs=0.05)


def test_the_run_after_the_first_gets_the_first_runs_verdict():
    """A fresh machine's first quick run of rwkv-1b5 (dev VM): six probes 29.7-67.8 GB/s (one burst), onnxruntime
    fp32 reading 31.5 GB/s: bandwidth-bound at 80% of the middle probe, 39.3. The run after it, with those probes
    as its history, was judged at their best, 67.8 (a burst): its float series turned kernel-limited (here: 46% of
    it). Judged at the middle of both runs' probes it says what the first said."""
    def at(gbps):
        return make_results(LAYERS, bw_gbps=gbps, peak_gflops=1e4, overhead=0.0, time_of=_gemv_at(31.5))
    first_probes = [29.7, 35.3, 39.3, 44.8, 49.5, 67.8]
    first = _with_probes(at(29.7), first_probes)
    assert sustained_read_gbps(first) == pytest.approx(39.3) and _bound(first) == "bandwidth-bound"
    second = _with_probes(at(33.0), [33.0, 36.2, 30.4, 41.0, 38.8, 34.9])
    second["bandwidth_history"] = {"path": "h.json", "max_age_days": history.MAX_AGE_DAYS, "machine": KEY,
                                   "probes": _probes(*first_probes)}
    v = build_verdict(second, LAYERS)
    _check_invariant(v)
    assert v["bandwidth_gbps"] == pytest.approx(67.8)  # still the ceiling nothing may pass without a warning
    assert sustained_read_gbps(second) == pytest.approx(36.2) and _bound(second) == "bandwidth-bound"
    head = next(x for x in series_of(v)["rows"] if x["layer"] == "head" and x["m"] == 1)
    assert head["roofline_fraction"] == pytest.approx(31.5 / 36.2, rel=0.02)


def _stability(*paths) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "verdict_stability.py"), *map(str, paths)],
                          capture_output=True, text=True, timeout=120)


def test_the_verdict_stability_bench_counts_each_series_verdict_over_stored_runs(tmp_path):
    """bench/verdict_stability.py rebuilds each stored run's verdict from its file and counts them: the two phases'
    runs judged alone split (one verdict each: agree 50%); judged with the machine's history they agree."""
    fast = [69.3, 69.6, 70.8, 72.9, 68.9, 67.9]
    slow = [44.4, 44.1, 44.4, 36.8, 35.9, 36.1]
    for name, earlier in (("alone", None), ("history", MACHINE)):
        for i, probes in enumerate((fast, slow)):
            (tmp_path / name / str(i)).mkdir(parents=True)
            (tmp_path / name / str(i) / "results.json").write_text(json.dumps(_run(probes, earlier=earlier)))
    bounds = [_bound(_run(p)) or "mixed" for p in (fast, slow)]
    alone = _stability(tmp_path / "alone")
    assert alone.returncode == 0, alone.stderr
    profile = LAYERS.profile.name
    assert f"{profile}: 2 run(s)" in alone.stdout
    series = next(line for line in alone.stdout.splitlines() if line.strip().startswith("numpy fp32"))
    assert all(f"{b} 1" in series for b in bounds) and "(agree 50%)" in series
    both = _stability(tmp_path / "history" / "*")
    series = next(line for line in both.stdout.splitlines() if line.strip().startswith("numpy fp32"))
    assert "bandwidth-bound 2 (agree 100%)" in series and "headline lead over the next bound" in both.stdout
    empty = _stability(tmp_path / "nothing-here")
    assert empty.returncode == 2 and "no results.json with measured layers found" in empty.stderr


def test_the_stability_line_says_the_memory_was_slower_than_the_machines_earlier_runs():
    line = stability_line(_run([44.4, 36.8, 35.9], earlier=[72.9, 70.0]))
    assert "this run's 3 bandwidth probe(s) read 35.9-44.4 GB/s, and 2 probe(s) of this machine's earlier runs" in line
    assert "the DRAM ceiling is the best of all, 72.9 GB/s, and the layers are judged at the middle of all, 44.4 " \
           "GB/s, what the machine gives most of the time" in line
    assert "memory read slower during this run than usual on this machine** (its middle probe 36.8 GB/s, 53% of " \
           "the earlier runs' middle, 70.0)" in line
    assert "RWKVPROBE_BANDWIDTH_HISTORY=off" in line
    steady = stability_line(_run([70.0, 71.0, 69.0], earlier=[72.0]))
    assert "slower during this run" not in steady
    assert "the DRAM ceiling is the best of all, 72.0 GB/s, at which every layer is judged" in steady  # no bursts
    # a run that saw no burst, on a machine that had one: its best probe 61% of the machine's best, its middle as
    # usual (judged against the best, half of the dev VM's 180 stored runs with a history said "slower")
    usual = stability_line(_run([35.0, 38.0, 36.0], earlier=[34.0, 35.0, 36.0, 62.5]))
    assert "slower during this run" not in usual and "judged at the middle of all, 36.0 GB/s" in usual


def test_a_run_without_history_reads_as_before():
    r = _run([35.0, 36.0, 34.0])
    assert "earlier runs" not in stability_line(r)
    assert build_verdict(r, LAYERS)["earlier_probe_count"] == 0


def _cpu() -> int:
    from rwkvprobe.measure.bandwidth import usable_cpus

    return usable_cpus()[0]  # pinned: the run is one analyze --cpus N would make on any CPU layout


def _bandwidth_json(cli, *extra) -> dict:
    code, stdout, stderr = cli("bandwidth", "--size", "64K", "--threads", "1", "--trials", "2", "--cpus", _cpu(),
                               "--json", *extra)
    assert code == 0, stderr
    return json.loads(stdout)


def test_the_bandwidth_command_reads_against_the_history_and_records_its_read(cli, tmp_path, monkeypatch):
    """`rwkvprobe bandwidth` puts its read figure beside the machine's earlier probes of the same setup (analyze's
    and its own), says when memory read slower now, and records the figure for the runs to come."""
    from rwkvprobe.measure import bandwidth as bw

    path = tmp_path / "history.json"
    monkeypatch.setenv(history.HISTORY_ENV, str(path))
    monkeypatch.setattr(bw, "default_array_bytes", lambda llc: 64 * 1024)  # 64K counts as the default size here
    engine = bw.engine_name()
    # three earlier probes no memory reads at: the middle of the five earlier ones the third run sees is one of them
    assert history.record(_probes(1e6, 1e6, 1e6, at=time.time() - 60), 1, [_cpu()], engine, "rwkvprobe analyze x",
                          path=path)
    first = _bandwidth_json(cli)["bandwidth_history"]
    assert [(h["threads"], h["earlier_probes"], h["earlier_max_gbps"], h["earlier_middle_gbps"], h["recorded"])
            for h in first] == [(1, 3, 1e6, 1e6, True)]
    stored = json.loads(path.read_text())["probes"]
    assert len(stored) == 4 and stored[-1]["read_best_gbps"] == first[0]["read_best_gbps"]
    assert stored[-1]["command"].startswith("rwkvprobe") and stored[-1]["threads"] == 1 and stored[-1]["cpus"] == [_cpu()]
    assert _bandwidth_json(cli)["bandwidth_history"][0]["earlier_probes"] == 4  # the first run's figure counts now

    code, stdout, stderr = cli("bandwidth", "--size", "64K", "--threads", "1", "--trials", "2", "--cpus", _cpu())
    assert code == 0, stderr
    line = next(x for x in stdout.splitlines() if x.startswith("read, 1 thread(s)"))
    assert "5 earlier probe(s)" in line and "middle 1000000.0, this run 0% of it" in line
    assert "memory read slower now than usual" in line


def test_the_bandwidth_command_leaves_the_history_alone_when_off_or_not_comparable(cli, tmp_path, monkeypatch):
    from rwkvprobe.measure import bandwidth as bw

    path = tmp_path / "history.json"
    monkeypatch.setenv(history.HISTORY_ENV, str(path))
    # arrays smaller than the default may sit in a cache: their figure is no DRAM ceiling, so nothing is recorded
    assert _bandwidth_json(cli)["bandwidth_history"] == [] and not path.exists()
    monkeypatch.setattr(bw, "default_array_bytes", lambda llc: 64 * 1024)
    results = _bandwidth_json(cli, "--no-history")
    assert "bandwidth_history" not in results and not path.exists()
    monkeypatch.setenv(history.HISTORY_ENV, "off")
    assert _bandwidth_json(cli)["bandwidth_history"] == []


# ------------------------------------------------------------------------------------------------
# The machine's speed (the canary) against its earlier runs


def _canary(best: float, median: float, at: float = NOW - 60) -> dict:
    return {"at": at, "best_seconds": best, "median_seconds": median}


def test_a_runs_canary_is_kept_beside_the_probes_and_read_by_the_same_setup_only(tmp_path):
    """history.record keeps a run's canary (its best and median) in the same file as the probes, neither list
    dropping the other; earlier_canaries reads the same machine, threads and CPUs only, fresh ones only, and a
    resumed run's canary (the same first-point time) once."""
    path = tmp_path / "h.json"
    old = NOW - (history.MAX_AGE_DAYS + 1) * DAY
    assert history.record([], 2, None, "numba", now=old, path=path, key=KEY, canary=_canary(10e-6, 11e-6, old))
    assert history.record(_probes(70.0), 2, None, "numba", "rwkvprobe analyze x", now=NOW, path=path, key=KEY,
                          canary=_canary(83e-6, 85e-6))
    assert history.record([], 2, None, "numba", now=NOW, path=path, key=KEY, canary=_canary(83e-6, 85e-6))  # resumed
    assert history.record([], 2, None, "numba", now=NOW, path=path, key=KEY, canary=_canary(130e-6, 146e-6, NOW - 30))
    assert history.record([], 1, None, "numba", now=NOW, path=path, key=KEY, canary=_canary(50e-6, 51e-6, NOW - 20))
    assert history.record([], 2, None, "numba", now=NOW, path=path, key=dict(KEY, host="another"),
                          canary=_canary(40e-6, 41e-6, NOW - 10))
    got = history.earlier_canaries(2, None, now=NOW, path=path, key=KEY)
    assert got is not None and got["path"] == str(path) and got["machine"] == KEY
    assert [(c["best_seconds"], c["median_seconds"]) for c in got["runs"]] == [(83e-6, 85e-6), (130e-6, 146e-6)]
    assert got["runs"][0]["command"] == "rwkvprobe analyze x"
    assert [c["best_seconds"] for c in history.earlier_canaries(1, None, now=NOW, path=path, key=KEY)["runs"]] == [50e-6]
    # the probes stayed (a canary-only record rewrote the file), and a probe-only record keeps the canaries
    assert [p["read_best_gbps"] for p in history.earlier_probes(2, None, "numba", now=NOW, path=path, key=KEY)[
        "probes"]] == [70.0]
    history.record(_probes(71.0, at=NOW - 5), 2, None, "numba", now=NOW, path=path, key=KEY)
    assert len(history.earlier_canaries(2, None, now=NOW, path=path, key=KEY)["runs"]) == 2
    assert 10e-6 not in [c["best_seconds"] for c in json.loads(path.read_text())["canaries"]]  # too old: dropped


def _timed(r: dict, canaries: list[float], earlier: list[float] | None) -> dict:
    """``r``'s points timed beside these canaries (seconds, one per point, cycled), with these earlier runs' bests."""
    for i, p in enumerate(r["measurements"]):
        p["contention"] = {"contended": False, "other_share": 0.0, "steal_share": 0.0,
                           "canary_seconds": canaries[i % len(canaries)]}
        p["at"] = NOW + i
    if earlier is not None:
        r["canary_history"] = {"path": "h.json", "max_age_days": history.MAX_AGE_DAYS, "machine": KEY,
                               "runs": [_canary(b, b) for b in earlier]}
    return r


def test_a_run_timed_wholly_in_a_slow_phase_says_so_against_the_machines_earlier_runs():
    """The dev VM's canary reads 83-88 µs or 125-150, a phase lasting seconds to minutes: a run whose every point
    sat beside a slow canary has no faster one of its own, and only the machine's earlier runs show it ran slow.
    machine_speed reads the run's median against the best of them and of the run; the stability line gives the
    figures, and analyze's warning says what they mean. A run at the machine's usual speed, or with no history,
    gets no warning."""
    from rwkvprobe.measure import contention
    from rwkvprobe.measure.analyze import _slow_machine_warning

    slow = _timed(_run([70.0]), [140e-6, 146e-6, 150e-6], earlier=[84e-6, 83e-6])
    speed = contention.machine_speed(slow)
    assert speed == {"median_seconds": pytest.approx(146e-6), "best_seconds": 83e-6,
                     "ratio": pytest.approx(146 / 83), "earlier_runs": 2}
    # its own best (140 µs) shows nothing: every point is within 1.07x of it
    assert contention.summary(slow["measurements"])["machine_slow"] == 0
    line = stability_line(slow)
    assert "its median around the points, 146 µs, was 1.76x the best of this run and this machine's 2 earlier " \
           "run(s) (83 µs): most of this run was timed while the machine ran slow" in line
    (warning,) = _slow_machine_warning(slow)
    assert warning.startswith("Most of this run was timed while the machine ran slow") and "146 µs, 1.76x" in warning
    assert contention.run_canary(slow) == {"at": NOW, "best_seconds": 140e-6, "median_seconds": pytest.approx(146e-6)}

    usual = _timed(_run([70.0]), [84e-6, 86e-6, 140e-6], earlier=[83e-6])
    assert contention.machine_speed(usual)["ratio"] == pytest.approx(86 / 83)
    assert "1.04x the best" in stability_line(usual) and "ran slow (see" not in stability_line(usual)
    assert _slow_machine_warning(usual) == []
    alone = _timed(_run([70.0]), [140e-6], earlier=None)
    assert contention.machine_speed(alone) is None and _slow_machine_warning(alone) == []
    assert "earlier run(s)" not in stability_line(alone)
