"""bench/soak.py's summary maths (the soak itself is `make soak`, minutes long, not a test)."""

from __future__ import annotations

import pytest

from bench.soak import QUEUE_KEYS, markdown, parse_args, summarize


def samples(minutes: float, leak_mb_per_min: float, queue_late: int = 1) -> list[dict]:
    """One sample every 5 s: RSS 800 MB plus a linear leak, steady 10 Hz, queues <= 1 (then `queue_late`)."""
    out = []
    for i in range(int(minutes * 12) + 1):
        t = 5.0 * i
        out.append({"t_s": t, "rss_mb": 800.0 + leak_mb_per_min * t / 60, "threads": 24,
                    "output_rate_hz": 10.0 - (i % 2) * 0.5, "received_rate_hz": 9.8,
                    **{k: (queue_late if t >= minutes * 30 else 1) for k in QUEUE_KEYS}})
    return out


def test_flat_memory_and_steady_queues() -> None:
    s = summarize(samples(10, 0.0), 600.0, published=6000, received=5990, latencies_ms=[40.0] * 5990)
    assert s["window_s"] == 60.0 and s["rss_growth_mb"] == 0.0
    assert s["rss_slope_mb_per_min_after_first_window"] == pytest.approx(0.0, abs=1e-6)
    assert s["node_output_rate_hz"] == {"mean": 9.75, "min": 9.5}
    assert s["drop_fraction"] == pytest.approx(10 / 6000, abs=1e-3)
    assert all(q["max_first_half"] == q["max_second_half"] == 1 for q in s["queues"].values())


def test_a_leak_and_a_growing_queue_show() -> None:
    s = summarize(samples(10, 3.0, queue_late=7), 600.0, published=6000, received=6000, latencies_ms=[40.0])
    assert s["rss_slope_mb_per_min_after_first_window"] == pytest.approx(3.0, rel=1e-6)
    # mean of the last minute minus mean of the first: 9 minutes of leak
    assert s["rss_growth_mb"] == pytest.approx(27.0, abs=0.2)
    assert s["queues"]["pair_log.queued"] == {"max": 7, "max_first_half": 1, "max_second_half": 7}


def test_short_run_uses_thirds_and_markdown_has_the_figures() -> None:
    s = summarize(samples(1, 6.0), 60.0, published=600, received=300, latencies_ms=[50.0, 150.0])
    assert s["window_s"] == 20.0 and s["rss_growth_mb"] == pytest.approx(4.0, abs=0.6)
    result = {"summary": s, "command": "python -m bench.soak --minutes 1",
              "config": {"rate_hz": 10.0, "points": 30000, "image_hw": [188, 620], "device": "cpu",
                         "threads": 2, "pair_log": True},
              "machine": {"cpu": "x86_64", "cores": 2}, "loadavg_start": [1.0, 1.0, 1.0],
              "loadavg_end": [1.5, 1.0, 1.0], "plot": "/nonexistent/docs/img/soak_cpu.png"}
    text = markdown(result)
    assert "| RSS first / last 20 s |" in text and "drop fraction 0.5" in text and "load average 1.00" in text


def test_bad_arguments_refused() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--minutes", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--points", "0"])
    assert parse_args([]).minutes == 10.0 and parse_args([]).points == 30000
