"""``backstop wal-push %p`` and ``backstop wal-fetch %f %p``: what PostgreSQL runs, once per WAL file.

The fast path imports the standard library only, and not even ``pathlib``
or ``re`` (together half of a call's CPU, spent on the two cores where the
pusher compresses the very file the call waits for). ``wal-push`` answers at
once when the spool records the file as pushed (same size and digest);
otherwise it asks the resident pusher (starting it when none runs) and
waits for its answer; only when no pusher can answer does it open the
repository and push the file itself. ``wal-fetch`` takes a file the
read-ahead fetcher already brought into the spool, else fetches it itself
and starts the fetcher for the files after it. Exit status: 0 done, 1 the
file is not archived (wal-fetch: quietly) or the push/fetch failed, 2 usage
or configuration error; a failure prints one line on stderr.
"""

from __future__ import annotations

import errno
import os
import sys
import time

from core.postgres.wal import WalNameError, wal_file_kind
from core.wal.spool import Spool, SpoolError, config_path, spool_of

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import _socket
    import subprocess
    from collections.abc import Callable, Coroutine
    from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# How long a call waits for a pusher it started (imports, scrypt) before pushing by itself.
PUSHER_START_WAIT_S = 20.0
# How long a call waits for the pusher's answer; PostgreSQL retries after a failure anyway.
PUSHER_ANSWER_WAIT_S = 900.0
# How long wal-fetch waits for a file the fetcher has planned before fetching it itself.
FETCH_PLAN_WAIT_S = 60.0
_SUN_PATH_MAX = 100


def _err(command: str, message: str) -> None:
    print(f"backstop: {command}: {' '.join(str(message).split())}", file=sys.stderr)


def _spool(config_arg: str | None) -> tuple[str, Spool | None]:
    """The config file and its spool; no spool (None) when this user cannot create or write it.

    Without a spool a call still works, only slower: it opens the repository itself, records nothing
    and reads nothing ahead (``wal status`` then shows no spool).
    """
    cfg = config_path(config_arg)
    spool = spool_of(cfg)
    try:
        return cfg, spool.ensure()
    except SpoolError:
        return cfg, None


def _spawn(spool: Spool, cfg: str, module: str) -> subprocess.Popen[bytes]:
    """Start a detached background process (its own session, output to the spool's log)."""
    import subprocess

    with open(spool.log, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", module, "--config", cfg, "--spool", spool.root],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd="/")


# -- wal-push ---------------------------------------------------------------------------------------------


def wal_push(config_arg: str | None, wal_path: str) -> int:
    """Archive one WAL file; 0 only once it is stored and read back on every target."""
    t0 = time.monotonic()
    # archive_command runs in the data directory: %p is pg_wal/NAME
    path = os.path.abspath(wal_path)
    name = os.path.basename(path)
    try:
        wal_file_kind(name)
        cfg, spool = _spool(config_arg)
    except (WalNameError, SpoolError) as exc:
        _err("wal-push", str(exc))
        return EXIT_USAGE
    if spool is None:
        return _push_here(cfg, path, None, t0)
    try:
        spool.note_pgdata(path)
        started: subprocess.Popen[bytes] | None = None
        answer = None
        if spool.holder(spool.pusher_lock) is None:
            started = _spawn(spool, cfg, "core.wal.pusher")
        else:
            # A listening pusher answers at once for a file it stored and that has not changed since,
            # without this call reading and hashing 16 MiB again; else it checks the record or pushes.
            answer = _ask_pusher(spool, path, None, wait=False)
        if answer is None:
            # No pusher listens yet (starting up, or gone): a file recorded as pushed needs none.
            if spool.matches(name, path):
                spool.add_latency(time.monotonic() - t0, "spool")
                return EXIT_OK
            answer = _ask_pusher(spool, path, started)
    except OSError as exc:
        _err("wal-push", f"the WAL spool {spool.root} is not usable: {exc.strerror or exc}; it must be writable "
                         "by the PostgreSQL server's OS user")
        return EXIT_FAILED
    if answer is not None:
        ok, message = answer
        if ok:
            spool.add_latency(time.monotonic() - t0, "pusher")
            return EXIT_OK
        _err("wal-push", message)
        return EXIT_FAILED
    return _push_here(cfg, path, spool, t0)


def _connect(spool: Spool) -> _socket.socket | None:
    """A connection to the pusher's socket, or None when nobody listens."""
    # The C module, not `socket`: that one builds its enums at import, a fifth of a call's own CPU time,
    # while the pusher, on the same cores, is compressing the very file this call waits for.
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        if len(spool.socket) > _SUN_PATH_MAX:
            # sockaddr_un holds ~108 bytes: connect by a relative name from inside the spool.
            here = os.open(".", os.O_RDONLY)
            try:
                os.chdir(spool.root)
                sock.connect(os.path.basename(spool.socket))
            finally:
                os.fchdir(here)
                os.close(here)
        else:
            sock.connect(spool.socket)
        return sock
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN):
            return None  # nobody listens (yet)
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise _ForeignPusher from None
        raise


class _ForeignPusher(Exception):
    """The socket belongs to another OS user's pusher (one someone ran by hand): this call pushes by itself."""


