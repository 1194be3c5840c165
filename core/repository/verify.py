"""Verify one snapshot's copy on one target by reading it back completely.

Unlike ``check`` (the whole repository), this answers the operator's question
"can I restore snapshot X from target Y right now?": it reads the manifest,
the index and every chunk of the snapshot from that target alone, decrypts
and authenticates each chunk, and compares the stream's SHA-256 with the
one recorded at backup time. Nothing is read from any other target, so a
damaged copy cannot be masked by a healthy one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from core.errors import BackstopError
from core.repository.quarantine import Finding
from core.repository.reader import StreamReader
from core.repository.repo import Repository
from core.storage.base import Storage


@dataclass
class CopyReport:
    """What reading one snapshot back from one target found."""

    target: str
    snapshot_id: str
    started_at: float
    objects_checked: int = 0
    bytes_read: int = 0
    problems: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)  # damaged or missing pack copies: to quarantine

    @property
    def ok(self) -> bool:
        return not self.problems


async def verify_copy(repo: Repository, st: Storage, snapshot_id: str, pool: ThreadPoolExecutor,
                      on_progress: Callable[[int, int], None] | None = None, interval_s: float = 0.1) -> CopyReport:
    """Read ``snapshot_id`` back from ``st`` only; problems are recorded, not raised."""
    rep = CopyReport(st.name, snapshot_id, time.time())
    # A repository view over this one target: same keys, no fallback to other copies.
    single = Repository([st], repo.params, repo.keys)
    try:
        manifest = await single.read_manifest(snapshot_id)
        rep.objects_checked += 1
        index = await single.load_index(common=False)
        total = sum(f.size for f in manifest.files)
        reader = StreamReader(single, index, pool)
        rep.findings = reader.findings  # filled while reading, kept when it fails
        last = 0.0
        for entry in manifest.files:
            rep.objects_checked += len(entry.chunks)
            async for piece in reader.stream(entry):
                rep.bytes_read += len(piece)
                now = time.monotonic()
                if on_progress and now - last >= interval_s:
                    last = now
                    on_progress(rep.bytes_read, total)
        if on_progress:
            on_progress(rep.bytes_read, total)
    except BackstopError as exc:
        rep.problems.append(f"target '{st.name}': snapshot {snapshot_id[:8]}: {exc}")
    return rep
