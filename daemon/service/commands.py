"""What dreamctl can ask of a running dreamd over the control socket, answered on the Service.

ping and status answer even while stopping; every other command is mutating and is refused then.
A rollback abandons a running child first and holds new ones until it is done (only a child's
promote step moves the pointers otherwise), then moves `current` itself.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import structlog

from dreamd.daemon.gate.history import roll_back
from dreamd.daemon.service import scheduler as jobs
from dreamd.daemon.service.control import ControlError, user_label
from dreamd.daemon.service.jobs import ChildrenBusy
from dreamd.daemon.service.state import read_pause, set_pause
from dreamd.trainers.checkpoints.manifest import CheckpointError
from dreamd.trainers.checkpoints.pointers import BASE, read_pointer, verify_loadable

if TYPE_CHECKING:
    from dreamd.daemon.service.runtime import Service

log = structlog.get_logger("dreamd.service")


def handle_command(service: Service, cmd: str, args: dict[str, Any], peer=None) -> dict[str, Any]:
    """One control command's answer; raises ControlError for a refused or unknown one."""
    if cmd == "ping":
        return {"pid": os.getpid(), "phase": service.phase()}
    if cmd == "status":
        return service.status()
    if service.stopping.is_set():
        raise ControlError("stopping", "dreamd is stopping")
    if cmd in ("pause", "resume"):
        set_pause(service.layout, cmd == "pause", reason=args.get("reason", ""))
        log.info(cmd, reason=args.get("reason", ""))
        service.save_state()
        return {"paused": cmd == "pause", "busy": service.busy_jobs()}
    if cmd == "dream_now":
        if read_pause(service.layout):
            raise ControlError("paused", "dream cycles are paused; `dreamctl resume` first")
        if jobs.DREAM_CYCLE in service.busy_jobs():
            return {"started": False, "already_running": True}
        jobs.run_now(service.scheduler, jobs.DREAM_CYCLE)
        return {"started": True, "already_running": False}
    if cmd == "rollback":
        return rollback(service, args, peer)
    if cmd == "reload":
        result = service.reload()
        if not result["reloaded"]:
            raise ControlError("invalid", result["error"])
        return result
    raise ControlError("invalid", f"unknown command {cmd}")


def rollback(service: Service, args: dict[str, Any], peer=None) -> dict[str, Any]:
    """Point `current` at last_good, at `checkpoint`, or (`to_base`) at the base model.

    A running child is abandoned first, and none starts until the rollback is done
    (ChildJobs.held): only a child's promote step moves the pointers otherwise.
    """
    if args.get("to_base") and args.get("checkpoint"):
        raise ControlError("invalid", "give a checkpoint or to_base, not both")
    target = BASE if args.get("to_base") else args.get("checkpoint")
    by = f"dreamctl {user_label(peer.uid)} via dreamd" if peer else "dreamd"
    wanted = target or read_pointer(service.layout, "last_good")
    try:  # refuse a bad target before abandoning anything for it
        if wanted != BASE:
            verify_loadable(service.layout, wanted)
    except (CheckpointError, ValueError) as exc:
        raise ControlError("invalid", str(exc)) from None
    try:
        with service.children.held() as stopped:  # running children are abandoned, none start
            result = roll_back(service.layout, target, by)
    except ChildrenBusy as exc:
        raise ControlError("busy", f"{exc}; rollback not done") from None
    except (CheckpointError, ValueError) as exc:
        raise ControlError("invalid", str(exc)) from None
    log.info("rollback", by=by, current=result.get("current"), previous=result.get("previous"),
             changed=result.get("changed"), jobs_stopped=stopped)
    service.save_state()
    return {**result, "jobs_stopped": stopped}
