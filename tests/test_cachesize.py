"""The last-level cache a run sizes its cold measurements by (measure/cachesize.py): the reported one, or the end of
the cache a read scan shows where the reported one is large, an override, and a worker taking its parent's."""

import pytest

from rwkvprobe.errors import InputError
from rwkvprobe.measure import bandwidth, cachesize

MiB = 2**20
#: the scan of a 2-vCPU Intel Xeon VM that reported a 480 MiB L3 (GB/s, one thread, best of two rounds; the last
#: size is the DRAM reference, 1.25x the reported cache)
XEON_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 600]
XEON_GBPS = [49.4, 40.0, 30.0, 29.0, 24.0, 21.0, 19.4, 14.0, 17.0, 17.1]


@pytest.fixture
def fresh(monkeypatch):
    """A decision made anew in this test, none carried to the next, no override from the environment."""
    monkeypatch.delenv(cachesize.ENV, raising=False)
    cachesize.forget()
    yield
    cachesize.forget()


def sizes(mib):
    return [m * MiB for m in mib]


def test_the_scan_of_a_vm_with_a_host_sized_cache_ends_it_where_reads_reach_dram_speed():
    # 64 MiB read 1.13x the reference (within 1.15x: DRAM speed); 128 MiB's dip below it changes nothing
    assert cachesize.end_of_cache(sizes(XEON_SIZES), XEON_GBPS, 2 * MiB) == 64 * MiB
    faster_64 = XEON_GBPS[:6] + [20.0] + XEON_GBPS[7:]  # 64 MiB 1.17x the reference: partly cached still
    assert cachesize.end_of_cache(sizes(XEON_SIZES), faster_64, 2 * MiB) == 128 * MiB
    slow_256 = XEON_GBPS[:8] + [21.0] + XEON_GBPS[9:]  # a faster read at 256 MiB: DRAM speed from 512 MiB only
    assert cachesize.end_of_cache(sizes(XEON_SIZES), slow_256, 2 * MiB) is None


@pytest.mark.parametrize("why, gbps, l2", [
    ("the cache holds everything up to the reference", [49, 40, 30, 29, 29, 29, 29, 29, 29, 17], 2 * MiB),
    ("only L2 reads faster than DRAM (no last-level cache seen to end)", [49, 40, 18, 17, 17, 17, 17, 17, 17, 17], 2 * MiB),
    ("the step is L2's, not the last-level cache's", [49, 40, 30, 29, 18, 17, 17, 17, 17, 17], 8 * MiB),
    ("a reference no faster than nothing", [49, 40, 30, 29, 18, 17, 17, 17, 17, 0.0], 2 * MiB),
])
def test_no_end_of_the_cache_where_the_scan_does_not_show_one(why, gbps, l2):
    assert cachesize.end_of_cache(sizes(XEON_SIZES), gbps, l2) is None, why


def test_a_reported_cache_up_to_64_mib_is_taken_as_it_is_without_a_scan(fresh, monkeypatch):
    monkeypatch.setattr(cachesize.system, "llc_bytes", lambda: 32 * MiB)
    monkeypatch.setattr(cachesize, "scan", lambda top: pytest.fail("no scan for a 32 MiB cache"))
    d = cachesize.decide()
    assert d == {"bytes": 32 * MiB, "reported_bytes": 32 * MiB, "how": "as the CPU reports it"}
    assert cachesize.usable_llc_bytes() == 32 * MiB


def test_a_large_reported_cache_is_scanned_and_sizing_follows_the_scan(fresh, monkeypatch):
    monkeypatch.setattr(cachesize.system, "llc_bytes", lambda: 480 * MiB)
    tops = []

    def fake_scan(top):
        tops.append(top)
        return {"sizes_bytes": sizes(XEON_SIZES[:-1]) + [top], "read_gbps": XEON_GBPS, "rounds": 2, "seconds": 0.5}

    monkeypatch.setattr(cachesize, "scan", fake_scan)
    monkeypatch.setattr(cachesize, "_l2_bytes", lambda: 2 * MiB)
    d = cachesize.decide()
    assert tops == [600 * MiB] and d["bytes"] == 64 * MiB and d["reported_bytes"] == 480 * MiB
    assert d["how"].startswith("measured: the CPU reports 480 MiB, but one thread re-reading a buffer of 64 MiB")
    assert d["scan"]["read_gbps"] == XEON_GBPS
    # once a process: every cold measurement of the run sized alike
    assert cachesize.decide() is d and tops == [600 * MiB]
    # STREAM's arrays follow: 4x the size decided
    assert bandwidth.default_array_bytes(cachesize.usable_llc_bytes()) == 256 * MiB


