"""The Operational Data Hub in PostgreSQL: DDL, the row writes, and reads.

Layout (schema name from ``sink.schema_name``, ``odh`` by default):

- ``watermarks(store_id, epoch, lane, upto, updated_at)``: highest
  ``lane_seq`` applied per (store, box epoch, lane); the sink applies only
  ``upto + 1``. The epoch is the box's pipeline-database epoch: a reflashed
  box starts new lanes at 1 under its new epoch instead of being taken for
  a stream of duplicates.
- ``applied(store_id, lane, lane_seq, outbox_id, version, applied_at)``: one
  row per applied message; its primary key makes "applied twice" impossible.
- ``dead_letters(id, created_at, store_id, lane, lane_seq, topic, partition,
  kafka_offset, reason, raw)``: messages the sink could not apply, with the
  reason and the bytes as received.
- one table per relayed table, ``"<table lower>"(store_id, pk, key, data,
  enrichment, version, deleted, source, applied_at, pk_hash)``, ``pk`` being
  the key as canonical JSON (sorted keys, no blanks) and ``pk_hash`` a stored
  generated column (docs/guardian.md section 2) indexed with ``store_id``.
- the guardian's tables (docs/guardian.md section 6): ``guardian_pending``
  (checksum messages waiting for their fences), ``guardian_runs``,
  ``guardian_mismatches`` (bucket level), ``guardian_keys`` (key level),
  ``guardian_repairs`` (one row per ``r`` message applied) and
  ``guardian_outbox`` (hub -> store messages, published after commit).

Invariants of the per-table rows: a row only ever moves to a higher
``version``; a delete leaves a tombstone (``deleted``, the delete's version,
the last image), so a late, older upsert cannot bring the row back.

Every function runs inside the caller's transaction; none commits.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from appliance import jsontext
from appliance.errors import SinkError
from appliance.guardian import digest

logger = logging.getLogger(__name__)

canonical_pk = digest.canonical_pk
"""The key as canonical JSON: the one definition (docs/guardian.md section 2)."""

_SORTED_KEYS = orjson.OPT_SORT_KEYS


def key_text(key: dict[str, Any]) -> str:
    """:func:`canonical_pk` of ``key``, character for character, cheaper.

    A key whose values are all strings or integers (every key the relay
    ships) is written by orjson with sorted names: for such values orjson's
    text is the standard library's (same escapes, names in code-point
    order; tests/hub/test_key_text.py compares the two on random keys), at a
    fifth of the cost. Any other key (a float, whose exponent the two spell
    differently, a boolean, a nested value) goes to :func:`canonical_pk`
    itself, and so does what orjson refuses (integers beyond 64 bits, a lone
    surrogate, a name that is not a string).
    """
    for value in key.values():
        kind = type(value)
        if kind is not str and kind is not int:
            return canonical_pk(key)
    try:
        return orjson.dumps(key, option=_SORTED_KEYS).decode()
    except TypeError:
        return canonical_pk(key)


_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_$#@]{0,62}$")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

_BASE_DDL = (
    "CREATE SCHEMA IF NOT EXISTS {schema}",
    "CREATE TABLE IF NOT EXISTS {schema}.watermarks ("
    " store_id text NOT NULL, epoch bigint NOT NULL, lane int NOT NULL,"
    " upto bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(),"
    " PRIMARY KEY (store_id, epoch, lane))",
    "CREATE TABLE IF NOT EXISTS {schema}.applied ("
    " store_id text NOT NULL, epoch bigint NOT NULL, lane int NOT NULL,"
    " lane_seq bigint NOT NULL, outbox_id bigint, version bigint NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now(),"
    " PRIMARY KEY (store_id, epoch, lane, lane_seq))",
    "CREATE TABLE IF NOT EXISTS {schema}.dead_letters ("
    " id bigserial PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now(),"
    " store_id text, lane int, lane_seq bigint, topic text NOT NULL,"
    " partition int NOT NULL, kafka_offset bigint NOT NULL,"
    " reason text NOT NULL, raw bytea)",
    "CREATE TABLE IF NOT EXISTS {schema}.guardian_pending ("
    " id bigserial PRIMARY KEY, store_id text NOT NULL, epoch bigint NOT NULL,"
    " lane int NOT NULL, lane_seq bigint NOT NULL, run text NOT NULL,"
    " table_name text NOT NULL, mode text NOT NULL, kind text NOT NULL,"
    " request text, v_low bigint NOT NULL, fences jsonb NOT NULL,"
    " body jsonb NOT NULL, received_at timestamptz NOT NULL DEFAULT now(),"
    " state smallint NOT NULL DEFAULT 0, evaluated_at timestamptz,"
    " UNIQUE (store_id, epoch, lane, lane_seq))",
    "CREATE INDEX IF NOT EXISTS guardian_pending_waiting"
    " ON {schema}.guardian_pending (id) WHERE state = 0",
    "CREATE TABLE IF NOT EXISTS {schema}.guardian_runs ("
    " store_id text NOT NULL, epoch bigint NOT NULL, run text NOT NULL,"
    " table_name text NOT NULL, mode text NOT NULL, parts int, v_low bigint,"
    " rows_read bigint NOT NULL DEFAULT 0, state text NOT NULL DEFAULT 'open',"
    " started_at timestamptz NOT NULL DEFAULT now(),"
    " updated_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz,"
    " summary jsonb, PRIMARY KEY (store_id, run, table_name))",
    "CREATE TABLE IF NOT EXISTS {schema}.guardian_mismatches ("
    " store_id text NOT NULL, run text NOT NULL, table_name text NOT NULL,"
    " bits int NOT NULL, prefix numeric(20, 0) NOT NULL,"
    " store_count bigint NOT NULL, store_sum numeric(20, 0) NOT NULL,"
    " hub_count bigint NOT NULL, hub_sum numeric(20, 0) NOT NULL,"
    " request text NOT NULL, resolved boolean NOT NULL DEFAULT false,"
    " at timestamptz NOT NULL DEFAULT now(),"
    " PRIMARY KEY (store_id, run, table_name, bits, prefix))",
    "CREATE TABLE IF NOT EXISTS {schema}.guardian_keys ("
    " store_id text NOT NULL, run text NOT NULL, table_name text NOT NULL,"
    " pk text NOT NULL, what text NOT NULL, store_hash bigint, hub_hash bigint,"
    " hub_version bigint, hub_deleted boolean, v_low bigint NOT NULL,"
    " request text, outcome text, at timestamptz NOT NULL DEFAULT now(),"
    " PRIMARY KEY (store_id, run, table_name, pk))",
    "CREATE INDEX IF NOT EXISTS guardian_keys_asked ON {schema}.guardian_keys"
    " (store_id, run, table_name) WHERE request IS NOT NULL AND outcome IS NULL",
    "CREATE TABLE IF NOT EXISTS {schema}.guardian_repairs ("
    " id bigserial PRIMARY KEY, store_id text NOT NULL, run text,"
    " table_name text NOT NULL, pk text NOT NULL, version bigint NOT NULL,"
    " old_version bigint, kind text, request text, outcome text NOT NULL,"
    " at timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS {schema}.guardian_outbox ("
    " id bigserial PRIMARY KEY, store_id text NOT NULL, request text NOT NULL,"
    " body jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),"
    " published_at timestamptz, UNIQUE (store_id, request))",
)
PK_HASH_SQL = "('x' || substr(md5(pk), 1, 16))::bit(64)::bigint"
"""``pk_hash`` in SQL (docs/guardian.md section 2), over the column ``pk``."""
ROW_HASH_SQL = (
    "('x' || substr(md5(pk || E'\\n' || data::text), 1, 16))::bit(64)::bigint"
)
"""``row_hash`` in SQL, over the columns ``pk`` and ``data``."""
_TABLE_DDL = (
    "CREATE TABLE IF NOT EXISTS {table} ("
    " store_id text NOT NULL, pk text NOT NULL, key jsonb NOT NULL, data jsonb,"
    " enrichment jsonb, version bigint NOT NULL,"
    " deleted boolean NOT NULL DEFAULT false, source jsonb, errors jsonb,"
    " applied_at timestamptz NOT NULL DEFAULT now(),"
    " PRIMARY KEY (store_id, pk))"
)


def schema_ident(schema: str) -> sql.Identifier:
    """The schema as an identifier; SinkError when the name is not plain."""
    if not _SCHEMA_NAME.match(schema):
        raise SinkError(
            f"sink.schema_name: expected lower-case letters, digits, _ (got {schema!r})"
        )
    return sql.Identifier(schema)


def table_ident(schema: str, table: str) -> sql.Composed:
    """``schema."<table lower>"``; SinkError for a name no IBM i table could have.

    The sink checks every message's table with it: the answer for a name is
    kept (a relay has a handful of tables), a refusal is not.
    """
    if not isinstance(table, str):
        raise SinkError(f"table: expected an SQL table name (got {repr(table)[:40]})")
    return _table_ident(schema, table)


@functools.lru_cache(maxsize=1024)
def _table_ident(schema: str, table: str) -> sql.Composed:
    if not _TABLE_NAME.match(table):
        raise SinkError(f"table: expected an SQL table name (got {repr(table)[:40]})")
    return sql.SQL("{}.{}").format(schema_ident(schema), sql.Identifier(table.lower()))


def ensure_base(conn: psycopg.Connection[Any], schema: str) -> None:
    """Create the schema and its bookkeeping tables when missing."""
    ident = schema_ident(schema)
    for statement in _BASE_DDL:
        conn.execute(sql.SQL(statement).format(schema=ident))


def ensure_table(conn: psycopg.Connection[Any], schema: str, table: str) -> None:
    """Create the ODH table of a relayed table when missing (or add new columns)."""
    ident = table_ident(schema, table)
    conn.execute(sql.SQL(_TABLE_DDL).format(table=ident))
    # Tables made before the errors column existed get it on first sight.
    conn.execute(
        sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS errors jsonb").format(ident)
    )
    # The guardian's buckets are ranges of pk_hash: older tables get the column
    # (a rewrite, once) and the index on first sight too.
    conn.execute(
        sql.SQL(
            "ALTER TABLE {} ADD COLUMN IF NOT EXISTS pk_hash bigint"
            " GENERATED ALWAYS AS (" + PK_HASH_SQL + ") STORED"
        ).format(ident)
    )
    conn.execute(
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (store_id, pk_hash)").format(
            sql.Identifier(f"{table.lower()[:50]}_pk_hash"), ident
        )
    )


Stream = tuple[str, int, int]
"""(store id, box epoch, lane): what one watermark counts."""


def lock_watermark(conn: psycopg.Connection[Any], schema: str, stream: Stream) -> int:
    """The lane's watermark, row-locked until commit (0 for a new lane)."""
    ident = schema_ident(schema)
    conn.execute(
        sql.SQL(
            "INSERT INTO {}.watermarks (store_id, epoch, lane, upto)"
            " VALUES (%s, %s, %s, 0) ON CONFLICT (store_id, epoch, lane) DO NOTHING"
        ).format(ident),
        stream,
    )
    row = conn.execute(
        sql.SQL(
            "SELECT upto FROM {}.watermarks"
            " WHERE store_id = %s AND epoch = %s AND lane = %s FOR UPDATE"
        ).format(ident),
        stream,
    ).fetchone()
    return int(row[0]) if row else 0


