"""The ODH's set-based writes against the row-by-row statement they replaced.

``odh.upsert`` writes a group of messages with one ``INSERT .. SELECT FROM
unnest(..)`` per round (a key's n-th message goes into round n) and
``odh.record_applied`` with one statement. Every test here checks that the
rows, the count of rows changed and the errors are what one statement per
message, in order, gives (``_ROW_BY_ROW``: the statement used before).
"""

from __future__ import annotations

import json
import random
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shipping_support import STORE, Rig, payload, pump, services

from appliance.hub import odh
from appliance.hub.sink import _describe, _statements

pytestmark = pytest.mark.integration

_ROW_BY_ROW = (
    "INSERT INTO {t} AS t (store_id, pk, key, data, enrichment, version,"
    " deleted, source, errors) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (store_id, pk) DO UPDATE SET key = excluded.key,"
    " data = coalesce(excluded.data, t.data), enrichment = excluded.enrichment,"
    " version = excluded.version, deleted = excluded.deleted,"
    " source = excluded.source, errors = excluded.errors, applied_at = now()"
    " WHERE t.version < excluded.version"
)


def _json(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)


def row_by_row(
    conn: psycopg.Connection[Any], schema: str, msgs: list[dict[str, Any]]
) -> int:
    """Apply c/u/d messages one statement each, in order; return rows changed."""
    changed = 0
    for msg in msgs:
        deleted = msg["op"] == "d"
        image = msg.get("before") if deleted else msg.get("after")
        cur = conn.execute(
            sql.SQL(_ROW_BY_ROW).format(t=odh.table_ident(schema, msg["table"])),
            (
                msg["store"],
                odh.canonical_pk(msg["key"]),
                Jsonb(msg["key"]),
                _json(image),
                _json(msg.get("enrichment")),
                msg["version"],
                deleted,
                _json(msg.get("source")),
                _json(msg.get("errors")),
            ),
        )
        changed += cur.rowcount
    return changed


def setwise(
    conn: psycopg.Connection[Any], schema: str, msgs: list[dict[str, Any]]
) -> int:
    """Apply c/u/d messages as the sink does: per group of ``_statements``."""
    return sum(
        odh.upsert(conn, schema, rows, deleted=op == "d", pks=pks)
        for (_table, op), rows, pks in _statements(msgs)
    )


@pytest.fixture
def pg() -> Iterator[psycopg.Connection[Any]]:
    state = services.ensure_up()["postgres"]
    conn = psycopg.connect(
        host=state["host"],
        port=state["port"],
        user=state["user"],
        dbname="odh",
        password=Path(state["password_file"]).read_text().strip(),
        autocommit=True,
    )
    yield conn
    conn.close()


@pytest.fixture
def schemas(pg: psycopg.Connection[Any]) -> Iterator[tuple[str, str]]:
    """Two fresh ODH schemas: one written set-wise, one row by row."""
    tag = uuid.uuid4().hex[:10]
    made = (f"s_{tag}", f"r_{tag}")
    for schema in made:
        odh.ensure_base(pg, schema)
        for table in ("PRIX", "STOCK"):
            odh.ensure_table(pg, schema, table)
    yield made
    for schema in made:
        pg.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def rows_of(pg: psycopg.Connection[Any], schema: str) -> list[tuple[Any, ...]]:
    """Every column but applied_at; the IS NULL columns tell NULL from null."""
    found = []
    for table in ("prix", "stock"):
        found += pg.execute(
            f"SELECT '{table}', store_id, pk, key, data, enrichment, version,"
            " deleted, source, errors, data IS NULL, enrichment IS NULL,"
            f' source IS NULL, errors IS NULL FROM "{schema}".{table}'
            " ORDER BY store_id, pk"
        ).fetchall()
    return found


def msg(
    seq: int, key: str, version: int, op: str = "u", **fields: Any
) -> dict[str, Any]:
    body: dict[str, Any] = payload(0, seq, op=op, key=key, version=version, **fields)
    body["after"] = None if op == "d" else {"ARTNUM": key, "V": version}
    body["before"] = {"ARTNUM": key, "V": -version} if op == "d" else None
    return body


