"""The audit log's keyed hash chain: every edit, deletion and reordering is named."""

from __future__ import annotations

from pathlib import Path

import pytest
from core.errors import AuthError
from core.security.audit import AuditLog, verify_chain

# Catalog-heavy: every test runs with the catalog on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_catalogs

KEY = b"k" * 32


@pytest.fixture
def log(tmp_path: Path, catalog_at):  # type: ignore[no-untyped-def]
    cat = catalog_at(tmp_path / "catalog.db")
    audit = AuditLog(cat, KEY)
    for i in range(1, 7):
        audit.append("alice", "host1", "prune", f"subject {i}", "allowed", {"n": i}, 1_700_000_000.0 + i)
    yield audit, cat.connection
    cat.close()


def test_intact_chain_verifies(log) -> None:  # type: ignore[no-untyped-def]
    audit, _ = log
    report = audit.verify()
    assert report.ok and report.entries == 6
    # Another key cannot verify it: the hash is keyed.
    assert not verify_chain(b"x" * 32, audit.log_id, audit.entries()).ok  # type: ignore[arg-type]


def test_edit_is_named(log) -> None:  # type: ignore[no-untyped-def]
    audit, db = log
    db.execute("UPDATE audit_log SET outcome='refused' WHERE seq=4")
    report = audit.verify()
    assert not report.ok and report.first_bad == 4 and "#4" in str(report.problem) and "altered" in str(report.problem)


def test_recomputed_plain_hash_does_not_help(log) -> None:  # type: ignore[no-untyped-def]
    import hashlib

    audit, db = log
    # An editor without the key can only guess at the hash; any stand-in fails.
    db.execute("UPDATE audit_log SET subject='nothing happened', mac=? WHERE seq=3",
               (hashlib.sha256(b"forged").hexdigest(),))
    assert audit.verify().first_bad == 3


def test_deletion_is_named(log) -> None:  # type: ignore[no-untyped-def]
    audit, db = log
    db.execute("DELETE FROM audit_log WHERE seq=3")
    report = audit.verify()
    assert report.first_bad == 3 and "missing" in str(report.problem) and "deleted" in str(report.problem)


def test_renumbered_deletion_is_named(log) -> None:  # type: ignore[no-untyped-def]
    audit, db = log
    db.execute("DELETE FROM audit_log WHERE seq=3")
    db.execute("UPDATE audit_log SET seq=seq-1 WHERE seq>3")  # close the gap
    report = audit.verify()
    assert report.first_bad == 3 and "reordered" in str(report.problem)


def test_reorder_is_named(log) -> None:  # type: ignore[no-untyped-def]
    audit, db = log
    db.execute("UPDATE audit_log SET seq=-5 WHERE seq=5")
    db.execute("UPDATE audit_log SET seq=5 WHERE seq=2")
    db.execute("UPDATE audit_log SET seq=2 WHERE seq=-5")
    report = audit.verify()
    assert report.first_bad == 2 and "content of entry #5" in str(report.problem)


def test_adopt_refuses_a_broken_chain(tmp_path: Path, log, catalog_at) -> None:  # type: ignore[no-untyped-def]
    audit, db = log
    entries = audit.entries()
    other = catalog_at(tmp_path / "other.db")
    fresh = AuditLog(other, KEY)
    with pytest.raises(AuthError, match="damaged"):
        fresh.adopt(audit.log_id, entries[:2] + entries[3:])  # type: ignore[arg-type]
    assert fresh.adopt(audit.log_id, entries) == 6  # type: ignore[arg-type]
    assert fresh.verify().ok
    nxt = fresh.append("bob", "h", "forget", "s", "allowed", None, 1_700_000_100.0)
    assert nxt.seq == 7 and fresh.verify().ok
    other.close()
