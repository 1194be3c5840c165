"""Promises under damage: no false "verified", one bad object or target never blocks the rest, catalog = repository.

Every test damages a real repository on real targets the way a failing disk
or an attacker would (bytes flipped, objects deleted), runs the real CLI,
and checks both what it says and what then really restores.
"""

from __future__ import annotations

import json
import shutil

import psycopg
from core.postgres.fingerprint import fingerprint
from core.sandbox.warranty import append_claims

from tests.fixtures.backstop import Setup, local_target, s3_target_dict
from tests.fixtures.catalogs import lose_catalog
from tests.fixtures.s3 import new_bucket
from tests.fixtures.tamper import check_json, db_exists, flip_byte, objects, packs


def _backup(setup: Setup, db: str = "warranty") -> str:
    return setup.cli("backup", "--db", db, check=True).stdout.strip()


def _snapshots(setup: Setup) -> list[dict]:  # type: ignore[type-arg]
    return json.loads(setup.cli("snapshots", "--json", check=True).stdout)


def _affected(report: dict, target: str) -> set[str]:  # type: ignore[type-arg]
    return set(next(t for t in report["targets"] if t["target"] == target)["affected_snapshots"])


# -- 1. a backup never depends on known damage, and says only what it read back ---------------------------


async def test_backup_after_known_damage_stores_fresh_copies_and_heals_old_snapshots(
        tmp_path, pg_cluster, make_warranty_db, setup_factory):  # type: ignore[no-untyped-def]
    name, dsn = make_warranty_db(claims=3000)
    r1, r2 = tmp_path / "r1", tmp_path / "r2"
    setup = setup_factory([local_target(r1, "t1"), local_target(r2, "t2")], [{"name": "warranty", "dsn": dsn}],
                          repository={"chunk_avg_kib": 64, "pack_target_mib": 1})
    setup.cli("init", check=True)
    first = _backup(setup)
    damaged = packs(r1)[0]
    for repo in (r1, r2):  # the same pack, damaged on every target
        flip_byte(repo / damaged.relative_to(r1))
    out = setup.cli("check", "--read-data")
    assert out.returncode == 1 and damaged.name[:16] in out.stdout
    # Check put it in quarantine, in the repository itself (not only the catalog).
    assert (r1 / "quarantine" / damaged.name).exists() and (r2 / "quarantine" / damaged.name).exists()

    # The next backup of the unchanged database must not reference the damaged chunks.
    out = setup.cli("backup", "--db", "warranty")
    assert out.returncode == 0, out.stderr
    second = out.stdout.strip()
    assert "verified on" not in out.stderr and "read back" in out.stderr
    # The catalog records a read-data verification only for what was read back.
    rows = [v for v in json.loads(setup.cli("snapshots", "--json", check=True).stdout) if v["id"] == second]
    assert rows
    into = f"{name}_second"
    res = setup.cli("restore", "--db", "warranty", "--snapshot", second, "--into", into)
    assert res.returncode == 0, res.stderr
    assert await fingerprint(pg_cluster.dsn(into)) == await fingerprint(dsn)
    # Chunk ids name content: the fresh copies heal the older snapshot as well.
    into = f"{name}_first"
    res = setup.cli("restore", "--db", "warranty", "--snapshot", first, "--into", into)
    assert res.returncode == 0, res.stderr
    assert await fingerprint(pg_cluster.dsn(into)) == await fingerprint(dsn)
    # Check names exactly the damaged pack, and no snapshot depends on it any more.
    rep = check_json(setup, "--read-data")
    assert not rep["ok"]
    for t in rep["targets"]:
        assert t["affected_snapshots"] == []
        assert len(t["problems"]) == 1 and damaged.name[:16] in t["problems"][0]
        assert "affects snapshots: none" in t["problems"][0]


