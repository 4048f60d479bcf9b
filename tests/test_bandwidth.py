"""The STREAM-style bandwidth probe: byte accounting, kernel values, sizes, refusals, JSON, threads.

No timing thresholds: the machine is shared. Arrays are small so the whole file runs in seconds.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rwkvprobe.errors import InputError
from rwkvprobe.measure import bandwidth as bw

SMALL = 64 * 1024  # bytes per array: 8192 float64
USABLE = bw.usable_cpus()


def test_kernel_bytes_count_arrays_as_stream_does():
    n = 1000
    assert {k: bw.kernel_bytes(k, n) for k in bw.KERNELS} == {
        "copy": 16000, "scale": 16000, "add": 24000, "triad": 24000, "read": 8000}


def test_summarize_rates_from_seconds():
    s = bw.summarize("add", 1000, [0.004, 0.002, 0.003])
    assert s["bytes_per_trial"] == 24000 and s["seconds"] == [0.004, 0.002, 0.003]
    assert s["min_seconds"] == 0.002 and s["max_seconds"] == 0.004
    assert s["best_gbps"] == pytest.approx(24000 / 0.002 / 1e9)
    assert s["avg_gbps"] == pytest.approx(24000 / 0.003 / 1e9)


@pytest.mark.parametrize("text, value", [
    ("64M", 64 * 2**20), ("1G", 2**30), ("512k", 512 * 1024), ("4000000", 4_000_000),
    ("64MiB", 64 * 2**20), ("64MB", 64_000_000), ("1.5K", 1536), (" 8 ", 8),
])
def test_parse_size(text, value):
    assert bw.parse_size(text) == value


@pytest.mark.parametrize("text", ["0", "-5", "abc", "", "12Q", "4", "1e9", "0.5K8", "M"])
def test_parse_size_refuses_one_line(text):
    with pytest.raises(InputError) as e:
        bw.parse_size(text)
    assert "--size" in str(e.value) and "\n" not in str(e.value)


def test_default_size_is_four_times_llc():
    assert bw.default_array_bytes(2**20) == 4 * 2**20
    assert bw.default_array_bytes(None) == 4 * 32 * 2**20


def test_refuses_arrays_beyond_available_memory():
    with pytest.raises(InputError, match="memory is available"):
        bw.check_memory(2**30, available_bytes=2**30)
    bw.check_memory(2**20, available_bytes=2**30)
    with pytest.raises(InputError, match="memory is available"):
        bw.measure_bandwidth(array_bytes=2**60, threads=[1], trials=1)


def test_refuses_too_many_threads_and_bad_trials():
    with pytest.raises(InputError, match="--threads"):
        bw.measure_bandwidth(array_bytes=SMALL, threads=[len(USABLE) + 1], trials=1)
    with pytest.raises(InputError, match="--threads"):
        bw.plan_runs([2], cpus=[0], usable=[0, 1], clusters=[{"name": "all", "cpus": [0, 1]}])
    with pytest.raises(InputError, match="--trials"):
        bw.measure_bandwidth(array_bytes=SMALL, threads=[1], trials=0)
    with pytest.raises(InputError, match="kernels"):
        bw.measure_bandwidth(array_bytes=SMALL, threads=[1], trials=1, kernels=("copy", "fma"))


BIG_LITTLE = [{"name": "big", "cpus": [4, 5, 6, 7], "max_khz": 2400000},
              {"name": "little", "cpus": [0, 1, 2, 3], "max_khz": 1800000}]


def _plan(runs):
    return [(r["cluster"], r["threads"], r["cpus"]) for r in runs]


def test_plan_runs_big_little_each_cluster_then_all():
    runs = bw.plan_runs(clusters=BIG_LITTLE, usable=list(range(8)))
    assert _plan(runs) == [("big", 1, [4]), ("big", 4, [4, 5, 6, 7]), ("little", 1, [0]),
                           ("little", 4, [0, 1, 2, 3]), ("all", 8, [4, 5, 6, 7, 0, 1, 2, 3])]
    runs = bw.plan_runs([2, 6], clusters=BIG_LITTLE, usable=list(range(8)))
    assert _plan(runs) == [("big", 2, [4, 5]), ("little", 2, [0, 1]), ("all", 6, [4, 5, 6, 7, 0, 1])]
    runs = bw.plan_runs(cpus=[5, 6], clusters=BIG_LITTLE, usable=list(range(8)))
    assert _plan(runs) == [("big", 1, [5]), ("big", 2, [5, 6])]
    with pytest.raises(InputError, match="--cpus"):
        bw.plan_runs(cpus=[9], clusters=BIG_LITTLE, usable=list(range(8)))


def test_plan_runs_one_cluster():
    runs = bw.plan_runs(clusters=[{"name": "all", "cpus": [0, 1]}], usable=[0, 1])
    assert _plan(runs) == [("all", 1, [0]), ("all", 2, [0, 1])]


def test_split_chunks_cover_the_array_on_page_boundaries():
    chunks = bw.split_chunks(1_000_000, 3)
    assert chunks[0][0] == 0 and chunks[-1][1] == 1_000_000
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    assert all(lo % bw.CHUNK_ALIGN_ELEMENTS == 0 for lo, _ in chunks)
    assert bw.split_chunks(5, 2) == [(0, 2), (2, 5)]


ENGINES = ["numpy"] + (["numba"] if bw._numba_kernels() is not None else [])


@pytest.mark.parametrize("engine", ENGINES)
def test_kernels_compute_stream_values_on_every_chunk(engine):
    """Random start values, several workers and uneven triad blocks; each kernel against numpy."""
    rng = np.random.default_rng(0)
    n = 10_007
    cpus = (USABLE * 3)[:3]  # three workers, pinned (CPUs may repeat on small machines)
    with bw.StreamTeam(n, cpus, triad_block=1000, engine=engine) as team:
        assert team.engine == {"numpy": bw.ENGINE, "numba": "numba"}[engine]
        team.a[:], team.b[:], team.c[:] = rng.standard_normal((3, n))
        a, b, c = team.a.copy(), team.b.copy(), team.c.copy()
        for _ in range(3):  # the numba engine's two or three methods of every kernel (kernel_methods), one a call
            for kernel in bw.KERNELS:
                team.run(kernel)
                a, b, c, read = bw.reference_step(kernel, a, b, c)
                np.testing.assert_array_equal(team.a, a)
                np.testing.assert_array_equal(team.b, b)
                np.testing.assert_array_equal(team.c, c)
                if read is not None:
                    assert team.read_value == pytest.approx(read, rel=1e-12)
        assert [w["calls"] for w in team.workers] == [3 * len(bw.KERNELS)] * 3
        assert team.calls == dict.fromkeys(bw.KERNELS, 3)


def test_the_numba_engine_reads_with_its_compiled_loop_and_blas_dot_in_turn():
    """READ_METHODS: the first read runs the compiled loop, the next BLAS's dot, and so on (a fake loop returning
    -1 tells them apart); each method's best GB/s comes from its own trials, the warm-up read counted."""
    from types import SimpleNamespace

    a = np.arange(1.0, 1001.0)
    chunk = bw._Chunk(a, a.copy(), a.copy(), 0, 1000, 256, kernels=SimpleNamespace(read=lambda x: -1.0))
    want = float(np.dot(a, a))
    assert [chunk.run("read") for _ in range(4)] == [-1.0, want, -1.0, want]
    summary = bw.summarize("read", 1000, [2e-6, 1e-6, 4e-6])  # trials 2-4 of the reads: dot, loop, dot
    methods = bw.kernel_methods("read", None)
    assert bw.by_method(summary, methods, 1) == {"BLAS dot": pytest.approx(4.0), "compiled loop": pytest.approx(8.0)}
    assert bw.by_method(summary, methods, 0) == {"compiled loop": pytest.approx(4.0), "BLAS dot": pytest.approx(8.0)}


