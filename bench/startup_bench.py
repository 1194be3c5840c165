"""Start-up time of `backstop wal-push --help` (the archive_command's fast path) against a bare `python -c pass`.

PostgreSQL starts `backstop wal-push %p` once per 16 MiB WAL segment, so
what the CLI costs before it does anything is paid on every segment. The
commands are alternated (A B C A B C ...) because this VM's speed drifts;
the figures are medians of wall time per run, process start to exit.

    .venv/bin/python bench/startup_bench.py            # 20 runs of each
    .venv/bin/python bench/startup_bench.py --runs 50
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def backstop_command() -> list[str]:
    """The installed console script (what archive_command runs), else `python -m core.cli`."""
    script = Path(sys.executable).with_name("backstop")
    if script.exists():
        return [str(script)]
    found = shutil.which("backstop")
    return [found] if found else [sys.executable, "-m", "core.cli"]


def time_once(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, check=False,
                   cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="runs of each command (default 20)")
    opts = ap.parse_args()
    backstop = backstop_command()
    commands = {
        "python3 -c pass": [sys.executable, "-c", "pass"],
        "backstop wal-push --help": [*backstop, "wal-push", "--help"],
        "backstop --help (full parser)": [*backstop, "--help"],
    }
    for cmd in commands.values():  # warm the page cache and the bytecode caches
        time_once(cmd)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(opts.runs):
        for name, cmd in commands.items():
            times[name].append(time_once(cmd))
    base = statistics.median(times["python3 -c pass"])
    print(f"{'command':<32}{'median':>10}{'min':>10}{'max':>10}{'over python':>14}   ({opts.runs} runs each, "
          f"alternated; backstop = {' '.join(backstop)})")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<32}{med * 1000:>8.1f}ms{min(ts) * 1000:>8.1f}ms{max(ts) * 1000:>8.1f}ms"
              f"{(med - base) * 1000:>+12.1f}ms")


if __name__ == "__main__":
    main()
