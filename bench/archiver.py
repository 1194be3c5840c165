#!/usr/bin/env python3
"""PostgreSQL's archiver, as far as the latency of an archive_command goes (physical_bench.py's walpush phase).

Run as the server's OS account, in the data directory, like the archiver: for
each segment in order, ("paced") its .ready file appears, then the command runs
through ``/bin/sh -c`` from this small process (the archiver calls
``system()``), then .ready becomes .done. Writes the per-call wall seconds as
JSON. The benchmark's own process is large and runs as root: starting each
call from it directly (fork of ~100 MB, then the switch of user and groups)
added several ms to every call of either tool.

    archiver.py --command 'CMD %p' --pgdata DIR --mode paced|batch --out FILE SEGMENT...
"""

from __future__ import annotations

import argparse
import json
import os
import time


def run(command: str, pgdata: str, mode: str, names: list[str]) -> list[float]:
    status = os.path.join(pgdata, "pg_wal", "archive_status")
    lat = []
    for name in names:
        ready = os.path.join(status, f"{name}.ready")
        if mode == "paced":
            with open(ready, "wb"):
                pass
        # Absolute: pgBackRest reads a relative %p against its pg1-path (the real cluster), not the cwd.
        cmd = command.replace("%p", os.path.join(pgdata, "pg_wal", name))
        t0 = time.perf_counter()
        pid = os.posix_spawn("/bin/sh", ["sh", "-c", cmd], os.environ)
        _, status_code = os.waitpid(pid, 0)
        lat.append(time.perf_counter() - t0)
        if os.waitstatus_to_exitcode(status_code) != 0:
            raise SystemExit(f"archive_command failed for {name} (exit {os.waitstatus_to_exitcode(status_code)})")
        os.rename(ready, os.path.join(status, f"{name}.done"))
    return lat


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--command", required=True, help="the archive_command, with %%p")
    p.add_argument("--pgdata", required=True)
    p.add_argument("--mode", choices=("paced", "batch"), required=True)
    p.add_argument("--out", required=True)
    p.add_argument("names", nargs="+")
    a = p.parse_args()
    os.chdir(a.pgdata)
    lat = run(a.command, a.pgdata, a.mode, a.names)
    with open(a.out, "w") as f:
        json.dump(lat, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