def both(
    pg: psycopg.Connection[Any], schemas: tuple[str, str], msgs: list[dict[str, Any]]
) -> tuple[int, int]:
    """Rows changed set-wise and row by row (each in a transaction); same rows."""
    with pg.transaction():
        fast = setwise(pg, schemas[0], msgs)
    with pg.transaction():
        slow = row_by_row(pg, schemas[1], msgs)
    assert rows_of(pg, schemas[0]) == rows_of(pg, schemas[1])
    return fast, slow


def test_a_key_repeated_in_one_group_is_written_in_order(
    pg: psycopg.Connection[Any], schemas: tuple[str, str]
) -> None:
    """Insert, update, update of one key and stale images, in ONE upsert call."""
    group = [
        msg(1, "A", 10),  # insert
        msg(2, "B", 20),
        msg(3, "A", 12),  # update
        msg(4, "A", 11),  # stale: 12 is there
        msg(5, "A", 13),  # update
        msg(6, "B", 20),  # stale: same version
        msg(7, "C", 5),
        msg(8, "A", 13),  # stale
    ]
    assert [len(r[0]) for r in odh._upsert_rounds(group, False)] == [3, 2, 1, 1, 1]
    with pg.transaction():
        fast = odh.upsert(pg, schemas[0], group, deleted=False)
    with pg.transaction():
        slow = row_by_row(pg, schemas[1], group)
    assert fast == slow == 5
    assert rows_of(pg, schemas[0]) == rows_of(pg, schemas[1])
    data = dict(pg.execute(f'SELECT pk, data FROM "{schemas[0]}".prix').fetchall())
    assert data[odh.canonical_pk({"ARTNUM": "A"})] == {"ARTNUM": "A", "V": 13}


def test_a_group_without_repeats_is_one_statement() -> None:
    group = [msg(i, f"K{i}", 100 + i) for i in range(1, 50)]
    assert len(odh._upsert_rounds(group, False)) == 1
    # The same key in two stores is two rows: no second round either.
    other = dict(group[0], store="MQ02")
    assert len(odh._upsert_rounds([group[0], other], False)) == 1


def test_update_delete_insert_of_one_key_in_a_batch(
    pg: psycopg.Connection[Any], schemas: tuple[str, str]
) -> None:
    """Deletes with and without an image, a re-insert, stale ones mixed in."""
    first = [msg(1, "A", 10), msg(2, "B", 10), msg(3, "D", 10)]
    assert both(pg, schemas, first) == (3, 3)
    batch = [
        msg(4, "A", 11),  # update
        msg(5, "A", 12, op="d"),  # delete with its before image
        msg(6, "B", 12, op="d"),
        msg(7, "A", 13),  # insert again (over the tombstone)
        msg(8, "B", 11),  # stale: the tombstone is newer
        msg(9, "D", 12, op="d"),
        msg(10, "D", 9, op="d"),  # stale delete
        msg(11, "E", 14, table="STOCK"),
        msg(12, "E", 15, table="STOCK"),
        msg(13, "E", 15, op="d", table="STOCK"),  # stale: same version
        msg(14, "A", 16, op="d"),
        msg(15, "A", 17),
    ]
    batch[2]["before"] = None  # the tombstone keeps the stored image
    assert both(pg, schemas, batch) == (9, 9)
    got = {
        r[0]: r[1:]
        for r in pg.execute(
            f'SELECT pk, data, version, deleted FROM "{schemas[0]}".prix'
        ).fetchall()
    }
    pk = odh.canonical_pk
    assert got[pk({"ARTNUM": "A"})] == ({"ARTNUM": "A", "V": 17}, 17, False)
    assert got[pk({"ARTNUM": "B"})] == ({"ARTNUM": "B", "V": 10}, 12, True)
    assert got[pk({"ARTNUM": "D"})] == ({"ARTNUM": "D", "V": -12}, 12, True)