async def test_pack_missing_on_one_target_is_not_deduplicated_against(
        tmp_path, pg_cluster, make_warranty_db, setup_factory):  # type: ignore[no-untyped-def]
    name, dsn = make_warranty_db(claims=2000)
    r1, r2 = tmp_path / "r1", tmp_path / "r2"
    setup = setup_factory([local_target(r1, "t1"), local_target(r2, "t2")], [{"name": "warranty", "dsn": dsn}],
                          repository={"chunk_avg_kib": 64, "pack_target_mib": 1})
    setup.cli("init", check=True)
    _backup(setup)
    lost = packs(r2)[0]
    lost.unlink()  # not known to anyone yet: no check ran
    out = setup.cli("backup", "--db", "warranty")
    assert out.returncode == 0, out.stderr
    assert "quarantined" in out.stderr and lost.name[:16] in out.stderr
    second = out.stdout.strip()
    # The new snapshot restores from t2 alone, where the old copy is missing.
    into = f"{name}_t2"
    res = setup.cli("restore", "--db", "warranty", "--snapshot", second, "--into", into, "--target", "t2")
    assert res.returncode == 0, res.stderr
    assert await fingerprint(pg_cluster.dsn(into)) == await fingerprint(dsn)


# -- 2. one damaged index object affects only what it describes ---------------------------------------------


async def test_damaged_index_object_affects_only_its_snapshots_and_repair_index_rebuilds_it(
        tmp_path, pg_cluster, make_warranty_db, setup_factory):  # type: ignore[no-untyped-def]
    a_name, a_dsn = make_warranty_db(claims=2000, seed=1)
    b_name, b_dsn = make_warranty_db(claims=1500, seed=7)
    # Each table is its own stream: b's currencies (the same list in every warranty database) would
    # share a's chunks. Made different, b shares none, so the damage below must leave b untouched.
    with psycopg.connect(b_dsn, autocommit=True) as conn:
        conn.execute("UPDATE public.currencies SET name = name || ' (b)'")
    r1, r2 = tmp_path / "r1", tmp_path / "r2"
    setup = setup_factory([local_target(r1, "t1"), local_target(r2, "t2")],
                          [{"name": "a", "dsn": a_dsn}, {"name": "b", "dsn": b_dsn}])
    setup.cli("init", check=True)
    a1 = _backup(setup, "a")
    (a_index,) = objects(r1, "index")
    append_claims(a_dsn, 0.05)
    a2 = _backup(setup, "a")
    _backup(setup, "b")
    for repo in (r1, r2):
        flip_byte(repo / a_index.relative_to(r1))

    rep = check_json(setup)
    assert not rep["ok"]
    # a2 reuses a1's unchanged chunks, so both are affected; b1 is not.
    assert _affected(rep, "t1") == _affected(rep, "t2") == {a1, a2}
    # What check says matches reality: b restores and backs up, a's snapshots do not restore.
    res = setup.cli("restore", "--db", "b", "--into", f"{b_name}_r")
    assert res.returncode == 0, res.stderr
    assert await fingerprint(pg_cluster.dsn(f"{b_name}_r")) == await fingerprint(b_dsn)
    assert setup.cli("backup", "--db", "b").returncode == 0
    res = setup.cli("restore", "--db", "a", "--snapshot", a1, "--into", f"{a_name}_x")
    assert res.returncode == 1 and "repair index" in res.stderr and res.stderr.count("\n") == 1
    assert not db_exists(pg_cluster.dsn(), f"{a_name}_x")

    out = setup.cli("repair", "index")
    assert out.returncode == 0, out.stderr
    assert "damaged on every target" in out.stdout
    assert not (r1 / a_index.relative_to(r1)).exists()
    assert check_json(setup, "--read-data")["ok"]
    for sid, into in ((a1, f"{a_name}_1"), (a2, f"{a_name}_2")):
        res = setup.cli("restore", "--db", "a", "--snapshot", sid, "--into", into)
        assert res.returncode == 0, res.stderr
    assert await fingerprint(pg_cluster.dsn(f"{a_name}_2")) == await fingerprint(a_dsn)
    # Run again: nothing left to do.
    again = json.loads(setup.cli("repair", "index", "--json", check=True).stdout)
    assert again["damaged_index"] == [] and again["packs_indexed"] == 0


# -- 3. damage on one target never blocks the healthy one ---------------------------------------------------