def _ask_pusher(spool: Spool, path: str, started: subprocess.Popen[bytes] | None,
                wait: bool = True) -> tuple[bool, str] | None:
    """The pusher's answer for ``path`` (ok, message); None when no pusher answered (the caller pushes).

    ``wait``: for a pusher that is starting up (without it, None at once when nobody listens).
    """
    deadline = time.monotonic() + PUSHER_START_WAIT_S
    while True:
        try:
            sock = _connect(spool)
        except _ForeignPusher:
            return None
        if sock is not None:
            break
        if not wait:
            return None
        starting = started is not None and started.poll() is None
        if not starting and spool.holder(spool.pusher_lock) is None:
            return None
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)
    try:
        sock.settimeout(PUSHER_ANSWER_WAIT_S)
        sock.sendall(f"PUSH {path}\n".encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                return None  # the pusher died (SIGKILL): the caller pushes by itself
            buf += chunk
    except OSError:
        return None
    finally:
        sock.close()
    line = buf.decode(errors="replace").strip()
    if line.startswith("OK "):
        tag, _, message = line[3:].partition(" ")
        # A pusher started with the config as it was before an edit stored into the old repository:
        # its word counts for nothing here, this call pushes by itself.
        return (True, message) if tag == spool.tag else None
    return False, line[4:] if line.startswith("ERR ") else line


def _run_here(verb: str, work: Callable[[], Coroutine[Any, Any, object]], after: str = "") -> int:
    """Run ``work`` in this process: one line on stderr and non-zero for any failure (PostgreSQL retries)."""
    import asyncio

    from core.errors import BackstopError
    from core.repository.wal import WalNotArchived

    try:
        asyncio.run(work())
    except WalNotArchived:
        raise
    except BackstopError as exc:
        _err(verb, str(exc))
        return exc.exit_code or EXIT_FAILED
    except Exception as exc:  # noqa: BLE001  (archive/restore_command: whatever went wrong, one line and non-zero)
        _err(verb, f"{type(exc).__name__}: {exc}{after}")
        return EXIT_FAILED
    return EXIT_OK


def _push_here(cfg: str, path: str, spool: Spool | None, t0: float) -> int:
    """Open the repository in this process and push (no pusher answered)."""
    from pathlib import Path

    from core.config import load_config
    from core.ops.wal import push_file

    rc = _run_here("wal-push", lambda: push_file(load_config(cfg), Path(path), spool),
                   "; nothing was acknowledged, PostgreSQL will retry")
    if rc != EXIT_OK:
        return rc
    if spool is not None:
        spool.add_latency(time.monotonic() - t0, "direct")
    return EXIT_OK


# -- wal-fetch --------------------------------------------------------------------------------------------


def wal_fetch(config_arg: str | None, name: str, dest: str) -> int:
    """Write archived WAL file ``name`` to ``dest``; 1, quietly, when the archive does not hold it."""
    target = os.path.abspath(dest)
    try:
        kind = wal_file_kind(name)
        cfg, spool = _spool(config_arg)
    except (WalNameError, SpoolError) as exc:
        _err("wal-fetch", str(exc))
        return EXIT_USAGE
    if spool is None:
        return _fetch_here(cfg, name, target)
    try:
        if kind == "segment":
            spool.set_fetch_position(name)
            if spool.holder(spool.fetcher_lock) is None:
                _spawn(spool, cfg, "core.wal.fetcher")
        if _take_fetched(spool, name, target):
            return EXIT_OK
        if kind == "segment" and _wait_for_plan(spool, name) and _take_fetched(spool, name, target):
            return EXIT_OK
    except OSError as exc:
        _err("wal-fetch", f"cannot write {target} from the WAL spool {spool.root}: {exc.strerror or exc}")
        return EXIT_FAILED
    return _fetch_here(cfg, name, target)


def _take_fetched(spool: Spool, name: str, target: str) -> bool:
    """Move a file the fetcher brought ahead into place; False when there is none."""
    src = os.path.join(spool.fetched, name)
    try:
        os.replace(src, target)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    # Another file system: copy under a temporary name beside the target, then rename.
    head, base = os.path.split(target)
    tmp = os.path.join(head, f".{base}.backstop-tmp.{os.getpid()}")
    try:
        with open(src, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return False
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        _unlink(tmp)
        raise
    _unlink(src)
    return True


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _wait_for_plan(spool: Spool, name: str) -> bool:
    """Wait while the running fetcher has ``name`` in its plan; True once the file is there."""
    deadline = time.monotonic() + FETCH_PLAN_WAIT_S
    while time.monotonic() < deadline:
        if os.path.exists(os.path.join(spool.fetched, name)):
            return True
        if name not in spool.fetch_plan() or spool.holder(spool.fetcher_lock) is None:
            return os.path.exists(os.path.join(spool.fetched, name))
        time.sleep(0.01)
    return False


def _fetch_here(cfg: str, name: str, target: str) -> int:
    from pathlib import Path

    from core.config import load_config
    from core.ops.wal import fetch_file
    from core.repository.wal import WalNotArchived

    try:
        return _run_here("wal-fetch", lambda: fetch_file(load_config(cfg), name, Path(target)))
    except WalNotArchived:
        return EXIT_FAILED  # the end of the archive: PostgreSQL expects exactly this, without noise