def set_watermark(
    conn: psycopg.Connection[Any], schema: str, stream: Stream, upto: int
) -> None:
    """Advance a lane's watermark (never backwards)."""
    conn.execute(
        sql.SQL(
            "UPDATE {}.watermarks SET upto = greatest(upto, %s), updated_at = now()"
            " WHERE store_id = %s AND epoch = %s AND lane = %s"
        ).format(schema_ident(schema)),
        (upto, *stream),
    )


def upsert(
    conn: psycopg.Connection[Any],
    schema: str,
    msgs: Sequence[dict[str, Any]],
    *,
    deleted: bool,
    pks: Sequence[str] | None = None,
) -> int:
    """Write row images of ONE table under the version guard; return rows changed.

    ``pks`` are the messages' :func:`key_text`, when the caller has them
    already (the sink computes each key's text once per message).

    An upsert carries the after image; a delete carries the before image (or
    keeps the stored one) and sets the tombstone. Either only replaces a row
    whose version is lower, so ``len(msgs) - result`` images were stale.

    Set-based: the messages go as columns (the jsonb ones as their JSON
    text, cast in SQL; each text column joined into one text, see
    ``_JOINED``) into one ``INSERT .. SELECT FROM unnest(..)`` per round.
    PostgreSQL refuses one such statement touching a row twice, so a
    key's n-th message of the group goes into round n: each key's writes
    still happen in order, one after the other, and keys do not interact, so
    rows and the count end exactly as with one statement per message.
    """
    if not msgs:
        return 0
    table = msgs[0]["table"].lower()
    changed = 0
    with conn.cursor() as cur:
        for columns in _upsert_rounds(msgs, deleted, pks):
            texts = [_joined(c) for i, c in enumerate(columns) if i != _VERSION]
            params: list[Any] = [deleted]
            if None in texts:
                query = _upsert_query(schema, table, False)
                params += columns
            else:
                query = _upsert_query(schema, table, True)
                params += texts
                params.insert(1 + _VERSION, columns[_VERSION])
            cur.execute(query, params)
            changed += max(cur.rowcount, 0)
    return changed