async def test_damaged_config_or_key_on_one_target(tmp_path, pg_cluster, make_warranty_db,  # type: ignore[no-untyped-def]
                                                   setup_factory):
    name, dsn = make_warranty_db(claims=1000)
    r1, r2 = tmp_path / "r1", tmp_path / "r2"
    setup = setup_factory([local_target(r1, "t1"), local_target(r2, "t2")], [{"name": "warranty", "dsn": dsn}])
    setup.cli("init", check=True)
    sid = _backup(setup)
    key = r1 / "keys" / "dek-00000001"
    pristine_key = key.read_bytes()

    for damage in ("config", "key-wrapped", "key-salt"):
        if damage == "config":
            (r1 / "config").write_text('{"format": "backstop-repos')
        else:
            doc = json.loads(pristine_key)
            field = "wrapped" if damage == "key-wrapped" else "kek"
            if field == "wrapped":
                swap = "A" if doc["wrapped"][5] != "A" else "B"
                doc["wrapped"] = swap.join([doc["wrapped"][:5], doc["wrapped"][6:]])
            else:
                doc["kek"]["salt"] = "AAAA" + doc["kek"]["salt"][4:]
            key.write_text(json.dumps(doc, indent=1))
        # The first target is damaged; everything that reads carries on from the second one.
        into = f"{name}_{damage.replace('-', '_')}"
        res = setup.cli("restore", "--db", "warranty", "--into", into)
        assert res.returncode == 0, (damage, res.stderr)
        assert "t1" in res.stderr and "damaged" in res.stderr and "wrong passphrase" not in res.stderr
        assert await fingerprint(pg_cluster.dsn(into)) == await fingerprint(dsn)
        rep = check_json(setup)
        bad = [t for t in rep["targets"] if not t["ok"]]
        assert [t["target"] for t in bad] == ["t1"], (damage, rep)
        assert any("damaged" in p for p in bad[0]["problems"]), bad
        assert [t["ok"] for t in rep["targets"] if t["target"] == "t2"] == [True]
        # Writing needs every target: refused, naming the damage (not a wrong passphrase, exit 1 not 2).
        out = setup.cli("backup", "--db", "warranty")
        assert out.returncode == 1, (damage, out.stderr)
        assert "'t1'" in out.stderr and "damaged" in out.stderr and "wrong passphrase" not in out.stderr
        assert "backstop init" in out.stderr and out.stderr.count("\n") == 1
        # init rewrites the identity objects from the healthy target; then all is well again.
        out = setup.cli("init")
        assert out.returncode == 0 and "t1 repaired" in out.stdout, out.stdout + out.stderr
        assert check_json(setup, "--read-data")["ok"]
        assert setup.cli("backup", "--db", "warranty").returncode == 0
    # Reading only one target: --target
    res = setup.cli("restore", "--db", "warranty", "--snapshot", sid, "--into", f"{name}_only2", "--target", "t2")
    assert res.returncode == 0, res.stderr


def test_altered_key_object_of_a_single_target_is_damage_not_a_wrong_passphrase(tmp_path, setup_factory):  # type: ignore[no-untyped-def]
    repo = tmp_path / "r"
    setup = setup_factory([local_target(repo)], [])
    setup.cli("init", check=True)
    key = repo / "keys" / "dek-00000001"
    doc = json.loads(key.read_bytes())
    doc["wrapped"] = doc["wrapped"][:-6] + ("AAAA" if doc["wrapped"][-6:-2] != "AAAA" else "BBBB") + doc["wrapped"][-2:]
    key.write_text(json.dumps(doc, indent=1))
    out = setup.cli("check")
    assert out.returncode == 1 and "damaged" in out.stderr and "wrong passphrase" not in out.stderr
    # A truly wrong passphrase is still told apart.
    other = setup_factory([local_target(tmp_path / "r2")], [])
    other.cli("init", check=True)
    wrong = setup_factory([local_target(tmp_path / "r2")], [], passphrase="not it")
    out = wrong.cli("check")
    assert out.returncode == 2 and "wrong passphrase" in out.stderr


def test_restore_target_reads_only_that_target(tmp_path, pg_cluster, make_warranty_db, setup_factory):  # type: ignore[no-untyped-def]
    name, dsn = make_warranty_db(claims=1000)
    r1, r2 = tmp_path / "r1", tmp_path / "r2"
    setup = setup_factory([local_target(r1, "t1"), local_target(r2, "t2")], [{"name": "warranty", "dsn": dsn}])
    setup.cli("init", check=True)
    _backup(setup)
    flip_byte(r2 / packs(r1)[0].relative_to(r1))
    out = setup.cli("restore", "--db", "warranty", "--into", f"{name}_x", "--target", "t2")
    assert out.returncode == 1 and "t2" in out.stderr and "no intact copy" in out.stderr
    assert not db_exists(pg_cluster.dsn(), f"{name}_x")
    out = setup.cli("restore", "--db", "warranty", "--into", f"{name}_y", "--target", "t1")
    assert out.returncode == 0, out.stderr
    out = setup.cli("restore", "--db", "warranty", "--into", f"{name}_z", "--target", "nowhere")
    assert out.returncode == 2 and "no target named 'nowhere'" in out.stderr


