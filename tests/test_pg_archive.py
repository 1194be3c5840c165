"""core.postgres.archive against real pg_dump output: reading, rewriting, synthesizing, refusing.

Every archive here comes from pg_dump run on the session cluster: the warranty
database and an awkward one made below. Archives are dumped into a pipe, as
Backstop dumps them (data positions "not set"). Tests marked with ``pg_bin``
run once per pg_dump at hand: the server's own major, pgserver's bundled
PostgreSQL 16 (archive 1.15) when present, and the bin directory named by
``BACKSTOP_TEST_PG_BIN`` (e.g. a PostgreSQL 17 one, for archive 1.16).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from core.errors import PostgresError
from core.postgres import tools
from core.postgres.archive import (
    COPY_END,
    Archive,
    DataBlock,
    Header,
    LargeObject,
    LargeObjects,
    Section,
    TableData,
    Toc,
    TocEntry,
    fmt_id,
    merge_data,
    order_entries,
    read_archive,
    read_directory,
    table_data_entry,
    with_table_data,
    write_custom,
    write_directory,
)
from core.postgres.archive.model import MAX_FRAME
from core.postgres.archive.toc import _QUOTED_KEYWORDS
from core.postgres.cluster import LocalCluster
from core.postgres.fingerprint import diff, fingerprint
from psycopg import sql

MakeDb = Callable[..., tuple[str, str]]

AWKWARD_SQL = r"""
CREATE SCHEMA "Odd Schema";
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE SEQUENCE ticket_seq START 100;
CREATE TABLE customer (id integer PRIMARY KEY, name text NOT NULL, feeling mood, score posint);
CREATE TABLE customers_archive (id integer, name text);
CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer_id integer REFERENCES customer(id),
  ticket integer DEFAULT nextval('ticket_seq'), amount numeric(10,2),
  total numeric GENERATED ALWAYS AS (amount * 2) STORED, "select" text, dropped_later int, note text);
ALTER TABLE orders DROP COLUMN dropped_later;
CREATE INDEX orders_customer_idx ON orders (customer_id);
CREATE TABLE measurement (city_id int NOT NULL, logdate date NOT NULL, peaktemp int) PARTITION BY RANGE (logdate);
CREATE TABLE measurement_y2023 PARTITION OF measurement FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TABLE measurement_y2024 PARTITION OF measurement FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE "Odd Schema"."we""ird name" ("Col A" int, "x.y" text, "*" text);
CREATE TABLE "Odd Schema"."a.b*c|d" (v int);
CREATE TABLE "größe_ünïcødé" (id int, "wert€" text);
CREATE TABLE secrets (id int, owner_name text, payload text);
ALTER TABLE secrets ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON secrets USING (owner_name = current_user);
CREATE TABLE audit_log (at timestamptz DEFAULT '2024-01-01 00:00:00+00', what text);
CREATE FUNCTION log_order() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN INSERT INTO audit_log(what) VALUES ('order ' || NEW.id); RETURN NEW; END $$;
CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION log_order();
CREATE VIEW customer_orders AS SELECT c.name, o.amount FROM customer c JOIN orders o ON o.customer_id = c.id;
CREATE FUNCTION customer_label(c customer) RETURNS text LANGUAGE sql AS $$ SELECT c.name || ' (' || c.id || ')' $$;
CREATE MATERIALIZED VIEW order_totals AS SELECT customer_id, sum(amount) AS total FROM orders GROUP BY customer_id;
CREATE TABLE empty_one (a int);
CREATE TABLE no_columns ();
CREATE TABLE big_row (id int, body text);
INSERT INTO customer VALUES (1, 'Ann', 'happy', 3), (2, E'Bob\ttab\nnewline\\back', 'sad', 7), (3, 'Zoë', NULL, NULL);
INSERT INTO customers_archive VALUES (9, 'old');
INSERT INTO orders (customer_id, amount, "select", note)
  VALUES (1, 10.5, 'a', NULL), (2, 20, 'b', E'multi\nline'), (1, 3.25, NULL, 'x');
INSERT INTO orders (customer_id, amount) SELECT 1 + i % 3, i FROM generate_series(1, 3000) i;
INSERT INTO measurement VALUES (1, '2023-05-01', 20), (2, '2024-02-03', 25), (3, '2024-07-04', 31);
INSERT INTO "Odd Schema"."we""ird name" VALUES (1, 'dot', 'star'), (2, NULL, E'\\N literal');
INSERT INTO "Odd Schema"."a.b*c|d" VALUES (42);
INSERT INTO "größe_ünïcødé" VALUES (1, '€uro'), (2, 'ß');
INSERT INTO secrets VALUES (1, 'postgres', 'top'), (2, 'someone', 'hidden');
INSERT INTO no_columns DEFAULT VALUES;
INSERT INTO no_columns DEFAULT VALUES;
-- One COPY row longer than MAX_FRAME: pg_dump frames it whole, the reader hands it on in pieces.
INSERT INTO big_row VALUES (1, repeat('0123456789abcdef', 100000));
SELECT setval('ticket_seq', 5000);
REFRESH MATERIALIZED VIEW order_totals;
SELECT lo_from_bytea(0, 'hello large object'::bytea);
SELECT lo_from_bytea(0, decode(repeat('00ff', 50000), 'hex'));
SELECT lo_from_bytea(0, ''::bytea);
COMMENT ON TABLE customer IS 'people who buy';
"""

# Tables with data: every ordinary table, partitions included (relkind r).
_TABLES_SQL = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
ORDER BY 1, 2
"""
# The columns pg_dump copies: not dropped, not generated, in column order.
_COLUMNS_SQL = """
SELECT attname FROM pg_attribute
WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum
"""