def test_random_batches_end_as_row_by_row(
    pg: psycopg.Connection[Any], schemas: tuple[str, str]
) -> None:
    """Seeded random batches over few keys: same rows, same counts each time."""
    rnd = random.Random(20261205)
    seq = 0
    for _ in range(40):
        batch = []
        for _ in range(rnd.randrange(1, 25)):
            seq += 1
            op = rnd.choice("cuud")
            body = msg(
                seq,
                rnd.choice("ABCDE"),
                rnd.randrange(1, 60),
                op=op,
                table=rnd.choice(("PRIX", "STOCK")),
                store_id=rnd.choice((STORE, "MQ02")),
            )
            if op == "d" and rnd.random() < 0.5:
                body["before"] = None
            body["enrichment"] = rnd.choice((None, {"e": seq}))
            body["source"] = rnd.choice((None, {"sequence": seq}))
            body["errors"] = rnd.choice((None, None, [{"field": "PRIX"}]))
            batch.append(body)
        fast, slow = both(pg, schemas, batch)
        assert fast == slow


def test_none_is_sql_null_and_json_null_stays_json(
    pg: psycopg.Connection[Any], schemas: tuple[str, str]
) -> None:
    clean = msg(1, "A", 10)
    clean["enrichment"] = None
    clean["source"] = None
    clean["after"] = {"ARTNUM": "A", "LIBELLE": None, "LISTE": [None]}
    with_errors = msg(2, "B", 10)
    with_errors["errors"] = [{"field": "PRIX", "reason": None}]
    gone = msg(3, "C", 11, op="d")
    gone["before"] = None  # no row yet, no image: data stays NULL
    assert both(pg, schemas, [clean, with_errors, gone]) == (3, 3)
    got = {
        r[0]: r[1:]
        for r in pg.execute(
            "SELECT pk, data, data IS NULL, enrichment IS NULL, source IS NULL,"
            " errors IS NULL, data -> 'LIBELLE' IS NULL,"
            f" jsonb_typeof(data -> 'LIBELLE'), errors FROM \"{schemas[0]}\".prix"
        ).fetchall()
    }
    pk = odh.canonical_pk
    assert got[pk({"ARTNUM": "A"})] == (
        {"ARTNUM": "A", "LIBELLE": None, "LISTE": [None]},
        False,
        True,
        True,
        True,
        False,
        "null",
        None,
    )
    assert got[pk({"ARTNUM": "B"})][-1] == [{"field": "PRIX", "reason": None}]
    assert got[pk({"ARTNUM": "B"})][4] is False
    assert got[pk({"ARTNUM": "C"})][:2] == (None, True)


