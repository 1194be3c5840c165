#!/usr/bin/env python3
"""Issue 14's figures: 100 simulated agents against one control plane (the fleet queue in a PostgreSQL catalog).

    .venv/bin/python bench/fleet_bench.py --quick                 # 30 s smoke run, /tmp/fleet-quick.json
    .venv/bin/python bench/fleet_bench.py                         # 5 minutes, bench/results/fleet.json

A private cluster (default, durable settings: fsync and synchronous_commit
on; max_connections=250) holds one catalog database, migrated by
PostgresCatalog (the fleet schema). ``--agents`` login roles are made with
ControlPlane.create_agent_role and registered; every agent logs in as its
own role over TCP (trust on loopback).

Agents are asyncio tasks in this process, each with two AsyncConnections:
one LISTENs on ``backstop_agent_<name>`` (psycopg's notifies() holds the
connection's lock while it waits, so a connection that waits for wake-ups
cannot also send heartbeats), the other calls fleet.claim, fleet.heartbeat,
fleet.report (the job's history: five engine events) and fleet.finish
directly (AgentSession is synchronous). An agent claims on
a wake-up and on a slow fallback poll, runs up to ``--slots`` jobs at once
(so the claim latency is the queue's, not a busy agent's), "works" 0.5-3 s
per job with a heartbeat every ``--heartbeat`` s, then finishes it (ok).

A producer thread enqueues ``--rate`` jobs a minute through
ControlPlane.enqueue, each for a random agent and a target of its own (so
the one-running-job-per-target index never throttles), and reaps and files
the agents' reports into the catalog (core/fleet/records.py) every 10 s as
the leading daemon's housekeeping would. A console process LISTENs on backstop_catalog.

Measured: claim latency (enqueue returned -> claim returned, per job), the
claim call's own duration, NOTIFY-to-console latency (the console received
the notification of a call, measured from the call's return and from its
sending: the commit lies between; notifications are matched to calls by the
sender's backend pid, in order, since every call fires the statement
trigger once, even a claim that finds nothing), queued/running counts every 5 s, and
CPU: utime+stime of the server's processes (postmaster with its reaped
children, plus live children) and of this process and the console's, as
cores used (CPU seconds / wall seconds; the table's "bench cores" is this
process plus the console).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from core.catalog.pg_fleet import AGENT_CHANNEL_PREFIX  # noqa: E402
from core.catalog.pg_schema import CHANNEL  # noqa: E402
from core.catalog.postgres import PostgresCatalog  # noqa: E402
from core.events import JobFinished, JobStarted, PhaseChanged, Progress  # noqa: E402
from core.fleet.queue import ControlPlane  # noqa: E402
from core.fleet.records import JobLog, file_reports  # noqa: E402
from core.postgres.cluster import LocalCluster  # noqa: E402
from psycopg.conninfo import make_conninfo  # noqa: E402

DB = "fleet_catalog"
SETTINGS = {"max_connections": "250"}
TICK = os.sysconf("SC_CLK_TCK")
SAMPLE_S = 5.0
REAP_EVERY_S = 10.0


# -- measurements ------------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100), None when empty."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def ms(values: list[float]) -> dict[str, Any]:
    """p50/p99/max in milliseconds and the count."""
    def r(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 1)
    return {"n": len(values), "p50_ms": r(pct(values, 50)), "p99_ms": r(pct(values, 99)),
            "max_ms": r(max(values) if values else None)}


def _proc_ticks(pid: int, children: bool = False) -> int:
    """utime+stime (and cutime+cstime of reaped children) of one process, in clock ticks; 0 when gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    f = raw[raw.rindex(")") + 2:].split()  # fields from 3 (state) on: utime is field 14 -> f[11]
    return int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)


def server_ticks(postmaster: int) -> tuple[int, dict[int, int]]:
    """CPU ticks of the whole server (the postmaster with the children it reaped, and its live children) and
    of each live child."""
    total = _proc_ticks(postmaster, children=True)
    each: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        if int(raw[raw.rindex(")") + 2:].split()[1]) == postmaster:
            each[int(entry.name)] = _proc_ticks(int(entry.name))
    return total + sum(each.values()), each


