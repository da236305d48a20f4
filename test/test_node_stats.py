"""Diagnostics bookkeeping of the node: counters, latency percentiles, rates (a fake clock, nothing timed)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from xkd_ros.node_stats import NodeStats, RateMeter


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_counters_and_latency_percentiles() -> None:
    clock = FakeClock()
    stats = NodeStats(window=100, clock=clock)
    latencies = np.linspace(0.010, 0.109, 100)  # 10 .. 109 ms
    for lat in latencies:
        stats.frame_in()
        stats.frame_out(float(lat))
        clock.t += 0.1
    stats.count("dropped", 2)
    stats.count("skipped.cloud_format.missing_field")
    snap = stats.snapshot()
    assert snap.counts == {"frames_in": 100, "frames_out": 100, "dropped": 2,
                           "skipped.cloud_format.missing_field": 1}
    assert snap.latency_samples == 100
    assert snap.latency_p50_ms == pytest.approx(np.percentile(latencies, 50) * 1e3)
    assert snap.latency_p99_ms == pytest.approx(np.percentile(latencies, 99) * 1e3)
    assert snap.latency_max_ms == pytest.approx(109.0)
    assert stats.get("dropped") == 2 and stats.get("never") == 0


def test_latency_window_keeps_the_newest() -> None:
    stats = NodeStats(window=3, clock=FakeClock())
    for lat in (1.0, 1.0, 0.01, 0.02, 0.03):
        stats.frame_out(lat)
    snap = stats.snapshot()
    assert snap.latency_samples == 3 and snap.latency_max_ms == pytest.approx(30.0)


def test_rates_over_the_window_and_decay_when_the_stream_stops() -> None:
    clock = FakeClock()
    stats = NodeStats(rate_window_s=5.0, clock=clock)
    for _ in range(31):  # 10 Hz in, every second frame out
        stats.frame_in()
        clock.t += 0.1
    snap = stats.snapshot()
    assert snap.input_rate_hz == pytest.approx(10.0, rel=0.05)
    assert snap.seconds_since_input == pytest.approx(0.1)
    clock.t += 6.0
    snap = stats.snapshot()
    assert snap.input_rate_hz == 0.0 and snap.output_rate_hz == 0.0
    assert snap.seconds_since_input == pytest.approx(6.1)


def test_empty_snapshot_is_well_defined() -> None:
    snap = NodeStats(clock=FakeClock()).snapshot()
    assert snap.counts == {} and snap.latency_samples == 0 and np.isnan(snap.latency_p50_ms)
    assert snap.input_rate_hz == 0.0 and snap.seconds_since_input == float("inf")


def test_counting_from_many_threads_loses_nothing() -> None:
    stats = NodeStats()

    def work() -> None:
        for _ in range(2000):
            stats.count("x")
            stats.frame_in()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stats.get("x") == 8000 and stats.get("frames_in") == 8000


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="window"):
        NodeStats(window=0)
    with pytest.raises(ValueError, match="window_s"):
        RateMeter(0.0, FakeClock())
