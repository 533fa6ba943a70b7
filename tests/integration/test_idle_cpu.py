"""An idle dreamd (between cycles) uses under 1% of one core: tests/bench/bench_idle.py, shorter."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_idle.py"


def test_idle_daemon_uses_under_one_percent_of_a_core():
    spec = importlib.util.spec_from_file_location("bench_idle", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.measure(seconds=10, settle=2)
    assert result["exit_code"] == 0
    assert result["watchdog_pings"] >= 2  # it was alive and healthy the whole time
    assert result["cpu_percent_of_one_core"] < 1.0, result
