"""How much CPU an idle dreamd uses between cycles. Prints one JSON line.

Starts the real `dreamd` on a fresh state dir with the default config (inbox watch every 2 s,
heartbeat, watchdog pings every 5 s as under WatchdogSec=10), waits for READY=1, lets it settle,
then reads its user+system CPU time from /proc over the window.

    .venv/bin/python tests/bench/bench_idle.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def measure(seconds: float, settle: float = 3.0) -> dict:
    with tempfile.TemporaryDirectory(prefix="dreamd-idle-") as tmp:
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(f"{tmp}/notify.sock")
        messages: list[str] = []
        ready = threading.Event()

        def listen():
            while True:
                try:
                    message = notify.recv(4096).decode()
                except OSError:
                    return
                messages.append(message)
                if "READY=1" in message.split("\n"):
                    ready.set()

        threading.Thread(target=listen, daemon=True).start()
        env = {**os.environ, "DREAMD_STATE_DIR": f"{tmp}/state", "NOTIFY_SOCKET": f"{tmp}/notify.sock",
               "WATCHDOG_USEC": "10000000"}
        for key in ("DREAMD_CONFIG", "WATCHDOG_PID", "STATE_DIRECTORY", "RUNTIME_DIRECTORY"):
            env.pop(key, None)
        dreamd = Path(sys.executable).parent / "dreamd"
        proc = subprocess.Popen([str(dreamd)], env=env, cwd=tmp, stderr=subprocess.DEVNULL)
        try:
            started = time.monotonic()
            if not ready.wait(60):
                raise SystemExit("dreamd sent no READY=1 within 60 s")
            startup = time.monotonic() - started
            time.sleep(settle)
            before, t0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(seconds)
            used, elapsed = cpu_seconds(proc.pid) - before, time.monotonic() - t0
            watchdogs = sum("WATCHDOG=1" in m for m in messages)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
            notify.close()
    return {
        "bench": "dreamd_idle_cpu",
        "window_s": round(elapsed, 1),
        "cpu_s": round(used, 3),
        "cpu_percent_of_one_core": round(100 * used / elapsed, 3),
        "startup_to_ready_s": round(startup, 2),
        "watchdog_pings": watchdogs,
        "exit_code": code,
        "cores": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measurement window")
    args = parser.parse_args()
    print(json.dumps(measure(args.seconds)))


if __name__ == "__main__":
    main()
