"""Typed results (records.py): files the code writes pass the check; damaged ones are refused with one line
naming the field; a schema-1 file loads; a newer schema is refused with the version this rwkvprobe reads."""

import copy
import json
from pathlib import Path

import pytest
from conftest import ROOT, run_module

from rwkvprobe import records
from rwkvprobe.errors import InputError
from rwkvprobe.results import SCHEMA_VERSION, load_record, load_results, new_results, save_results

SCHEMA1 = ROOT / "tests" / "data" / "results-schema1.json"  # docs/example of e2eaa1b (rwkvprobe 0.1.0), samples cut to 3

SMALL = """name: small test model
source: test
layers:
  - {name: a, k: 256, n: 512, count: 4}
  - {name: b, k: 512, n: 256, count: 4}
  - {name: head, k: 256, n: 1024, count: 1}
"""


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    """One tiny run of each command, written by the code itself: {kind: results file}."""
    tmp = tmp_path_factory.mktemp("records")
    env = {"XDG_CACHE_HOME": str(tmp / "cache")}
    (tmp / "small.yaml").write_text(SMALL)
    runs = {
        "analyze": (["analyze", tmp / "small.yaml", "--backends", "numpy", "--quick", "--budget", "8", "--tokens", "1,8",
                     "--out", tmp / "analyze"], tmp / "analyze" / "results.json"),
        "sweep": (["sweep", "--sizes", "64:128:64", "--backends", "numpy", "--budget", "5", "--out", tmp / "sweep"],
                  tmp / "sweep" / "results.json"),
        "bandwidth": (["bandwidth", "--size", "64K", "--threads", "1", "--trials", "2", "--out", tmp / "bw.json"],
                      tmp / "bw.json"),
    }
    for kind, (args, path) in runs.items():
        proc = run_module(*args, env=env)
        assert proc.returncode == 0, f"{kind}: {proc.stderr[-2000:]}"
        assert path.is_file()
    return {kind: path for kind, (_, path) in runs.items()}


def _damaged(tmp_path: Path, source: Path, damage) -> Path:
    data = json.loads(source.read_text())
    damage(data)
    bad = tmp_path / "bad" / "results.json"
    bad.parent.mkdir(exist_ok=True)
    bad.write_text(json.dumps(data))
    return bad


# ------------------------------------------------------------------------------------------------
# What the code writes passes


@pytest.mark.parametrize("kind", ["analyze", "sweep", "bandwidth"])
def test_files_the_code_writes_pass_the_check(written, kind):
    data = load_record(written[kind])
    assert data["kind"] == kind and data["schema_version"] == SCHEMA_VERSION
    assert records.check(copy.deepcopy(data), "x") == data
    if kind != "bandwidth":
        assert data["measurements"] and all(isinstance(p["flops"], (int, float)) for p in data["measurements"])
    if kind == "analyze":  # the run reached every record the check walks into
        assert data["ceilings"] and data["bandwidth"] and data["bandwidth_probes"] and data["profile"]["layers"]
        timed = [p for p in data["measurements"] if p["timing"]]
        assert timed and all(len(p["timing"]["samples"]) >= 3 for p in timed)


def test_report_of_a_written_file_still_renders(cli, written, tmp_path):
    path = tmp_path / "results.json"
    path.write_text(written["analyze"].read_text())
    code, _, err = cli("report", path)
    assert code == 0, err
    assert (tmp_path / "report.md").is_file()


def test_hand_made_results_of_the_validate_tests_pass():
    """tests/test_validate.py saves a minimal schema-1 analyze dict and loads it through validate --results."""
    from test_validate import _results_for

    from rwkvprobe.model.profile import layer_list, load_profile

    ll = layer_list(load_profile(ROOT / "profiles" / "rwkv-0b1.yaml"))
    records.check(_results_for(ll, (("torch", "fp32"), ("numpy", "fp32"))), "x")


# ------------------------------------------------------------------------------------------------
# Damaged files: exit 2, one line naming the file and the field


def _del(path):
    def damage(d):
        *head, last = path
        for key in head:
            d = d[key]
        del d[last]
    return damage


def _set(path, value):
    def damage(d):
        *head, last = path
        for key in head:
            d = d[key]
        d[last] = value
    return damage


def _first_timed(d):
    return next(i for i, p in enumerate(d["measurements"]) if p["timing"])


DAMAGES = [
    (_del(["profile"]), "field profile: missing"),
    (_del(["measurements", 2, "timing"]), "field measurements[2].timing: missing"),
    (_del(["profile", "layers", 1, "stored"]), "field profile.layers[1].stored: missing"),
    (lambda d: _set(["measurements", _first_timed(d), "timing", "samples", 1], "abc")(d),
     "timing.samples[1]: expected a number, got 'abc'"),
    (lambda d: _set(["measurements", _first_timed(d), "timing", "samples"], "abc")(d),
     "timing.samples: expected a list of numbers, got 'abc'"),
    (lambda d: _set(["measurements", _first_timed(d), "timing", "median_seconds"], "0.001")(d),
     "timing.median_seconds: expected a number, got '0.001'"),
    (_set(["measurements", 0, "k"], 256.5), "field measurements[0].k: expected an integer, got 256.5"),
    (_set(["measurements", 0, "check"], "ok"), "field measurements[0].check: expected an object or null, got 'ok'"),
    (_set(["measurements", 0, "check", "ok"], 1), "field measurements[0].check.ok: expected true or false, got 1"),
    (_set(["ceilings", 0, "dtype"], None), "field ceilings[0].dtype: expected a string, got null"),
    (_set(["settings", "tokens"], "1,8"), "field settings.tokens: expected a list of integers, got '1,8'"),
    (_set(["measurements"], {}), "field measurements: expected a list of objects, got an object"),
    (_set(["bandwidth", "runs", 0, "kernels", "read", "best_gbps"], True),
     "field bandwidth.runs[0].kernels.read.best_gbps: expected a number, got true"),
    (_set(["bandwidth_probes", 0, "check_ok"], "yes"), "field bandwidth_probes[0].check_ok: expected true or false"),
]