# -- helpers -------------------------------------------------------------------


def _run(args: list[str | Path], data: bytes | None = None) -> bytes:
    proc = subprocess.run([str(a) for a in args], input=data, capture_output=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"{Path(str(args[0])).name} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


def _dump(bin_dir: Path, dsn: str, *args: str) -> bytes:
    """``pg_dump -Fc -Z0`` into a pipe, as Backstop dumps (so no data positions are set)."""
    return _run([bin_dir / "pg_dump", "--format=custom", "--compress=0", f"--dbname={dsn}", *args])


def _listing(bin_dir: Path, archive: bytes | Path) -> list[str]:
    """``pg_restore -l -v`` entry lines (verbose: also the entries only --create would restore)."""
    if isinstance(archive, Path):
        out = _run([bin_dir / "pg_restore", "-l", "-v", archive])
    else:
        out = _run([bin_dir / "pg_restore", "-l", "-v"], archive)
    return [line for line in out.decode().splitlines() if line and not line.startswith(";")]


def _line(e: TocEntry) -> str:
    """An entry as pg_restore -l prints it."""
    def clean(s: str | None, dash: bool) -> str:
        return ("-" if dash else "") if s is None else s.replace("\n", " ").replace("\r", " ")
    return (f"{e.dump_id}; {e.table_oid} {e.oid} {e.desc} {clean(e.namespace, True)} {clean(e.tag, False)} "
            f"{clean(e.owner, False)}")


async def _pieces(data: bytes, size: int = 777) -> AsyncIterator[bytes]:
    """``data`` as an awkwardly cut stream: no field or frame may rely on arriving whole."""
    for start in range(0, len(data), size):
        yield data[start:start + size]


async def _joined(stream: AsyncIterable[bytes]) -> bytes:
    return b"".join([bytes(piece) async for piece in stream])


async def _contents(blocks: AsyncIterable[DataBlock]) -> dict[int, bytes | dict[int, bytes]]:
    """Each block's data, concatenated: bytes for TableData, oid -> bytes for LargeObjects."""
    out: dict[int, bytes | dict[int, bytes]] = {}
    async for block in blocks:
        if isinstance(block, TableData):
            out[block.dump_id] = await _joined(block.chunks)
        else:
            out[block.dump_id] = {lo.oid: await _joined(lo.chunks) async for lo in block.objects}
    return out


def _copy_out(dsn: str, schema: str, table: str) -> bytes:
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        query = sql.SQL("COPY {} TO STDOUT").format(sql.Identifier(schema, table))
        with cur.copy(query) as copy:
            return b"".join(bytes(b) for b in copy)


def _copy_stream(dsn: str, schema: str, table: str) -> Callable[[], AsyncIterator[bytes]]:
    """A function opening ``COPY schema.table TO STDOUT`` as an async stream (what merge_data calls)."""
    async def stream() -> AsyncIterator[bytes]:
        async with await psycopg.AsyncConnection.connect(dsn) as conn, conn.cursor() as cur:
            query = sql.SQL("COPY {} TO STDOUT").format(sql.Identifier(schema, table))
            async with cur.copy(query) as copy:
                async for data in copy:
                    yield bytes(data)
    return stream


def _rows(dsn: str, query: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def _tables(dsn: str) -> list[tuple[str, str]]:
    return [(str(s), str(t)) for s, t in _rows(dsn, _TABLES_SQL)]


def _pattern(schema: str, table: str) -> str:
    """A pg_dump name pattern matching exactly schema.table: inside double quotes nothing is a wildcard."""
    return '"{}"."{}"'.format(schema.replace('"', '""'), table.replace('"', '""'))


def _schema_only_args(dsn: str) -> list[str]:
    return [f"--exclude-table-data={_pattern(s, t)}" for s, t in _tables(dsn)]


def _columns(dsn: str) -> dict[tuple[str, str], list[str]]:
    return {(s, t): [str(r[0]) for r in _rows(dsn, _COLUMNS_SQL, _pattern(s, t))] for s, t in _tables(dsn)}


async def _assert_same_database(source: str, copy: str) -> None:
    assert diff(await fingerprint(source), await fingerprint(copy)) == []


def _restores_here(pg_bin: Path, server_bin: Path) -> bool:
    """Whether pg_restore of ``pg_bin`` can restore into the session server: pg_restore 17 sets
    transaction_timeout, which older servers do not know, so it fails against them."""
    return tools.tool_major(pg_bin) < 17 or tools.tool_major(server_bin) >= 17


def _one_line_error(exc: pytest.ExceptionInfo[PostgresError]) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    return message


# -- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def new_db(pg_cluster: LocalCluster) -> Iterator[Callable[[str], str]]:
    """Call with a prefix to get the DSN of a new empty database (from template0); all dropped afterwards."""
    made: list[str] = []

    def make(prefix: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(sql.Identifier(name)))
        made.append(name)
        return pg_cluster.dsn(name)

    yield make
    for name in made:
        pg_cluster.drop_database(name)


@pytest.fixture(scope="module")
def awkward(pg_cluster: LocalCluster, new_db: Callable[[str], str]) -> str:
    """A database of awkward objects (see AWKWARD_SQL), with a comment and settings of its own."""
    dsn = new_db("awk")
    name = dsn.rsplit("/", 1)[1]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(AWKWARD_SQL)
        db = sql.Identifier(name)
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS 'awkward db'").format(db))
        conn.execute(sql.SQL("ALTER DATABASE {} SET work_mem = '8MB'").format(db))
        conn.execute(sql.SQL("ALTER DATABASE {} SET search_path = public, \"Odd Schema\"").format(db))
        conn.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(db))
    return dsn


@pytest.fixture(scope="module")
def server_bin(pg_cluster: LocalCluster) -> Path:
    """The client tools of the server's own major (psql, pg_dump, pg_restore)."""
    return tools.find_bin_dir(tools.tool_major(pg_cluster.bin_dir, "postgres"))


@pytest.fixture(params=["server", "pgserver-16", "extra"])
def pg_bin(request: pytest.FixtureRequest, server_bin: Path) -> Path:
    """Each pg_dump (with its pg_restore) at hand that can dump the session server."""
    if request.param == "server":
        return server_bin
    if request.param == "pgserver-16":
        bundled = tools._pgserver_bin_dir()
        if bundled is None or not (bundled / "pg_dump").is_file():
            pytest.skip("pgserver's bundled PostgreSQL is not installed")
        if tools.tool_major(bundled) != 16 or tools.tool_major(server_bin) >= 16:
            pytest.skip("pgserver's pg_dump adds no archive version here")
        return bundled
    extra = os.environ.get("BACKSTOP_TEST_PG_BIN")
    if not extra:
        pytest.skip("BACKSTOP_TEST_PG_BIN names no further pg_dump")
    return Path(extra)


# -- reading -------------------------------------------------------------------


async def test_entries_are_what_pg_restore_lists(pg_bin: Path, server_bin: Path, awkward: str,
                                                 make_warranty_db: MakeDb) -> None:
    major = tools.tool_major(pg_bin)
    _, warranty = make_warranty_db(claims=300)
    for dsn in (awkward, warranty):
        raw = _dump(pg_bin, dsn)
        archive = await read_archive(_pieces(raw))
        assert [_line(e) for e in archive.toc] == _listing(pg_bin, raw)
        header = archive.header
        assert header.version[:2] == {15: (1, 14), 16: (1, 15)}.get(major, (1, 16))
        assert (header.compression, header.int_size, header.offset_size) == ("none", 4, 8)
        assert header.dbname == dsn.rsplit("/", 1)[1]
        assert header.server_version.startswith(f"{tools.tool_major(server_bin)}.")
        assert header.dump_version.startswith(f"{major}.")
        assert header.created_at is not None
        # Piped: pg_dump could not go back to record where each block starts.
        assert {e.data_state for e in archive.toc if e.had_dumper} == {1}
        blocks = await _contents(archive.blocks())
        assert set(blocks) == {e.dump_id for e in archive.toc if e.had_dumper}


async def test_dependencies_are_what_pg_dump_recorded(server_bin: Path, awkward: str) -> None:
    toc = (await read_archive(_pieces(_dump(server_bin, awkward)))).toc

    def get(desc: str, tag: str, namespace: str | None = "public") -> TocEntry:
        entry = toc.find(desc, namespace, tag)
        assert entry is not None, (desc, namespace, tag)
        return entry

    orders, customer = get("TABLE", "orders"), get("TABLE", "customer")
    assert orders.dump_id in get("INDEX", "orders_customer_idx").deps
    trigger = get("TRIGGER", "orders orders_audit")
    assert {orders.dump_id, get("FUNCTION", "log_order()").dump_id} <= set(trigger.deps)
    assert get("TABLE DATA", "orders").deps == (orders.dump_id,)
    assert {customer.dump_id, orders.dump_id} <= set(get("VIEW", "customer_orders").deps)
    assert customer.dump_id in get("FUNCTION", "customer_label(public.customer)").deps
    assert {get("TYPE", "mood").dump_id, get("DOMAIN", "posint").dump_id} <= set(customer.deps)
    parent = get("TABLE", "measurement")
    attach = get("TABLE ATTACH", "measurement_y2024")
    assert {parent.dump_id, get("TABLE", "measurement_y2024").dump_id} <= set(attach.deps)
    assert get("TABLE", "secrets").dump_id in get("POLICY", "secrets own_rows").deps
    weird = get("TABLE", 'we"ird name', "Odd Schema")
    assert get("SCHEMA", "Odd Schema", None).dump_id in weird.deps

    # Transitive, both ways, in archive order.
    fk = get("FK CONSTRAINT", "orders orders_customer_id_fkey")
    assert toc.dependents(customer.dump_id, transitive=False) == [e for e in toc if customer.dump_id in e.deps]
    up = toc.dependents(customer.dump_id)
    assert fk in up and get("TABLE DATA", "customer") in up and get("COMMENT", "TABLE customer") in up
    assert get("CONSTRAINT", "customer customer_pkey") in up
    assert [toc[i] for i in sorted(toc.index(e) for e in up)] == up
    down = toc.dependencies(trigger.dump_id)
    assert {e.label() for e in down} == {orders.label(), get("FUNCTION", "log_order()").label(),
                                         get("SEQUENCE", "ticket_seq").label()}
    assert toc.dependencies(trigger.dump_id, transitive=False) == [e for e in down if e.dump_id in trigger.deps]
    assert toc.dependencies(10**9) == [] and toc.get(10**9) is None

    # The database's own entries are there without --create; pg_restore applies them only with it.
    name = awkward.rsplit("/", 1)[1]
    own = {e.desc: e for e in toc.database_entries()}
    assert set(own) == {"DATABASE", "DATABASE PROPERTIES", "COMMENT", "ACL"}
    assert own["ACL"].tag == f"DATABASE {name}" and "REVOKE" in (own["ACL"].defn or "")
    assert own["COMMENT"].tag == f"DATABASE {name}" and "'awkward db'" in (own["COMMENT"].defn or "")
    props = own["DATABASE PROPERTIES"].defn or ""
    assert f"ALTER DATABASE {name} SET work_mem TO '8MB';" in props
    assert "search_path TO 'public', 'Odd Schema'" in props
    assert own["DATABASE"].table_oid == 1262 and "CREATE DATABASE" in (own["DATABASE"].defn or "")
    with_create = (await read_archive(_pieces(_dump(server_bin, awkward, "--create")))).toc
    assert list(with_create) == list(toc)  # --create changes plain-text output only


async def test_data_blocks_are_the_copy_streams(server_bin: Path, awkward: str) -> None:
    # Straight from pg_dump's pipe, as a backup reads it.
    proc = await asyncio.create_subprocess_exec(
        str(server_bin / "pg_dump"), "-Fc", "-Z0", f"--dbname={awkward}", stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    stdout = proc.stdout

    async def stream() -> AsyncIterator[bytes]:
        while piece := await stdout.read(4096):
            yield piece

    archive = await read_archive(stream())
    blocks = await _contents(archive.blocks())
    assert await proc.wait() == 0
    tables = 0
    for entry in archive.toc:
        if entry.desc == "TABLE DATA":
            assert entry.namespace is not None
            # pg_dump stores what COPY sent, then its end-of-data line.
            assert blocks[entry.dump_id] == _copy_out(awkward, entry.namespace, entry.tag) + COPY_END
            tables += 1
    assert tables == len(_tables(awkward))
    (blobs,) = archive.toc.find_all("BLOBS")
    large = blocks[blobs.dump_id]
    assert isinstance(large, dict)
    stored = {int(str(oid)): bytes(data) for oid, data in  # type: ignore[arg-type]
              _rows(awkward, "SELECT oid, lo_get(oid) FROM pg_largeobject_metadata")}
    assert large == stored and len(stored) == 3


async def test_blocks_left_unread_are_skipped(server_bin: Path, awkward: str) -> None:
    raw = _dump(server_bin, awkward)
    whole = await _contents((await read_archive(_pieces(raw))).blocks())
    archive = await read_archive(_pieces(raw, 1))
    big = archive.toc.find("TABLE DATA", "public", "big_row")
    assert big is not None
    seen: dict[int, bytes | dict[int, bytes]] = {}
    async for block in archive.blocks():
        if isinstance(block, TableData):
            if block.dump_id % 2 and block.dump_id != big.dump_id:
                continue  # not a byte read
            first = await anext(aiter(block.chunks), b"")  # one chunk, then move on
            assert whole[block.dump_id][:len(first)] == first  # type: ignore[index]
            if block.dump_id == big.dump_id:
                assert len(first) == MAX_FRAME  # the rest of this frame is skipped
        else:
            objects = aiter(block.objects)
            lo = await anext(objects)
            seen[lo.oid] = await _joined(lo.chunks)
            second = await anext(objects)
            await anext(aiter(second.chunks))  # partly read
            seen.update({lo.oid: await _joined(lo.chunks) async for lo in objects})
    blobs = next(v for v in whole.values() if isinstance(v, dict))
    assert seen == {oid: data for oid, data in blobs.items() if oid != second.oid}
    with pytest.raises(PostgresError, match="already read"):
        archive.blocks()

    # Like pg_restore -l: the TOC only, then the source is closed (stopping, e.g., a repository's read-ahead).
    closed = []

    async def source() -> AsyncIterator[bytes]:
        try:
            async for piece in _pieces(raw, 4096):
                yield piece
        finally:
            closed.append(True)

    archive = await read_archive(source())
    assert archive.toc.find("TABLE", "public", "orders") is not None
    await archive.aclose()
    assert closed == [True]


# -- writing ---------------------------------------------------------------------


async def test_round_trip_is_byte_identical_and_restores(pg_bin: Path, server_bin: Path, awkward: str,
                                                         make_warranty_db: MakeDb, new_db: Callable[[str], str],
                                                         tmp_path: Path) -> None:
    _, warranty = make_warranty_db(claims=300)
    for source in (awkward, warranty):
        raw = _dump(pg_bin, source)
        archive = await read_archive(_pieces(raw))
        written = await _joined(write_custom(archive.header, archive.entries, archive.blocks()))
        path = tmp_path / f"{uuid.uuid4().hex}.dump"
        path.write_bytes(written)
        with path.open("rb") as f:  # a plain file object works as a source too
            again = await read_archive(f)
            assert list(again.toc) == list(archive.toc)
            assert await _contents(again.blocks()) == await _contents((await read_archive(_pieces(raw))).blocks())
        if source == warranty:
            # Header, TOC, frames: the writer puts back exactly what pg_dump wrote into its pipe
            # (the awkward database has a row longer than MAX_FRAME, which goes on as several frames).
            assert written == raw
        assert _listing(pg_bin, path) == _listing(pg_bin, raw)
        if not _restores_here(pg_bin, server_bin):
            continue
        from_stdin, from_file = new_db("rt_stdin"), new_db("rt_file")
        _run([pg_bin / "pg_restore", "--exit-on-error", f"--dbname={from_stdin}"], written)
        _run([pg_bin / "pg_restore", "--exit-on-error", f"--dbname={from_file}", path])
        await _assert_same_database(source, from_stdin)
        await _assert_same_database(source, from_file)


async def test_directory_writer_writes_what_pg_dump_writes(pg_bin: Path, server_bin: Path, awkward: str,
                                                           tmp_path: Path, new_db: Callable[[str], str]) -> None:
    theirs, ours = tmp_path / "pg_dump", tmp_path / "ours"
    _run([pg_bin / "pg_dump", "--format=directory", "--compress=0", f"--dbname={awkward}", f"--file={theirs}"])
    archive = await read_directory(theirs)
    await write_directory(ours, archive.header, archive.entries, archive.blocks())
    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
    for path in theirs.iterdir():
        assert (ours / path.name).read_bytes() == path.read_bytes(), path.name
    assert (ours / "toc.dat").stat().st_mode & 0o077 == 0
    # And from the directory back to one custom archive that restores.
    archive = await read_directory(ours)
    written = await _joined(write_custom(archive.header, archive.entries, archive.blocks()))
    assert _listing(pg_bin, written) == _listing(pg_bin, theirs)
    if _restores_here(pg_bin, server_bin):
        restored = new_db("dir_rt")
        _run([pg_bin / "pg_restore", "--exit-on-error", f"--dbname={restored}"], written)
        await _assert_same_database(awkward, restored)
    archive = await read_directory(theirs)
    with pytest.raises(PostgresError, match="not an empty directory"):
        await write_directory(ours, archive.header, archive.entries, archive.blocks())


# -- per-table backups: schema archive + COPY streams -> a standard archive ----------------------


async def _data_descs(bin_dir: Path, dsn: str, *args: str) -> list[str]:
    """What of the database's data an archive dumped with ``args`` holds, as "DESC schema.name"."""
    keep = ("TABLE DATA", "SEQUENCE SET", "BLOBS", "MATERIALIZED VIEW DATA")
    archive = await read_archive(_pieces(_dump(bin_dir, dsn, *args), 1 << 16))
    return sorted(f"{e.desc} {e.qualified_name}" for e in archive.toc if e.desc in keep)


async def test_which_exclude_table_data_patterns_keep_what(server_bin: Path, awkward: str) -> None:
    everything = await _data_descs(server_bin, awkward)
    blobs = [d for d in everything if d.startswith("BLOBS")]
    sequences = [d for d in everything if d.startswith("SEQUENCE SET")]
    assert len(blobs) == 1 and len(sequences) == 2
    matview = ["MATERIALIZED VIEW DATA public.order_totals"]
    # A wildcard also matches sequences and materialized views: their values and refresh go too.
    assert await _data_descs(server_bin, awkward, "--exclude-table-data=*") == blobs
    assert await _data_descs(server_bin, awkward, "--exclude-table-data=*.*") == blobs
    # A partitioned table has no data of its own: excluding it leaves its partitions' data.
    assert await _data_descs(server_bin, awkward, "--exclude-table-data=public.measurement") == everything
    # Unquoted, a name with capitals or spaces matches nothing.
    assert await _data_descs(server_bin, awkward, '--exclude-table-data=Odd Schema.we"ird name') == everything
    # One fully quoted schema.table pattern per table (relkind r: partitions too) is exact.
    kept = await _data_descs(server_bin, awkward, *_schema_only_args(awkward))
    assert kept == sorted(blobs + sequences + matview)
    one = await _data_descs(server_bin, awkward, f"--exclude-table-data={_pattern('Odd Schema', 'a.b*c|d')}")
    assert one == [d for d in everything if d != "TABLE DATA Odd Schema.a.b*c|d"]
    # Unquoted, pattern characters are wildcards: "public.customer*" takes customers_archive's data too.
    wild = await _data_descs(server_bin, awkward, "--exclude-table-data=public.customer*")
    assert wild == [d for d in everything if not d.startswith("TABLE DATA public.customer")]


async def test_synthesized_archives_restore_like_the_source(
        pg_bin: Path, server_bin: Path, awkward: str, new_db: Callable[[str], str], tmp_path: Path) -> None:
    full = await read_archive(_pieces(_dump(pg_bin, awkward)))
    schema_raw = _dump(pg_bin, awkward, *_schema_only_args(awkward))
    schema = await read_archive(_pieces(schema_raw))
    assert not schema.toc.find_all("TABLE DATA")
    columns = _columns(awkward)
    entries, ids = with_table_data(schema.entries, columns)

    # What pg_dump itself writes for each table's data, in the place it writes it.
    def key(e: TocEntry) -> tuple[str, str | None, str]:
        return e.desc, e.namespace, e.tag
    assert [key(e) for e in entries] == [key(e) for e in full.toc]
    for (schema_name, table), dump_id in ids.items():
        ours = Toc(entries).entry(dump_id)
        theirs = full.toc.find("TABLE DATA", schema_name, table)
        assert theirs is not None
        table_entry = Toc(entries).entry(ours.deps[0])
        assert (table_entry.desc, table_entry.namespace, table_entry.tag) == ("TABLE", schema_name, table)
        assert replace(ours, dump_id=0, deps=(), data_state=0) == replace(theirs, dump_id=0, deps=(),
                                                                             data_state=0, data_offset=0)
    assert min(ids.values()) > max(e.dump_id for e in schema.entries)

    tables = {ids[name]: _copy_stream(awkward, *name) for name in columns}
    custom = await _joined(write_custom(schema.header, entries, merge_data(entries, tables, schema.blocks())))
    schema = await read_archive(_pieces(schema_raw))
    directory = tmp_path / "export"
    await write_directory(directory, schema.header, entries, merge_data(entries, tables, schema.blocks()))

    # The two agree with each other and with the full dump's data.
    full_blocks = await _contents(full.blocks())
    custom_blocks = await _contents((await read_archive(_pieces(custom))).blocks())
    assert custom_blocks == await _contents((await read_directory(directory)).blocks())
    by_name = {key(e): e.dump_id for e in entries}
    assert {key(e): full_blocks[e.dump_id] for e in full.toc if e.had_dumper} == {
        k: custom_blocks[i] for k, i in by_name.items() if i in custom_blocks}

    path = tmp_path / "export.dump"
    path.write_bytes(custom)
    # pg_restore lists the export as it lists a full dump, but for the new entries' dump ids.
    assert [line.split(";", 1)[1] for line in _listing(pg_bin, path)] == [
        line.split(";", 1)[1] for line in _listing(pg_bin, _dump(pg_bin, awkward))]
    if not _restores_here(pg_bin, server_bin):
        return
    from_stdin, from_dir, from_sql = new_db("syn_stdin"), new_db("syn_dir"), new_db("syn_sql")
    _run([pg_bin / "pg_restore", "--exit-on-error", f"--dbname={from_stdin}"], custom)
    _run([pg_bin / "pg_restore", "--exit-on-error", f"--dbname={from_dir}", directory])
    script = _run([pg_bin / "pg_restore", "--file=-", path])
    _run([server_bin / "psql", "--quiet", "--no-psqlrc", "--set=ON_ERROR_STOP=1", f"--dbname={from_sql}"], script)
    for restored in (from_stdin, from_dir, from_sql):
        await _assert_same_database(awkward, restored)


# -- refusals ----------------------------------------------------------------------


async def _read_all(source: bytes) -> Archive:
    archive = await read_archive(_pieces(source))
    await _contents(archive.blocks())
    return archive


async def test_refuses_what_it_does_not_store(server_bin: Path, awkward: str, tmp_path: Path) -> None:
    compressed = _run([server_bin / "pg_dump", "--format=custom", f"--dbname={awkward}"])
    with pytest.raises(PostgresError) as err:
        await _read_all(compressed)
    assert _one_line_error(err) == ("the archive is compressed with gzip; backstop stores uncompressed archives: "
                                    "dump with pg_dump --compress=0")
    bundled = tools._pgserver_bin_dir()
    if bundled is not None and (bundled / "pg_dump").is_file() and tools.tool_major(bundled) >= 16:
        for method in ("lz4", "zstd"):
            proc = subprocess.run([bundled / "pg_dump", "-Fc", f"--compress={method}", f"--dbname={awkward}"],
                                  capture_output=True)
            if proc.returncode == 0:  # a build without that library refuses to dump
                with pytest.raises(PostgresError, match=f"compressed with {method};"):
                    await _read_all(proc.stdout)

    for garbage, says in ((b"", "does not start with PGDMP"), (os.urandom(4096), "does not start with PGDMP"),
                          (b"--\n-- PostgreSQL database dump\n", "a plain SQL script")):
        with pytest.raises(PostgresError, match=says) as err:
            await _read_all(garbage)
        _one_line_error(err)

    tar = _run([server_bin / "pg_dump", "--format=tar", f"--dbname={awkward}"])
    with pytest.raises(PostgresError, match="does not start with PGDMP"):
        await _read_all(tar)
    _run([server_bin / "pg_dump", "-Fd", "-Z0", f"--dbname={awkward}", f"--file={tmp_path / 'dir'}"])
    with pytest.raises(PostgresError, match="tar or directory format, not custom"):
        await _read_all((tmp_path / "dir" / "toc.dat").read_bytes())
    with pytest.raises(PostgresError, match="not a directory archive"):
        await read_directory(tmp_path)
    _run([server_bin / "pg_dump", "-Fd", f"--dbname={awkward}", f"--file={tmp_path / 'gzipped'}"])
    with pytest.raises(PostgresError, match="compressed with gzip"):
        await read_directory(tmp_path / "gzipped")

    raw = _dump(server_bin, awkward)
    old = raw[:6] + bytes([13]) + raw[7:]
    with pytest.raises(PostgresError, match=r"version 1\.13 is not supported") as err:
        await _read_all(old)
    _one_line_error(err)


async def test_refuses_truncated_and_damaged_archives(server_bin: Path, awkward: str) -> None:
    raw = _dump(server_bin, awkward)
    archive = await read_archive(_pieces(raw))
    head_and_toc = await anext(write_custom(archive.header, archive.entries, _no_blocks()))
    header_size = len(await anext(write_custom(archive.header, [], _no_blocks()))) - 5
    data_start = len(head_and_toc)
    block_edge = raw.index(COPY_END) + len(COPY_END) + 5  # after the end marker of the first table's data
    # In the header, the TOC, a block header, a table's data, a large object; at the last byte; between blocks.
    for cut in (10, header_size + 100, data_start + 3, (data_start + len(raw)) // 2, len(raw) - 1000,
                len(raw) - 1, block_edge):
        with pytest.raises(PostgresError) as err:
            await _read_all(raw[:cut])
        message = _one_line_error(err)
        assert "truncated" in message, (cut, message)
    damaged = bytearray(raw)
    damaged[block_edge] = 7  # the next block's type
    with pytest.raises(PostgresError, match="damaged: data block type 7") as err:
        await _read_all(bytes(damaged))
    _one_line_error(err)


async def test_refuses_damage_in_each_field() -> None:
    header = Header((1, 14, 0), 4, 8, 1, "none", (0, 0, 12, 1, 0, 124, 0), "db", "15.1", "15.1")
    table = _entry(1, "TABLE", Section.PRE_DATA, "t1")
    data = table_data_entry(table, ["a"], 2)

    async def archive(entries: list[TocEntry]) -> bytes:
        async def blocks() -> AsyncIterator[DataBlock]:
            yield TableData(2, _pieces(b"1\n" + COPY_END, 2))
        return await _joined(write_custom(header, entries, blocks()))

    good = await archive([table, data])
    assert (await _read_all(good)).entries == [replace(table, data_state=3), data]
    frame = good.index(b"\x00\x02\x00\x00\x001\n")  # the frame of the one row
    damage = {
        "has dump id 0": await archive([replace(table, dump_id=0), data]),
        "has section 9": await archive([replace(table, section=9), data]),
        "a string of length -5": good.replace(b"\x00\x02\x00\x00\x00t1", b"\x01\x05\x00\x00\x00t1"),
        "'x' where TOC entry 1 should be a number": good.replace(b"\x01\x00\x00\x00" + b"0", b"\x01\x00\x00\x00x", 1),
        "data offset state 9": good.replace(b"false\x01\x01\x00\x00\x00\x03", b"false\x01\x01\x00\x00\x00\x09"),
        "a data frame of length -2": good[:frame] + b"\x01" + good[frame + 1:],
        "a data block for dump id 9": good[:frame - 5] + b"\x00\x09\x00\x00\x00" + good[frame:],
        "integer size 0": good[:8] + b"\x00" + good[9:],
        "the TOC claims -1 entries": good.replace(b"15.1\x00\x02\x00\x00\x00", b"15.1\x01\x01\x00\x00\x00"),
    }
    for says, raw in damage.items():
        assert raw != good, says
        with pytest.raises(PostgresError, match=f"damaged: .*{re.escape(says)}") as err:
            await _read_all(raw)
        _one_line_error(err)


async def _no_blocks() -> AsyncIterator[DataBlock]:
    return
    yield  # an async generator that yields nothing


async def test_writer_refuses_data_out_of_order(server_bin: Path, awkward: str) -> None:
    raw = _dump(server_bin, awkward)
    archive = await read_archive(_pieces(raw))
    entries = archive.entries
    with_data = [e for e in entries if e.had_dumper]

    async def blocks(ids: list[int]) -> AsyncIterator[DataBlock]:
        for dump_id in ids:
            entry = Toc(entries).entry(dump_id)
            if entry.desc == "BLOBS":
                yield LargeObjects(dump_id, _no_objects())
            else:
                yield TableData(dump_id, _pieces(b""))

    ids = [e.dump_id for e in with_data]
    for wrong, says in ((ids[1:], "came where"), (ids[:-1], "no data was supplied"),
                        (ids + [ids[0]], "no further entry"), ([ids[-1], *ids[:-1]], "came where")):
        with pytest.raises(PostgresError, match=says):
            await _joined(write_custom(archive.header, entries, blocks(wrong)))
    blobs = next(e for e in with_data if e.desc == "BLOBS")
    swapped = [replace(e, desc="BLOBS") if e is with_data[0] else
               replace(e, desc="TABLE DATA") if e is blobs else e for e in entries]
    with pytest.raises(PostgresError, match="of the wrong kind"):
        await _joined(write_custom(archive.header, swapped, blocks(ids)))
    with pytest.raises(PostgresError, match="no data for"):
        await _joined(write_custom(archive.header, entries, merge_data(entries, {}, None)))
    with pytest.raises(PostgresError, match="compressed with gzip"):
        await _joined(write_custom(replace(archive.header, compression="gzip"), entries, blocks(ids)))


async def _no_objects() -> AsyncIterator[LargeObject]:
    return
    yield


# -- versions, names, order ------------------------------------------------------------


async def test_archive_1_16_fields_round_trip(server_bin: Path, awkward: str, tmp_path: Path) -> None:
    """Archive 1.16 adds relkind to each entry and names one blobs_<id>.toc per BLOBS entry in a directory."""
    raw = _dump(server_bin, awkward)
    archive = await read_archive(_pieces(raw))
    header = replace(archive.header, version=(1, 16, 0))
    entries = [replace(e, relkind=ord("p") if (e.desc, e.tag) == ("TABLE", "measurement") else
                       ord("r") if e.desc == "TABLE" else 0) for e in archive.entries]
    written = await _joined(write_custom(header, entries, archive.blocks()))
    again = await read_archive(_pieces(written, 4096))
    assert again.header == header
    assert list(again.toc) == entries
    assert await _contents(again.blocks()) == await _contents((await read_archive(_pieces(raw))).blocks())
    directory = tmp_path / "v16"
    await write_directory(directory, header, entries, (await read_archive(_pieces(written))).blocks())
    (blobs,) = archive.toc.find_all("BLOBS")
    assert (directory / f"blobs_{blobs.dump_id}.toc").read_text().count("\n") == 3
    again_dir = await read_directory(directory)
    assert again_dir.header == replace(header, format=3)
    # A directory TOC names files instead of data positions.
    assert [replace(e, filename=None) for e in again_dir.toc] == [replace(e, data_state=3) for e in entries]
    assert {e.filename for e in again_dir.toc if e.had_dumper} == {
        f"blobs_{blobs.dump_id}.toc", *(f"{e.dump_id}.dat" for e in entries if e.desc == "TABLE DATA")}


def test_identifiers_are_quoted_as_pg_dump_quotes_them(pg_cluster: LocalCluster) -> None:
    assert [fmt_id(n) for n in ("orders", "_x1", "Orders", "we\"ird name", "größe", "1st", "", "select",
                                "user", "name", "json_table", "a.b")] == [
        "orders", "_x1", '"Orders"', '"we""ird name"', '"größe"', '"1st"', '""', '"select"',
        '"user"', "name", '"json_table"', '"a.b"']
    keywords = {(str(w), str(c)) for w, c in _rows(pg_cluster.dsn(), "SELECT word, catcode FROM pg_get_keywords()")}
    assert {w for w, c in keywords if c != "U"} <= _QUOTED_KEYWORDS
    assert not {w for w, c in keywords if c == "U"} & _QUOTED_KEYWORDS


def _entry(dump_id: int, desc: str, section: Section, tag: str = "", namespace: str | None = "public",
           deps: tuple[int, ...] = ()) -> TocEntry:
    return TocEntry(dump_id, desc in ("TABLE DATA", "BLOBS"), 0, 0, tag or f"t{dump_id}", desc, section,
                    "", "", None, namespace, None, None, "owner", deps)


def test_order_entries_puts_table_data_first_in_the_data_section() -> None:
    pre = [_entry(1, "TABLE", Section.PRE_DATA, "b"), _entry(2, "COMMENT", Section.NONE, "TABLE b"),
           _entry(3, "TABLE", Section.PRE_DATA, "a")]
    data = [_entry(4, "SEQUENCE SET", Section.DATA), _entry(5, "BLOBS", Section.DATA, namespace=None)]
    post = [_entry(6, "INDEX", Section.POST_DATA), _entry(7, "ACL", Section.NONE)]
    new = [table_data_entry(pre[0], ["x"], 9), table_data_entry(pre[2], [], 8)]
    ordered = order_entries(iter([*pre, *data, *post, *new]))
    assert [e.dump_id for e in ordered] == [1, 2, 3, 8, 9, 4, 5, 6, 7]
    assert new[1].copy_stmt == "COPY public.a  FROM stdin;\n"
    assert new[0].copy_stmt == "COPY public.b (x) FROM stdin;\n"
    # By schema, then name, in byte order ("Z" < "a"), as pg_dump sorts.
    odd = [_entry(10, "TABLE", Section.PRE_DATA, "a", "Zeta"), _entry(11, "TABLE", Section.PRE_DATA, "B", "public")]
    mixed, ids = with_table_data([*pre, *odd, *data], {("public", "a"): [], ("Zeta", "a"): [], ("public", "B"): []})
    assert [(e.namespace, e.tag) for e in mixed if e.desc == "TABLE DATA"] == [
        ("Zeta", "a"), ("public", "B"), ("public", "a")]
    assert sorted(ids.values()) == [12, 13, 14] and ids[("Zeta", "a")] == 12
    # No data section at all: before the post-data entries; nothing after them either: at the end.
    assert [e.dump_id for e in order_entries([*pre, *post, *new])] == [1, 2, 3, 8, 9, 6, 7]
    assert [e.dump_id for e in order_entries([*pre, *new])] == [1, 2, 3, 8, 9]
    with pytest.raises(PostgresError, match="TABLE entry"):
        table_data_entry(post[0], [], 10)
    with pytest.raises(PostgresError, match="no table public.nope"):
        with_table_data(pre, {("public", "nope"): []})
    with pytest.raises(PostgresError, match="already holds the data"):
        with_table_data(ordered, {("public", "a"): []})
    with pytest.raises(PostgresError, match="is partitioned"):  # archive 1.16 says which tables are
        table_data_entry(replace(pre[0], relkind=ord("p")), [], 10)
    with pytest.raises(PostgresError, match="twice"):
        Toc([pre[0], pre[0]])
