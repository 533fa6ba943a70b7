"""Settings of the daemon process itself."""

from __future__ import annotations

from dataclasses import dataclass

from dreamd.trainers.settings import require, setting

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
        "",
        "A group whose members may use dreamctl commands that change anything (root and the daemon's user always may).",
    )
    inbox_scan_seconds: float = setting(
        60.0, "The inbox is rescanned at least this often, in seconds (also at start and when inbox/new changes)."
    )
    inbox_poll_seconds: float = setting(
        2.0, "How often inbox/new is looked at for new files (one stat of the folder); 0 turns the watch off."
    )
    dream_interval_minutes: float = setting(60.0, "A dream cycle starts at least this often, in minutes.")
    dream_after_new_messages: int = setting(
        200,
        "A dream cycle starts early once this many new messages have been ingested since the last one; 0: never early.",
    )
    reevaluate_hours: float = setting(24.0, "The current checkpoint is re-evaluated this often, in hours.")
    misfire_grace_seconds: int = setting(
        300, "A scheduled run that could not start on time (busy, suspended) still runs if at most this late."
    )
    stall_seconds: float = setting(
        1800.0,
        "A long stage (the ingest of one file, the dream cycle's child) that makes no progress for this "
        "long is taken as hung: the watchdog is no longer pinged, so systemd restarts dreamd.",
    )
    stop_timeout_seconds: float = setting(
        60.0,
        "On SIGTERM, how long the running step may take to finish before it is abandoned "
        "(keep below the unit's TimeoutStopSec=).",
    )

    def __post_init__(self) -> None:
        for key in ("inbox_scan_seconds", "dream_interval_minutes", "reevaluate_hours", "stop_timeout_seconds",
                    "stall_seconds"):
            require(getattr(self, key) > 0, key, "a positive number", getattr(self, key))
        require(self.inbox_poll_seconds >= 0, "inbox_poll_seconds", "zero or more seconds", self.inbox_poll_seconds)
        require(self.dream_after_new_messages >= 0, "dream_after_new_messages", "zero or more",
                self.dream_after_new_messages)
        require(self.misfire_grace_seconds >= 1, "misfire_grace_seconds", "at least 1 second",
                self.misfire_grace_seconds)
