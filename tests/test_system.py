"""Environment capture against fake sysfs/procfs trees (built in tmp_path) and the real machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rwkvprobe.measure import system

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE",
               "OPENBLAS_L2_SIZE", "OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY")
RK3588_ZONES = {"soc-thermal": 45000, "bigcore0-thermal": 46250, "littlecore-thermal": 44000,
                "npu-thermal": 43500}


@pytest.fixture(autouse=True)
def clean_thread_vars(monkeypatch):
    """The machine's own OMP_NUM_THREADS etc. must not leak into the warnings under test."""
    for var in THREAD_VARS:
        monkeypatch.delenv(var, raising=False)


def write(root: Path, rel: str, text: str | bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


def arm_cpuinfo(parts: dict[int, str]) -> str:
    blocks = [f"processor\t: {cpu}\nBogoMIPS\t: 48.00\nFeatures\t: fp asimd evtstrm aes\n"
              f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x2\nCPU part\t: {part}\n"
              "CPU revision\t: 0\n" for cpu, part in parts.items()]
    return "\n".join(blocks) + "\n"


def set_cpufreq(root: Path, cpu: int, **values: str | int) -> None:
    for name, value in values.items():
        write(root, f"sys/devices/system/cpu/cpu{cpu}/cpufreq/{name}", f"{value}\n")


def set_governors(root: Path, cpu_governor: str, dmc: str, npu: str) -> None:
    for cpu in range(8):
        set_cpufreq(root, cpu, scaling_governor=cpu_governor)
    write(root, "sys/class/devfreq/dmc/governor", dmc + "\n")
    write(root, "sys/class/devfreq/fdab0000.npu/governor", npu + "\n")


def set_temp(root: Path, zone_type: str, milli_c: int) -> None:
    zone = list(RK3588_ZONES).index(zone_type)
    write(root, f"sys/class/thermal/thermal_zone{zone}/temp", f"{milli_c}\n")


@pytest.fixture
def rk3588(tmp_path: Path) -> Path:
    """An Orange Pi 5-like tree: 4x A55 (cpu0-3, 1.8 GHz) + 4x A76 (cpu4-7, 2.4 GHz), DRAM and NPU devfreq."""
    root = tmp_path / "rk3588"
    write(root, "proc/cpuinfo", arm_cpuinfo({c: "0xd05" if c < 4 else "0xd0b" for c in range(8)}))
    write(root, "proc/device-tree/model", "Orange Pi 5\0")
    write(root, "proc/device-tree/compatible", "rockchip,rk3588-orangepi-5\0rockchip,rk3588\0")
    write(root, "proc/meminfo", "MemTotal:       16337400 kB\nMemFree: 1 kB\nMemAvailable:   15000000 kB\n")
    write(root, "etc/os-release", 'NAME="Ubuntu"\nPRETTY_NAME="Ubuntu 22.04.3 LTS"\n')
    write(root, "sys/devices/system/cpu/online", "0-7\n")
    for cpu in range(8):
        big = cpu >= 4
        khz = 2400000 if big else 1800000
        set_cpufreq(root, cpu, scaling_governor="schedutil", scaling_cur_freq=khz, scaling_min_freq=408000,
                    scaling_max_freq=khz, cpuinfo_max_freq=khz)
        write(root, f"sys/devices/system/cpu/cpu{cpu}/cpu_capacity", "1024\n" if big else "530\n")
        write(root, f"sys/devices/system/cpu/cpu{cpu}/topology/core_id", f"{cpu % 4 if not big else cpu % 2}\n")
        write(root, f"sys/devices/system/cpu/cpu{cpu}/topology/cluster_id", f"{0 if not big else cpu // 2 - 1}\n")
    cache = "sys/devices/system/cpu/cpu0/cache/index2/"
    for name, value in {"level": "3", "type": "Unified", "size": "3072K", "shared_cpu_list": "0-7"}.items():
        write(root, cache + name, value + "\n")
    available = "dmc_ondemand rknpu_ondemand userspace powersave performance simple_ondemand\n"
    for dev, hz in {"dmc": 528000000, "fdab0000.npu": 1000000000}.items():
        for name, value in {"cur_freq": hz, "min_freq": 528000000, "max_freq": 2112000000}.items():
            write(root, f"sys/class/devfreq/{dev}/{name}", f"{value}\n")
        write(root, f"sys/class/devfreq/{dev}/available_governors", available)
    set_governors(root, "schedutil", "dmc_ondemand", "rknpu_ondemand")
    for zone, (zone_type, milli_c) in enumerate(RK3588_ZONES.items()):
        write(root, f"sys/class/thermal/thermal_zone{zone}/type", zone_type + "\n")
        write(root, f"sys/class/thermal/thermal_zone{zone}/temp", f"{milli_c}\n")
    write(root, "sys/kernel/debug/rknpu/version", "RKNPU driver: v0.9.6\n")
    write(root, "usr/lib/librknnrt.so", b"\x7fELF" + b"\0" * 5000
          + b"librknnrt version: %s\0librknnrt version: 2.3.0 (c949ad889d@2024-11-07T11:35:33)\0" + b"\0" * 100)
    return root


def test_clusters_big_little(rk3588):
    clusters = {c["name"]: c for c in system.cpu_clusters(rk3588)}
    assert clusters["big"]["cpus"] == [4, 5, 6, 7] and clusters["big"]["max_khz"] == 2400000
    assert clusters["little"]["cpus"] == [0, 1, 2, 3] and clusters["little"]["max_khz"] == 1800000


def test_capture_rk3588(rk3588):
    env = system.capture_environment(rk3588)
    json.dumps(env)  # JSON-ready
    assert env["board"] == {"model": "Orange Pi 5", "rk3588": True,
                            "compatible": ["rockchip,rk3588-orangepi-5", "rockchip,rk3588"]}
    cpu = env["cpu"]
    assert cpu["model"] == "4x Cortex-A55 + 4x Cortex-A76"
    assert (cpu["logical_cpus"], cpu["physical_cores"], cpu["llc_bytes"]) == (8, 8, 3 * 1024 * 1024)
    assert {c["name"]: c["core"] for c in cpu["clusters"]} == {"big": "Cortex-A76", "little": "Cortex-A55"}
    assert {r["governor"] for r in env["cpufreq"]} == {"schedutil"}
    assert env["cpufreq"][4]["cpuinfo_max_khz"] == 2400000
    devfreq = {d["name"]: d for d in env["devfreq"]}
    assert (devfreq["dmc"]["kind"], devfreq["dmc"]["governor"], devfreq["dmc"]["cur_hz"]) == (
        "dram", "dmc_ondemand", 528000000)
    assert (devfreq["fdab0000.npu"]["kind"], devfreq["fdab0000.npu"]["governor"]) == ("npu", "rknpu_ondemand")
    assert "performance" in devfreq["dmc"]["available_governors"]
    assert [(z["type"], z["temp_c"]) for z in env["thermal"]][:2] == [("soc-thermal", 45.0),
                                                                      ("bigcore0-thermal", 46.2)]
    assert env["memory"] == {"total_bytes": 16337400 * 1024, "available_bytes": 15000000 * 1024}
    assert env["os"] == "Ubuntu 22.04.3 LTS"
    assert env["npu"]["driver_version"] == "RKNPU driver: v0.9.6"
    assert env["npu"]["librknnrt_path"] == "/usr/lib/librknnrt.so"
    assert env["npu"]["librknnrt_version"] == "2.3.0 (c949ad889d@2024-11-07T11:35:33)"
    assert env["virtualization"]["vm"] is False and env["virtualization"]["container"] is False
    assert set(env["versions"]) >= {"numpy", "onnxruntime", "torch", "rknn-toolkit-lite2", "rwkvprobe"}


def test_governor_warnings_name_the_fix(rk3588):
    warnings = system.environment_warnings(system.capture_environment(rk3588))
    cpu = [w for w in warnings if "scaling_governor" in w]
    assert len(cpu) == 1 and "'schedutil' on CPUs 0-7" in cpu[0]
    assert cpu[0].endswith("echo performance | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor")
    dmc = [w for w in warnings if "'dmc'" in w]
    assert len(dmc) == 1 and "528 MHz" in dmc[0] and "sbc-reviews issue #2" in dmc[0]
    assert dmc[0].endswith("echo performance | sudo tee /sys/class/devfreq/dmc/governor")
    npu = [w for w in warnings if "fdab0000.npu" in w]
    assert len(npu) == 1 and npu[0].endswith("echo performance | sudo tee /sys/class/devfreq/fdab0000.npu/governor")
    assert len(warnings) == 3


def test_no_warnings_when_tuned(rk3588):
    set_governors(rk3588, "performance", "performance", "performance")
    env = system.capture_environment(rk3588)
    before = system.snapshot_dynamic(rk3588)
    after = system.snapshot_dynamic(rk3588)
    assert system.environment_warnings(env, before, after) == []


def test_throttling_during_run(rk3588):
    set_governors(rk3588, "performance", "performance", "performance")
    env = system.capture_environment(rk3588)
    before = system.snapshot_dynamic(rk3588)
    for cpu in range(4, 8):
        set_cpufreq(rk3588, cpu, scaling_cur_freq=1416000, scaling_max_freq=1416000)
    set_temp(rk3588, "bigcore0-thermal", 86500)
    after = system.snapshot_dynamic(rk3588)
    warnings = system.environment_warnings(env, before, after)
    text = "\n".join(warnings)
    assert "CPU clocks fell during the run (CPUs 4-7 2400 MHz -> 1416 MHz)" in text
    assert "echo 2400000 | sudo tee /sys/devices/system/cpu/cpu{4,5,6,7}/cpufreq/scaling_max_freq" in text
    assert "Hot: bigcore0-thermal 86.5 C" in text and "85 C" in text
    assert "bigcore0-thermal heated by 40.3 C" in text
    assert "CPUs 0-3" not in text  # the little cores kept their clocks


def test_devfreq_drop_and_small_changes(rk3588):
    set_governors(rk3588, "performance", "performance", "performance")
    write(rk3588, "sys/class/devfreq/dmc/cur_freq", "2112000000\n")
    before = system.snapshot_dynamic(rk3588)
    write(rk3588, "sys/class/devfreq/dmc/cur_freq", "1560000000\n")
    set_cpufreq(rk3588, 0, scaling_cur_freq=1700000)  # -5.6%: within noise
    set_temp(rk3588, "soc-thermal", 59000)  # +14 C: below the rise threshold
    after = system.snapshot_dynamic(rk3588)
    warnings = system.environment_warnings(system.capture_environment(rk3588), before, after)
    assert len(warnings) == 1 and "devfreq 'dmc' clock fell during the run (2112 -> 1560 MHz)" in warnings[0]


def test_drops_ignored_under_ondemand_governors(rk3588):
    before = system.snapshot_dynamic(rk3588)
    for cpu in range(8):
        set_cpufreq(rk3588, cpu, scaling_cur_freq=408000)  # idle after the run: normal for schedutil
    after = system.snapshot_dynamic(rk3588)
    assert not [w for w in system.environment_warnings(system.capture_environment(rk3588), before, after)
                if "fell" in w]


def test_empty_tree_is_all_unknown(tmp_path):
    env = system.capture_environment(tmp_path)
    json.dumps(env)
    assert env["cpu"]["model"] is None and env["cpu"]["logical_cpus"] is None
    assert env["cpu"]["physical_cores"] is None and env["cpu"]["llc_bytes"] is None
    assert env["board"] == {"model": None, "compatible": [], "rk3588": False}
    assert (env["cpufreq"], env["devfreq"], env["thermal"]) == ([], [], [])
    assert env["memory"] == {"total_bytes": None, "available_bytes": None}
    assert env["os"] is None and env["npu"]["librknnrt_version"] is None and env["npu"]["driver_version"] is None
    warnings = system.environment_warnings(env, system.snapshot_dynamic(tmp_path), system.snapshot_dynamic(tmp_path))
    assert warnings == [system._GOVERNOR_NOTE]  # a note, no governor warning, nothing about the unknowns
    summary = dict(system.summarize_environment(env))
    assert summary["CPU"] == summary["CPU governors"] == summary["DRAM governor"] == "unknown"
    assert summary["Temperatures"] == "unknown" and summary["Virtualization"] == "none detected"


def test_unreadable_files_do_not_crash(rk3588):
    for rel in ("proc/cpuinfo", "proc/meminfo", "proc/device-tree/compatible", "usr/lib/librknnrt.so",
                "sys/class/devfreq/dmc/governor", "sys/class/thermal/thermal_zone0/temp",
                "sys/devices/system/cpu/cpu4/cpufreq/scaling_governor", "sys/kernel/debug/rknpu/version"):
        path = rk3588 / rel
        path.unlink()
        path.mkdir()  # a directory where a file is expected
    write(rk3588, "sys/class/thermal/thermal_zone1/temp", "not a number\n")
    write(rk3588, "sys/class/devfreq/broken", "a file where a device directory is expected\n")
    env = system.capture_environment(rk3588)
    json.dumps(env)
    assert env["cpu"]["model"] is None and env["board"]["rk3588"] is False
    assert env["thermal"][0]["temp_c"] is None and env["thermal"][1]["temp_c"] is None
    assert env["cpufreq"][4]["governor"] is None and env["cpufreq"][5]["governor"] == "schedutil"
    assert {d["name"]: d["governor"] for d in env["devfreq"]} == {
        "broken": None, "dmc": None, "fdab0000.npu": "rknpu_ondemand"}
    assert env["npu"] == {"driver_version": None, "driver_version_file": None,
                          "librknnrt_path": "/usr/lib/librknnrt.so", "librknnrt_version": None}
    warnings = system.environment_warnings(env, system.snapshot_dynamic(rk3588), system.snapshot_dynamic(rk3588))
    assert any("CPUs 0-3,5-7" in w for w in warnings) and not any("'dmc'" in w for w in warnings)
    system.summarize_environment(env)


def test_scan_binary_across_chunks_and_limit(tmp_path):
    lib = tmp_path / "librknnrt.so"
    boundary = 1024 * 1024
    version = b"librknnrt version: 1.6.0 (9a7b5d24c@2023-12-13T17:31:11)\0"
    lib.write_bytes(b"\0" * (boundary - 20) + version + b"\xff" * 1000)  # cut by the first chunk boundary
    assert system.scan_binary_for(lib, b"librknnrt version") == "1.6.0 (9a7b5d24c@2023-12-13T17:31:11)"
    assert system.scan_binary_for(lib, b"librknnrt version", limit=boundary // 2) is None  # not read that far
    assert system.scan_binary_for(tmp_path / "missing.so", b"librknnrt version") is None
    assert system.scan_binary_for(tmp_path, b"librknnrt version") is None  # a directory


def test_thread_env_vars_are_recorded_and_warned(rk3588, monkeypatch):
    set_governors(rk3588, "performance", "performance", "performance")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("OPENBLAS_CORETYPE", "CORTEXA76")
    env = system.capture_environment(rk3588)
    assert env["env_vars"] == {"OMP_NUM_THREADS": "1", "OPENBLAS_CORETYPE": "CORTEXA76"}
    warnings = system.environment_warnings(env)
    assert len(warnings) == 1 and "OMP_NUM_THREADS=1" in warnings[0] and warnings[0].endswith("unset OMP_NUM_THREADS")


def test_vm_and_container_detection(tmp_path):
    write(tmp_path, "proc/cpuinfo", "processor\t: 0\nmodel name\t: AMD EPYC 7763\nflags\t\t: fpu sse2 hypervisor\n")
    write(tmp_path, ".dockerenv", "")
    env = system.capture_environment(tmp_path)
    assert env["cpu"]["model"] == "AMD EPYC 7763"
    assert env["virtualization"] == {"vm": True, "container": True,
                                     "vm_evidence": ["hypervisor flag in /proc/cpuinfo"],
                                     "container_evidence": ["/.dockerenv"]}
    vm = [w for w in system.environment_warnings(env) if "virtual machine" in w]
    assert len(vm) == 1 and "not the host hardware's" in vm[0]


def test_summary_lines(rk3588):
    summary = dict(system.summarize_environment(system.capture_environment(rk3588)))
    assert summary["CPU"] == "4x Cortex-A55 + 4x Cortex-A76"
    assert summary["Board"] == "Orange Pi 5 (RK3588)"
    assert summary["Cores"] == ("8 logical, 8 physical; clusters: big 4-7 (Cortex-A76, 2400 MHz); "
                                "little 0-3 (Cortex-A55, 1800 MHz)")
    assert summary["CPU governors"] == "schedutil (CPUs 0-7)"
    assert summary["DRAM governor"] == "dmc: dmc_ondemand, 528 MHz"
    assert "fdab0000.npu: rknpu_ondemand" in summary["NPU"] and "librknnrt 2.3.0" in summary["NPU"]
    assert summary["Memory"] == "16.7 GB total, 15.4 GB available"
    assert summary["Temperatures"] == "max 46.2 C (bigcore0-thermal) over 4 zones"
    assert all(isinstance(v, str) for v in summary.values())
    assert system.summarize_environment({})  # a partial or old environment still summarizes


@pytest.mark.parametrize("cpus, text", [([], ""), ([3], "3"), ([0, 1, 2, 3, 6, 8, 9], "0-3,6,8-9")])
def test_format_cpu_list_round_trip(cpus, text):
    assert system.format_cpu_list(cpus) == text
    assert system.parse_cpu_list(text) == cpus


def test_real_machine():
    env = system.capture_environment()
    assert json.loads(json.dumps(env))["python"]["version"]
    assert env["cpu"]["logical_cpus"] and env["memory"]["total_bytes"]
    json.dumps(system.snapshot_dynamic())
    assert all(isinstance(w, str) for w in system.environment_warnings(env))
    assert all(isinstance(v, str) for _, v in system.summarize_environment(env))


def test_contention_counts_other_processes_and_steal():
    from rwkvprobe.measure import contention as c

    a = c.Sample(wall=0.0, busy=100.0, steal=5.0, own=10.0, cpus=2)
    # 1 s: the machine was busy 1.5 CPU-s, 0.5 of it ours; 0.2 CPU-s stolen by the hypervisor
    b = c.Sample(wall=1.0, busy=101.5, steal=5.2, own=10.5, cpus=2)
    x = c.between(a, b)
    assert x["other_cpu_seconds"] == pytest.approx(1.0) and x["steal_cpu_seconds"] == pytest.approx(0.2)
    assert x["other_share"] == pytest.approx(0.5) and x["steal_share"] == pytest.approx(0.1)
    assert x["contended"] is True
    quiet = c.Sample(wall=1.0, busy=100.55, steal=5.0, own=10.5, cpus=2)  # others: 0.05 CPU-s of 2 = 2.5%
    assert c.between(a, quiet)["contended"] is False
    # a 20 ms window with one 10 ms tick of someone else: rounding, not contention
    tick = c.Sample(wall=0.02, busy=100.01, steal=5.0, own=10.0, cpus=2)
    assert c.between(a, tick)["contended"] is False


def test_contention_summary_names_contended_points():
    from rwkvprobe.measure import contention as c

    calm = {"other_share": 0.01, "steal_share": 0.0, "contended": False}
    busy = {"other_share": 0.4, "steal_share": 0.05, "contended": True}
    pts = [{"backend": "numpy", "dtype": "fp32", "m": 1, "k": 8, "n": 8, "contention": calm},
           {"backend": "numpy", "dtype": "fp32", "m": 1, "k": 16, "n": 8, "contention": busy, "remeasured": {}},
           {"backend": "numpy", "dtype": "fp32", "m": 1, "k": 32, "n": 8}]
    s = c.summary(pts)
    assert s["sampled"] == 2 and s["contended"] == 1 and s["remeasured"] == 1
    assert s["max_share"] == pytest.approx(0.45) and s["contended_points"] == ["numpy fp32 M=1 16x8"]


def test_the_canary_says_how_far_the_machine_ran_below_its_best_speed():
    """A point's canary over the run's best (its reference as the points began, or a faster point's): the ratio,
    the count of points at CANARY_SLOW or more, the largest ratio; a point or a file without a canary counts none."""
    from rwkvprobe.measure import contention as c

    def pt(k, seconds=None, **more):
        return {"backend": "numpy", "dtype": "fp32", "m": 1, "k": k, "n": 8, **more,
                "contention": {"other_share": 0.0, "steal_share": 0.0, "contended": False,
                               **({"canary_seconds": seconds} if seconds else {})}}

    pts = [pt(8, 1.0e-4), pt(16, 1.3e-4, machine_slow_recheck={}), pt(32, 1.2e-4), pt(64)]
    assert c.canary_best(pts) == 1.0e-4 and c.canary_best(pts, 0.8e-4) == 0.8e-4 and c.canary_best([pt(8)]) is None
    assert c.canary_ratio(pts[1], 1.0e-4) == pytest.approx(1.3) and c.canary_ratio(pts[3], 1.0e-4) is None
    s = c.summary(pts)
    assert s["canary_sampled"] == 3 and s["machine_slow"] == 1 and s["canary_max_ratio"] == pytest.approx(1.3)
    assert s["machine_slow_rechecked"] == 1
    # judged against a faster reference (0.85e-4), the 1.2x point is slow too (1.41x), the best point not (1.18x)
    s = c.summary(pts, 0.85e-4)
    assert s["machine_slow"] == 2 and s["canary_max_ratio"] == pytest.approx(1.3 / 0.85)
    assert c.summary([pt(8)])["canary_sampled"] == 0 and c.summary([pt(8)])["canary_max_ratio"] is None


def test_a_real_canary_is_a_short_positive_time():
    from rwkvprobe.measure import contention as c

    t = c.canary()
    assert 0 < t < 0.5 and c.canary() < 0.5


def test_the_torch_canary_times_the_same_matmul_on_torch_threads():
    """torch_canary: the canary's operands, multiplied by torch (the same product as numpy's), a short positive time;
    torch's thread count left as it was."""
    torch = pytest.importorskip("torch")
    from rwkvprobe.measure import contention as c

    a, b = c._canary_operands()
    assert torch.allclose(torch.mm(torch.from_numpy(a), torch.from_numpy(b)), torch.from_numpy(a @ b), rtol=1e-4)
    threads = torch.get_num_threads()
    t = c.torch_canary()
    assert 0 < t < 0.5 and torch.get_num_threads() == threads


def test_a_real_sample_is_sane():
    from rwkvprobe.measure import contention as c

    a = c.sample()
    x = sum(i * i for i in range(200_000))  # some work of our own
    b = c.sample()
    got = c.between(a, b)
    assert x > 0 and got["cpus"] >= 1 and got["other_cpu_seconds"] >= 0 and got["steal_cpu_seconds"] >= 0


def test_wait_for_quiet_returns_at_once_when_quiet_and_gives_up_when_busy(monkeypatch):
    from rwkvprobe.measure import analyze, contention

    monkeypatch.setattr(contention, "between", lambda a, b, threshold=0.1: {"contended": False})
    assert analyze._wait_for_quiet(5.0, step=0.01) < 1.0
    monkeypatch.setattr(contention, "between", lambda a, b, threshold=0.1: {"contended": True})
    waited = analyze._wait_for_quiet(0.2, step=0.01)
    assert 0.2 <= waited < 1.0


def test_free_memory_is_handed_back_where_the_c_library_can_and_skipped_where_it_cannot(monkeypatch):
    """glibc (Linux CI, boards): malloc_trim is found and called; a C library without it (musl, macOS) is no error."""
    import ctypes
    import platform

    from rwkvprobe.measure import system

    glibc = platform.libc_ver()[0] == "glibc"
    assert system.release_free_memory() is glibc
    monkeypatch.setattr(ctypes, "CDLL", lambda name: (_ for _ in ()).throw(OSError("no libc")))
    assert system.release_free_memory() is False