# The text columns travel as ONE text each: the elements joined by the unit
# separator U+001F, a NULL written as the record separator U+001E, split in
# SQL by string_to_array. Joining is one C call, where psycopg's array
# dumper handles each element in Python (the arrays were a third of the
# sink's CPU). Compact JSON never holds either character raw (JSON escapes
# control characters in strings), nor does ``pk``; a column where one
# appears, or an empty text (it would split to no element), goes as a binary
# array as before (%b: in text format psycopg escapes each element of an
# array with a regular expression, which cost more than the rows).
_SEP = "\x1f"
_NULL = "\x1e"
_VERSION = 5  # the bigint column among _upsert_rounds' columns, always %b
_JOINED = "string_to_array(%s, E'\\x1f', E'\\x1e')"
_UPSERT_HEAD = (
    "INSERT INTO {t} AS t (store_id, pk, key, data, enrichment, version,"
    " deleted, source, errors)"
    " SELECT u.store_id, u.pk, u.key::jsonb, u.data::jsonb, u.enrichment::jsonb,"
    " u.version, %b::boolean, u.source::jsonb, u.errors::jsonb"
)
_UPSERT_ARRAYS = (
    " FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[],"
    " %b::bigint[], %b::text[], %b::text[])"
)
_UPSERT_JOINED = (
    f" FROM unnest({_JOINED}, {_JOINED}, {_JOINED}, {_JOINED}, {_JOINED},"
    f" %b::bigint[], {_JOINED}, {_JOINED})"
)
_UPSERT_TAIL = (
    " AS u(store_id, pk, key, data, enrichment, version, source, errors)"
    " ON CONFLICT (store_id, pk) DO UPDATE SET key = excluded.key,"
    " data = coalesce(excluded.data, t.data), enrichment = excluded.enrichment,"
    " version = excluded.version, deleted = excluded.deleted,"
    " source = excluded.source, errors = excluded.errors, applied_at = now()"
    " WHERE t.version < excluded.version"
)


