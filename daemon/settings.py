"""Settings of the daemon process itself."""

from __future__ import annotations

from dataclasses import dataclass

from dreamd.daemon.settings_base import require, setting

LEVELS = ("debug", "info", "warning", "error")


@dataclass
class LoggingSettings:
    """What the daemon and the CLI write to their logs."""

    level: str = setting("info", "Least severe log level written: debug, info, warning or error.")

    def __post_init__(self) -> None:
        require(self.level in LEVELS, "level", "one of " + ", ".join(LEVELS), self.level)


@dataclass
class DaemonSettings:
    """The service process: who may steer it and how it talks to systemd."""

    control_group: str = setting(
        "", "A group whose members may use dreamctl commands that change anything (root and the daemon's user always may)."
    )
