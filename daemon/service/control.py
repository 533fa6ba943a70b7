"""The control channel: dreamctl talks to the running dreamd over a Unix stream socket.

Protocol: the client sends one JSON object and a newline (at most MAX_REQUEST_BYTES); the daemon
answers one JSON object and a newline, then closes. `{"v": 1, "cmd": "pause", "args": {...}}` ->
`{"ok": true, "result": {...}}` or `{"ok": false, "code": "denied", "error": "..."}`.

Why it is safe to expose:
- a filesystem socket only (never abstract: an abstract name has no permissions, anyone in the
  network namespace could connect), mode 0660 in a 0750 directory;
- who is calling comes from the kernel (SO_PEERCRED), not from the request; commands that change
  anything need root, the daemon's own uid, or the configured control group (`peer_allowed`);
- requests are size-bounded and validated against a closed schema before anything runs; no
  request field is ever a path the daemon opens.

The client side (`request`) imports nothing heavy (no jsonschema) so `dreamctl status` stays fast.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import selectors
import socket
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _log():
    # structlog is imported on first use, by the server: `dreamctl status` imports this module
    # only for `request`, and structlog (it brings rich) would be most of its start-up time.
    import structlog

    return structlog.get_logger("dreamd.control")

PROTOCOL_VERSION = 1
MAX_REQUEST_BYTES = 4096
MAX_RESPONSE_BYTES = 1 << 20
MAX_SUN_PATH = 107  # sockaddr_un.sun_path is 108 bytes, one for the terminating NUL
SOCKET_MODE = 0o660
DIR_MODE = 0o750
READ_ONLY = frozenset({"ping", "status"})
MUTATING = frozenset({"pause", "resume", "dream_now", "reload", "rollback"})
# A checkpoint id as trainers.checkpoints.new_checkpoint_id makes them (20250101T120000123456Z-1a2b3c),
# or any name of letters, digits, `_` and `-`: never a path (no `/`, no `.`, so no `..` or `.tmp`).
CHECKPOINT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$"

REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["v", "cmd"],
    "properties": {
        "v": {"const": PROTOCOL_VERSION},
        "cmd": {"enum": sorted(READ_ONLY | MUTATING)},
        "args": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "reason": {"type": "string", "maxLength": 200},
                "checkpoint": {"type": "string", "pattern": CHECKPOINT_ID_PATTERN},  # rollback's target
                "to_base": {"type": "boolean"},  # rollback to the base model
            },
        },
    },
}


class ControlError(Exception):
    """A refused or failed request; `code` is machine-readable (denied, invalid, busy, ...)."""

    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class DaemonUnavailable(Exception):
    """Nobody is listening on the control socket: dreamd is not running (or not yet ready)."""


# --- who may do what ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerCred:
    pid: int
    uid: int
    gid: int


def peer_cred(conn: socket.socket) -> PeerCred:
    size = struct.calcsize("3i")
    pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size))
    return PeerCred(pid, uid, gid)


def peer_allowed(
    cred: PeerCred,
    daemon_uid: int,
    control_group: str,
    getgrnam: Callable[[str], Any] = grp.getgrnam,
    getpwuid: Callable[[int], Any] = pwd.getpwuid,
) -> bool:
    """May this peer run commands that change anything? Root, the daemon's uid, or the group.

    Group membership is looked up per request (so adding an operator to the group needs no
    restart): the peer's primary gid from SO_PEERCRED, or its user name among the group's
    members. An unknown group or user allows nobody extra: a typo fails closed.
    """
    if cred.uid == 0 or cred.uid == daemon_uid:
        return True
    if not control_group:
        return False
    try:
        group = getgrnam(control_group)
    except KeyError:
        return False
    if cred.gid == group.gr_gid:
        return True
    name = user_name(cred.uid, getpwuid)
    return name is not None and name in group.gr_mem


def user_name(uid: int, getpwuid: Callable[[int], Any] = pwd.getpwuid) -> str | None:
    """The login name of `uid`, or None when it has no passwd entry (containers, a deleted user)."""
    try:
        return getpwuid(uid).pw_name
    except KeyError:
        return None


def user_label(uid: int, getpwuid: Callable[[int], Any] = pwd.getpwuid) -> str:
    """Who a uid is, as the audit rows (pointer moves) record it: `alice (uid 1000)`, or `uid 1000`
    without a passwd entry (the uid is still worth recording). The daemon and dreamctl both use it,
    so a rollback reads the same whichever of them did it."""
    name = user_name(uid, getpwuid)
    return f"{name} (uid {uid})" if name else f"uid {uid}"


def parse_request(raw: bytes) -> dict[str, Any]:
    """Decode and validate one request; raises ControlError('invalid' or 'too_large')."""
    if len(raw) > MAX_REQUEST_BYTES:
        raise ControlError("too_large", f"requests are at most {MAX_REQUEST_BYTES} bytes")
    try:
        request = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError("invalid", f"not a JSON object: {exc}") from None
    import jsonschema  # server side only: keeps the client's import time down

    try:
        jsonschema.validate(request, REQUEST_SCHEMA)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "request"
        raise ControlError("invalid", f"{where}: {exc.message}") from None
    request.setdefault("args", {})
    return request


# --- the server --------------------------------------------------------------------------------

Handler = Callable[[str, dict[str, Any], PeerCred], dict[str, Any]]


class ControlServer:
    """Listens on `path`; each connection is answered by `handler(cmd, args, peer)` on a short thread.

    The accept loop blocks in select() with no timeout (no idle wake-ups); stop() wakes it through
    a socketpair. `allowed(cred)` decides mutating commands; `handler` raises ControlError to refuse.
    """

    MAX_CLIENTS = 4
    CLIENT_TIMEOUT = 2.0

    def __init__(self, path: Path, handler: Handler, allowed: Callable[[PeerCred], bool], group: str = ""):
        self.path = Path(path)
        self.handler = handler
        self.allowed = allowed
        self.group = group
        self._slots = threading.BoundedSemaphore(self.MAX_CLIENTS)
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None
        self._inode: int | None = None

    def start(self) -> ControlServer:
        if len(os.fsencode(self.path)) > MAX_SUN_PATH:
            raise OSError(f"control socket path is longer than {MAX_SUN_PATH} bytes: {self.path}")
        prepare_socket_dir(self.path.parent, self.group)
        if self.path.is_symlink() or (self.path.exists() and not stat.S_ISSOCK(self.path.lstat().st_mode)):
            raise OSError(f"{self.path} exists and is not a socket; refusing to replace it")
        # Bind under a temporary name, set the mode, then rename: a client never sees the socket
        # with the umask's permissions, and a stale socket (we hold the instance lock, so any
        # socket there is a dead daemon's) is replaced atomically.
        staging = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        staging.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        listener.bind(os.fsencode(staging))
        os.chmod(staging, SOCKET_MODE)
        _chgrp(staging, self.group)
        listener.listen(16)
        os.replace(staging, self.path)
        self._inode = self.path.stat().st_ino
        self._listener = listener
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()
        _log().info("control socket listening", path=str(self.path))
        return self

    def stop(self) -> None:
        if self._listener is None:
            return
        self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._listener.close()
        self._listener = None
        try:  # only our own socket: a successor may already have replaced it
            if self.path.stat().st_ino == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass

    def _serve(self) -> None:
        assert self._listener is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                events = selector.select()
                if any(key.fileobj is self._wake_r for key, _ in events):
                    return
                try:
                    conn, _ = self._listener.accept()
                except OSError:
                    continue
                if not self._slots.acquire(blocking=False):
                    _reply(conn, {"ok": False, "code": "busy", "error": "too many clients; try again"})
                    conn.close()
                    continue
                threading.Thread(target=self._client, args=(conn,), name="control-client", daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(self.CLIENT_TIMEOUT)
            _reply(conn, self.answer(conn))
        except OSError as exc:
            _log().debug("control client dropped", error=str(exc))
        finally:
            conn.close()
            self._slots.release()

    def answer(self, conn: socket.socket) -> dict[str, Any]:
        """Read, check and run one request; always returns the response object."""
        try:
            cred = peer_cred(conn)
            request = parse_request(_read_request(conn))
            cmd = request["cmd"]
            if cmd in MUTATING and not self.allowed(cred):
                _log().warning("control command denied", cmd=cmd, uid=cred.uid, pid=cred.pid)
                raise ControlError("denied", f"uid {cred.uid} may not {cmd}: "
                                             "needs root, the daemon's user or the control group")
            if cmd in MUTATING:
                _log().info("control command", cmd=cmd, uid=cred.uid, pid=cred.pid)
            return {"ok": True, "result": self.handler(cmd, request["args"], cred)}
        except ControlError as exc:
            return {"ok": False, "code": exc.code, "error": exc.message}
        except Exception as exc:  # a bug in a handler must not kill the control thread
            _log().exception("control command failed")
            return {"ok": False, "code": "failed", "error": f"{type(exc).__name__}: {exc}"}


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = conn.recv(MAX_REQUEST_BYTES + 1 - len(data))
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST_BYTES:
            raise ControlError("too_large", f"requests are at most {MAX_REQUEST_BYTES} bytes")
    return data.split(b"\n", 1)[0]


def _reply(conn: socket.socket, response: dict[str, Any]) -> None:
    conn.sendall(json.dumps(response, default=str).encode() + b"\n")


def prepare_socket_dir(folder: Path, group: str = "") -> None:
    """Create the socket's folder 0750 (tightening it when we own it) and give it to the group."""
    folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    info = folder.stat()
    if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != DIR_MODE:
        os.chmod(folder, DIR_MODE)
    _chgrp(folder, group)


