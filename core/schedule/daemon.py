"""`backstop daemon`: run the schedules in the foreground until stopped, as systemd expects (Type=notify).

- Logs go to stderr, one line each (the journal adds the time; ``--timestamps`` adds it elsewhere).
- sd_notify when ``$NOTIFY_SOCKET`` is set: READY=1 once the schedules are loaded, WATCHDOG=1 at half of
  ``$WATCHDOG_USEC``, RELOADING=1/READY=1 around a reload, STOPPING=1 on the way out.
- SIGTERM or SIGINT: runs in progress are cancelled; each cleans up (a backup leaves no visible snapshot, a
  drill drops its scratch database), is recorded as abandoned, and the daemon exits 0.
- SIGHUP: the config file is read again; an invalid one is reported and the old one stays in force.
  Runs in progress finish with the old config.
- ``--metrics-listen HOST:PORT``: /metrics is served from a thread (core/metrics/) until the daemon stops;
  each scrape reads the catalog of the config in force.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from core.config import parse_config, read_config
from core.errors import BackstopError
from core.fleet.leader import Leadership
from core.postgres.tools import first_line
from core.schedule.actions import EngineRunner
from core.schedule.clock import RealClock
from core.schedule.scheduler import Runner, Scheduler

if TYPE_CHECKING:
    from core.catalog.base import Catalog
    from core.config import BackstopConfig
    from core.engine import Engine
    from core.metrics.server import MetricsServer

log = logging.getLogger("backstop.daemon")
# The longest the daemon sleeps between looks at the schedules (a clock stepped by NTP is noticed by then).
# The fleet's reaping and indexing run this often (core/fleet/dispatch.py).
FLEET_CHORES_S = 2.0
# A standby daemon tries for the lead this often: a dead leader is replaced within it (plus a tick).
LEADER_RETRY_S = 5.0
MAX_SLEEP_S = 60.0


def sd_notify(state: str) -> bool:
    """Send ``state`` to systemd's notification socket, if there is one; False when not under systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    addr = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", path, exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Half the watchdog timeout systemd asked for (``$WATCHDOG_USEC`` for this pid), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


def setup_daemon_logging(timestamps: bool = False) -> None:
    """The daemon's lines on stderr (info and up)."""
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(asctime)s " if timestamps else ""
    handler.setFormatter(logging.Formatter(fmt + "backstop daemon: %(levelname)s: %(message)s"))
    daemon_log = logging.getLogger("backstop.daemon")
    daemon_log.handlers[:] = [handler]
    daemon_log.setLevel(logging.INFO)
    daemon_log.propagate = False


