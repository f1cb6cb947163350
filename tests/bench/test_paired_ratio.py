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