# -- 4. the catalog against the repository, both ways ----------------------------------------------------------


def test_snapshot_gone_from_the_repository_fails_check_and_leaves_the_catalog_on_rebuild(
        tmp_path, make_warranty_db, setup_factory):  # type: ignore[no-untyped-def]
    _, dsn = make_warranty_db(claims=500)
    r1, r2 = tmp_path / "r1", tmp_path / "r2"
    setup = setup_factory([local_target(r1, "t1"), local_target(r2, "t2")], [{"name": "warranty", "dsn": dsn}])
    setup.cli("init", check=True)
    gone = _backup(setup)
    half = _backup(setup)
    kept = _backup(setup)
    for repo in (r1, r2):
        (repo / "snapshots" / gone).unlink()
    (r2 / "snapshots" / half).unlink()  # now on t1 only

    out = setup.cli("check", "--read-data")
    assert out.returncode == 1
    assert f"{gone[:8]}" in out.stdout and "on no target" in out.stdout
    rep = check_json(setup, "--read-data")
    assert _affected(rep, "t2") >= {half} and half not in _affected(rep, "t1")
    assert any(half[:8] in p and "missing here" in p for p in
               next(t for t in rep["targets"] if t["target"] == "t2")["problems"])

    out = setup.cli("catalog", "rebuild")
    assert out.returncode == 0 and gone[:8] in out.stdout
    # The snapshot on t1 only has all its data on both targets: the rebuild finishes its commit on t2.
    assert f"snapshot {half[:8]}" in out.stdout and "completed on t2" in out.stdout
    assert (r2 / "snapshots" / half).read_bytes() == (r1 / "snapshots" / half).read_bytes()
    listed = {s["id"]: s for s in _snapshots(setup)}
    assert gone not in listed and set(listed) == {half, kept}
    assert listed[half]["targets"] == ["t1", "t2"] and listed[kept]["targets"] == ["t1", "t2"]
    assert check_json(setup, "--read-data")["ok"]


def test_lost_catalog_is_named_and_snapshot_refs_are_not_patterns(tmp_path, make_warranty_db, setup_factory):  # type: ignore[no-untyped-def]
    _, dsn = make_warranty_db(claims=300)
    setup = setup_factory([local_target(tmp_path / "r")], [{"name": "warranty", "dsn": dsn}])
    setup.cli("init", check=True)
    _backup(setup)
    for ref in ("____", "%%%%", "ab%_"):
        out = setup.cli("restore", "--db", "warranty", "--snapshot", ref, "--into", "nope")
        assert out.returncode == 2 and "not a snapshot id" in out.stderr, (ref, out.stderr)
    lose_catalog(setup.config.catalog.url, setup.dir)
    out = setup.cli("restore", "--db", "warranty", "--into", "nope")
    assert out.returncode == 2 and "catalog rebuild" in out.stderr and "backstop backup" not in out.stderr


# -- check: unreachable is not damage; init on an empty keys/ --------------------------------------------------------


def test_unreachable_target_is_not_called_damaged(tmp_path, s3_server_factory, make_warranty_db, setup_factory):  # type: ignore[no-untyped-def]
    _, dsn = make_warranty_db(claims=200)
    server = s3_server_factory()
    setup = setup_factory([local_target(tmp_path / "r"), s3_target_dict(server, new_bucket(server), "offsite")],
                          [{"name": "warranty", "dsn": dsn}])
    setup.cli("init", check=True)
    _backup(setup)
    server.kill()
    out = setup.cli("check")
    assert out.returncode == 1
    line = next(ln for ln in out.stdout.splitlines() if "offsite" in ln)
    assert "UNREACHABLE" in line and "DAMAGED" not in out.stdout


