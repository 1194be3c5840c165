"""Settings that cannot be weakened quietly: retention/schedules/encryption edits wait for an approval.

Real CLI subprocesses, a real catalog and a local repository; the
retention in force shows through `forget --db --dry-run`, whose plan comes
from the engine's effective config, and through `settings show`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml
from core.settings.sections import diff, extract, replace

from tests.fixtures.backstop import Setup, local_target
from tests.fixtures.catalogs import catalog_db
from tests.fixtures.otp import CodeBook, rfc6238, secret_from_uri

NOTICE = "settings changed in the config wait for approval: run `backstop settings diff`"


def enrol(setup: Setup, name: str, role: str, admin: tuple[str, str] | None = None) -> CodeBook:
    args = ["operator", "add", name, "--role", role]
    if admin:
        args += ["--operator", admin[0], "--otp", admin[1]]
    out = setup.cli(*args, check=True)
    return CodeBook(secret_from_uri(out.stdout.strip().splitlines()[-1]))


def set_retention(setup: Setup, rules: dict[str, Any] | None) -> None:
    doc = yaml.safe_load(setup.path.read_text())
    if rules is None:
        doc["databases"][0].pop("retention", None)
    else:
        doc["databases"][0]["retention"] = rules
    setup.path.write_text(yaml.safe_dump(doc, sort_keys=False))


def js(setup: Setup, *args: str) -> Any:
    return json.loads(setup.cli(*args, "--json", check=True).stdout)


def would_remove(setup: Setup) -> int:
    """How many snapshots the retention rules in force would forget now."""
    out = setup.cli("forget", "--db", "warranty", "--dry-run", "--json", check=True)
    return len(json.loads(out.stdout)["remove"])


def test_retention_edit_waits_for_an_approval_with_a_fresh_code(tmp_path: Path, make_warranty_db,  # type: ignore[no-untyped-def]
                                                                 setup_factory) -> None:
    _, dsn = make_warranty_db(claims=50)
    setup = setup_factory([local_target(tmp_path / "repo")],
                          [{"name": "warranty", "dsn": dsn, "retention": {"keep_last": 3}}])
    setup.cli("init", check=True)
    for _ in range(3):
        setup.cli("backup", "--db", "warranty", check=True)

    # No operator yet: the file applies as written, nothing waits.
    set_retention(setup, {"keep_last": 2})
    out = setup.cli("forget", "--db", "warranty", "--dry-run", "--json", check=True)
    assert len(json.loads(out.stdout)["remove"]) == 1 and NOTICE not in out.stderr
    d = js(setup, "settings", "diff")
    assert d["enforced"] is False and d["pending"] == []

    alice = enrol(setup, "alice", "admin")
    vera = enrol(setup, "vera", "viewer", ("alice", alice.next()))

    # From the first enrolment on, an edit waits: keep_last 2 stays in force.
    set_retention(setup, {"keep_last": 1, "min_age_days": 0})
    out = setup.cli("forget", "--db", "warranty", "--dry-run", "--json", check=True)
    assert len(json.loads(out.stdout)["remove"]) == 1
    assert out.stderr.count(NOTICE) == 1, out.stderr
    assert js(setup, "settings", "show")["retention"]["warranty"]["keep_last"] == 2
    d = js(setup, "settings", "diff")
    assert d["enforced"] is True and [c["section"] for c in d["pending"]] == ["retention:warranty"]
    change = d["pending"][0]
    assert change["before"] == {"keep_last": 2} and change["after"] == {"keep_last": 1, "min_age_days": 0}
    assert change["action"] == "settings.retention" and "~ retention:warranty.keep_last: 2 -> 1" in change["changes"]
    assert len(d["would_remove"]["warranty"]) == 2  # what the new rules would forget now
    text = setup.cli("settings", "diff", check=True).stdout
    assert "keep_last: 2 -> 1" in text and "would remove 2 snapshot(s) now" in text

    # Refused: no code, a viewer (with her valid code); nothing changes.
    out = setup.cli("settings", "approve", "--operator", "alice")
    assert out.returncode == 2 and "needs a fresh one-time code" in out.stderr, out.stderr
    out = setup.cli("settings", "approve", "--operator", "vera", "--otp", vera.next())
    assert out.returncode == 2 and "has role viewer" in out.stderr, out.stderr

    # Approved with a fresh code: the new rules apply, nothing is pending. The code is the next
    # window's, so that it is still inside the accepted window when it is replayed below.
    step = int(time.time() // 30) + 1
    code, alice.last = rfc6238(alice.secret, step * 30), step
    out = setup.cli("settings", "approve", "--operator", "alice", "--otp", code)
    assert out.returncode == 0 and "approved retention:warranty" in out.stdout, out.stderr
    out = setup.cli("forget", "--db", "warranty", "--dry-run", "--json", check=True)
    assert len(json.loads(out.stdout)["remove"]) == 2 and NOTICE not in out.stderr
    assert "no pending change" in setup.cli("settings", "diff", check=True).stdout

    # Loosening waits too, and a replayed code does not approve it.
    set_retention(setup, None)
    out = setup.cli("settings", "approve", "--operator", "alice", "--otp", code)
    assert out.returncode == 2 and "already used" in out.stderr, out.stderr

    entries = js(setup, "audit", "list")
    refused = [e["detail"]["diff"][0]["after"] for e in entries if e["action"] == "settings.approve"]
    assert refused == [{"keep_last": 1, "min_age_days": 0}] * 2 + [None]
    assert all(e["outcome"] == "refused" for e in entries if e["action"] == "settings.approve")
    gate = [(e["operator"], e["detail"].get("reason")) for e in entries
            if e["action"] == "settings.retention" and e["outcome"] == "refused"]
    assert gate == [("alice", "no code"), ("vera", "role viewer too low"), ("alice", "code replayed")], gate
    done = [e for e in entries if e["action"] == "settings.retention" and e["outcome"] == "succeeded"]
    assert len(done) == 1 and done[0]["operator"] == "alice"
    assert done[0]["detail"]["diff"][0]["before"] == {"keep_last": 2}
    assert "~ retention:warranty.keep_last: 2 -> 1" in done[0]["detail"]["diff"][0]["changes"]
    assert code not in json.dumps(entries)
    assert setup.cli("audit", "verify").returncode == 0

    # An edited catalog copy does not weaken them either: forget checks it against the repository's.
    with catalog_db(setup.dir / "catalog.db") as conn:
        (text,) = conn.execute("SELECT value FROM security_state WHERE key='settings:approved'").fetchone()
        forged = json.loads(text)
        forged["sections"]["retention:warranty"] = {"keep_last": 5}
        forged["version"] += 1
        conn.execute("UPDATE security_state SET value=? WHERE key='settings:approved'", (json.dumps(forged),))
    out = setup.cli("forget", "--db", "warranty", "--dry-run", "--json", check=True)
    assert len(json.loads(out.stdout)["remove"]) == 2 and "the repository's applies" in out.stderr, out.stderr

    # Losing the catalog does not reset what was approved: the repository's sealed copy applies.
    for f in setup.dir.glob("catalog.db*"):
        f.unlink()
    out = setup.cli("catalog", "rebuild")
    assert out.returncode == 0 and NOTICE in out.stderr, out.stderr
    shown = js(setup, "settings", "show")
    assert shown["retention"]["warranty"]["keep_last"] == 1 and shown["pending"] == ["retention:warranty"]
    assert would_remove(setup) == 2


def test_sections_diff_and_replace_work_on_the_raw_yaml() -> None:
    written = {"encryption": {"passphrase_env": "X", "rotate_every": "90d"},
               "schedules": [{"name": "nightly", "cron": "0 2 * * *"}, {"name": "keys", "cron": "0 6 * * 1"}],
               "databases": [{"name": "a", "dsn": "x", "retention": {"keep_daily": 7}}, {"name": "b", "dsn": "y"}]}
    approved = {"encryption": {"passphrase_env": "X", "rotate_every": "30d"},
                "schedules": [{"name": "keys", "cron": "0 6 * * 1"}, {"name": "nightly", "cron": "0 1 * * *"}],
                "databases": [{"name": "b", "dsn": "y", "retention": {"keep_last": 3}}]}
    changes = {c.section: c.lines for c in diff(extract(approved), extract(written))}
    assert changes == {
        "encryption": ['~ encryption.rotate_every: "30d" -> "90d"'],
        # schedules compare by name, not position
        "schedules": ['~ schedules[nightly].cron: "0 1 * * *" -> "0 2 * * *"'],
        "retention:a": ['+ retention:a: {"keep_daily": 7}'],
        "retention:b": ['- retention:b: {"keep_last": 3}'],
    }
    merged = replace(written, extract(approved))
    assert isinstance(merged, dict)
    assert merged["encryption"]["rotate_every"] == "30d" and merged["schedules"][0]["name"] == "keys"
    # a database new in the file has no rules until approved; b keeps its approved ones
    assert "retention" not in merged["databases"][0] and merged["databases"][1]["retention"] == {"keep_last": 3}
    assert written["databases"][0]["retention"] == {"keep_daily": 7}  # the input is not changed


def test_an_encryption_change_needs_an_admin(tmp_path: Path, setup_factory) -> None:  # type: ignore[no-untyped-def]
    setup = setup_factory([local_target(tmp_path / "repo")], [])
    doc = yaml.safe_load(setup.path.read_text())
    doc["encryption"] = {"passphrase_file": str(setup.passphrase_file), "rotate_every": "90d"}
    setup.path.write_text(yaml.safe_dump(doc, sort_keys=False))
    setup.cli("init", check=True)
    alice = enrol(setup, "alice", "admin")
    otto = enrol(setup, "otto", "operator", ("alice", alice.next()))
    doc["encryption"]["rotate_every"] = "300d"  # rotating keys less often: a weaker policy
    setup.path.write_text(yaml.safe_dump(doc, sort_keys=False))

    out = setup.cli("settings", "approve", "--operator", "otto", "--otp", otto.next())
    assert out.returncode == 2 and "needs role admin" in out.stderr, out.stderr
    shown = js(setup, "settings", "show")
    assert shown["encryption"]["rotate_every"] == "P90D" and shown["pending"] == ["encryption"]
    out = setup.cli("settings", "approve", "--operator", "alice", "--otp", alice.next(), "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["approved"][0]["section"] == "encryption", out.stderr
    assert js(setup, "settings", "show")["encryption"]["rotate_every"] == "P300D"


def test_the_dashboard_alerts_on_a_pending_change() -> None:
    from core.insights.alerts import build_alerts

    args: dict[str, Any] = dict(now=0.0, recent_jobs=[], never_verified=(0, []), damaged=[], target_checks={},
                                configured_targets=[], latest_backup={}, configured_dbs=[])
    assert build_alerts(**args) == []
    (alert,) = build_alerts(**args, pending_settings=["retention:warranty"])
    assert alert.kind == "settings-pending" and alert.level == "warning"
    assert "retention:warranty" in alert.message and "backstop settings diff" in alert.message