def _joined(values: list[Any]) -> str | None:
    """A text column as one text for ``_JOINED``; None when it cannot be.

    Worked example: ``["a", None, "b"]`` is ``"a\\x1f\\x1e\\x1fb"``, split back to
    ``{a,NULL,b}``. A value holding a separator would split into two, and a
    lone ``""`` would split into none: those columns go as arrays, and so do
    those holding a NUL character.
    """
    nulls = values.count(None)
    if nulls:
        text = _SEP.join(_NULL if v is None else v for v in values)
    else:
        text = _SEP.join(values)
    if text.count(_SEP) != len(values) - 1 or text.count(_NULL) != nulls:
        return None
    # A NUL (only a store id could hold one raw) is refused by PostgreSQL in
    # an array element and by psycopg in a text, with other words: arrays.
    return None if "" in values or "\x00" in text else text


@functools.lru_cache(maxsize=1024)
def _upsert_query(schema: str, table: str, joined: bool) -> sql.Composed:
    """The upsert of one table, composed once (psycopg then finds its prepared
    statement by the query's text, as before)."""
    source = _UPSERT_JOINED if joined else _UPSERT_ARRAYS
    text = _UPSERT_HEAD + source + _UPSERT_TAIL
    return sql.SQL(text).format(t=table_ident(schema, table))


