"""The recent-load average that sizes model calls: counts weighted by how long they lasted."""

from __future__ import annotations

import pytest

from birdsearch.engine.cpu_share import RecentLoad


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_steady_count_is_its_own_average():
    clock = Clock()
    load = RecentLoad(horizon_s=0.5, clock=clock)
    load.change(active=5, computing=2)
    clock.now += 10
    assert load.elsewhere == 3
    assert load.average_elsewhere() == pytest.approx(3.0)


def test_a_short_spike_barely_moves_the_average_and_a_long_one_takes_over():
    clock = Clock()
    load = RecentLoad(horizon_s=0.5, clock=clock)
    load.change(active=4)
    clock.now += 0.01  # four queries elsewhere for 10 ms
    assert load.average_elsewhere() == pytest.approx(4 * (1 - 2.718281828 ** (-0.02)), rel=1e-6)
    load.change(computing=4)  # then they all wait on the model
    assert load.average_elsewhere() < 0.1
    clock.now += 5
    assert load.average_elsewhere() == pytest.approx(0.0, abs=1e-3)


def test_time_weights_each_count_by_how_long_it_lasted():
    clock = Clock()
    load = RecentLoad(horizon_s=1.0, clock=clock)
    load.change(active=2)  # 2 elsewhere for one horizon...
    clock.now += 1.0
    load.change(computing=2)  # ...then 0 for one horizon: e^-1 of the first part remains
    clock.now += 1.0
    first = 2 * (1 - 2.718281828**-1)
    assert load.average_elsewhere() == pytest.approx(first * 2.718281828**-1, rel=1e-6)