def test_the_numba_engine_reads_by_three_methods_in_turn_where_the_streaming_read_compiled():
    """With stream_kernels' read_streams, the read takes the compiled loop, BLAS's dot and the four streams in turn
    (fakes returning -1 and -2 tell them apart); the real four-stream read sums every element once, tail too."""
    from types import SimpleNamespace

    from rwkvprobe.measure import stream_kernels as sk

    a = np.arange(1.0, 1004.0)  # 1003 elements: not a multiple of the four streams
    fake = SimpleNamespace(read=lambda x: -1.0, read_streams=lambda x: -2.0)
    assert bw.kernel_methods("read", fake) == bw.READ_METHODS == ("compiled loop", "BLAS dot", "four streams")
    chunk = bw._Chunk(a, a.copy(), a.copy(), 0, len(a), 256, kernels=fake)
    want = float(np.dot(a, a))
    assert [chunk.run("read") for _ in range(4)] == [-1.0, want, -2.0, -1.0]
    assert sk.read_streams(a) == pytest.approx(want, rel=1e-15)
    k = sk.compiled()
    if k is not None:
        assert k.read_streams(a) == pytest.approx(want, rel=1e-12)
        assert k.read_streams(a[:3]) == pytest.approx(14.0)  # shorter than the streams: the tail alone