def _upsert_rounds(
    msgs: Sequence[dict[str, Any]],
    deleted: bool,
    pks: Sequence[str] | None = None,
) -> list[tuple[list[Any], ...]]:
    """The columns of each round: a key's n-th message goes into round n.

    Columns in the order of ``_UPSERT_ARRAYS`` (after ``deleted``); a
    JSON value as its compact text, None as None (SQL NULL, never jsonb
    ``null``).
    """
    if pks is None:
        pks = [key_text(msg["key"]) for msg in msgs]
    idents = list(zip([m["store"] for m in msgs], pks, strict=True))
    places: list[list[int]] = [list(range(len(msgs)))]
    if len(set(idents)) < len(idents):  # a key repeats: more than one round
        places = []
        seen: dict[tuple[str, str], int] = {}
        for i, ident in enumerate(idents):
            n = seen.get(ident, 0)
            seen[ident] = n + 1
            if n == len(places):
                places.append([])
            places[n].append(i)
    image = "before" if deleted else "after"
    compact = jsontext.compact
    rounds: list[tuple[list[Any], ...]] = []
    for place in places:
        part = [msgs[i] for i in place]
        rounds.append(
            (
                [idents[i][0] for i in place],
                [idents[i][1] for i in place],
                [compact(m["key"]) for m in part],
                [None if (v := m.get(image)) is None else compact(v) for m in part],
                [
                    None if (v := m.get("enrichment")) is None else compact(v)
                    for m in part
                ],
                [m["version"] for m in part],
                [None if (v := m.get("source")) is None else compact(v) for m in part],
                # Field-level decode errors stay with the row they concern, so
                # data quality can be queried at the hub (NULL when clean).
                [None if (v := m.get("errors")) is None else compact(v) for m in part],
            )
        )
    return rounds