def test_init_restores_an_emptied_keys_directory(tmp_path, setup_factory):  # type: ignore[no-untyped-def]
    r1, r2 = tmp_path / "r1", tmp_path / "r2"
    setup = setup_factory([local_target(r1, "t1"), local_target(r2, "t2")], [])
    setup.cli("init", check=True)
    shutil.rmtree(r2 / "keys")
    (r2 / "keys").mkdir()
    out = setup.cli("init")
    assert out.returncode == 0
    assert "key checked" not in out.stdout and "t2 repaired" in out.stdout
    assert (r2 / "keys" / "dek-00000001").read_bytes() == (r1 / "keys" / "dek-00000001").read_bytes()
    # The approved settings were sealed while t2 could not be opened: check names the copy t2 lacks, repair writes it.
    first = check_json(setup)
    assert not first["ok"] and "settings/approved" in " ".join(first["targets"][1]["problems"])
    setup.cli("repair", "--target", "t2", check=True)
    assert (r2 / "settings" / "approved").read_bytes() == (r1 / "settings" / "approved").read_bytes()
    assert check_json(setup)["ok"]


def test_key_object_damage_is_told_from_a_wrong_passphrase() -> None:
    import pytest
    from core.errors import IntegrityError, WrongKey
    from core.repository.keys import KdfParams, new_data_key, unwrap_data_key, wrap_data_key

    fast = KdfParams(salt=b"s" * 16, n=2**4)
    key = new_data_key(1)
    stored = wrap_data_key(key, b"pass", "repo1", fast)
    assert unwrap_data_key(stored, b"pass", "repo1", "t").enc_key == key.enc_key
    with pytest.raises(WrongKey):
        unwrap_data_key(stored, b"wrong", "repo1", "t")
    doc = json.loads(stored)
    first = "A" if doc["wrapped"][0] != "A" else "B"
    for field, value in (("wrapped", first + doc["wrapped"][1:]),
                         ("created", "2020-01-01T00:00:00+00:00"), ("version", 2)):
        bad = json.dumps({**doc, field: value}).encode()
        with pytest.raises(IntegrityError, match="damaged"):
            unwrap_data_key(bad, b"pass", "repo1", "t")
    # A damaged wrapped key whose digest was recomputed still passes the passphrase check: damage, not a wrong key.
    from core.repository.keys import _digest

    forged = {**doc, "wrapped": "A" + doc["wrapped"][1:] if doc["wrapped"][0] != "A" else "B" + doc["wrapped"][1:]}
    forged["digest"] = _digest(forged)
    with pytest.raises(IntegrityError, match="damaged"):
        unwrap_data_key(json.dumps(forged).encode(), b"pass", "repo1", "t")
    with pytest.raises(IntegrityError):
        unwrap_data_key(b"{not json", b"pass", "repo1", "t")


def test_index_merge_prefers_copies_outside_quarantine() -> None:
    from core.repository.index import Index, IndexFile, Location

    cid = b"\x01" * 32
    bad, good = IndexFile(), IndexFile()
    bad.packs["p_bad"] = 10
    bad.chunks[cid] = Location("p_bad", 1, 0, 5, 3)
    good.packs["p_good"] = 10
    good.chunks[cid] = Location("p_good", 1, 0, 5, 3)
    for order in ((bad, good), (good, bad)):
        idx = Index()
        for i, f in enumerate(order):
            idx.merge(f"index/{i}", f, avoid={"p_bad"})
        assert idx.chunks[cid].pack_id == "p_good"
    only_bad = Index()
    only_bad.merge("index/0", bad, avoid={"p_bad"})
    assert only_bad.chunks[cid].pack_id == "p_bad"  # no other copy: restores still try it
    assert only_bad.drop_packs({"p_bad"}) == 1 and cid not in only_bad  # backups never reference it


def test_damaged_key_on_the_second_target_is_named_as_damage(tmp_path, setup_factory):  # type: ignore[no-untyped-def]
    r1, r2 = tmp_path / "r1", tmp_path / "r2"
    setup = setup_factory([local_target(r1, "t1"), local_target(r2, "t2")], [])
    setup.cli("init", check=True)
    key = r2 / "keys" / "dek-00000001"
    doc = json.loads(key.read_bytes())
    doc["wrapped"] = doc["wrapped"][:10] + ("A" if doc["wrapped"][10] != "A" else "B") + doc["wrapped"][11:]
    key.write_text(json.dumps(doc, indent=1))
    out = setup.cli("check")
    assert out.returncode == 1 and "wrong passphrase" not in out.stdout + out.stderr
    line = next(ln for ln in out.stdout.splitlines() if "DAMAGED" in ln)
    assert "t2" in line and "damaged" in line
    assert "t1: ok" in out.stdout.replace("target ", "")