def test_pk_keeps_the_standard_library_spelling(
    pg: psycopg.Connection[Any], schemas: tuple[str, str]
) -> None:
    """Keys in any order, non-ASCII and floats: pk is ``canonical_pk``'s text."""
    key = {"Z": "Crème", "A": 1.5e-7, "M": 10**18}
    body = msg(1, "x", 10)
    body["key"] = key
    assert both(pg, schemas, [body]) == (1, 1)
    found = pg.execute(f'SELECT pk FROM "{schemas[0]}".prix').fetchone()
    assert found is not None
    assert found[0] == json.dumps(
        key, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def test_applied_rows_one_per_message_and_a_second_apply_fails(
    pg: psycopg.Connection[Any], schemas: tuple[str, str]
) -> None:
    msgs = [msg(1, "A", 10, outbox_id=41), msg(2, "A", 11), msg(3, "B", 12)]
    msgs[1]["outbox_id"] = "41"  # not an integer: NULL
    msgs[2]["lane"] = 2
    with pg.transaction():
        odh.record_applied(pg, schemas[0], msgs)
    got = pg.execute(
        "SELECT store_id, epoch, lane, lane_seq, outbox_id, version"
        f' FROM "{schemas[0]}".applied ORDER BY lane_seq'
    ).fetchall()
    assert got == [
        (STORE, 7, 0, 1, 41, 10),
        (STORE, 7, 0, 2, None, 11),
        (STORE, 7, 2, 3, None, 12),
    ]
    # Again, alone or beside a new one: refused as a UniqueViolation, as
    # before (not a DataError: the sink fails the batch, it parks nothing).
    for again in ([msgs[0]], [msg(4, "C", 13), msgs[1]]):
        with pytest.raises(psycopg.errors.UniqueViolation), pg.transaction():
            odh.record_applied(pg, schemas[0], again)
    # Twice in one call.
    with pytest.raises(psycopg.errors.UniqueViolation), pg.transaction():
        odh.record_applied(pg, schemas[0], [msg(5, "C", 14), msg(5, "C", 14)])
    assert not issubclass(psycopg.errors.UniqueViolation, psycopg.DataError)
    assert odh.applied_count(pg, STORE, schema=schemas[0]) == 3


def _old_reason(
    pg: psycopg.Connection[Any], schema: str, bad: dict[str, Any], where: str = ""
) -> str:
    """The reason the row-by-row statement gave for a refused value."""
    with pytest.raises(psycopg.DataError) as refused, pg.transaction():
        row_by_row(pg, schema, [bad])
    return _describe(refused.value, f"rejected by postgresql{where}")


@pytest.mark.parametrize(
    "spoil",
    [
        lambda m: m["after"].update(PRIX="1\u00002"),  # NUL: jsonb refuses it
        lambda m: m.update(version=2**63),  # beyond bigint
        lambda m: m["source"].update(note="a\u0000"),
    ],
    ids=["nul-in-data", "version-beyond-bigint", "nul-in-source"],
)
def test_refused_value_is_a_data_error_with_todays_text(
    pg: psycopg.Connection[Any], schemas: tuple[str, str], spoil: Any
) -> None:
    bad = msg(2, "B", 20)
    spoil(bad)
    expected = _old_reason(pg, schemas[1], bad)
    group = [msg(1, "A", 10), bad, msg(3, "A", 30)]
    with pytest.raises(psycopg.DataError) as refused, pg.transaction():
        odh.upsert(pg, schemas[0], group, deleted=False)
    assert _describe(refused.value, "rejected by postgresql") == expected
    assert rows_of(pg, schemas[0]) == []


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    rig.close()


def test_bad_value_parked_alone_rest_of_batch_applied(
    rig: Rig, pg: psycopg.Connection[Any], schemas: tuple[str, str]
) -> None:
    """Through the sink: repeated keys, stale ones, two refused values.

    The NUL is parked before any write, named by table, key, field and
    bytes; the version beyond bigint is refused by PostgreSQL's own
    statement, named by table and key.
    """
    bodies = [
        msg(1, "A", 10),
        msg(2, "B", 11),
        msg(3, "A", 12),
        msg(4, "C", 13),  # refused: NUL in the image
        msg(5, "A", 9),  # stale
        msg(6, "B", 14, op="d"),
        msg(7, "D", 2**63),  # refused: version beyond bigint
        msg(8, "A", 15),
        msg(9, "E", 16, table="STOCK"),
    ]
    bodies[3]["after"]["PRIX"] = "1\u00002"
    expected = {
        4: 'NUL character (U+0000) table=PRIX key={"ARTNUM": "C"} field=after.PRIX'
        " bytes=31 00 32 expected=text without U+0000 (PostgreSQL refuses it in"
        " text and jsonb)",
        7: _old_reason(pg, schemas[1], bodies[6], ' table=PRIX key={"ARTNUM": "D"}'),
    }
    sink = rig.sink()
    rig.produce_raw([json.dumps(b).encode() for b in bodies])
    pump(
        [sink],
        lambda: odh.fetch_watermarks(rig.pg, schema=rig.schema).get((STORE, 7, 0)) == 9,
        timeout_s=30,
    )
    parked = odh.fetch_dead_letters(rig.pg, schema=rig.schema)
    assert {d["lane_seq"]: d["reason"] for d in parked} == expected
    assert sink.counts["dead_letters"] == 2
    assert sink.counts["applied"] == 7
    assert sink.counts["stale"] == 1
    assert sink.counts["pg_errors"] == 0
    assert odh.applied_count(rig.pg, STORE, schema=rig.schema) == 7
    # The rows are what the good messages give row by row.
    good = [b for seq, b in enumerate(bodies, 1) if seq not in expected]
    with pg.transaction():
        assert row_by_row(pg, schemas[1], good) == 6
    assert rows_of(pg, rig.schema) == rows_of(pg, schemas[1])


def test_joined_text_splits_back_to_each_value() -> None:
    """A column joined by U+001F (NULL as U+001E) unless a value would split wrong."""
    assert odh._joined(["a", None, "b"]) == "a\x1f\x1e\x1fb"
    assert odh._joined([None]) == "\x1e"
    assert odh._joined(['{"k":"\\u001f"}']) == '{"k":"\\u001f"}'  # JSON escapes it
    for unsafe in (["a\x1fb"], ["a", "b\x1e"], [""], ["a", ""], ["MQ\x0001"]):
        assert odh._joined(unsafe) is None
    assert odh._joined_ints([1, None, 3], odh._INT8) == "1,N,3"
    assert odh._joined_ints([2**31 - 1], odh._INT4) == "2147483647"
    assert odh._joined_ints([2**31], odh._INT4) is None
    assert odh._joined_ints([None, -(2**63) - 1], odh._INT8) is None


def test_separators_in_values_and_store_ids_end_as_row_by_row(
    pg: psycopg.Connection[Any], schemas: tuple[str, str]
) -> None:
    """Separators inside JSON strings ride joined; in a store id, as arrays."""
    tricky = msg(1, "A\x1f\x1e", 10)
    tricky["after"]["NOTE"] = "x\x1fy\x1ez"
    tricky["source"] = {"sep": "\x1f"}
    odd_store = msg(2, "B", 11, store_id="MQ\x1f01")
    odd_store["errors"] = [{"field": "PRIX", "reason": "a\x1eb"}]
    plain = msg(3, "C", 12)
    plain["enrichment"] = None
    again = msg(4, "A\x1f\x1e", 13)
    again["after"]["NOTE"] = "x\x1fy\x1ez"
    # the second time, ``plain`` is stale: 2 rows changed of 3
    changed = [
        both(pg, schemas, b) for b in ([tricky, plain], [odd_store, plain, again])
    ]
    assert changed == [(2, 2), (2, 2)]
    stores = pg.execute(f'SELECT store_id FROM "{schemas[0]}".prix').fetchall()
    assert sorted(s for (s,) in stores) == ["MQ\x1f01", STORE, STORE]
    row = pg.execute(
        f"SELECT data ->> 'NOTE', version FROM \"{schemas[0]}\".prix WHERE pk = %s",
        (odh.canonical_pk({"ARTNUM": "A\x1f\x1e"}),),
    ).fetchone()
    assert row == ("x\x1fy\x1ez", 13)


def test_applied_values_out_of_range_fail_with_the_arrays_text(
    pg: psycopg.Connection[Any], schemas: tuple[str, str]
) -> None:
    """A lane beyond int or a version beyond bigint: the error the arrays gave."""
    for field, value in (("lane", 2**31), ("version", 2**63), ("outbox_id", -(2**64))):
        bad = msg(1, "A", 10)
        bad[field] = value
        with pytest.raises(psycopg.DataError) as old, pg.transaction():
            pg.execute(
                odh._applied_query(schemas[1], False),
                [
                    [bad["store"]],
                    [bad["epoch"]],
                    [bad["lane"]],
                    [bad["lane_seq"]],
                    [bad["outbox_id"]],
                    [bad["version"]],
                ],
            )
        with pytest.raises(psycopg.DataError) as new, pg.transaction():
            odh.record_applied(pg, schemas[0], [msg(2, "B", 11), bad])
        assert _describe(new.value, "x") == _describe(old.value, "x")
    stores = ["MQ\x1f01", STORE]
    good = [msg(3, "C", 12, store_id=s, outbox_id=9) for s in stores]
    with pg.transaction():
        odh.record_applied(pg, schemas[0], good)
    got = pg.execute(
        f'SELECT store_id, lane, lane_seq, outbox_id, version FROM "{schemas[0]}"'
        ".applied"
    ).fetchall()
    assert sorted(got) == [("MQ\x1f01", 0, 3, 9, 12), (STORE, 0, 3, 9, 12)]