_READ_UPSERT = (
    "WITH old AS (SELECT version, deleted, data = %(data)s AS same FROM {t}"
    " WHERE store_id = %(store)s AND pk = %(pk)s),"
    " up AS (INSERT INTO {t} AS t (store_id, pk, key, data, enrichment, version,"
    " deleted, source, errors) VALUES (%(store)s, %(pk)s, %(key)s, %(data)s,"
    " %(enrichment)s, %(version)s, false, %(source)s, %(errors)s)"
    " ON CONFLICT (store_id, pk) DO UPDATE SET key = excluded.key,"
    " data = excluded.data, enrichment = excluded.enrichment,"
    " version = excluded.version, deleted = false, source = excluded.source,"
    " errors = excluded.errors, applied_at = now()"
    " WHERE t.version <= excluded.version"
    " AND (t.deleted OR t.data IS DISTINCT FROM excluded.data) RETURNING 1)"
    " SELECT (SELECT version FROM old), (SELECT deleted FROM old),"
    " (SELECT same FROM old), (SELECT count(*) FROM up)"
)
_READ_ABSENT = (
    "WITH old AS (SELECT version, deleted FROM {t}"
    " WHERE store_id = %(store)s AND pk = %(pk)s),"
    " up AS (UPDATE {t} SET deleted = true, version = %(version)s,"
    " source = %(source)s, applied_at = now()"
    " WHERE store_id = %(store)s AND pk = %(pk)s AND NOT deleted"
    " AND version <= %(version)s RETURNING 1)"
    " SELECT (SELECT version FROM old), (SELECT deleted FROM old), NULL,"
    " (SELECT count(*) FROM up)"
)


def apply_reads(
    conn: psycopg.Connection[Any], schema: str, msgs: Sequence[dict[str, Any]]
) -> dict[str, int]:
    """Apply ``r`` rows of ONE table (docs/guardian.md section 1); count outcomes.

    A row read at the source carries the version ``v_low`` of its read and is
    applied when ``version >= existing.version`` (ties apply: the row read is
    that change's result); ``after`` NULL means the key is gone at the source,
    so a live row becomes a tombstone keeping its last image. Each one is
    recorded in ``guardian_repairs`` with its outcome, and a repair the
    evaluator asked for is marked answered in ``guardian_keys``.
    """
    if not msgs:
        return {}
    table = table_ident(schema, msgs[0]["table"])
    outcomes: dict[str, int] = {}
    records = []
    with conn.cursor() as cur:
        for msg in msgs:
            params = _read_params(msg)
            query = _READ_UPSERT if msg.get("after") is not None else _READ_ABSENT
            cur.execute(sql.SQL(query).format(t=table), params)
            got = cur.fetchone()
            assert got is not None
            outcome = _read_outcome(msg, *got)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            guardian = _guardian_of(msg)
            records.append(
                (
                    msg["store"],
                    guardian.get("run"),
                    msg["table"].upper(),
                    params["pk"],
                    msg["version"],
                    got[0],
                    guardian.get("kind"),
                    guardian.get("request"),
                    outcome,
                )
            )
        ident = schema_ident(schema)
        cur.executemany(
            sql.SQL(
                "INSERT INTO {}.guardian_repairs (store_id, run, table_name, pk,"
                " version, old_version, kind, request, outcome)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
            ).format(ident),
            records,
        )
        answered = [r for r in records if r[1] is not None and r[7] is not None]
        if answered:
            cur.executemany(
                sql.SQL(
                    "UPDATE {}.guardian_keys SET outcome = %s WHERE store_id = %s"
                    " AND run = %s AND table_name = %s AND pk = %s"
                    " AND request IS NOT NULL AND outcome IS NULL"
                ).format(ident),
                [(r[8], r[0], r[1], r[2], r[3]) for r in answered],
            )
    return outcomes


def _read_params(msg: dict[str, Any]) -> dict[str, Any]:
    return {
        "store": msg["store"],
        "pk": _read_pk(msg),
        "key": Jsonb(msg["key"]),
        "data": _jsonb_or_none(msg.get("after")),
        "enrichment": _jsonb_or_none(msg.get("enrichment")),
        "version": msg["version"],
        "source": _jsonb_or_none(msg.get("source")),
        "errors": _jsonb_or_none(msg.get("errors")),
    }