def test_the_numba_engine_takes_the_plain_and_the_prefetching_loop_in_turn_where_that_compiled():
    """Both outcomes: with a prefetching twin, copy (as every write kernel) alternates the plain loop and the twin,
    the plain one first; without one (it did not compile here, or computed wrong values), the plain loop alone."""
    from types import SimpleNamespace

    used = []
    both = SimpleNamespace(copy=lambda a, c: used.append("plain"), copy_ahead=lambda a, c: used.append("ahead"))
    assert bw.kernel_methods("copy", both) == bw.WRITE_METHODS == ("compiled loop", "prefetching loop")
    a = np.ones(64)
    chunk = bw._Chunk(a, a.copy(), a.copy(), 0, 64, 64, kernels=both)
    for _ in range(3):
        chunk.run("copy")
    assert used == ["plain", "ahead", "plain"]
    plain_only = SimpleNamespace(copy=lambda a, c: used.append("plain"))
    assert bw.kernel_methods("copy", plain_only) == ("compiled loop",)
    used.clear()
    chunk = bw._Chunk(a, a.copy(), a.copy(), 0, 64, 64, kernels=plain_only)
    for _ in range(2):
        chunk.run("copy")
    assert used == ["plain", "plain"]


def test_a_prefetching_kernel_is_kept_only_where_it_computes_correct_values():
    """stream_kernels._works: the real twins pass against their plain loops (odd length: the tail runs too);
    one that skips the tail, or raises (LLVM could not lower the prefetch), is refused."""
    from rwkvprobe.measure import stream_kernels as sk

    for name in ("copy_ahead", "scale_ahead", "add_ahead", "triad_ahead"):
        assert sk._works(name, getattr(sk, name))  # the plain-Python twins: the same values as the plain loops

    def copy_no_tail(a, c):
        c[:len(a) - len(a) % sk.LINE_ELEMENTS] = a[:len(a) - len(a) % sk.LINE_ELEMENTS]

    def broken(*args):
        raise RuntimeError("LLVM ERROR: cannot select prefetch")
    assert not sk._works("copy_ahead", copy_no_tail)
    assert not sk._works("triad_ahead", broken)
    k = sk.compiled()
    if k is not None:  # what this CPU's numba built: every twin it kept computes its plain loop's values
        for name in ("copy_ahead", "scale_ahead", "add_ahead", "triad_ahead"):
            if hasattr(k, name):
                assert sk._works(name, getattr(k, name))


@pytest.mark.skipif("numba" not in ENGINES, reason="numba does not import here")
def test_numba_engine_read_values_checked_with_both_methods_and_best_of_either():
    run = bw.measure_bandwidth(array_bytes=SMALL, threads=[1], trials=3, kernels=("read",), engine="numba")["runs"][0]
    read = run["kernels"]["read"]
    assert run["check_ok"] is True and set(read["best_gbps_by_method"]) == set(bw.READ_METHODS)
    assert max(read["best_gbps_by_method"].values()) == pytest.approx(read["best_gbps"])


@pytest.mark.skipif("numba" not in ENGINES, reason="numba does not import here")
def test_numba_engine_every_kernel_checked_and_its_best_the_best_of_its_methods():
    run = bw.measure_bandwidth(array_bytes=SMALL, threads=[1], trials=4, engine="numba")["runs"][0]
    assert run["check_ok"] is True
    for kernel, summary in run["kernels"].items():
        methods = bw.kernel_methods(kernel, bw._numba_kernels())
        assert set(summary["best_gbps_by_method"]) == set(methods)
        assert max(summary["best_gbps_by_method"].values()) == pytest.approx(summary["best_gbps"])


