"""Prune and retention over a large synthetic repository (issue 11): time and peak memory.

Builds, through the repository code (``Repository.init``, ``PackBuilder``,
``IndexFile``, ``Manifest``), a local repository of ``--packs`` real but small
packs (a few KiB: random blobs under a real sealed header) whose index
entries describe ``--chunks`` chunks of about 1 MiB each (about 100 GiB; the
entries' offsets and lengths are synthetic, which is fine because prune only
lists packs, it never reads them: every child counts its reads under
``data/`` and the bench fails if there is one), in ``--index-objects`` index
objects, and ``--snapshots`` manifests. Snapshot j references a window of
``--window`` consecutive chunks starting at j*step (a database of
``window`` MiB with a little churn per backup); the ``--forgotten`` oldest
windows have no manifest (forgotten), so the packs only they used are
prune's work. A SQLite catalog lists the snapshots for the retention plan.

Then, each in a fresh process (peak RSS is the process's own), alternating
the order each round, ``--rounds`` times:

- ``prune-dry``: ``Engine.prune_repository(dry_run=True)`` on the built repository;
- ``prune-mark``: a real prune, default grace (24 h), on a fresh copy: phase 1, marks the unneeded packs;
- ``prune-delete``: a real prune with grace 0 on that copy: phase 2, deletes the marked packs;
- ``forget-dry``: ``Engine.apply_retention(db, dry_run=True)`` (``forget --db --dry-run``).

The real prunes run what ``core.ops.prune`` runs under its gate (prune lock,
``backup_index``, ``gc.prune``), without the one-time code and the audit entry.

    .venv/bin/python bench/prune_bench.py                 # issue 11's sizes, 3 rounds
    .venv/bin/python bench/prune_bench.py --snapshots 100 --packs 600 --chunks 10000 --window 400 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OPS = ("prune-dry", "prune-mark", "prune-delete", "forget-dry")
OLD = 30 * 86400  # packs, index objects and manifests are this old: older than prune's grace period
TABLES = 20  # streams per manifest


# -- child side ---------------------------------------------------------------

def _config(d: Path) -> Any:
    from core.config import parse_config
    from retention_bench import RULES

    return parse_config({"catalog": {"url": f"sqlite:///{d / 'catalog.db'}"},
                         "encryption": {"passphrase_file": str(d / "passphrase")},
                         "targets": [{"name": "local1", "type": "local", "path": str(d / "repo")}],
                         "databases": [{"name": "bench", "dsn": "dbname=bench", "retention": RULES}]},
                        d / "backstop.yaml")


def _age(paths: list[Path], when: float) -> None:
    for p in paths:
        os.utime(p, (when, when))


async def build(d: Path, a: argparse.Namespace) -> dict[str, Any]:
    """Write the synthetic repository and catalog under ``d``; returns the setup's sizes."""
    from core.catalog.store import Catalog
    from core.records import SnapshotRecord
    from core.repository.index import IndexFile, Location
    from core.repository.manifest import FileEntry, Manifest
    from core.repository.packs import PackBuilder
    from core.repository.repo import Repository
    from core.storage.factory import make_storages
    from retention_bench import NOW

    t0 = time.perf_counter()
    pf = d / "passphrase"
    pf.write_text("bench passphrase\n")
    pf.chmod(0o600)
    config = _config(d)
    (store,) = make_storages(config.targets)
    await store.prepare()
    repo, _ = await Repository.init([store], config.encryption.passphrase(), config.repository)
    rnd = random.Random(11)
    cids = [rnd.randbytes(32) for _ in range(a.chunks)]
    per_pack = [a.chunks // a.packs + (1 if p < a.chunks % a.packs else 0) for p in range(a.packs)]
    files = [IndexFile() for _ in range(a.index_objects)]
    raw_total = stored_total = pack_bytes = 0
    builder = PackBuilder(1 << 30)
    pending: list[Any] = []
    i = 0
    for p, n in enumerate(per_pack):
        locs = []
        offset = 0
        for _ in range(n):
            raw = rnd.randint(1 << 19, 3 << 19)  # 0.5-1.5 MiB, 1 MiB on average
            length = raw * 2 // 5 + 40  # as if compressed to 40 %, plus the seal's overhead
            builder.add(cids[i], 1, rnd.randbytes(256), raw)
            locs.append((cids[i], offset, length, raw))
            offset += length
            raw_total += raw
            stored_total += length
            i += 1
        pack = builder.finish(repo.key)
        f = files[p * a.index_objects // a.packs]
        f.packs[pack.id] = len(pack.data)  # the real size: backups check it against the listing
        for cid, off, ln, raw in locs:
            f.chunks[cid] = Location(pack.id, 1, off, ln, raw)
        pack_bytes += len(pack.data)
        pending.append(repo.put_all(pack.name, pack.data))
        if len(pending) == 32:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)
    t_packs = time.perf_counter() - t0
    index_bytes = 0
    for f in files:
        name, data = f.seal(repo.key)
        await repo.put_all(name, data)
        index_bytes += len(data)
    total = a.snapshots + a.forgotten
    step = max(1, (a.chunks - a.window) // max(1, total - 1))
    cat = Catalog(config.catalog.sqlite_path)
    manifest_bytes = refs = 0
    pending = []
    for j in range(a.forgotten, total):
        window = [c.hex() for c in cids[j * step: j * step + a.window]]
        refs += len(window)
        per = -(-len(window) // TABLES)
        entries = [FileEntry(f"table-{t}", "copy-text", len(part) << 20, "0" * 64, part, ["public", f"t{t}"], ["id"])
                   for t, part in enumerate(window[k: k + per] for k in range(0, len(window), per))]
        when = (NOW - timedelta(hours=6 * (total - 1 - j))).isoformat(timespec="seconds")
        m = Manifest("bench", "logical", when, when, entries, len(window) << 20, step << 19, step, ["local1"],
                     format=2, tables=[f"public.t{t}" for t in range(len(entries))])
        sid, name, data = m.seal(repo.key)
        manifest_bytes += len(data)
        pending.append(repo.put_all(name, data))
        if len(pending) == 32:
            await asyncio.gather(*pending)
            pending = []
        cat.add_snapshot(SnapshotRecord(sid, "bench", "logical", when, when, len(window) << 20, step << 19,
                                        ["local1"]))
    await asyncio.gather(*pending)
    cat.close()
    await store.close()
    old = time.time() - OLD
    _age([p for sub in ("data", "index", "snapshots") for p in (d / "repo" / sub).rglob("*") if p.is_file()], old)
    used = min(a.chunks, (total - 1) * step + a.window) - a.forgotten * step
    return {"packs": a.packs, "chunks": a.chunks, "chunks_per_pack": [min(per_pack), max(per_pack)],
            "pack_bytes_on_disk": pack_bytes, "indexed_raw_bytes": raw_total, "indexed_stored_bytes": stored_total,
            "index_objects": a.index_objects, "index_bytes": index_bytes, "snapshots": a.snapshots,
            "forgotten": a.forgotten, "window_chunks": a.window, "step_chunks": step, "chunk_refs": refs,
            "manifest_bytes": manifest_bytes, "chunks_unreferenced": a.chunks - used,
            "build_s": round(time.perf_counter() - t0, 2), "packs_write_s": round(t_packs, 2)}


async def run_op(op: str, d: Path) -> dict[str, Any]:
    """Run one operation on the repository under ``d``; returns its figures."""
    from core.engine import Engine
    from core.repository import gc
    from core.repository.dedup import backup_index
    from core.storage.local import LocalStorage
    from retention_bench import NOW

    reads = {"data": 0}
    original = LocalStorage._read

    def counting(self: LocalStorage, name: str, offset: int, length: int | None) -> bytes:
        if name.startswith("data/"):
            reads["data"] += 1
        return original(self, name, offset, length)

    LocalStorage._read = counting  # type: ignore[method-assign]
    config = _config(d)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out: dict[str, Any]
    async with Engine(config) as engine:
        if op == "forget-dry":
            t1 = time.perf_counter()
            rep = await engine.apply_retention("bench", dry_run=True, now=NOW)
            out = {"decisions": len(rep.plan.decisions), "would_forget": len(rep.plan.remove)}
        elif op == "prune-dry":
            t1 = time.perf_counter()
            prep = await engine.prune_repository(dry_run=True)
            out = prep.to_json()
        else:
            repo = await engine.ctx.open_repository(require_all=True)
            t1 = time.perf_counter()
            async with repo.lock("prune", "prune"):
                await backup_index(repo)
                prep = await gc.prune(repo, gc.DEFAULT_GRACE_S if op == "prune-mark" else 0)
            out = prep.to_json()
    t2 = time.perf_counter()
    return {**out, "open_s": round(t1 - t0, 3), "op_s": round(t2 - t1, 3), "pack_reads": reads["data"],
            "rss_before_kib": rss0, "rss_peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


# -- parent side --------------------------------------------------------------

def child(args: list[str]) -> tuple[dict[str, Any], float, int | None]:
    """Run this script as a child; (its JSON, wall seconds, GNU time's peak RSS in KiB or None)."""
    cmd = [sys.executable, __file__, *args]
    tfile = None
    if Path("/usr/bin/time").exists():
        fd, tfile = tempfile.mkstemp(prefix="prune-bench-time-")
        os.close(fd)
        cmd = ["/usr/bin/time", "-o", tfile, "-f", "%M", *cmd]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"child {args[:2]} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    rss = None
    if tfile:
        rss = int(Path(tfile).read_text().split()[-1])
        os.unlink(tfile)
    return json.loads(res.stdout.strip().splitlines()[-1]), wall, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--snapshots", type=int, default=1000)
    ap.add_argument("--forgotten", type=int, default=100, help="oldest windows without a manifest")
    ap.add_argument("--packs", type=int, default=6000)
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--window", type=int, default=4000, help="chunks per snapshot (its database size in MiB)")
    ap.add_argument("--index-objects", type=int, default=10)
    ap.add_argument("--workdir", type=Path, help="build here (default: a temporary directory, deleted at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "prune.json")
    ap.add_argument("--child", choices=("build", *OPS), help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        res = asyncio.run(build(a.dir, a) if a.child == "build" else run_op(a.child, a.dir))
        print(json.dumps(res))
        return

    base = Path(tempfile.mkdtemp(prefix="backstop-prune-bench-", dir=a.workdir))
    sizes = [f"--{k}={v}" for k, v in (("snapshots", a.snapshots), ("forgotten", a.forgotten), ("packs", a.packs),
                                       ("chunks", a.chunks), ("window", a.window),
                                       ("index-objects", a.index_objects))]
    try:
        tpl = base / "template"
        tpl.mkdir()
        setup, build_wall, build_rss = child(["--child", "build", "--dir", str(tpl), *sizes])
        setup["build_rss_kib"] = build_rss
        print(f"built in {build_wall:.1f} s: {setup['packs']} packs ({setup['pack_bytes_on_disk'] / 2**20:.1f} MiB "
              f"on disk) indexing {setup['chunks']} chunks = {setup['indexed_raw_bytes'] / 1e9:.1f} GB raw "
              f"({setup['indexed_raw_bytes'] / 2**30:.1f} GiB), {setup['indexed_stored_bytes'] / 1e9:.1f} GB stored, "
              f"in {setup['index_objects']} index objects ({setup['index_bytes'] / 2**20:.1f} MiB); "
              f"{setup['snapshots']} manifests of {setup['window_chunks']} chunks "
              f"({setup['manifest_bytes'] / 2**20:.0f} MiB), {setup['forgotten']} forgotten", flush=True)
        runs: list[dict[str, Any]] = []
        for r in range(a.rounds):
            order = ["prune-dry", "forget-dry", "prune-mark"]
            order = order[r % 3:] + order[:r % 3]
            for op in order:
                d = tpl
                if op == "prune-mark":
                    d = base / f"copy-{r}"
                    shutil.copytree(tpl, d)  # copy2 keeps the old mtimes
                for step_op in (("prune-mark", "prune-delete") if op == "prune-mark" else (op,)):
                    res, wall, rss = child(["--child", step_op, "--dir", str(d)])
                    if res["pack_reads"]:
                        sys.exit(f"{step_op} read {res['pack_reads']} pack(s): the synthetic index would mislead it")
                    runs.append({"op": step_op, "round": r + 1, "wall_s": round(wall, 3), "max_rss_kib": rss, **res})
                    print(f"round {r + 1} {step_op}: {wall:.2f} s (op {res['op_s']:.2f} s), "
                          f"peak RSS {(rss or res['rss_peak_kib']) / 1024:.0f} MiB", flush=True)
                if d != tpl:
                    shutil.rmtree(d)
        summary = []
        print(f"\n{'operation':14} {'wall median':>11} {'op median':>10} {'open':>6} {'peak RSS':>9} {'before op':>9}"
              "  result")
        for op in OPS:
            rs = [x for x in runs if x["op"] == op]
            peak = max((x["max_rss_kib"] or x["rss_peak_kib"]) for x in rs)
            row = {"op": op, "wall_median_s": round(statistics.median(x["wall_s"] for x in rs), 3),
                   "op_median_s": round(statistics.median(x["op_s"] for x in rs), 3),
                   "open_median_s": round(statistics.median(x["open_s"] for x in rs), 3),
                   "wall_min_s": min(x["wall_s"] for x in rs), "wall_max_s": max(x["wall_s"] for x in rs),
                   "peak_rss_mib": round(peak / 1024, 1),
                   "rss_before_op_mib": round(max(x["rss_before_kib"] for x in rs) / 1024, 1)}
            last = rs[-1]
            result = (f"{last['decisions']} snapshots, {last['would_forget']} would go" if op == "forget-dry" else
                      f"marked {last['packs_marked']}, deleted {last['packs_deleted']} of {last['packs_total']}, "
                      f"index objects replaced {last['index_objects_replaced']}")
            row["result"] = result
            summary.append(row)
            print(f"{op:14} {row['wall_median_s']:>10.2f}s {row['op_median_s']:>9.2f}s {row['open_median_s']:>5.2f}s "
                  f"{row['peak_rss_mib']:>6.0f} MiB {row['rss_before_op_mib']:>5.0f} MiB  {result}")
        doc = {"params": {k: v for k, v in vars(a).items() if k not in ("child", "dir")},
               "environment": {"python": platform.python_version(), "cpus": os.cpu_count(),
                               "rss_method": "GNU time %M" if Path("/usr/bin/time").exists() else "ru_maxrss",
                               "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
               "setup": setup, "summary": summary, "measurements": runs}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        print(f"\nwrote {a.out}")
    finally:
        if a.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