def _read_pk(msg: dict[str, Any]) -> str:
    """The row an ``r`` is for: the pk text the hub asked a repair of, when it
    names the same key (a row stored under a pk that is not canonical, e.g.
    written by hand, is repaired on itself), else the canonical pk."""
    asked = _guardian_of(msg).get("pk")
    key = msg["key"]
    if isinstance(asked, str) and asked != canonical_pk(key):
        try:
            same = json.loads(asked) == key
        except ValueError:
            same = False
        if same:
            return asked
    return canonical_pk(key)


def _read_outcome(
    msg: dict[str, Any],
    old_version: int | None,
    old_deleted: bool | None,
    same: bool | None,
    written: int,
) -> str:
    """What an ``r`` row did, from the row before it and whether it wrote."""
    if msg.get("after") is None:
        if old_version is None or old_deleted:
            return "absent"
        return "deleted" if written else "refused_newer"
    if old_version is None:
        return "inserted"
    if old_version > msg["version"]:
        return "refused_newer"
    return "same" if same and not old_deleted else "changed"


def _guardian_of(msg: dict[str, Any]) -> dict[str, Any]:
    source = msg.get("source")
    guardian = source.get("guardian") if isinstance(source, dict) else None
    return guardian if isinstance(guardian, dict) else {}


def store_pending(
    conn: psycopg.Connection[Any], schema: str, msgs: Sequence[dict[str, Any]]
) -> None:
    """Keep ``g`` messages until the evaluator finds their fences met."""
    query = sql.SQL(
        "INSERT INTO {}.guardian_pending (store_id, epoch, lane, lane_seq, run,"
        " table_name, mode, kind, request, v_low, fences, body)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (store_id, epoch, lane, lane_seq) DO NOTHING"
    ).format(schema_ident(schema))
    params = []
    for msg in msgs:
        body = msg["guardian"]
        params.append(
            (
                msg["store"],
                msg["epoch"],
                msg["lane"],
                msg["lane_seq"],
                body["run"],
                msg["table"].upper(),
                body["mode"],
                body["kind"],
                body.get("request"),
                msg["version"],
                Jsonb(body.get("fences") or {}),
                Jsonb(body),
            )
        )
    with conn.cursor() as cur:
        cur.executemany(query, params)


def truncate(conn: psycopg.Connection[Any], schema: str, msg: dict[str, Any]) -> int:
    """A cleared member: every older row of the store's table becomes a tombstone."""
    cur = conn.execute(
        sql.SQL(
            "UPDATE {} SET deleted = true, version = %s, applied_at = now()"
            " WHERE store_id = %s AND version < %s"
        ).format(table_ident(schema, msg["table"])),
        (msg["version"], msg["store"], msg["version"]),
    )
    return cur.rowcount


def record_applied(
    conn: psycopg.Connection[Any], schema: str, msgs: Sequence[dict[str, Any]]
) -> None:
    """One ``applied`` row each, in one statement; a second apply of a
    lane_seq fails here (a UniqueViolation, within the batch as across).

    The columns go joined (``_joined``, ``_joined_ints``) when every value
    fits its column, else as binary arrays, so a value out of range fails
    with the same error either way.
    """
    if not msgs:
        return
    ints = (
        ([m["epoch"] for m in msgs], _INT8),
        ([m["lane"] for m in msgs], _INT4),
        ([m["lane_seq"] for m in msgs], _INT8),
        ([_outbox_id(m) for m in msgs], _INT8),
        ([m["version"] for m in msgs], _INT8),
    )
    stores = [m["store"] for m in msgs]
    joined = [_joined(stores), *(_joined_ints(col, bounds) for col, bounds in ints)]
    params: list[Any] = joined
    query = _applied_query(schema, None not in joined)
    if None in joined:
        params = [stores, *(col for col, _ in ints)]
    with conn.cursor() as cur:
        cur.execute(query, params)


_INT4 = (-(2**31), 2**31 - 1)
_INT8 = (-(2**63), 2**63 - 1)