def test_kernels_ask_for_256_bit_vectors_only_on_x86_64_with_avx512():
    """Both outcomes of the run-time check, whatever this CPU has: an x86-64 CPU with AVX-512 gets its own
    features plus LLVM's prefer-256-bit; one without AVX-512, an Arm CPU, or a list that already has it, nothing."""
    from rwkvprobe.measure import stream_kernels as sk

    zen4 = "+avx2,+avx512f,-avx512fp16,+fma"
    assert sk.numba_cpu_features("x86_64", zen4) == zen4 + ",+prefer-256-bit"
    assert sk.numba_cpu_features("AMD64", zen4) == zen4 + ",+prefer-256-bit"
    assert sk.numba_cpu_features("x86_64", "+avx2,-avx512f,+fma") is None  # Zen 3: AVX2 only
    assert sk.numba_cpu_features("aarch64", "+neon,+avx512f") is None  # (a feature name alone never decides)
    assert sk.numba_cpu_features("x86_64", zen4 + ",+prefer-256-bit") is None


_TUNING = ("import os\n"
           "from rwkvprobe.measure import stream_kernels as sk\n"
           "k = sk.compiled()\n"
           "print(os.environ.get('NUMBA_CPU_FEATURES', ''), '|', sk.vector_tuning())\n")


@pytest.mark.skipif("numba" not in ENGINES, reason="numba does not import here")
@pytest.mark.parametrize("user_choice", [{}, {"NUMBA_CPU_NAME": "generic"}])
def test_the_vector_width_is_chosen_from_this_cpu_unless_the_user_chose(user_choice):
    """In a fresh process: 256-bit vectors where this CPU has AVX-512 (read from llvmlite here), numba's default
    elsewhere, and never over the user's own NUMBA_CPU_NAME / NUMBA_CPU_FEATURES."""
    import platform

    import llvmlite.binding as llvm

    from rwkvprobe.measure import stream_kernels as sk

    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES")}
    proc = subprocess.run([sys.executable, "-c", _TUNING], capture_output=True, text=True, timeout=300,
                          env={**env, **user_choice})
    assert proc.returncode == 0, proc.stderr
    features, tuning = (x.strip() for x in proc.stdout.rsplit("|", 1))
    wanted = None if user_choice else sk.numba_cpu_features(platform.machine(), llvm.get_host_cpu_features().flatten())
    assert (features or None) == wanted
    assert tuning == ("256-bit vectors (LLVM prefer-256-bit)" if wanted else "numba's default for this CPU")