def test_a_scan_without_an_end_keeps_the_reported_cache(fresh, monkeypatch):
    monkeypatch.setattr(cachesize.system, "llc_bytes", lambda: 480 * MiB)
    flat = [49, 40, 30, 29, 29, 29, 29, 29, 29, 17]
    monkeypatch.setattr(cachesize, "scan", lambda top: {"sizes_bytes": sizes(XEON_SIZES), "read_gbps": flat})
    d = cachesize.decide()
    assert d["bytes"] == 480 * MiB and "found no smaller end" in d["how"]


def test_no_scan_where_it_would_take_too_much_of_the_memory(fresh, monkeypatch):
    import psutil

    class Mem:
        available = 4 * 2**30  # an eighth is 512 MiB: a 1.25 GiB reference does not fit

    monkeypatch.setattr(cachesize.system, "llc_bytes", lambda: 1024 * MiB)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: Mem)
    monkeypatch.setattr(cachesize, "scan", lambda top: pytest.fail("no scan"))
    d = cachesize.decide()
    assert d["bytes"] == 1024 * MiB and "more than 12% of the available memory" in d["how"]


def test_the_environment_sets_the_size_and_refuses_nonsense_in_one_line(fresh, monkeypatch):
    monkeypatch.setattr(cachesize, "scan", lambda top: pytest.fail("no scan when the size is set"))
    monkeypatch.setenv(cachesize.ENV, str(48 * MiB))
    assert cachesize.decide()["bytes"] == 48 * MiB and cachesize.decide()["how"] == f"set by {cachesize.ENV}"
    for bad in ("0", "lots", "-5", str(2**41)):
        cachesize.forget()
        monkeypatch.setenv(cachesize.ENV, bad)
        with pytest.raises(InputError, match=f"{cachesize.ENV}=.*expected the last-level cache size in bytes"):
            cachesize.decide()


def test_a_worker_adopts_its_parents_decision(fresh, monkeypatch):
    monkeypatch.setattr(cachesize, "scan", lambda top: pytest.fail("a worker does not scan"))
    monkeypatch.setattr(cachesize.system, "llc_bytes", lambda: 480 * MiB)
    cachesize.adopt({"bytes": 64 * MiB, "reported_bytes": 480 * MiB, "how": "measured: ..."})
    assert cachesize.usable_llc_bytes() == 64 * MiB


def test_a_real_scan_reads_every_size_and_ends_with_the_reference():
    """On this machine, whatever its caches: sizes doubling from 1 MiB to half the top, then the top; every rate
    a real, positive figure."""
    record = cachesize.scan(8 * MiB, rounds=1)
    assert record["sizes_bytes"] == sizes([1, 2, 4, 8])
    assert len(record["read_gbps"]) == 4 and all(g > 0 for g in record["read_gbps"])


@pytest.mark.parametrize("command", ["analyze", "sweep"])
def test_a_bad_setting_ends_the_command_in_one_line_before_it_writes_anything(fresh, monkeypatch, cli, tmp_path,
                                                                                command):
    from conftest import PROFILES

    monkeypatch.setenv(cachesize.ENV, "lots")
    out = tmp_path / "run"
    args = [PROFILES / "rwkv-0b1.yaml", "--quick"] if command == "analyze" else ["--sizes", "128:256:128"]
    code, stdout, stderr = cli(command, *args, "--backends", "numpy", "--out", out)
    assert code == 2 and "Traceback" not in stderr
    assert "RWKVPROBE_LLC_BYTES='lots': expected the last-level cache size in bytes" in stderr
    assert not out.exists()
