"""bench/serving/soak.py's arithmetic on made-up samples (the soak itself is a benchmark, run by hand:
docs/reliability.md); no server is started here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[2] / "bench" / "serving" / "soak.py"


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summary_leaves_out_the_warm_up_and_fits_the_rss_slope(soak) -> None:
    user, search = "GET /v1/users/{user_id}/recommendations", "POST /v1/search"
    records = [(t / 10, user if t % 4 else search, 200, 2.0 + (t % 10)) for t in range(600)]  # 60 s at 10 req/s
    records += [(5.0, user, 503, 1.0), (30.0, search, "ReadTimeout", 30000.0)]
    # warm-up: a jump from 100 to 300 MB; then 300 MB + 1.5 MB per minute, every 2 s
    rss = [(t, 100.0 + 10 * t) for t in range(0, 20, 2)] + [(t, 300.0 + 1.5 * t / 60) for t in range(20, 62, 2)]
    summary = soak.summarise(records, rss, duration_s=60, warmup_s=20)

    assert summary["requests"] == 602 and summary["errors"] == 2
    assert summary["error_kinds"] == {"503": 1, "ReadTimeout": 1}
    assert summary["steady_requests"] == 401 and summary["req_per_s"] == pytest.approx(10.0, abs=0.1)
    assert summary["latency_ms"]["max"] == 11.0  # failed requests are counted as errors, not timed
    assert summary["latency_ms"]["p50"] == pytest.approx(6.5, abs=1)
    rss_view = summary["rss_mb"]
    assert rss_view["start"] == pytest.approx(300.5) and rss_view["end"] == pytest.approx(301.5)
    assert rss_view["slope_mb_per_min"] == pytest.approx(1.5, abs=1e-6)  # the warm-up jump is not in the fit
    assert rss_view["max_during_warmup"] == 280.0 and rss_view["samples_after_warmup"] == 21
    assert summary["per_endpoint"][search]["errors"] == 1
    json.dumps(summary)  # what main() writes


def test_rss_of_this_process_is_read_from_proc(soak) -> None:
    import os

    assert 1 < soak.rss_mb(os.getpid()) < 100_000
    assert soak.rss_mb(2**22 + 12345) is None  # no such process