def test_measure_bandwidth_json_structure_and_worker_reports():
    threads = sorted({1, len(USABLE)})
    result = bw.measure_bandwidth(array_bytes=SMALL + 5, threads=threads, trials=3)
    assert json.loads(json.dumps(result)) == result
    assert result["array_bytes"] == SMALL and result["elements"] == SMALL // 8  # rounded down to float64s
    assert result["trials"] == 3 and result["engine"] == bw.engine_name()
    assert [r["threads"] for r in result["runs"]] == threads
    for run in result["runs"]:
        assert run["check_ok"] is True
        assert len(run["cpus"]) == run["threads"] and set(run["cpus"]) <= set(USABLE)
        assert list(run["kernels"]) == list(bw.KERNELS)
        for name, k in run["kernels"].items():
            assert k["bytes_per_trial"] == bw.kernel_bytes(name, SMALL // 8)
            assert len(k["seconds"]) == 3 and all(s > 0 for s in k["seconds"])
            assert k["best_gbps"] == pytest.approx(k["bytes_per_trial"] / k["min_seconds"] / 1e9)
            assert k["min_seconds"] <= k["max_seconds"]
        workers = run["workers"]
        assert [w["cpu"] for w in workers] == run["cpus"]
        assert all(w["affinity"] == [w["cpu"]] for w in workers)  # each thread really was pinned
        assert sum(w["elements"] for w in workers) == SMALL // 8 and all(w["elements"] > 0 for w in workers)
        assert [w["first_element"] for w in workers] == sorted({w["first_element"] for w in workers})
        calls = (bw.WARMUP_TRIALS + 3) * len(bw.KERNELS)
        assert all(w["calls"] == calls for w in workers)  # every worker ran every kernel of every trial


def test_subset_of_kernels_and_progress():
    messages = []
    result = bw.measure_bandwidth(array_bytes=SMALL, threads=[1], trials=2, kernels=("triad", "read"),
                                  progress=messages.append)
    assert list(result["runs"][0]["kernels"]) == ["triad", "read"] and result["runs"][0]["check_ok"]
    assert len(messages) == 2 and "1 thread" in messages[0] and "triad" in messages[1]


def test_table_renders_every_kernel():
    from rich.console import Console

    from rwkvprobe.cli.bandwidth import bandwidth_table

    result = bw.measure_bandwidth(array_bytes=SMALL, threads=[1], trials=1)
    console = Console(record=True, width=150)
    console.print(bandwidth_table(result))
    text = console.export_text()
    assert all(k in text for k in bw.KERNELS) and "best GB/s" in text


def test_command_prints_json_and_writes_results_file(cli, tmp_path):
    out = tmp_path / "bw.json"
    code, stdout, stderr = cli("bandwidth", "--size", "64K", "--threads", "1", "--trials", "2", "--json", "--out", out)
    assert code == 0, stderr
    printed, saved = json.loads(stdout), json.loads(out.read_text())
    assert printed["bandwidth"] == saved["bandwidth"]
    assert saved["schema"] == "rwkvprobe-results" and saved["kind"] == "bandwidth"
    assert saved["bandwidth"]["array_bytes"] == SMALL
    assert saved["environment"]["cpu"]["logical_cpus"] >= 1  # the environment block
    assert "bandwidth:" in stderr and "bandwidth:" not in stdout


def test_command_prints_table(cli):
    code, stdout, _ = cli("bandwidth", "--size", "64K", "--threads", "1", "--trials", "1", "--cpus", "all")
    assert code == 0 and "triad" in stdout and "best GB/s" in stdout


@pytest.mark.parametrize("args, words", [
    (("--size", "0"), "--size"), (("--size", "lots"), "--size"), (("--threads", "0"), "--threads"),
    (("--threads", "999"), "--threads"), (("--cpus", "9999"), "--cpus"), (("--trials", "0"), "trials"),
    (("--out", "/proc/nope/x.json"), "/proc/nope"),
])
def test_command_bad_input_one_line_exit_2(cli, args, words):
    code, out, err = cli("bandwidth", "--size", "64K", "--threads", "1", "--trials", "1", *args)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rwkvprobe: error:") and words in lines[0], err


def test_worker_failure_raises_and_does_not_hang():
    with pytest.raises(RuntimeError, match="worker failed"):
        bw.StreamTeam(1000, [USABLE[0], 10**6])  # no such CPU: that worker cannot pin itself


def test_engine_choice_and_fallback(monkeypatch):
    monkeypatch.delenv("RWKVPROBE_STREAM_ENGINE", raising=False)
    assert bw.engine_name("numpy") == bw.ENGINE
    monkeypatch.setenv("RWKVPROBE_STREAM_ENGINE", "numpy")
    assert bw.engine_name() == bw.ENGINE
    monkeypatch.delenv("RWKVPROBE_STREAM_ENGINE")
    with pytest.raises(InputError, match="expected numba or numpy"):
        bw.engine_name("fortran")
    if bw._numba_kernels() is not None:
        assert bw.engine_name() == "numba"
    # where numba cannot be imported: auto falls back to numpy, asking for numba is one clear error
    monkeypatch.setattr(bw, "_numba_kernels", lambda: None)
    assert bw.engine_name() == bw.ENGINE
    with pytest.raises(InputError, match="pip install numba"):
        bw.engine_name("numba")


@pytest.mark.parametrize("engine", ENGINES)
def test_each_engine_measures_checked_values(engine):
    result = bw.measure_bandwidth(array_bytes=SMALL, threads=[1], trials=2, engine=engine)
    assert result["engine"] == bw.engine_name(engine) and result["runs"][0]["engine"] == result["engine"]
    assert result["runs"][0]["check_ok"] is True


def test_command_engine_option(cli):
    code, stdout, stderr = cli("bandwidth", "--size", "64K", "--threads", "1", "--trials", "1", "--engine", "numpy",
                               "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["bandwidth"]["engine"] == bw.ENGINE
    code, stdout, stderr = cli("bandwidth", "--size", "64K", "--threads", "1", "--trials", "1", "--engine", "gpu")
    assert code == 2 and "expected numba or numpy" in stderr and len(stderr.strip().splitlines()) == 1


def test_best_read_counts_every_checked_probe():
    results = {"bandwidth": {"runs": [{"check_ok": True, "kernels": {"read": {"best_gbps": 20.0}}}]},
               "bandwidth_probes": [{"read_best_gbps": 24.0, "check_ok": True},
                                    {"read_best_gbps": 99.0, "check_ok": False},  # wrong values: not a ceiling
                                    {"read_best_gbps": 22.0, "check_ok": True}]}
    assert bw.best_read_gbps(results) == 24.0
    assert bw.best_read_gbps({}) is None


def test_probe_read_is_compact_and_checked():
    probe = bw.probe_read(1, [USABLE[0]], trials=2)
    assert probe["check_ok"] is True and probe["threads"] == 1 and len(probe["seconds"]) == 2
    assert probe["read_best_gbps"] > 0 and json.loads(json.dumps(probe)) == probe


def test_runs_on_numpy_where_numba_and_the_optional_packages_do_not_import():
    """Nothing of the package imports numba (or torch, ggml, ...) at import time: with them unimportable the
    CLI still starts and the probe falls back to its numpy engine (a deferred import once hid this)."""
    code = ("import sys\n"
            "for m in ('numba', 'torch', 'ggml', 'rwkv', 'tinygrad', 'rknnlite'):\n"
            "    sys.modules[m] = None\n"
            "from rwkvprobe.cli.app import main\n"
            "main(['bandwidth', '--size', '16M', '--trials', '1', '--threads', '1', '--json'])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)["bandwidth"]
    assert result["engine"].startswith("numpy") and result["runs"][0]["check_ok"]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_kept_read_probe_reads_one_array_again_and_checks_it_each_time(engine):
    """analyze's probes share one array and team (ReadProbe): first-touched once, each probe still checked, and each
    probe's read figures its own; a read-only team has no arrays for the other kernels."""
    with bw.ReadProbe(1, [USABLE[0]], engine=engine) as reader:
        array = reader.team.a
        assert reader.team.b.size == 0 and reader.team.c.size == 0
        assert array.size * bw.ITEM_BYTES == bw.default_array_bytes(bw.cachesize.usable_llc_bytes())
        first, second = reader.probe(2), reader.probe(3)
        assert reader.team.a is array and reader.team.workers[0]["calls"] == 2 * bw.WARMUP_TRIALS + 5
        for probe, trials in ((first, 2), (second, 3)):
            assert probe["check_ok"] is True and len(probe["seconds"]) == trials and probe["trials"] == trials
            assert probe["read_best_gbps"] == pytest.approx(array.size * bw.ITEM_BYTES / min(probe["seconds"]) / 1e9)
        assert reader.team.read_value == pytest.approx(array.size)  # every element 1.0, read as a dot with itself
        with pytest.raises(ValueError, match="read-only"):
            reader.team.run("copy")
        array[7] = 5.0  # a wrong value anywhere fails the next probe's check
        assert reader.probe(1)["check_ok"] is False
        with pytest.raises(InputError, match="--trials 0"):
            reader.probe(0)
    assert reader.team.a is None  # closed: the array is freed


def test_a_kept_read_probe_names_each_trials_read_method_after_earlier_probes():
    """The numba engine alternates its read methods from the team's first read on; a kept team's later probes
    start where the earlier ones stopped."""
    if "numba" not in ENGINES:
        pytest.skip("numba is not installed here")
    with bw.StreamTeam(4096, [USABLE[0]], engine="numba", read_only=True) as team:
        first = bw._trials(team, 2, ("read",))  # reads 1 (warm-up, compiled loop), 2 (dot), 3 (four streams)
        second = bw._trials(team, 1, ("read",))  # reads 4 (warm-up, loop), 5 (dot)
    methods = bw.kernel_methods("read", bw._numba_kernels())
    assert list(first["kernels"]["read"]["best_gbps_by_method"]) == [methods[1], methods[2 % len(methods)]]
    assert list(second["kernels"]["read"]["best_gbps_by_method"]) == [methods[4 % len(methods)]]
