"""rwkvprobe compare: ratios, missing rows, markdown, warnings and bad input, on hand-made results files."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from rwkvprobe.cli.compare import compare_command
from rwkvprobe.errors import InputError
from rwkvprobe.report.compare import (
    GBPS,
    SECONDS,
    TEXT,
    Comparison,
    Row,
    compare_files,
    ratio_cell,
    render_markdown,
)
from rwkvprobe.results import new_results, save_results

# ------------------------------------------------------------------------------------------------
# Hand-made results files: one 4x8 layer run twice per token, so decode time = 2 x the layer's median


def _point(backend: str, dtype: str, m: int, k: int, n: int, seconds: float | None, **extra) -> dict:
    timing = {"median_seconds": seconds, "samples": [seconds] * 3} if seconds is not None else None
    return {"backend": backend, "dtype": dtype, "m": m, "k": k, "n": n, "flops": 2.0 * m * k * n,
            "bytes": 4.0 * (k * n + m * k + m * n), "check": {"ok": seconds is not None, "detail": "max rel err 0"},
            "timing": timing, "error": None, **extra}


def _ceiling(backend: str, dtype: str, peak: float | None = 50.0, gemv: float | None = 8.0,
             overhead: float | None = 1e-6) -> dict:
    return {"backend": backend, "dtype": dtype, "peak_gflops": peak, "gemv_gbps": gemv, "overhead_seconds": overhead}


def _bandwidth(read_by_threads: dict[int, float]) -> dict:
    return {"engine": "numpy", "array_bytes": 1 << 20, "trials": 3,
            "runs": [{"threads": n, "cluster": "all", "cpus": list(range(n)),
                      "kernels": {"copy": {"best_gbps": gbps / 2, "avg_gbps": gbps / 2},
                                  "read": {"best_gbps": gbps, "avg_gbps": gbps}}}
                     for n, gbps in read_by_threads.items()]}


def analyze_results(layer_seconds: float, *, profile: str = "tiny", threads: int = 2, read_gbps: float = 10.0,
                    peak: float = 50.0, cpu: str = "Test CPU", extra_points: tuple[dict, ...] = (),
                    extra_ceilings: tuple[dict, ...] = ()) -> dict:
    r = new_results("analyze", {"hostname": "host", "cpu": {"model": cpu}},
                    {"tokens": [1], "threads": threads, "cold": True})
    r["profile"] = {"name": profile, "version": None, "n_layer": 1, "n_embd": 4,
                    "layers": [{"name": "att.r", "kind": "att", "k": 4, "n": 8, "count": 2, "stored": 2}],
                    "embedding": {"rows": 0, "dim": 0}, "other_params": 0}
    r["bandwidth"] = _bandwidth({threads: read_gbps})
    r["ceilings"] = [_ceiling("numpy", "fp32", peak=peak), *extra_ceilings]
    r["measurements"] = [_point("numpy", "fp32", 1, 4, 8, layer_seconds), *extra_points]
    r["skipped"] = []
    return r


def bandwidth_results(read_by_threads: dict[int, float]) -> dict:
    r = new_results("bandwidth", {"hostname": "board", "cpu": {"model": "Board CPU"}}, {"threads": None})
    r["bandwidth"] = _bandwidth(read_by_threads)
    return r


@pytest.fixture
def save(tmp_path):
    def write(data: dict, name: str) -> Path:
        path = tmp_path / name
        save_results(path, data)
        return path

    return write


def row(c: Comparison, label: str) -> Row:
    rows = [r for s in c.sections for r in s.rows if r.label == label]
    assert len(rows) == 1, f"{label!r}: {[r.label for s in c.sections for r in s.rows]}"
    return rows[0]


# ------------------------------------------------------------------------------------------------
# Ratios


@pytest.mark.parametrize("metric, values, expected", [
    (SECONDS, [0.010, 0.005], ("0.50x (2.00x faster)", 1)),
    (SECONDS, [0.010, 0.020], ("2.00x (2.00x slower)", -1)),
    (GBPS, [10.0, 20.0], ("2.00x (2.00x faster)", 1)),
    (GBPS, [20.0, 5.0], ("0.25x (4.00x slower)", -1)),
    (GBPS, [10.0, 10.001], ("1.00x (same)", 0)),
    (SECONDS, [None, 0.005], ("-", 0)),
    (SECONDS, [0.010, None], ("-", 0)),
    (SECONDS, [0.010, "failed"], ("-", 0)),
    (TEXT, ["a", "b"], ("", 0)),
])
def test_ratio_is_other_over_baseline_with_the_better_direction(metric, values, expected):
    assert ratio_cell(Row("x", metric, values), 1) == expected


def test_two_analyze_files_compare_every_section(save):
    a = save(analyze_results(0.005, read_gbps=10.0, peak=50.0), "a.json")
    b = save(analyze_results(0.0025, read_gbps=20.0, peak=25.0), "b.json")
    c = compare_files([a, b])
    assert [s.title.split(" (")[0] for s in c.sections] == [
        "Environment", "Memory bandwidth", "Ceilings per backend and dtype", "Model level", "Per-layer median time per call"]
    assert c.warnings == []
    decode = row(c, "numpy fp32 decode time/token")
    assert decode.values == [pytest.approx(0.010), pytest.approx(0.005)]  # 2 runs per token x the layer time
    assert ratio_cell(decode, 1) == ("0.50x (2.00x faster)", 1)
    assert ratio_cell(row(c, "numpy fp32 decode"), 1) == ("2.00x (2.00x faster)", 1)
    assert ratio_cell(row(c, "numpy fp32 M=1 4x8"), 1) == ("0.50x (2.00x faster)", 1)
    assert ratio_cell(row(c, "read, 2 threads"), 1) == ("2.00x (2.00x faster)", 1)
    assert ratio_cell(row(c, "numpy fp32 peak"), 1) == ("0.50x (2.00x slower)", -1)
    assert ratio_cell(row(c, "numpy fp32 per-call overhead"), 1) == ("1.00x (same)", 0)
    assert row(c, "CPU").values == ["Test CPU", "Test CPU"]
    assert row(c, "threads").values == ["2", "2"]


def test_markdown_has_the_tables_and_missing_rows_show_a_dash(save):
    extra = _point("onnxruntime", "fp32", 1, 4, 8, 0.001)
    a = save(analyze_results(0.010), "a.json")
    b = save(analyze_results(0.005, extra_points=(extra,), extra_ceilings=(_ceiling("onnxruntime", "fp32"),)), "b.json")
    c = compare_files([a, b])
    only_b = row(c, "onnxruntime fp32 M=1 4x8")
    assert only_b.values == [None, 0.001] and ratio_cell(only_b, 1) == ("-", 0)
    md = render_markdown(c)
    assert f"- A (baseline): {a}" in md and f"- B: {b}" in md
    assert "## Per-layer median time per call" in md
    assert "|  | better | A (baseline) | B | B/A |" in md
    assert "| numpy fp32 M=1 4x8 | lower | 10 ms | 5 ms | 0.50x (2.00x faster) |" in md
    assert "| onnxruntime fp32 M=1 4x8 | lower | - | 1 ms | - |" in md
    assert "| onnxruntime fp32 decode time/token | lower | - |" in md


def test_points_that_were_not_timed_say_why(save):
    wrong = _point("numpy", "fp16", 1, 4, 8, None)
    wrong["check"] = {"ok": False, "detail": "max rel err 0.5"}
    skipped = _point("numpy", "fp32", 1, 8, 8, None, skipped="projected 9 s a call", check=None)
    a = save(analyze_results(0.010, extra_points=(wrong, skipped)), "a.json")
    b = save(analyze_results(0.010), "b.json")
    c = compare_files([a, b])
    assert row(c, "numpy fp16 M=1 4x8").values == ["WRONG RESULT", None]
    assert row(c, "numpy fp32 M=1 8x8").values == ["skipped", None]
    assert ratio_cell(row(c, "numpy fp16 M=1 4x8"), 1) == ("-", 0)


def test_three_files_each_get_a_ratio_to_the_first(save):
    paths = [save(analyze_results(t), f"{i}.json") for i, t in enumerate((0.004, 0.002, 0.008))]
    c = compare_files(paths)
    r = row(c, "numpy fp32 M=1 4x8")
    assert [ratio_cell(r, i)[0] for i in (1, 2)] == ["0.50x (2.00x faster)", "2.00x (2.00x slower)"]
    assert "|  | better | A (baseline) | B | B/A | C | C/A |" in render_markdown(c)


def test_bandwidth_and_analyze_files_compare_on_what_they_share(save):
    a = save(bandwidth_results({1: 5.0, 4: 12.0}), "bw.json")
    b = save(analyze_results(0.005, threads=4, read_gbps=6.0), "an.json")
    c = compare_files([a, b])
    assert row(c, "kind").values == ["bandwidth", "analyze"]
    assert row(c, "threads").values == ["1, 4", "4"]
    assert ratio_cell(row(c, "read, 4 threads"), 1) == ("0.50x (2.00x slower)", -1)
    assert row(c, "read, 1 thread").values == [5.0, None]
    assert row(c, "numpy fp32 peak").values == [None, 50.0]
    assert row(c, "numpy fp32 decode time/token").values[0] is None


def test_bandwidth_rows_keep_the_best_cluster_per_thread_count(save):
    r = bandwidth_results({1: 5.0})
    r["bandwidth"]["runs"].append({**r["bandwidth"]["runs"][0], "cluster": "little",
                                   "kernels": {"read": {"best_gbps": 3.0, "avg_gbps": 3.0}}})
    c = compare_files([save(r, "a.json"), save(bandwidth_results({1: 4.0}), "b.json")])
    assert row(c, "read, 1 thread").values == [5.0, 4.0]


def test_different_profiles_warn_and_keep_model_rows_apart(save):
    a = save(analyze_results(0.010, profile="small"), "a.json")
    b = save(analyze_results(0.005, profile="large"), "b.json")
    c = compare_files([a, b])
    assert len(c.warnings) == 1 and "small, large" in c.warnings[0]
    assert row(c, "small numpy fp32 decode time/token").values == [pytest.approx(0.020), None]
    assert row(c, "large numpy fp32 decode time/token").values == [None, pytest.approx(0.010)]
    assert ratio_cell(row(c, "numpy fp32 M=1 4x8"), 1)[0] == "0.50x (2.00x faster)"  # same shape still compares


def _beside_canary(r: dict, *seconds: float) -> dict:
    """``r`` with its points timed beside these canaries (contention.canary), cycled over the points."""
    extra = [_point("numpy", "fp32", 1, 4, 8 * (i + 2), 0.001) for i in range(len(seconds) - 1)]
    r["measurements"] += extra
    for p, c in zip(r["measurements"], seconds):
        p["contention"] = {"wall_seconds": 0.1, "cpus": 2, "other_cpu_seconds": 0.0, "steal_cpu_seconds": 0.0,
                           "contended": False, "other_share": 0.0, "steal_share": 0.0, "canary_seconds": c}
    return r


def test_runs_on_a_machine_running_at_different_speeds_say_so(save):
    """Each analyze file shows the machine's speed beside its points (the canary's median); where two files' medians
    are CANARY_SLOW or more apart (the dev VM: 84 against 146 µs, every two-thread series 4-19% apart), one warning
    names both figures and the files. Runs at the same speed, or without canaries, get none."""
    a = save(_beside_canary(analyze_results(0.010), 84e-6, 86e-6, 85e-6), "a.json")
    b = save(_beside_canary(analyze_results(0.012), 146e-6, 140e-6, 150e-6), "b.json")
    c = compare_files([a, b])
    assert row(c, "machine speed (canary median)").values == ["85 µs", "146 µs"]
    (w,) = c.warnings
    assert w.startswith("the machine itself ran at different speeds in these runs") and str(a) in w and str(b) in w
    assert "median of 85 µs in" in w and "146 µs in" in w and "(1.72x)" in w
    same = save(_beside_canary(analyze_results(0.011), 90e-6, 95e-6, 100e-6), "same.json")
    assert compare_files([a, same]).warnings == []
    plain = save(analyze_results(0.011), "plain.json")
    c = compare_files([a, plain])
    assert c.warnings == [] and row(c, "machine speed (canary median)").values == ["85 µs", None]


# ------------------------------------------------------------------------------------------------
# Bad input


def test_fewer_than_two_files(save):
    with pytest.raises(InputError, match="at least two results files, got 1"):
        compare_files([save(analyze_results(0.01), "a.json")])


@pytest.mark.parametrize("content, words", [
    (None, "no such results file"),
    ("{not json", "not a results file (invalid JSON"),
    ('{"hello": 1}', "not an rwkvprobe results file"),
])
def test_missing_corrupt_or_foreign_file(save, tmp_path, content, words):
    good = save(analyze_results(0.01), "a.json")
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    with pytest.raises(InputError, match=re.escape(words)) as e:
        compare_files([good, bad])
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_damaged_results_content_is_one_line(save):
    r = analyze_results(0.01)
    del r["measurements"][0]["k"]
    bad = save(r, "bad.json")
    with pytest.raises(InputError, match=r"field measurements\[0\]\.k") as e:  # the typed check names the field
        compare_files([save(analyze_results(0.01), "a.json"), bad])
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_an_analyze_output_folder_stands_for_its_results_json(save, tmp_path):
    (tmp_path / "run").mkdir()
    save(analyze_results(0.01), "run/results.json")
    c = compare_files([tmp_path / "run", save(analyze_results(0.01), "b.json")])
    assert row(c, "numpy fp32 M=1 4x8").values == [0.01, 0.01]


# ------------------------------------------------------------------------------------------------
# The command, end to end through a throwaway typer app (cli/app.py registers it)


@pytest.fixture
def invoke():
    app = typer.Typer()
    app.command("compare")(compare_command)

    @app.callback()
    def _root():
        pass

    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["compare", *map(str, args)])


def test_command_prints_markdown_and_writes_out(save, tmp_path, invoke):
    a, b = save(analyze_results(0.010), "a.json"), save(analyze_results(0.005), "b.json")
    out = tmp_path / "cmp.md"
    result = invoke(a, b, "--markdown", "--out", out)
    assert result.exit_code == 0, result.output
    assert "| numpy fp32 M=1 4x8 | lower | 10 ms | 5 ms | 0.50x (2.00x faster) |" in result.output
    assert out.read_text() == render_markdown(compare_files([a, b])) + "\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_command_prints_terminal_tables(save, invoke):
    result = invoke(save(analyze_results(0.010), "a.json"), save(analyze_results(0.005), "b.json"))
    assert result.exit_code == 0, result.output
    assert "Per-layer median time per call" in result.output and "0.50x (2.00x faster)" in result.output


def test_bad_input_writes_nothing_and_keeps_an_existing_out_file(save, tmp_path, invoke):
    out = tmp_path / "cmp.md"
    out.write_text("earlier\n")
    result = invoke(save(analyze_results(0.01), "a.json"), tmp_path / "missing.json", "--out", out)
    assert isinstance(result.exception, InputError) and "no such results file" in str(result.exception)
    assert out.read_text() == "earlier\n"


@pytest.mark.parametrize("where, words", [("dir", "is a directory"), ("under-a-file", "not a directory")])
def test_unwritable_out_path(save, tmp_path, invoke, where, words):
    a, b = save(analyze_results(0.01), "a.json"), save(analyze_results(0.01), "b.json")
    out = tmp_path if where == "dir" else a / "cmp.md"
    result = invoke(a, b, "--out", out)
    assert isinstance(result.exception, InputError) and words in str(result.exception)
    assert json.loads(a.read_text())["kind"] == "analyze"


def test_a_failed_write_leaves_the_earlier_file_whole(save, tmp_path, invoke, monkeypatch):
    a, b = save(analyze_results(0.01), "a.json"), save(analyze_results(0.01), "b.json")
    out = tmp_path / "cmp.md"
    out.write_text("earlier\n")

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    result = invoke(a, b, "--out", out)
    assert isinstance(result.exception, InputError) and "No space left on device" in str(result.exception)
    assert out.read_text() == "earlier\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_the_profile_warning_is_one_line_on_stderr(save, tmp_path, capsys):
    a = save(analyze_results(0.010, profile="small"), "a.json")
    b = save(analyze_results(0.005, profile="large"), "b.json")
    compare_command([a, b], markdown=True, out=None)
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("warning: the files hold different profiles")
    assert "| small numpy fp32 decode time/token | lower | 20 ms | - | - |" in out  # 2 runs x 10 ms
    assert "| large numpy fp32 decode time/token | lower | - | 10 ms | - |" in out