@dataclass
class Book:
    """Everything timed during the run, on time.monotonic() (system-wide, so comparable across processes)."""

    t0: float = 0.0
    enqueued: dict[int, float] = field(default_factory=dict)       # job -> enqueue returned
    enqueue_sent: dict[int, float] = field(default_factory=dict)   # job -> enqueue sent
    claimed: dict[int, float] = field(default_factory=dict)        # job -> claim returned
    finished: dict[int, float] = field(default_factory=dict)       # job -> finish returned
    claim_call: list[tuple[float, float]] = field(default_factory=list)   # (at, seconds) of claims that got a job
    empty_claim_call: list[float] = field(default_factory=list)
    by_poll: int = 0
    wakeups: int = 0
    # backend pid -> (kind, sent at, returned at) of each call that commits a change to fleet.jobs, in order
    commits: dict[int, list[tuple[str, float, float]]] = field(default_factory=lambda: defaultdict(list))
    samples: list[dict[str, Any]] = field(default_factory=list)
    backends: dict[int, str] = field(default_factory=dict)          # server pid -> what it serves
    pid_ticks: list[dict[int, int]] = field(default_factory=list)   # per server process: first and last sample
    loop_lag: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    report_call: list[float] = field(default_factory=list)          # seconds of each fleet.report
    filing: list[tuple[float, int]] = field(default_factory=list)   # (seconds, jobs filed) per filing pass
    filer_pids: set[int] = field(default_factory=set)  # catalog connections filing reports (their NOTIFYs are the
    # catalog's jobs table, not the queue's)

    def minute(self, t: float) -> int:
        return int((t - self.t0) // 60)


# -- the console (a process of its own) -------------------------------------------------------------------------


def console(dsn: str, ready: Any, stop: Any, out: Any) -> None:
    """LISTEN on the catalog's channel until told to stop; send back (pid, payload, arrived) of each notification."""
    got: list[tuple[int, str, float]] = []
    with psycopg.connect(dsn, autocommit=True, application_name="bench-console") as conn:
        conn.execute(f"LISTEN {CHANNEL}")
        ready.set()
        while not stop.is_set():
            for n in conn.notifies(timeout=0.5):
                got.append((n.pid, n.payload, time.monotonic()))
    out.send(got)
    out.close()


# -- the producer and scheduler (a thread, through the control plane's API) ---------------------------------------


def producer(dsn: str, agents: list[str], rate: float, duration: float, book: Book, done: threading.Event,
             seed: int) -> None:
    """Enqueue ``rate`` jobs a minute for ``duration`` seconds on a fixed schedule, reaping and filing the agents'
    reports every 10 s (as the leading daemon's housekeeping does)."""
    rng = random.Random(seed)
    catalog = PostgresCatalog(dsn)
    book.filer_pids.add(int(catalog._db.raw.info.backend_pid))  # type: ignore[attr-defined]
    with psycopg.connect(dsn, autocommit=True, application_name="bench-producer") as conn:
        cp = ControlPlane(conn)
        pid = conn.info.backend_pid
        gap = 60.0 / rate
        i, next_reap = 0, book.t0 + REAP_EVERY_S
        while True:
            due = book.t0 + i * gap
            if due >= book.t0 + duration:
                break
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            sent = time.monotonic()
            job = cp.enqueue(rng.choice(agents), "backup", f"db-{i:06d}", {"bench": True})
            t = time.monotonic()
            assert job is not None
            book.enqueued[job] = t
            book.enqueue_sent[job] = sent
            book.commits[pid].append(("enqueue", sent, t))
            i += 1
            if t >= next_reap:
                sent = time.monotonic()
                cp.reap()
                book.commits[pid].append(("reap", sent, time.monotonic()))
                next_reap += REAP_EVERY_S
                t = time.monotonic()
                filed = file_reports(catalog, cp).jobs
                book.filing.append((time.monotonic() - t, filed))
    catalog.close()
    done.set()


def file_the_rest(dsn: str, book: Book) -> None:
    """After the drain: the last jobs' reports, filed as the next housekeeping pass would."""
    catalog = PostgresCatalog(dsn)
    book.filer_pids.add(int(catalog._db.raw.info.backend_pid))  # type: ignore[attr-defined]
    with psycopg.connect(dsn, autocommit=True, application_name="bench-filer") as conn:
        t = time.monotonic()
        n = file_reports(catalog, ControlPlane(conn)).jobs
        book.filing.append((time.monotonic() - t, n))
    catalog.close()


# -- the agents ---------------------------------------------------------------------------------------------------


def report_json(job: int) -> str:
    """What an agent's engine records for one backup (as fleet.report gets it): start, two phases, the last
    progress, the outcome."""
    log = JobLog()
    t, jid = time.time(), f"bench{job}"
    for ev in (JobStarted(jid, kind="backup", db=f"db-{job}", description="backup", ts=t - 3),
               PhaseChanged(jid, phase="dump", ts=t - 2.5), Progress(jid, phase="dump", bytes_done=10**6,
                                                                       bytes_total=10**6, rate=5e5, ts=t - 1),
               PhaseChanged(jid, phase="commit", ts=t - 0.5), JobFinished(jid, outcome="succeeded", ts=t)):
        log(ev)
    return json.dumps({"events": [{"job_id": e.job_id, "ts": e.ts, "type": e.type, "payload": e.payload()}
                                  for e in log.events], "restores": [], "verifications": []})


@dataclass
class Knobs:
    slots: int
    heartbeat_s: float
    poll_s: float
    work_s: tuple[float, float]


async def agent(url: str, name: str, knobs: Knobs, book: Book, stop: asyncio.Event, started: asyncio.Event,
                rng: random.Random) -> None:
    """One agent: wake on NOTIFY (or a slow poll), claim while it has free slots, work, heartbeat, finish."""
    from psycopg import AsyncConnection

    listen = await AsyncConnection.connect(url, autocommit=True, application_name=f"{name}-listen")
    work = await AsyncConnection.connect(url, autocommit=True, application_name=f"{name}-work")
    pid = work.info.backend_pid
    await listen.execute(f"LISTEN {AGENT_CHANNEL_PREFIX}{name}")
    wake = asyncio.Event()
    slots = asyncio.Semaphore(knobs.slots)
    tasks: set[asyncio.Task[None]] = set()

    async def listener() -> None:
        async for _ in listen.notifies():
            book.wakeups += 1
            wake.set()

    async def call(kind: str, query: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        sent = time.monotonic()
        cur = await work.execute(query, params)
        row = await cur.fetchone()
        book.commits[pid].append((kind, sent, time.monotonic()))
        return row

    async def run(job: int, token: Any) -> None:
        try:
            left = rng.uniform(*knobs.work_s)
            step = 0
            while left > 0:
                nap = min(left, knobs.heartbeat_s)
                await asyncio.sleep(nap)
                left -= nap
                if left > 0:
                    step += 1
                    row = await call("heartbeat", "SELECT fleet.heartbeat(job => %s, token => %s, prog => %s,"
                                     " lease => make_interval(secs => 60))", (job, token, json.dumps({"step": step})))
                    if not (row and row[0]):
                        book.errors.append(f"{name}: heartbeat of job {job} refused")
                        return
            # The agent's history of the job goes first (no trigger on fleet.reports: no notification to pair).
            t = time.monotonic()
            cur = await work.execute("SELECT fleet.report(job => %s, token => %s, recs => %s)",
                                     (job, token, report_json(job)))
            row = await cur.fetchone()
            book.report_call.append(time.monotonic() - t)
            if not (row and row[0]):
                book.errors.append(f"{name}: report of job {job} refused")
            row = await call("finish", "SELECT fleet.finish(job => %s, token => %s, ok => %s)", (job, token, True))
            if row and row[0]:
                book.finished[job] = time.monotonic()
            else:
                book.errors.append(f"{name}: finish of job {job} refused")
        finally:
            slots.release()

    listening = asyncio.create_task(listener())
    started.set()
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(wake.wait(), timeout=knobs.poll_s)
                polled = False
            except TimeoutError:
                polled = True
            wake.clear()
            while not stop.is_set():
                await slots.acquire()
                t = time.monotonic()
                row = await call("claim", "SELECT id, lease_token FROM fleet.claim(make_interval(secs => 60))", ())
                took = time.monotonic() - t
                if row is None:
                    slots.release()
                    book.empty_claim_call.append(took)
                    break
                book.claimed[int(row[0])] = t + took
                book.claim_call.append((t + took, took))
                book.by_poll += polled
                task = asyncio.create_task(run(int(row[0]), row[1]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    finally:
        listening.cancel()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(listening, *tasks, return_exceptions=True)
        await listen.close()
        await work.close()


async def watch(dsn: str, postmaster: int, console_pid: int, book: Book, stop: asyncio.Event) -> None:
    """Every 5 s: queued/running counts and CPU ticks of the server, this process and the console."""
    from psycopg import AsyncConnection

    async with await AsyncConnection.connect(dsn, autocommit=True, application_name="bench-watch") as conn:
        while True:
            cur = await conn.execute("SELECT pid, application_name, backend_type FROM pg_stat_activity")
            for pid, app, kind in await cur.fetchall():
                book.backends[pid] = ("agents' LISTEN connections" if app.endswith("-listen") else
                                      "agents' work connections" if app.endswith("-work") else app or kind)
            cur = await conn.execute("SELECT count(*) FILTER (WHERE state = 'queued'),"
                                     " count(*) FILTER (WHERE state = 'running') FROM fleet.jobs")
            queued, running = await cur.fetchone() or (0, 0)
            total, each = server_ticks(postmaster)
            book.samples.append({"t": time.monotonic(), "queued": queued, "running": running,
                                 "server_ticks": total, "bench_ticks": _proc_ticks(os.getpid()),
                                 "console_ticks": _proc_ticks(console_pid)})
            if not book.pid_ticks:
                book.pid_ticks.append(each)
            if stop.is_set():
                book.pid_ticks.append(each)
                return
            try:
                await asyncio.wait_for(stop.wait(), timeout=SAMPLE_S)
            except TimeoutError:
                pass


async def lag(book: Book, stop: asyncio.Event) -> None:
    """How late the event loop wakes a 100 ms sleeper: shows whether this process kept up."""
    while not stop.is_set():
        t = time.monotonic()
        await asyncio.sleep(0.1)
        book.loop_lag.append(time.monotonic() - t - 0.1)


async def drive(args: argparse.Namespace, cluster: LocalCluster, agents: list[tuple[str, str]], postmaster: int,
                console_pid: int, book: Book) -> float:
    """Start the agents, run the producer for the duration, drain, stop; the drain's seconds."""
    knobs = Knobs(args.slots, args.heartbeat, args.poll, (args.work_min, args.work_max))
    stop, watch_stop = asyncio.Event(), asyncio.Event()
    rng = random.Random(args.seed)
    ups = [asyncio.Event() for _ in agents]
    runners = [asyncio.create_task(agent(url, name, knobs, book, stop, up, random.Random(rng.random())))
               for (name, url), up in zip(agents, ups, strict=True)]
    await asyncio.wait_for(asyncio.gather(*(u.wait() for u in ups)), timeout=120)
    book.t0 = time.monotonic()
    watcher = asyncio.create_task(watch(cluster.dsn(DB), postmaster, console_pid, book, watch_stop))
    lagger = asyncio.create_task(lag(book, stop))
    done = threading.Event()
    prod = threading.Thread(target=producer, args=(cluster.dsn(DB), [a for a, _ in agents], args.rate, args.duration,
                                                   book, done, args.seed), daemon=True)
    prod.start()
    while not done.is_set():
        await asyncio.sleep(0.5)
    prod.join()
    t = time.monotonic()
    while len(book.finished) < len(book.enqueued) and time.monotonic() - t < args.drain:
        await asyncio.sleep(0.25)
    drained = time.monotonic() - t
    await asyncio.to_thread(file_the_rest, cluster.dsn(DB), book)
    watch_stop.set()
    await watcher
    stop.set()
    for r in runners:  # an idle agent waits for a wake-up or its slow poll: cancel rather than wait
        r.cancel()
    await asyncio.gather(*runners, lagger, return_exceptions=True)
    return drained


# -- set-up, report -----------------------------------------------------------------------------------------------


def setup(cluster: LocalCluster, n: int) -> list[tuple[str, str]]:
    """Catalog database, migrated; ``n`` agent roles registered; (agent name, its login URL) each."""
    cluster.create_database(DB)
    PostgresCatalog(cluster.dsn(DB)).close()
    out = []
    with psycopg.connect(cluster.dsn(DB), autocommit=True) as conn:
        cp = ControlPlane(conn)
        for i in range(1, n + 1):
            name, role = f"agent{i:03d}", f"bench_agent_{i:03d}"
            cp.create_agent_role(role)
            cp.register_agent(name, role, [])  # jobs are queued to it by name: no routing by database
            out.append((name, make_conninfo(cluster.dsn(DB), user=role)))
    return out


def notify_latency(book: Book, arrivals: list[tuple[int, str, float]]
                   ) -> tuple[dict[str, list[float]], dict[str, list[float]], int]:
    """Latency per kind of commit from the call's return and from its sending, pairing each sender's calls with
    its notifications in order; how many went unmatched."""
    got: dict[int, list[float]] = defaultdict(list)
    for pid, payload, at in arrivals:
        if payload == "jobs" and pid not in book.filer_pids:  # the filer's are the catalog's jobs table, not the queue
            got[pid].append(at)
    lat: dict[str, list[float]] = defaultdict(list)
    lat_sent: dict[str, list[float]] = defaultdict(list)
    unmatched = 0
    for pid, commits in book.commits.items():
        seen = got.pop(pid, [])
        unmatched += abs(len(seen) - len(commits))
        for (kind, sent, t), at in zip(commits, seen, strict=False):
            lat[kind].append(at - t)
            lat_sent[kind].append(at - sent)
    unmatched += sum(len(v) for v in got.values())
    return lat, lat_sent, unmatched


def per_minute(book: Book, minutes: int, lat_by_minute: dict[int, list[float]]) -> list[dict[str, Any]]:
    rows = []
    for m in range(minutes):
        lo, hi = book.t0 + 60 * m, book.t0 + 60 * (m + 1)
        win = [s for s in book.samples if lo <= s["t"] <= hi]
        before = [s for s in book.samples if s["t"] <= lo]
        first = before[-1] if before else (win[0] if win else None)
        last = win[-1] if win else None
        cpu: dict[str, float | None] = {"server_cores": None, "bench_cores": None}
        if first and last and last["t"] > first["t"]:
            wall = last["t"] - first["t"]
            cpu = {"server_cores": round((last["server_ticks"] - first["server_ticks"]) / TICK / wall, 3),
                   "bench_cores": round((last["bench_ticks"] + last["console_ticks"] - first["bench_ticks"]
                                         - first["console_ticks"]) / TICK / wall, 3)}
        lat = lat_by_minute.get(m, [])
        calls = [d for at, d in book.claim_call if lo <= at < hi]
        rows.append({"minute": m + 1,
                     "enqueued": sum(1 for t in book.enqueued.values() if lo <= t < hi),
                     "claimed": sum(1 for t in book.claimed.values() if lo <= t < hi),
                     "finished": sum(1 for t in book.finished.values() if lo <= t < hi),
                     "claim_latency": ms(lat), "claim_call": ms(calls),
                     "queued_max": max((s["queued"] for s in win), default=None),
                     "queued_end": last["queued"] if last else None,
                     "running_mean": round(sum(s["running"] for s in win) / len(win), 1) if win else None, **cpu})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--rate", type=float, default=1000.0, help="jobs enqueued a minute")
    ap.add_argument("--duration", type=float, default=300.0, help="seconds of enqueueing")
    ap.add_argument("--quick", action="store_true", help="a 30 s smoke run, results in /tmp/fleet-quick.json")
    ap.add_argument("--slots", type=int, default=4, help="jobs one agent runs at once")
    ap.add_argument("--heartbeat", type=float, default=1.0, help="seconds between an agent's heartbeats of a job")
    ap.add_argument("--poll", type=float, default=30.0, help="an idle agent's fallback claim, seconds")
    ap.add_argument("--work-min", type=float, default=0.5)
    ap.add_argument("--work-max", type=float, default=3.0)
    ap.add_argument("--drain", type=float, default=60.0, help="seconds to wait for the last jobs to finish")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration = 30.0
    out = args.out or (Path(tempfile.gettempdir()) / "fleet-quick.json" if args.quick
                       else ROOT / "bench" / "results" / "fleet.json")

    root = Path(tempfile.mkdtemp(prefix="backstop-fleet-bench-"))
    cluster = LocalCluster(root / "data", settings=SETTINGS)
    ctx = mp.get_context("spawn")
    try:
        cluster.init()
        cluster.start()
        postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            server = {k: conn.execute(f"SHOW {k}").fetchone()[0]  # type: ignore[index]
                      for k in ("server_version", "fsync", "synchronous_commit", "shared_buffers", "max_connections",
                                "wal_level")}
        t_setup = time.monotonic()
        agents = setup(cluster, args.agents)
        print(f"PostgreSQL {server['server_version']}: catalog and {len(agents)} agent roles in "
              f"{time.monotonic() - t_setup:.1f} s", flush=True)

        ready, stop = ctx.Event(), ctx.Event()
        recv, send = ctx.Pipe(duplex=False)
        cons = ctx.Process(target=console, args=(cluster.dsn(DB), ready, stop, send), daemon=True)
        cons.start()
        if not ready.wait(60):
            raise SystemExit("the console process did not start")
        book = Book()
        load_before = os.getloadavg()
        t_run = time.monotonic()
        drained = asyncio.run(drive(args, cluster, agents, postmaster, cons.pid or 0, book))
        wall = time.monotonic() - t_run
        load_after = os.getloadavg()
        time.sleep(1.0)  # the last notifications reach the console
        stop.set()
        arrivals: list[tuple[int, str, float]] = recv.recv()
        cons.join(30)

        minutes = max(1, int(-(-args.duration // 60)))
        lat_all = [book.claimed[j] - t for j, t in book.enqueued.items() if j in book.claimed]
        lat_by_minute: dict[int, list[float]] = defaultdict(list)
        for j, t in book.enqueued.items():
            if j in book.claimed:
                lat_by_minute[book.minute(t)].append(book.claimed[j] - t)
        nlat, nlat_sent, unmatched = notify_latency(book, arrivals)
        rows = per_minute(book, minutes, lat_by_minute)
        run = [s for s in book.samples if s["t"] <= book.t0 + args.duration + SAMPLE_S]
        s0, s1 = book.samples[0], run[-1]
        span = s1["t"] - s0["t"]
        # Where the server's CPU went (first to last sample, drain included); the rest is the postmaster and
        # processes that came and went (autovacuum workers).
        by_what: dict[str, float] = defaultdict(float)
        first, last = book.pid_ticks[0], book.pid_ticks[-1]
        full_span = book.samples[-1]["t"] - s0["t"]
        for pid, ticks in last.items():
            by_what[book.backends.get(pid, "other")] += (ticks - first.get(pid, 0)) / TICK / full_span
        by_what["postmaster and exited processes"] = (book.samples[-1]["server_ticks"] - s0["server_ticks"]) \
            / TICK / full_span - sum(by_what.values())
        server_cpu = {k: round(v, 3) for k, v in sorted(by_what.items(), key=lambda kv: -kv[1])}
        summary = {
            "enqueued": len(book.enqueued), "claimed": len(book.claimed), "finished": len(book.finished),
            "jobs_per_minute_finished": round(len([t for t in book.finished.values()
                                                   if t <= book.t0 + args.duration]) / (args.duration / 60), 1),
            "claim_latency": ms(lat_all),
            "claim_latency_from_sent": ms([book.claimed[j] - t for j, t in book.enqueue_sent.items()
                                           if j in book.claimed]),
            "claim_call": ms([d for _, d in book.claim_call]),
            "empty_claim_call": ms(book.empty_claim_call), "claims_by_poll": book.by_poll, "wakeups": book.wakeups,
            "notify_to_console": {k: ms(v) for k, v in sorted(nlat.items())},
            "notify_to_console_from_sent": {k: ms(v) for k, v in sorted(nlat_sent.items())},
            "notify_all": ms([x for v in nlat.values() for x in v]),
            "notify_all_from_sent": ms([x for v in nlat_sent.values() for x in v]), "notify_unmatched": unmatched,
            "notifications": len(arrivals),
            "server_cores": round((s1["server_ticks"] - s0["server_ticks"]) / TICK / span, 3),
            "bench_cores": round((s1["bench_ticks"] - s0["bench_ticks"]) / TICK / span, 3),
            "console_cores": round((s1["console_ticks"] - s0["console_ticks"]) / TICK / span, 3),
            "server_cores_by_process": server_cpu,
            "loop_lag": ms(book.loop_lag), "drain_s": round(drained, 1), "wall_s": round(wall, 1),
            "errors": book.errors[:20], "error_count": len(book.errors),
            "report_call": ms(book.report_call),
            "filing": {"passes": len(book.filing), "jobs_filed": sum(n for _, n in book.filing),
                       "seconds_per_pass": ms([x for x, _ in book.filing]),
                       "ms_per_job": round(1000 * sum(x for x, _ in book.filing)
                                           / max(1, sum(n for _, n in book.filing)), 2)},
        }
        doc = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "host": platform.node(),
               "cpus": os.cpu_count(), "python": sys.version.split()[0], "psycopg": psycopg.__version__,
               "note": args.note, "server": server, "loadavg_before": load_before, "loadavg_after": load_after,
               "settings": {"agents": args.agents, "rate_per_minute": args.rate, "duration_s": args.duration,
                            "slots": args.slots, "heartbeat_s": args.heartbeat, "poll_s": args.poll,
                            "work_s": [args.work_min, args.work_max], "reap_every_s": REAP_EVERY_S,
                            "connections": "2 per agent (LISTEN, work) + producer + console + watcher",
                            "targets": "one per job", "durability": "server defaults (fsync, synchronous_commit)"},
               "summary": summary, "minutes": rows}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1) + "\n")
        report(doc)
        print(f"results in {out}")
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


def report(doc: dict[str, Any]) -> None:
    """The readable table."""
    s = doc["summary"]

    def pq(d: dict[str, Any]) -> str:
        return "-" if not d["n"] else f"{d['p50_ms']:.1f}/{d['p99_ms']:.1f}"

    print(f"\n{doc['settings']['agents']} agents, {doc['settings']['rate_per_minute']:.0f} jobs/min for "
          f"{doc['settings']['duration_s']:.0f} s; PostgreSQL {doc['server']['server_version']}, {doc['cpus']} CPUs,"
          f" fsync={doc['server']['fsync']} synchronous_commit={doc['server']['synchronous_commit']}")
    head = (f"{'min':>3} {'enq':>5} {'claim':>5} {'done':>5} {'latency p50/p99 ms':>19} {'call p50/p99 ms':>16}"
            f" {'queued max/end':>14} {'running':>7} {'pg cores':>8} {'bench cores':>11}")
    print(head)
    def f(v: Any) -> str:
        return "-" if v is None else str(v)

    for r in doc["minutes"]:
        print(f"{r['minute']:>3} {r['enqueued']:>5} {r['claimed']:>5} {r['finished']:>5} {pq(r['claim_latency']):>19}"
              f" {pq(r['claim_call']):>16} {f(r['queued_max']) + '/' + f(r['queued_end']):>14}"
              f" {f(r['running_mean']):>7} {f(r['server_cores']):>8} {f(r['bench_cores']):>11}")
    print(f"\nenqueued {s['enqueued']}, claimed {s['claimed']}, finished {s['finished']} "
          f"({s['jobs_per_minute_finished']}/min during the run; drain {s['drain_s']} s); errors {s['error_count']}")
    print(f"claim latency (enqueue -> claim returned) p50/p99/max: {s['claim_latency']['p50_ms']}/"
          f"{s['claim_latency']['p99_ms']}/{s['claim_latency']['max_ms']} ms (from the enqueue's sending: "
          f"{pq(s['claim_latency_from_sent'])}); claim call p50/p99 "
          f"{pq(s['claim_call'])} ms (empty claims {pq(s['empty_claim_call'])} ms); {s['claims_by_poll']} claims"
          f" after a fallback poll")
    print("NOTIFY -> console, p50/p99/max ms from the call's return (commit seen by the caller) | from its sending:")
    for kind, d in s["notify_to_console"].items():
        e = s["notify_to_console_from_sent"][kind]
        print(f"  {kind:<9} {d['p50_ms']}/{d['p99_ms']}/{d['max_ms']} | {e['p50_ms']}/{e['p99_ms']}/{e['max_ms']}"
              f" (n={d['n']})")
    print(f"notifications {s['notifications']}, unmatched {s['notify_unmatched']}")
    filing = s["filing"]
    print(f"reports: fleet.report p50 {s['report_call']['p50_ms']} ms, p99 {s['report_call']['p99_ms']} ms; filed"
          f" {filing['jobs_filed']} jobs in {filing['passes']} passes, {filing['ms_per_job']} ms per job")
    print(f"CPU cores used: server {s['server_cores']}, bench process {s['bench_cores']}, console "
          f"{s['console_cores']}; event-loop lag p99 {s['loop_lag']['p99_ms']} ms; load average before "
          f"{doc['loadavg_before'][0]:.2f}, after {doc['loadavg_after'][0]:.2f}")
    print("server cores by process: " + ", ".join(f"{k} {v}" for k, v in s["server_cores_by_process"].items()))


if __name__ == "__main__":
    main()
