"""bench_peers.paired_ratio: ours ÷ peer round by round, the statistic the benchmark tables pair with their minima."""
import pytest

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