class Daemon:
    """The long-running scheduler process around :class:`Scheduler`."""

    def __init__(self, config_path: Path | None, once: bool = False, metrics_listen: str | None = None) -> None:
        self.config_path = config_path
        self.once = once
        self.metrics_listen = metrics_listen
        self._current: Engine | None = None  # the engine in force (a reload replaces it): what /metrics reads
        self._wake = asyncio.Event()
        self._stop = False
        self._reload = False
        self._closing: set[asyncio.Task[None]] = set()

    async def _engine(self) -> Engine:
        """An Engine for the config file with the approved settings in force (core/settings): schedules and
        retention edited in the file wait for `backstop settings approve`."""
        from core.engine import Engine

        data, path = read_config(self.config_path)
        engine = Engine(parse_config(data, path), config_path=path, config_source=(data, path))
        try:
            eff = await engine.apply_settings()
        except BaseException:
            await engine.close()
            raise
        for note in eff.notes if eff is not None else ():
            log.warning("%s", note)
        if eff is not None and eff.pending:
            from core.settings.effective import PENDING_NOTICE

            log.warning("%s; the approved schedules and retention stay in force", PENDING_NOTICE)
        return engine

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (or, with ``once``, until the due runs of one look are done); exit status."""
        engine = await self._engine()
        self._current = engine
        try:
            metrics = self._serve_metrics()
        except BaseException:
            await engine.close()
            raise
        config = engine.config
        sched = Scheduler(config.schedules, engine.catalog, runner_for(engine), RealClock())
        loop = asyncio.get_running_loop()
        for sig, fn in ((signal.SIGTERM, self._on_stop), (signal.SIGINT, self._on_stop),
                        (signal.SIGHUP, self._on_reload)):
            loop.add_signal_handler(sig, fn)
        leader = _leadership(config)
        chores = loop.create_task(self._fleet_chores(sched, leader))
        try:
            if leader is None:
                sched.start()
            log.info("started with %d schedule(s): %s (pid %d)", len(config.schedules),
                     ", ".join(s.name for s in config.schedules) or "none", os.getpid())
            sd_notify(f"READY=1\nSTATUS=running {len(config.schedules)} schedule(s)\nMAINPID={os.getpid()}")
            dog = watchdog_interval()
            while not self._stop:
                if self._reload:
                    self._reload = False
                    engine = self._current = await self._apply_reload(sched, engine)
                if leader is not None and not await self._lead(leader, sched):
                    continue
                await sched.tick()
                if self.once:
                    await sched.wait_idle()
                    break
                if dog is not None:
                    sd_notify("WATCHDOG=1")
                pause = min(sched.seconds_to_next(), MAX_SLEEP_S, dog if dog is not None else MAX_SLEEP_S)
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=max(pause, 0.05))
                except TimeoutError:
                    pass
        finally:
            chores.cancel()
            await asyncio.gather(chores, return_exceptions=True)
            if leader is not None:
                leader.release()
            sd_notify("STOPPING=1")
            if metrics is not None:
                metrics.stop()
            if sched.busy:
                log.info("stopping: abandoning %d run(s) in progress", len(sched.running))
            await sched.stop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await asyncio.gather(*self._closing, return_exceptions=True)
            await engine.close()
            log.info("stopped")
        return 0

    async def _lead(self, leader: Leadership, sched: Scheduler) -> bool:
        """Whether this daemon schedules now; a standby waits for the lead (a few seconds at a time)."""
        was = leader.held
        if await asyncio.to_thread(leader.try_lead):
            if not was:
                log.info("leading: this daemon schedules the fleet (pid %d)", os.getpid())
                sched.start()
                await self._warn_privileges()
            return True
        if was or not getattr(self, "_told_standby", False):
            log.info("standing by: another daemon leads the fleet; taking over if it stops")
            self._told_standby = True
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=LEADER_RETRY_S)
        except TimeoutError:
            pass
        return False

    async def _warn_privileges(self) -> None:
        """Say once per lead what agents could still do to stall the fleet (advisory locks left to PUBLIC)."""
        import psycopg

        if self._current is None:
            return
        try:
            problems = await asyncio.to_thread(self._current.fleet_privilege_problems)
        except (BackstopError, psycopg.Error) as exc:
            problems = [f"could not check the agents' privileges: {first_line(exc)}"]
        for problem in problems:
            log.warning("%s", problem)

    async def _fleet_chores(self, sched: Scheduler, leader: Leadership | None) -> None:
        """On a fleet's catalog: reap silent agents' jobs and index agents' own snapshots, every few seconds."""
        from core.fleet.dispatch import FleetRunner

        while True:
            runner = sched.runner
            if isinstance(runner, FleetRunner) and (leader is None or leader.held):
                try:
                    await runner.housekeep(sched.holder)
                except BackstopError as exc:
                    log.warning("fleet housekeeping: %s", exc)
            await asyncio.sleep(FLEET_CHORES_S)

    def _serve_metrics(self) -> MetricsServer | None:
        """Start /metrics when asked to (--metrics-listen); a busy port is a UsageError (exit 2)."""
        if not self.metrics_listen:
            return None
        from core.metrics.collector import BackstopCollector, spool_newest_push
        from core.metrics.server import MetricsServer

        def source() -> tuple[Catalog, BackstopConfig]:
            assert self._current is not None
            return self._current.catalog, self._current.config

        config_path = self._current.config_path if self._current is not None else self.config_path
        collector = BackstopCollector(source, wal_pushed_at=spool_newest_push(config_path))
        return MetricsServer(self.metrics_listen, collector).start()

    def _on_stop(self) -> None:
        self._stop = True
        self._wake.set()

    def _on_reload(self) -> None:
        self._reload = True
        self._wake.set()

    async def _apply_reload(self, sched: Scheduler, engine: Engine) -> Engine:
        """Read the config again; keep the old one (and say why) when the new one is invalid."""
        sd_notify("RELOADING=1")
        try:
            new = await self._engine()
        except BackstopError as exc:
            log.error("reload refused, the previous config stays in force: %s", exc)
            sd_notify("READY=1")
            return engine
        config = new.config
        sched.reload(config.schedules, new.catalog, runner_for(new))
        # The old engine serves the runs still in progress; it closes once they end.
        running = sched.running

        async def close_old() -> None:
            await asyncio.gather(*running, return_exceptions=True)
            await engine.close()

        task = asyncio.get_running_loop().create_task(close_old())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        log.info("reloaded %s: %d schedule(s): %s", self.config_path or "the config", len(config.schedules),
                 ", ".join(s.name for s in config.schedules) or "none")
        sd_notify("READY=1")
        return new


def _leadership(config: BackstopConfig) -> Leadership | None:
    """On a fleet's catalog, daemons take turns leading; alone on SQLite, this one always schedules."""
    return Leadership(config.catalog.url) if config.catalog.is_postgres else None


def runner_for(engine: Engine) -> Runner:
    """Run here on an SQLite catalog; on a PostgreSQL catalog (a fleet) the agents run the work."""
    if engine.config.catalog.is_postgres:
        from core.fleet.dispatch import FleetRunner

        d = engine.config.dispatch
        return FleetRunner(engine, max_attempts=d.max_attempts, retry_delay_s=d.retry_delay_s,
                           reap_grace_s=d.reap_grace_s)
    return EngineRunner(engine)


def run_daemon(config_path: str | None, once: bool = False, timestamps: bool = False,
               metrics_listen: str | None = None) -> int:
    """The `backstop daemon` command: set up logging and run the daemon's event loop."""
    setup_daemon_logging(timestamps)
    return asyncio.run(Daemon(Path(config_path) if config_path else None, once, metrics_listen).run())
