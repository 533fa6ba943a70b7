"""`dreamd serve` as a process: load, bind, serve until SIGTERM, write the last chats, stop.

The models are loaded before the socket is bound, so a connection is never accepted by a server
that cannot answer yet; the socket is bound here (not by uvicorn) so that port 0 works and the
real address goes into the status file. systemd hears READY=1 once requests are taken. A
housekeeping thread writes the batched chats into the inbox and refreshes the status file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time
from pathlib import Path

import structlog
import uvicorn

from dreamd.daemon.config import Config, ConfigError
from dreamd.daemon.serve.status_file import write_status
from dreamd.daemon.service.state_dir import StateLayout

log = structlog.get_logger("dreamd.serve")

HOUSEKEEPING_SECONDS = 0.5
GRACEFUL_STOP_SECONDS = 20  # streams in flight may finish; the unit's TimeoutStopSec= is above it


def read_api_key(path: str) -> str | None:
    """The bearer token in `serve.api_key_file` (its first line), or None when no file is named."""
    if not path:
        return None
    try:
        key = Path(path).expanduser().read_text(encoding="utf-8").strip().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("serve.api_key_file", f"cannot read {path}: {exc}") from None
    if not key or not key[0].strip():
        raise ConfigError("serve.api_key_file", f"{path} is empty; write the token on its first line")
    return key[0].strip()


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def address_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run(config: Config, layout: StateLayout, host: str | None = None, port: int | None = None) -> int:
    from dreamd.daemon.serve.api import ServerParts, build_app
    from dreamd.daemon.serve.chatlog import ChatLog
    from dreamd.daemon.serve.engine import Engine
    from dreamd.daemon.serve.versions import Versions
    from dreamd.daemon.service.sd_notify import Notifier

    settings = config.serve
    api_key = read_api_key(settings.api_key_file)
    layout.ensure()
    notifier = Notifier()
    started = time.monotonic()
    versions = Versions(config, layout)
    chatlog = (ChatLog(layout.root, layout.inbox, config.inbox, settings.log_batch_conversations,
                       settings.log_batch_seconds) if settings.log_conversations else None)
    engine = Engine(versions, settings.max_queue, settings.max_batch, settings.batch_wait_ms).start()
    parts = ServerParts(settings, versions, engine, chatlog, api_key)
    sock = bind(host or settings.host, settings.port if port is None else port)
    address = address_of(sock)

    def status(state: str) -> dict:
        return {"state": state, "pid": os.getpid(), "address": address,
                "checkpoint": versions.current.checkpoint, "load_errors": dict(versions.failed),
                "swaps": versions.swaps, "requests_served": parts.counters.requests_served,
                "requests_refused": parts.counters.requests_refused,
                "conversations_logged": chatlog.logged if chatlog else None,
                "log_conversations": chatlog is not None, "queue": engine.admitted,
                "started_at": parts.counters.started_at, "updated": time.time()}

    stop = threading.Event()
    keeper = threading.Thread(target=_housekeeping, args=(stop, layout.root, chatlog, status),
                              name="dreamd-serve-housekeeping", daemon=True)
    versions.start()
    keeper.start()
    write_status(layout.root, status("serving"))
    log.info("serve.listening", address=address, checkpoint=versions.current.checkpoint,
             load_seconds=round(time.monotonic() - started, 2), api_key=api_key is not None,
             log_conversations=chatlog is not None)

    server = _Server(uvicorn.Config(build_app(parts), log_config=None, access_log=False, server_header=False,
                                    timeout_graceful_shutdown=GRACEFUL_STOP_SECONDS))

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        notifier.ready(f"serving {versions.current.checkpoint} at {address}")
        await task

    try:
        asyncio.run(serve())
    finally:
        notifier.stopping("stopping")
        stop.set()
        keeper.join(timeout=5)
        versions.stop()
        engine.stop()
        if chatlog is not None:
            chatlog.flush()
        write_status(layout.root, status("stopped"))
        log.info("serve.stopped", requests_served=parts.counters.requests_served,
                 conversations_logged=chatlog.logged if chatlog else None)
    return 0


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM once it has stopped, which would kill the process before the
    pending chats are written and the status says stopped; here a signal only stops serving."""

    @contextlib.contextmanager
    def capture_signals(self):
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _housekeeping(stop: threading.Event, root: Path, chatlog, status) -> None:
    """Write batches of chats when due, and the status file when something in it changed."""
    last: dict | None = None
    last_written = 0.0
    while not stop.is_set():
        if chatlog is not None:
            chatlog.wanted.wait(HOUSEKEEPING_SECONDS)
            if chatlog.due():
                try:
                    chatlog.flush()
                except OSError:
                    log.exception("serve.chatlog_failed")  # the batch stays pending: tried again soon
                    stop.wait(5)
        else:
            stop.wait(HOUSEKEEPING_SECONDS)
        current = status("serving")
        changed = {k: v for k, v in current.items() if k != "updated"}
        if changed != last or time.time() - last_written > 30:
            try:
                write_status(root, current)
                last, last_written = changed, time.time()
            except OSError:
                log.exception("serve.status_failed")