@pytest.mark.parametrize("damage, words", DAMAGES, ids=[w.split(":")[0].replace("field ", "") for _, w in DAMAGES])
def test_a_damaged_analyze_file_is_refused_naming_the_field(cli, written, tmp_path, damage, words):
    bad = _damaged(tmp_path, written["analyze"], damage)
    code, stdout, err = cli("report", bad)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert str(bad) in err and words in err, err
    assert not (bad.parent / "report.md").exists()


@pytest.mark.parametrize("damage, words", [
    (_del(["runs", 0, "started"]), "field runs[0].started: missing"),
    (_set(["measurements", 0, "size"], "64"), "field measurements[0].size: expected an integer, got '64'"),
    (_set(["settings", "grid", "sizes"], [64, "x"]), "field settings.grid.sizes[1]: expected an integer, got 'x'"),
])
def test_a_damaged_sweep_file_is_refused_naming_the_field(cli, written, tmp_path, damage, words):
    bad = _damaged(tmp_path, written["sweep"], damage)
    code, _, err = cli("report", bad)
    assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err


def test_a_damaged_bandwidth_file_is_refused_naming_the_field(written, tmp_path):
    bad = _damaged(tmp_path, written["bandwidth"], _set(["bandwidth", "runs"], None))
    with pytest.raises(InputError, match=r"field bandwidth\.runs: expected a list of objects, got null"):
        load_results(bad)


def test_resume_of_a_damaged_file_is_refused_before_measuring(cli, written, tmp_path):
    bad = _damaged(tmp_path, written["analyze"], _del(["measurements", 0, "backend"]))
    before = bad.read_text()
    (tmp_path / "small.yaml").write_text(SMALL)
    code, _, err = cli("analyze", tmp_path / "small.yaml", "--backends", "numpy", "--quick", "--budget", "8",
                       "--tokens", "1,8", "--resume", bad.parent)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "measurements[0].backend: missing" in err, err
    assert bad.read_text() == before


# ------------------------------------------------------------------------------------------------
# What the check lets through


def test_unknown_keys_are_allowed_and_an_integer_is_a_number(written, tmp_path):
    def damage(d):
        d["from_a_newer_minor_version"] = {"x": [1, "two"]}
        d["measurements"][0]["new_point_field"] = "text"
        d["ceilings"][0]["peak_gflops"] = 12  # declared float | None: JSON may write a whole number as an int
    data = load_record(_damaged(tmp_path, written["analyze"], damage))
    assert data["from_a_newer_minor_version"] == {"x": [1, "two"]}  # type: ignore[typeddict-item]


def test_a_schema_1_file_loads_and_renders(cli, tmp_path):
    path = tmp_path / "results.json"
    path.write_text(SCHEMA1.read_text())
    data = load_record(path, ("analyze",))
    assert data["schema_version"] == 1 and "bandwidth_probes" not in data and data["validation"]
    code, _, err = cli("report", path)
    assert code == 0, err


def test_a_newer_schema_is_refused_naming_the_version_it_needs(cli, written, tmp_path):
    bad = _damaged(tmp_path, written["analyze"], _set(["schema_version"], SCHEMA_VERSION + 1))
    code, _, err = cli("report", bad)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"results schema {SCHEMA_VERSION + 1} is newer than this rwkvprobe understands ({SCHEMA_VERSION})" in err
    assert SCHEMA_VERSION == 2  # the case: a schema-3 file, refused naming version 2


def test_schema_version_true_is_not_version_1(written, tmp_path):
    bad = _damaged(tmp_path, written["analyze"], _set(["schema_version"], True))
    with pytest.raises(InputError, match="invalid schema_version True"):
        load_results(bad)


def test_new_results_is_a_valid_header_and_save_load_round_trips(tmp_path):
    r = new_results("bandwidth", {"hostname": "h"}, {"threads": None})
    r["bandwidth"] = {"runs": [{"threads": 1, "cpus": [0], "kernels": {"read": {"best_gbps": 10, "avg_gbps": 9.5}}}]}
    save_results(tmp_path / "bw.json", r)
    assert load_record(tmp_path / "bw.json", ("bandwidth",)) == r
    del r["bandwidth"]
    save_results(tmp_path / "bw.json", r)
    with pytest.raises(InputError, match="field bandwidth: missing"):
        load_results(tmp_path / "bw.json")


@pytest.mark.parametrize("tp, words", [
    (list[float], "a list of numbers"),
    (dict[str, int], "an object of integers"),
    (records.Timing | None, "an object or null"),
    (list[list[str]], "a list of lists"),
])
def test_types_in_words(tp, words):
    assert records.describe(tp) == words