def _chgrp(path: Path, group: str) -> None:
    """Give `path` to the control group so its members can reach the socket (best effort)."""
    if not group:
        return
    try:
        gid = grp.getgrnam(group).gr_gid
        if os.stat(path).st_gid != gid:
            os.chown(path, -1, gid)
    except KeyError:
        _log().warning("control group does not exist", group=group)
    except PermissionError:
        _log().warning("cannot give the control socket to its group; add the daemon's user to it "
                       "(SupplementaryGroups= in the unit)", group=group, path=str(path))


# --- the client --------------------------------------------------------------------------------


def request(path: Path, cmd: str, args: dict[str, Any] | None = None, timeout: float = 5.0) -> dict[str, Any]:
    """Send one command; returns its result, raises DaemonUnavailable or ControlError."""
    message = {"v": PROTOCOL_VERSION, "cmd": cmd, **({"args": args} if args else {})}
    return exchange(path, json.dumps(message).encode() + b"\n", timeout)


def exchange(path: Path, payload: bytes, timeout: float = 5.0) -> dict[str, Any]:
    """Send raw bytes and read the response (the tests use it to send malformed requests)."""
    address = os.fsencode(path)
    if len(address) > MAX_SUN_PATH:
        raise ControlError("invalid", f"control socket path is longer than {MAX_SUN_PATH} bytes: {path}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
            raise DaemonUnavailable(f"dreamd is not running (no one listens on {path}: {exc.strerror})") from None
        except PermissionError:
            raise ControlError("denied", f"no permission to connect to {path} (join the control group)") from None
        try:
            sock.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer (e.g. too_large) and close before reading everything
        data = b""
        while not data.endswith(b"\n"):
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_RESPONSE_BYTES:
                raise ControlError("invalid", "response too large")
    if not data:
        raise ControlError("failed", "dreamd closed the connection without answering")
    response = json.loads(data)
    if not response.get("ok"):
        raise ControlError(response.get("code", "failed"), response.get("error", "unknown error"))
    return response["result"]
