"""Long work in a spawned child: results, failures, and abandoning it on shutdown."""

import json
import os
import threading
import time

from dreamd.daemon.service.child import run_in_child


def add(a, b):
    return {"sum": a + b, "pid": os.getpid()}


def explode():
    raise ValueError("bad batch")


def say_hello():
    import structlog

    structlog.get_logger("test").info("hello from the child", where="child")
    return {}


def sleep_forever(marker):
    with open(marker, "w") as handle:
        handle.write(str(os.getpid()))
    time.sleep(600)


def test_result_comes_back_from_another_process():
    outcome = run_in_child(add, (2, 3))
    assert outcome.status == "ok"
    assert outcome.result["sum"] == 5 and outcome.result["pid"] != os.getpid()


def test_the_child_logs_into_the_daemons_log_file(tmp_path):
    log = tmp_path / "dreamd.log"
    log.write_text('{"event": "an earlier line"}\n')
    assert run_in_child(say_hello, log_path=str(log)).status == "ok"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines[0]["event"] == "an earlier line"  # appended, not replaced
    assert any(e["event"] == "hello from the child" and e["where"] == "child" for e in lines)


def log_then_report(steps):
    import structlog

    from dreamd.daemon.service.child import report_progress

    structlog.get_logger("test").info("first step of the round")
    for step in range(steps):
        time.sleep(0.6)
        report_progress(f"step {step}")
    return {"steps": steps}


def test_the_childs_log_lines_and_reports_reach_the_daemon_as_progress():
    heard = []
    outcome = run_in_child(log_then_report, (4,), on_progress=heard.append)
    assert outcome.status == "ok" and outcome.result == {"steps": 4}
    assert heard[0] == "first step of the round"
    # At most one a second: some reports are dropped, the last ones still come through.
    assert 2 <= len(heard) <= 5 and heard[-1].startswith("step ")


def test_failure_is_reported_not_raised():
    outcome = run_in_child(explode)
    assert outcome.status == "failed" and "ValueError: bad batch" in outcome.error


def test_stop_abandons_the_child_within_the_timeout(tmp_path):
    stop = threading.Event()
    marker = tmp_path / "pid"
    threading.Timer(1.0, stop.set).start()
    started = time.monotonic()
    outcome = run_in_child(sleep_forever, (str(marker),), stop=stop, stop_timeout=0.5)
    assert outcome.status == "abandoned"
    assert time.monotonic() - started < 10
    child = int(marker.read_text())
    assert not os.path.exists(f"/proc/{child}") or open(f"/proc/{child}/stat").read().split()[2] == "Z"


def test_abort_abandons_the_child_at_once_without_the_stop_timeout(tmp_path):
    abort = threading.Event()
    marker = tmp_path / "pid"

    def when_running():
        while not marker.exists():
            time.sleep(0.02)
        abort.set()

    threading.Thread(target=when_running, daemon=True).start()
    started = time.monotonic()
    outcome = run_in_child(sleep_forever, (str(marker),), stop=threading.Event(),
                           stop_timeout=600, abort=abort)
    assert outcome.status == "abandoned" and outcome.error == "abandoned on request"
    assert time.monotonic() - started < 10  # not the 600 s a stop would have granted
    child = int(marker.read_text())
    assert not os.path.exists(f"/proc/{child}") or open(f"/proc/{child}/stat").read().split()[2] == "Z"
