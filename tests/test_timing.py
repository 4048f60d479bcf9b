"""timing.measure: stalls (a call many times slower than the point's fastest, as when a worker thread wakes a
scheduler tick late) give their time back to the budget, so a point whose calls stall early still ends with a
median of typical calls. Every test runs on a virtual clock: a fake call "sleeps" by moving it on, so the engine
sees exactly the durations a test gives its calls, on an idle machine or a loaded one (with real sleeps, a 2 ms
sleep that took 6 ms under load failed these tests now and then)."""

from __future__ import annotations

import sys
import time

import pytest

from rwkvprobe.measure import timing
from rwkvprobe.measure.timing import STALL_FACTOR, STALL_LIMIT, TimingPolicy, measure, warming


class _VirtualTime:
    """perf_counter and sleep on a clock that only sleep moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def virtual_time(monkeypatch):
    clock = _VirtualTime()
    monkeypatch.setattr(timing, "time", clock)
    monkeypatch.setattr(sys.modules[__name__], "time", clock)
    return clock


def _calls(stall_at: set[int], fast: float = 0.002, slow: float = 0.030):
    seen = []

    def call(i):
        time.sleep(slow if len(seen) in stall_at else fast)
        seen.append(i)
    return call, seen


def test_early_stalls_do_not_spend_the_budget():
    # warm-up is call 0 (fast); calls 1 and 2 stall: without the credit the budget (40 ms) is gone after 3 samples
    # (leading, the two stalls count as samples still warming up: warm-up, not samples)
    call, seen = _calls({1, 2})
    out = measure(call, policy=TimingPolicy(budget_seconds=0.04, min_samples=3, warmup_seconds=0.0))
    assert out["warming"] == 2 and out["stalled"] == 0
    assert len(out["samples"]) >= 3 and out["median_seconds"] < 0.010


def test_a_steady_point_has_no_stall():
    call, _ = _calls(set())
    out = measure(call, policy=TimingPolicy(budget_seconds=0.03, min_samples=3, warmup_seconds=0.0))
    assert out["stalled"] == 0 and out["median_seconds"] < STALL_FACTOR * min(out["samples"])


def test_a_point_of_nothing_but_stalls_ends_at_its_stall_limit():
    call, seen = _calls(set(range(1, 1000)))  # every sample stalls: the credit runs out, no clean call comes
    t0 = time.perf_counter()
    out = measure(call, policy=TimingPolicy(budget_seconds=0.1, min_samples=3, warmup_seconds=0.0))
    assert out["stalled"] == len(out["samples"]) and time.perf_counter() - t0 < 0.1 * STALL_LIMIT + 0.1


def test_a_median_is_never_a_stall_while_clean_calls_can_still_come():
    """Two stalls that outlast the budget among the first three samples: sampling goes on past twice the budget
    until clean calls are the majority (once: 3 samples, median 14.6 ms for a 0.13 ms ggml call)."""
    times = iter([0.002, 0.002, 0.050, 0.050] + [0.002] * 1000)  # warm-up, a fast sample, two long stalls

    def call(i):
        time.sleep(next(times))
    out = measure(call, policy=TimingPolicy(budget_seconds=0.04, min_samples=3, warmup_seconds=0.0))
    assert out["stalled"] == 2 and out["median_seconds"] < 0.010
    assert sum(1 for x in out["samples"] if x < 0.010) > len(out["samples"]) / 2


def test_a_steady_slow_mode_does_not_end_sampling_early():
    """The fast calls of warm-up, then steady calls at 3x (all alike: spread 0): sampling goes on for the budget
    instead of stopping after the minimum three, so the fast calls that come back are in the median."""
    times = iter([0.002] + [0.006] * 3 + [0.002] * 1000)

    def call(i):
        time.sleep(next(times))
    out = measure(call, policy=TimingPolicy(budget_seconds=0.06, min_samples=3, warmup_seconds=0.0))
    assert len(out["samples"]) > 3 and out["median_seconds"] < 0.004


def test_stalls_before_the_first_fast_call_are_given_back_too():
    """The first calls all stall (warm-up too), then the fast ones come: the early stalls are judged against the
    fastest call known later and give their time back, so the point goes on to a median of fast calls."""
    times = iter([0.030, 0.030, 0.030] + [0.002] * 1000)

    def call(i):
        time.sleep(next(times))
    out = measure(call, policy=TimingPolicy(budget_seconds=0.05, min_samples=3, warmup_seconds=0.0))
    assert out["warming"] == 2 and len(out["samples"]) >= 3 and out["median_seconds"] < 0.010


def test_first_samples_still_warming_up_are_warm_up_not_the_median():
    """A 0.5 GB head point: its first samples 20 and 14 ms, its steady calls 8 ms, its budget spent after three
    samples. The median was 14 ms; the samples still warming up now count as warm-up and sampling goes on until
    three steady samples follow them."""
    times = iter([0.020, 0.020, 0.014] + [0.008] * 1000)

    def call(i):
        time.sleep(next(times))
    out = measure(call, policy=TimingPolicy(budget_seconds=0.04, min_samples=3, warmup_seconds=0.0))
    assert out["median_seconds"] < 0.011 and len(out["samples"]) >= 3
    assert out["warming"] >= 1 and out["warmup_calls"] == 1 + out["warming"]


def test_slow_calls_later_in_a_point_are_samples_not_warm_up():
    """Slow calls that do not lead (a point that slows down) stay samples: only a leading run is warm-up."""
    times = iter([0.004, 0.004] + [0.012] * 1000)

    def call(i):
        time.sleep(next(times))
    out = measure(call, policy=TimingPolicy(budget_seconds=0.06, min_samples=3, warmup_seconds=0.0))
    assert out["warmup_calls"] == 1 and out["warming"] == 0
    assert out["samples"][0] < 0.008 and max(out["samples"]) > 0.010


def test_warming_counts_only_a_leading_run_of_slow_samples():
    assert warming([0.020, 0.014, 0.008, 0.008, 0.008]) == 2
    assert warming([0.008, 0.020, 0.008, 0.008]) == 0
    assert warming([0.009, 0.008, 0.008]) == 0          # within SLOW_MODE of the rest
    assert warming([0.030]) == 0 and warming([]) == 0


def test_a_point_leaving_a_slow_mode_samples_on_until_the_fast_calls_are_its_median():
    """A ggml head: 8 ms a call (one CPU doing both threads' work) for five calls, then 4 ms; its budget ended
    on seven samples, median 7.7 ms. While its last call is far faster than its median it samples on, and the
    slow leading calls count as warm-up."""
    times = iter([0.0080, 0.0070, 0.0085, 0.0075, 0.0090, 0.0072] + [0.004] * 1000)

    def call(i):
        time.sleep(next(times))
    out = measure(call, policy=TimingPolicy(budget_seconds=0.05, min_samples=3, warmup_seconds=0.0))
    assert out["median_seconds"] < 0.006 and out["warming"] >= 1


class _Library:
    """A fake library with a cold-cache cost model: the eviction puts its worker threads to sleep and its weights
    in DRAM; a call made while its threads sleep pays WAKE, a call on a weight in DRAM pays COLD."""

    WAKE, COLD, HOT = 0.030, 0.004, 0.0005

    def __init__(self, copies: int):
        self.cold = [True] * copies
        self.asleep = True
        self.log: list[tuple] = []  # ("evict",) or ("call", copy, weight was cold, threads were asleep)

    def evict(self) -> None:
        self.cold = [True] * len(self.cold)
        self.asleep = True
        self.log.append(("evict",))

    def call(self, i: int) -> None:
        time.sleep((self.WAKE if self.asleep else 0.0) + (self.COLD if self.cold[i] else self.HOT))
        self.log.append(("call", i, self.cold[i], self.asleep))
        self.cold[i] = self.asleep = False


def _after_evictions(log: list[tuple]) -> list[list[tuple]]:
    runs: list[list[tuple]] = []
    for e in log:
        if e[0] == "evict":
            runs.append([])
        elif runs:
            runs[-1].append(e)
    return runs


def test_a_cold_call_is_timed_with_its_weight_cold_and_its_library_awake():
    lib = _Library(copies=4)
    out = measure(lib.call, 4, TimingPolicy(budget_seconds=0.3, min_samples=8, warmup_seconds=0.0), between=lib.evict)
    assert out["rewarm"] is True
    # each eviction is followed by one untimed call on the copy timed last, then the timed call on the next copy,
    # whose weight is still in DRAM while the library's threads are awake
    for prev, timed in _after_evictions(lib.log):
        assert prev[1] == (timed[1] - 1) % 4 and prev[1] != timed[1]
        assert timed[2] is True and timed[3] is False
    # so the median is a cold weight's cost, not the wake-up's
    assert lib.COLD <= out["median_seconds"] < lib.WAKE


def test_without_rewarm_or_with_one_copy_the_call_after_the_eviction_is_the_timed_one():
    lib = _Library(copies=4)
    out = measure(lib.call, 4, TimingPolicy(budget_seconds=0.3, min_samples=5, warmup_seconds=0.0), between=lib.evict,
                  rewarm=False)
    assert out["rewarm"] is False and all(len(run) == 1 for run in _after_evictions(lib.log))
    assert out["median_seconds"] >= lib.WAKE  # what the timing showed before REWARM: the wake-up, every call
    # one copy: an untimed call on it would put the timed weight in the cache
    lib = _Library(copies=1)
    out = measure(lib.call, 1, TimingPolicy(budget_seconds=0.3, min_samples=5, warmup_seconds=0.0), between=lib.evict)
    assert out["rewarm"] is False and all(run == [("call", 0, True, True)] for run in _after_evictions(lib.log))


def test_the_budget_does_not_end_sampling_before_the_floor():
    call, _ = _calls(set())  # steady 2 ms calls; a 10 ms budget ends on about four
    short = measure(call, policy=TimingPolicy(budget_seconds=0.01, min_samples=3, warmup_seconds=0.0,
                                              target_spread=0.0))
    call, _ = _calls(set())
    floored = measure(call, policy=TimingPolicy(budget_seconds=0.01, min_samples=3, warmup_seconds=0.0,
                                                target_spread=0.0, floor_samples=8))
    assert len(short["samples"]) < 8 <= len(floored["samples"])  # kept samples (a slow first one is warm-up)


def test_the_floor_outlasts_the_stall_cap_up_to_its_own_limit(monkeypatch):
    """Calls as long as the budget itself (a large head in a quick run): the STALL_LIMIT x budget cap, warm-up
    included, ends sampling on a few calls; with a floor, sampling goes on to the floor, and no further than
    FLOOR_LIMIT_SECONDS from the start where the floor takes longer than that."""
    def slow(_i):
        time.sleep(0.01)

    policy = dict(budget_seconds=0.01, min_samples=3, warmup_seconds=0.0, target_spread=0.0)
    short = measure(slow, policy=TimingPolicy(**policy))
    assert len(short["samples"]) < 6
    floored = measure(slow, policy=TimingPolicy(**policy, floor_samples=12))
    assert len(floored["samples"]) >= 12
    monkeypatch.setattr(timing, "FLOOR_LIMIT_SECONDS", 0.1)
    t0 = time.perf_counter()
    limited = measure(slow, policy=TimingPolicy(**policy, floor_samples=1000))
    assert len(limited["samples"]) < 12 and time.perf_counter() - t0 < 0.5


def test_a_small_spread_does_not_end_sampling_before_the_floor():
    """Steady calls stop on their small spread after min_samples (a slow mode of the machine is steady too: a ggml
    head gave three calls of 8.0 ms where its calls take 3-4 ms); with a floor, not before it."""
    policy = dict(budget_seconds=1.0, min_samples=3, warmup_seconds=0.0, target_spread=0.5)
    call, _ = _calls(set())
    short = measure(call, policy=TimingPolicy(**policy))
    call, _ = _calls(set())
    floored = measure(call, policy=TimingPolicy(**policy, floor_samples=12))
    assert len(short["samples"]) < 12 <= len(floored["samples"])


@pytest.mark.parametrize("samples", [[3.0], [2.0, 1.0], [5.0, 1.0, 3.0, 2.0], [float(x % 7) + 1.0 for x in range(101)],
                                     [0.0, 0.0, 0.0]])
def test_the_sampling_loops_median_and_spread_are_summarizes(samples):
    """The stop rule reads its median and spread from a lighter function than summarize: the same figures."""
    median, spread = timing._median_and_spread(samples)
    full = timing.summarize(samples)
    assert median == full["median_seconds"] and spread == pytest.approx(full["spread"], abs=1e-15)
