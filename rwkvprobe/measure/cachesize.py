"""The last-level cache a run sizes its arrays by: the one the CPU reports, or less where a read scan shows less.

Every cold measurement is sized from the last-level cache: STREAM's arrays (4x it, bandwidth.default_array_bytes),
the layer points' weight rotation and eviction read (4x it between two uses of a weight, timing.plan_rotation), the
layer passes' rings (layerpass.ring_size). A VM reports its host's cache, of which its few vCPUs may keep far less:
a 2-vCPU Intel Xeon VM (AMX, AVX-512) reported an L3 of 480 MiB, yet one thread re-reading a buffer read 24-29 GB/s
at 4-8 MiB, 18-21 at 16-32 MiB and 14-17 GB/s from 64 MiB up to 2 GiB alike: DRAM speed. Sized by 480 MiB, each
bandwidth array was 2 GB (15 s of the bandwidth stage, mostly first-touching 6 GB of fresh pages), every layer
point's call was preceded by a 480 MB eviction read, and ``analyze --quick`` took 112 s (rwkv-0b4) and 155 s
(rwkv-1b5) where it takes 38 s on a 32 MiB machine.

So where the reported cache is large (over SCAN_ABOVE_BYTES), one thread re-reads buffers of 1 MiB, 2 MiB, ... (by
2**0.5 from 8 MiB) and one a quarter larger than the reported cache (which no cache of that size can hold: the DRAM reference), in
interleaved rounds (a VM's speed moves in phases: each size is timed in every round and its best counts). The
cache ends at the smallest size from which every larger one reads within DRAM_MATCH of the reference, provided a
size between the per-core L2 and that one read at least CACHED_FASTER times the reference (the last-level cache
was seen, and seen to end). Then that size, if smaller than the reported one, is what the run sizes by; otherwise
(no clear end: a core that reads its cache no faster than DRAM, say) the reported one is kept. The scan, its rates
and the decision are recorded in results.json (``cache``). ``RWKVPROBE_LLC_BYTES`` sets the size outright (a worker
process takes its parent's decision the same way: ``adopt``).
"""

from __future__ import annotations

import os
import time

from rwkvprobe.errors import InputError
from rwkvprobe.measure import system

ENV = "RWKVPROBE_LLC_BYTES"
MiB = 2**20
#: a reported cache up to this size is taken as it is (boards, desktops: 4x it is at most 256 MiB an array)
SCAN_ABOVE_BYTES = 64 * MiB
#: the DRAM reference is this multiple of the reported cache (a cyclic read of more than the cache misses it)
REFERENCE_FACTOR = 1.25
#: the scan's buffer may use at most this share of the available memory (else the reported size is kept)
MEMORY_SHARE = 0.125
#: interleaved rounds over the sizes; the best of each size's timings counts
ROUNDS = 2
#: each size is read at least this many times a round (after one untimed read that brings it into the cache)
MIN_READS = 2
#: and at least this many bytes a round (small sizes: many reads)
MIN_BYTES_READ = 32 * MiB
#: a size reads "at DRAM speed" within this multiple of the reference's rate
DRAM_MATCH = 1.15
#: the last-level cache was seen: a size above L2 read at least this multiple of the reference's rate
CACHED_FASTER = 1.3
#: from this size on the scan steps by 2**0.5, not 2 (8, 11, 16, 22, 32, 45, 64, 90, 128 MiB, ...): sized by the end of
#: the cache, a torch fp32 1024x4096 GEMV read 24 GB/s (sized by 64 MiB), 16-20 GB/s (256 MiB, or 2-5 ms of eviction read
#: before each call) and 36-49 GB/s (16-32 MiB: partly cached) on the Xeon VM, where the real forward pass reads it at 25:
#: a step of 2 left the end at 64 or 128 MiB from run to run
FINE_FROM_MIB = 8
#: when the per-core L2 cannot be read
DEFAULT_L2_BYTES = 1 * MiB

_decided: dict | None = None


def end_of_cache(sizes: list[int], gbps: list[float], l2_bytes: int) -> int | None:
    """The smallest of ``sizes`` (ascending, bytes; the last is the DRAM reference) from which every size reads
    within DRAM_MATCH of the reference's rate ``gbps[-1]``, where a size above ``l2_bytes`` and below it read at
    least CACHED_FASTER times the reference; None where the scan shows no such end."""
    if len(sizes) < 3 or len(sizes) != len(gbps) or gbps[-1] <= 0:
        return None
    ref = gbps[-1]
    end = len(sizes) - 1
    while end > 0 and gbps[end - 1] <= DRAM_MATCH * ref:
        end -= 1
    if end >= len(sizes) - 1:  # only the reference itself reads at DRAM speed: no room to tell
        return None
    seen = any(l2_bytes < s and g >= CACHED_FASTER * ref for s, g in zip(sizes[:end], gbps[:end]))
    return sizes[end] if seen else None