@functools.lru_cache(maxsize=64)
def _applied_query(schema: str, joined: bool) -> sql.Composed:
    if joined:
        ints = "string_to_array(%s, ',', 'N')::{}[]"
        source = ", ".join(
            [_JOINED] + [ints.format(t) for t in ("bigint", "int", *["bigint"] * 3)]
        )
    else:
        source = (
            "%b::text[], %b::bigint[], %b::int[], %b::bigint[], %b::bigint[],"
            " %b::bigint[]"
        )
    return sql.SQL(
        "INSERT INTO {}.applied (store_id, epoch, lane, lane_seq, outbox_id,"
        " version) SELECT * FROM unnest(" + source + ")"
    ).format(schema_ident(schema))


def _joined_ints(values: list[int | None], bounds: tuple[int, int]) -> str | None:
    """Integers as one text (``1,N,3``: N is NULL); None when one is out of bounds."""
    present = [v for v in values if v is not None]
    if present and (min(present) < bounds[0] or max(present) > bounds[1]):
        return None
    if len(present) < len(values):
        return ",".join("N" if v is None else str(v) for v in values)
    return ",".join(map(str, present))


def _outbox_id(msg: dict[str, Any]) -> int | None:
    value = msg.get("outbox_id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def park(
    conn: psycopg.Connection[Any],
    schema: str,
    *,
    reason: str,
    raw: bytes,
    topic: str,
    partition: int,
    offset: int,
    store_id: str | None = None,
    lane: int | None = None,
    lane_seq: int | None = None,
) -> None:
    """Keep a message the sink cannot apply, with why and its bytes.

    A NUL in the reason (quoted from a value) is written as ``\\u0000``:
    PostgreSQL would refuse the dead letter itself, and the batch with it.
    """
    reason = reason.replace("\x00", "\\u0000")
    conn.execute(
        sql.SQL(
            "INSERT INTO {}.dead_letters (store_id, lane, lane_seq, topic,"
            " partition, kafka_offset, reason, raw)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        ).format(schema_ident(schema)),
        (store_id, lane, lane_seq, topic, partition, offset, reason[:500], raw),
    )


def _jsonb_or_none(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value, dumps=jsontext.compact)


# -- reads (tests, the demo comparison, the control leg) -------------------


def fetch_rows(
    conn: psycopg.Connection[Any], table: str, store_id: str, *, schema: str = "odh"
) -> dict[str, dict[str, Any]]:
    """pk -> data of the store's rows that are not deleted."""
    rows = conn.execute(
        sql.SQL("SELECT pk, data FROM {} WHERE store_id = %s AND NOT deleted").format(
            table_ident(schema, table)
        ),
        (store_id,),
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def fetch_watermarks(
    conn: psycopg.Connection[Any], *, schema: str = "odh"
) -> dict[tuple[str, int, int], int]:
    """(store, epoch, lane) -> watermark."""
    rows = conn.execute(
        sql.SQL("SELECT store_id, epoch, lane, upto FROM {}.watermarks").format(
            schema_ident(schema)
        )
    ).fetchall()
    return {(r[0], r[1], r[2]): r[3] for r in rows}


def applied_count(
    conn: psycopg.Connection[Any], store_id: str, *, schema: str = "odh"
) -> int:
    """How many messages of the store were applied."""
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {}.applied WHERE store_id = %s").format(
            schema_ident(schema)
        ),
        (store_id,),
    ).fetchone()
    return int(row[0]) if row else 0


def fetch_dead_letters(
    conn: psycopg.Connection[Any], *, schema: str = "odh"
) -> list[dict[str, Any]]:
    """Every parked message, oldest first."""
    cur = conn.execute(
        sql.SQL(
            "SELECT id, store_id, lane, lane_seq, topic, partition, kafka_offset,"
            " reason, raw FROM {}.dead_letters ORDER BY id"
        ).format(schema_ident(schema))
    )
    names = [d.name for d in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
