"""bench_peers.paired_ratio: ours ÷ peer round by round, the statistic the benchmark tables pair with their minima."""
import pytest

from scripts import bench_peers as peers
from scripts.bench_peers import paired_ratio


def test_a_burst_shared_by_both_turns_of_a_round_cancels():
    # round 2 ran under outside load that slowed both contestants 3x: their ratio is still 0.9
    ours, peer = [9.0, 27.0, 9.0, 9.0], [10.0, 30.0, 10.0, 10.0]
    assert paired_ratio(ours, peer) == {"median": pytest.approx(0.9), "p25": pytest.approx(0.9),
                                        "p75": pytest.approx(0.9), "rounds": 4}


def test_rounds_pair_in_order_and_percentiles_bracket_the_median():
    r = paired_ratio([1.0, 2.0, 3.0, 8.0, 5.0], [1.0, 1.0, 1.0, 1.0, 1.0])
    assert (r["p25"], r["median"], r["p75"]) == (2.0, 3.0, 5.0)
    assert paired_ratio([2.0, 1.0], [1.0, 2.0])["median"] == pytest.approx(1.25)      # (2 + 0.5) / 2


def test_a_missing_contestant_gives_none():
    assert paired_ratio(None, [1.0]) is None
    assert paired_ratio([1.0], []) is None


def test_each_step_turn_is_timed_after_its_own_untimed_warm_up(monkeypatch):
    """After ``settle``'s idle the first calls are slow on this VM (the core wakes up): each turn runs
    untimed calls for ``STEP_WARM_S`` first, so only the steady calls are timed, every contestant alike."""
    monkeypatch.setattr(peers, "SETTLE_S", 0.001)
    monkeypatch.setattr(peers, "STEP_WARM_S", 0.005)
    made = {"a": 0, "b": 0}

    def job(name):
        def step(state):
            made[name] += 1
            return state + 1
        return step, 0, peers.no_sync

    got = peers.step_us({"a": job("a"), "b": job("b")}, calls=40, rounds=4)
    assert set(got) == {"a", "b"} and all(v["min"] >= 0 for v in got.values())
    assert all(n > 40 + 4 for n in made.values())              # the timed calls, and warm-up in every turn
    monkeypatch.setattr(peers, "SETTLE_S", 0.0)                 # no idle: nothing to wake from, no warm-up
    made.update(a=0, b=0)
    peers.step_us({"a": job("a"), "b": job("b")}, calls=40, rounds=4)
    assert made == {"a": 40 + 40, "b": 40 + 40}                # the warm-up before the rounds, then the timed calls


class _ClockThatCosts:
    """A benchmark clock each reading of which takes 1 µs, as the thread CPU clock's system call does."""

    def __init__(self):
        self.ns = 0

    def perf_counter_ns(self):
        self.ns += 1000
        return self.ns

    def perf_counter(self):
        return self.perf_counter_ns() / 1e9

    def sleep(self, _s):
        pass


def test_a_step_s_time_leaves_out_what_reading_the_clock_costs(monkeypatch):
    """Timing one call alone brackets it with two readings of the clock; the reading's own cost (0.57 µs
    for the thread CPU clock here) would otherwise be counted as the step's, 4% of a 15 µs step."""
    clock = _ClockThatCosts()
    monkeypatch.setattr(peers, "time", clock)
    monkeypatch.setattr(peers, "SETTLE_S", 0.0)

    def job(us):
        def step(state):
            clock.ns += int(us * 1000)
            return state
        return step, 0, peers.no_sync

    got = peers.step_us({"ours": job(5.0), "peer": job(40.0)}, calls=20, rounds=2)
    assert got["ours"] == {"median": pytest.approx(5.0), "min": pytest.approx(5.0), "clock_us": pytest.approx(1.0)}
    assert got["peer"]["min"] == pytest.approx(40.0)