def scan(top_bytes: int, rounds: int = ROUNDS) -> dict:
    """One thread's read rate (GB/s, best of ``rounds`` interleaved rounds) of buffers of 1, 2, 4, 8, 11, 16, 22, ...
    MiB up to half of ``top_bytes``, then of ``top_bytes`` (the reference), each re-read after one untimed read."""
    import numpy as np

    began = time.perf_counter()
    sizes, mib = [], 1.0
    while mib * MiB <= top_bytes // 2:
        sizes.append(int(mib) * MiB)
        mib *= 2 if mib < FINE_FROM_MIB else 2**0.5
    sizes.append(top_bytes)
    buf = np.ones(top_bytes // 8)
    best = [float("inf")] * len(sizes)
    for _ in range(rounds):
        for i, size in enumerate(sizes):
            view = buf[: size // 8]
            view.sum()  # brings what fits into the caches
            for _ in range(max(MIN_READS, -(-MIN_BYTES_READ // size))):
                t = time.perf_counter()
                view.sum()
                best[i] = min(best[i], time.perf_counter() - t)
    del buf
    return {"sizes_bytes": sizes, "read_gbps": [s / t / 1e9 for s, t in zip(sizes, best)], "rounds": rounds,
            "seconds": time.perf_counter() - began}


def _l2_bytes() -> int:
    sizes = [c["bytes"] for c in system.caches() if c["level"] == 2 and c["type"] in ("Data", "Unified")]
    return max(sizes) if sizes else DEFAULT_L2_BYTES


def _from_env(value: str, reported: int | None) -> dict:
    try:
        n = int(float(value))
    except ValueError:
        n = 0
    if not 64 * 1024 <= n <= 2**40:
        raise InputError(f"{ENV}={value!r}: expected the last-level cache size in bytes (64 KiB to 1 TiB), "
                         f"for example {32 * MiB}")
    return {"bytes": n, "reported_bytes": reported, "how": f"set by {ENV}"}


def check_env() -> None:
    """One line (InputError) for a bad RWKVPROBE_LLC_BYTES, before a command writes anything."""
    if os.environ.get(ENV):
        _from_env(os.environ[ENV], None)


def decide() -> dict:
    """This process's decision (made once): ``bytes`` (what to size by; None: unknown, the callers' default),
    ``reported_bytes``, ``how`` (words), and with a scan its ``scan`` record."""
    global _decided
    if _decided is not None:
        return _decided
    reported = system.llc_bytes()
    if os.environ.get(ENV):
        _decided = _from_env(os.environ[ENV], reported)
        return _decided
    out: dict = {"bytes": reported, "reported_bytes": reported, "how": "as the CPU reports it"}
    if reported is not None and reported > SCAN_ABOVE_BYTES:
        import psutil

        top = int(REFERENCE_FACTOR * reported) // MiB * MiB
        if top > MEMORY_SHARE * psutil.virtual_memory().available:
            out["how"] = (f"as the CPU reports it (a read scan would need {top / 1e9:.2g} GB, more than "
                          f"{MEMORY_SHARE:.0%} of the available memory)")
        else:
            record = scan(top)
            end = end_of_cache(record["sizes_bytes"], record["read_gbps"], _l2_bytes())
            out["scan"] = record
            if end is not None and end < reported:
                rate = dict(zip(record["sizes_bytes"], record["read_gbps"]))
                out.update(bytes=end, how=(
                    f"measured: the CPU reports {reported / MiB:.0f} MiB, but one thread re-reading a buffer of "
                    f"{end / MiB:.0f} MiB or more read at DRAM speed ({rate[end]:.1f} GB/s at {end / MiB:.0f} MiB, "
                    f"{record['read_gbps'][-1]:.1f} at {top / MiB:.0f} MiB; up to "
                    f"{max(g for s, g in rate.items() if s < end):.1f} below): sized by {end / MiB:.0f} MiB"))
            else:
                out["how"] = "as the CPU reports it (a read scan found no smaller end of the cache)"
    _decided = out
    return out


def usable_llc_bytes() -> int | None:
    """The last-level cache size every cold measurement of this process is sized by (decide)."""
    return decide()["bytes"]


def adopt(decision: dict | None) -> None:
    """A worker process takes its parent's decision (no scan of its own: the same sizes as the run it serves)."""
    global _decided
    if decision is not None:
        _decided = dict(decision)


def forget() -> None:
    """Tests: decide again on the next call."""
    global _decided
    _decided = None
