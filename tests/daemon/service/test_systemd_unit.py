"""The unit file, sysusers and tmpfiles snippets, checked by systemd's own tools."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SYSTEMD = REPO / "systemd"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (Debian: apt install systemd)"
)


def unit_text() -> str:
    return (SYSTEMD / "dreamd.service").read_text()


def settings() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.fixture
def unit_copy(tmp_path):
    """The unit with ExecStart= pointing at this checkout's dreamd (verify wants it to exist)."""
    dreamd = Path(sys.executable).parent / "dreamd"
    path = tmp_path / "dreamd.service"
    path.write_text(unit_text().replace("ExecStart=/usr/local/bin/dreamd", f"ExecStart={dreamd}"))
    return path


def test_the_unit_says_what_the_service_needs():
    s = settings()
    for key, value in {"Type": "notify", "Restart": "on-failure", "User": "dreamd", "StateDirectory": "dreamd",
                       "RuntimeDirectory": "dreamd", "ConfigurationDirectory": "dreamd", "ProtectSystem": "strict",
                       "ProtectHome": "yes", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
                       "RestrictAddressFamilies": "AF_UNIX", "RuntimeDirectoryMode": "0750"}.items():
        assert s.get(key) == [value], key
    assert int(s["WatchdogSec"][0]) > 0
    assert "MemoryDenyWriteExecute" not in s  # torch's JIT needs W+X memory; a comment says why
    assert "# - MemoryDenyWriteExecute=yes: PyTorch generates machine code" in unit_text()
    assert "DeviceAllow=/dev/nvidia0 rw" in unit_text()     # the GPU case, documented
    assert int(s["TimeoutStopSec"][0]) > 60                  # above the default daemon.stop_timeout_seconds


def test_a_crash_loop_stops_after_a_few_starts():
    s = settings()
    unit_section = unit_text().split("[Service]")[0]
    assert "StartLimitIntervalSec=" in unit_section and "StartLimitBurst=" in unit_section  # [Unit] keys
    burst, window, pause = int(s["StartLimitBurst"][0]), int(s["StartLimitIntervalSec"][0]), int(s["RestartSec"][0])
    assert 2 <= burst <= 10
    # Restarts RestartSec apart must be able to reach the burst inside the window, or it never trips.
    assert burst * pause < window


@needs_analyze
def test_systemd_analyze_verify(unit_copy):
    done = subprocess.run([ANALYZE, "verify", str(unit_copy)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if "dreamd.service" in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


@needs_analyze
def test_exposure_is_at_most_2(unit_copy):
    done = subprocess.run([ANALYZE, "security", "--offline=true", "--no-pager", str(unit_copy)],
                          capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for dreamd\.service: ([0-9.]+)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= 2.0, done.stdout


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
                    reason="systemd-sysusers/systemd-tmpfiles are not installed")
def test_sysusers_and_tmpfiles_apply_to_an_empty_root(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    subprocess.run(["systemd-sysusers", f"--root={root}", str(SYSTEMD / "dreamd.sysusers")],
                   check=True, capture_output=True, timeout=60)
    user = next(line for line in (root / "etc" / "passwd").read_text().splitlines() if line.startswith("dreamd:"))
    assert user.endswith(":/var/lib/dreamd:/usr/sbin/nologin")
    subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create", str(SYSTEMD / "dreamd.tmpfiles")],
                   check=True, capture_output=True, timeout=60)
    uid = int(user.split(":")[2])
    state = root / "var" / "lib" / "dreamd"
    assert state.stat().st_uid == uid and (state.stat().st_mode & 0o777) == 0o750
    for folder in ("tmp", "new", "processing", "done", "quarantine"):
        assert (state / "inbox" / folder).is_dir()


def test_make_install_dry_run_names_every_file():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    done = subprocess.run(["make", "-n", "install"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for needle in ("dreamd.service", "dreamd.sysusers", "dreamd.tmpfiles", "dreamd.example.toml",
                   "systemd-sysusers", "systemd-tmpfiles", "daemon-reload"):
        assert needle in done.stdout, needle
