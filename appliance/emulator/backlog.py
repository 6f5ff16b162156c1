"""A journal backlog written fast: many row changes per PostgreSQL transaction.

:mod:`appliance.emulator.workload` plays the store one change at a time
(a transaction and a round trip or more per change, ~400-600 changes/s
here); a catch-up benchmark of a million changes needs the backlog faster.
:func:`write` makes the same kinds of changes with the workload's weights
(price changes, promotions, stock movements, description fixes, new and
discontinued articles), batch by batch: each batch's statements are sent
grouped by kind (``executemany`` in one pipeline) and its journal entries
go in one ``emu_emit`` call per job.

Invariants:

- a batch (its data rows and their journal entries) is ONE PostgreSQL
  transaction, like a change of :class:`~appliance.emulator.job.Job`;
- every image is encoded from the row PostgreSQL returned, as ``Job`` does,
  so journal, data table and ``TableDef.json_row`` agree;
- an article (its ARTICLE, PRIX and STOCK rows) is changed at most once per
  batch, so grouping a batch's statements by kind never reorders the
  history of a key, and each key's entries follow its data changes;
- every commit cycle is committed (C SC ... C CM) or the change is in
  autocommit (cycle 0): no rollbacks here (the workload writes those), so
  the relay must deliver exactly ``emu.rows(table)``;
- articles are numbered, keyed and stocked as the workload does
  (``MAGASIN`` = the store), so :func:`workload.run` may write after it.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from psycopg import Cursor, sql

from appliance.emulator.job import Entry
from appliance.emulator.journal import Emulator
from appliance.emulator.store_tables import JOBS, PRICES, PRODUCTS, STORE, fit
from appliance.emulator.table import Row, TableDef

logger = logging.getLogger(__name__)

BATCH = 1000
# (kind, weight, row changes): the workload's mix (workload.CHANGES).
KINDS = (
    ("price", 28, 1),
    ("stock", 40, 1),
    ("promotion", 10, 1),
    ("new", 10, 3),
    ("describe", 7, 1),
    ("discontinue", 5, 3),
)
AUTOCOMMIT = 0.40


@dataclass
class _Op:
    """One store change: its kind, article and (after the SQL) its entries."""

    kind: str
    article: str
    params: tuple[Any, ...] = ()
    entries: list[Entry] = field(default_factory=list)


class _Images:
    """Record images by (table, RRN), each encoded once.

    A row's before image is its previous after image: the row PostgreSQL
    returns is compared with the one last encoded for that RRN, and the
    bytes are reused only when it is equal, so an image is always that of
    the row as stored.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, int], tuple[Row, bytes, str]] = {}

    def entry(self, kind: str, tdef: TableDef, row: Row, rrn: int) -> Entry:
        slot = (tdef.name, rrn)
        known = self._last.get(slot)
        if known is not None and known[0] == row:
            data, null_map = known[1], known[2]
        else:
            data, null_map = tdef.image(row)
        if kind == "DL":
            self._last.pop(slot, None)
        else:
            self._last[slot] = (row, data, null_map)
        return Entry("R", kind, tdef.object, rrn, "0", null_map, data)


def _run(
    cur: Cursor[Any], query: sql.Composed, params: list[tuple[Any, ...]]
) -> list[Sequence[Any]]:
    """One statement per parameter set, pipelined; one returned row each."""
    if not params:
        return []
    cur.executemany(query, params, returning=True)
    rows: list[Sequence[Any]] = []
    while True:
        found = cur.fetchone()
        if found is None:
            raise RuntimeError("a backlog statement found no row")
        rows.append(found)
        if not cur.nextset():
            break
    return rows


@dataclass
class _State:
    rng: random.Random
    articles: list[str]
    next_number: int
    step: int = 1
    counts: dict[str, int] = field(default_factory=dict)
    images: _Images = field(default_factory=_Images)

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n


PACE_TICK_S = 0.02
"""A paced backlog writes a batch every 20 ms (50 per second)."""


def write(
    emu: Emulator,
    *,
    changes: int | None = None,
    entries: int | None = None,
    seed: int = 0,
    batch: int = BATCH,
    shard: tuple[int, int] = (0, 1),
    rate_per_s: float = 0.0,
    max_s: float | None = None,
) -> dict[str, float]:
    """Write row changes until ``changes`` were made or ``entries`` journaled.

    The store must be seeded (``workload.seed_store``). ``shard`` (k, n):
    only the articles numbered k modulo n are changed, and new ones are so
    numbered, as :func:`workload.run` does for n writers side by side.
    ``entries`` counts the entries this call journals (C entries included,
    hidden gaps not); the last batches shrink so it overshoots by a few
    entries at most.
    Returns counts (changes, inserts, updates, deletes, entries, commits,
    autocommit), ``elapsed_s`` and ``rate`` (changes/s).

    ``rate_per_s`` > 0 paces it: a batch every ``PACE_TICK_S`` of the
    changes that tick is owed (a steady rate, as a busy store makes it, in
    transactions of 1-5 changes), each batch starting on its tick.
    ``max_s`` stops it after that many seconds (at a batch's end).
    """
    if changes is None and entries is None:
        raise ValueError("give changes or entries, else the backlog never ends")
    own, of = shard
    everyone = sorted(row["ARTNUM"] for row in emu.rows("ARTICLE"))
    if not everyone:
        raise ValueError("seed the store first (workload.seed_store)")
    numbers = [int(a) for a in everyone if a.isdigit()]
    first = max(numbers, default=0) + 1
    mine = [a for a in everyone if (int(a) % of if a.isdigit() else 0) == own]
    rng = random.Random(seed)  # noqa: S311  (test data, not secrets)
    st = _State(rng, mine, first + (own - first) % of, of)
    tables = {name: emu.table(name) for name in ("ARTICLE", "PRIX", "STOCK")}
    started = time.monotonic()
    while True:
        done = _changes(st)
        left = (changes - done) if changes is not None else batch
        if entries is not None:
            left = min(left, (entries - st.counts.get("entries", 0)) // 4)
        if left <= 0:
            break
        if max_s is not None and time.monotonic() - started >= max_s:
            break
        if rate_per_s > 0:
            # Owed by the end of this tick, less what is written already.
            ticks = int((time.monotonic() - started) / PACE_TICK_S) + 1
            owed = int(ticks * PACE_TICK_S * rate_per_s) - done
            if owed <= 0:
                time.sleep(max(0.0, started + ticks * PACE_TICK_S - time.monotonic()))
                continue
            left = min(left, owed)
        _batch(emu, tables, st, min(batch, left))
    elapsed = time.monotonic() - started
    result: dict[str, float] = dict(st.counts)
    result["changes"] = _changes(st)
    result["elapsed_s"] = round(elapsed, 3)
    result["rate"] = round(result["changes"] / elapsed, 1) if elapsed else 0.0
    logger.info("backlog written count=%d elapsed_s=%.1f", result["changes"], elapsed)
    return result


def _changes(st: _State) -> int:
    return sum(st.counts.get(k, 0) for k in ("inserts", "updates", "deletes"))


def _plan(st: _State, size: int) -> list[_Op]:
    """Up to ``size`` row changes, one per article, drawn with the weights."""
    kinds = [k[0] for k in KINDS]
    weights = [k[1] for k in KINDS]
    rows = {k[0]: k[2] for k in KINDS}
    # Distinct articles for the batch, drawn once (no article twice).
    pool = st.rng.sample(st.articles, min(len(st.articles), size))
    ops: list[_Op] = []
    made = 0
    while made < size:
        kind = st.rng.choices(kinds, weights)[0]
        if kind == "discontinue" and len(pool) < 20:
            kind = "new"
        if made + rows[kind] > size:
            kind = "price"
        if kind == "new":
            article = f"{st.next_number:06d}"
            st.next_number += st.step
        elif pool:
            article = pool.pop()
        else:
            break
        ops.append(_Op(kind, article, _params(st, kind, article)))
        made += rows[kind]
    return ops


def _params(st: _State, kind: str, article: str) -> tuple[Any, ...]:
    rng = st.rng
    if kind == "price":
        return (rng.choice(PRICES),)
    if kind == "promotion":
        ends = rng.random() < 0.3
        return (None if ends else Decimal(rng.randrange(49, 999)) / 100, ends)
    if kind == "stock":
        sale = rng.random() < 0.75
        quantity = Decimal(rng.randrange(1, 6 if sale else 120))
        return (-quantity if sale else quantity,)
    if kind == "describe":
        name, _, _ = rng.choice(PRODUCTS)
        return (fit(name.upper() if rng.random() < 0.5 else name, 1147),)
    if kind == "new":
        name, family, unit = rng.choice(PRODUCTS)
        return (
            f"{3_000_000_000_000 + rng.randrange(10**12):013d}",
            fit(name, 1147),
            fit(family, 297),
            unit,
            rng.randrange(1, 40),
            None if unit != "KG" else Decimal(rng.randrange(50, 5000)) / 1000,
            rng.choice(PRICES),
            Decimal(rng.randrange(0, 200_000)) / 1000,
            rng.randrange(5, 50),
        )
    return ()


def _batch(emu: Emulator, tables: dict[str, TableDef], st: _State, size: int) -> None:
    ops = _plan(st, size)
    now = emu.now()
    with emu.transaction() as cur:
        new = [o for o in ops if o.kind == "new"]
        _inserts(cur, tables, st.images, new, now)
        _updates(cur, tables, st.images, ops, now)
        gone = [o for o in ops if o.kind == "discontinue"]
        _deletes(cur, tables, st.images, gone)
        _journal(emu, cur, st, ops)
    for op in ops:
        if op.kind == "new":
            st.articles.append(op.article)
            st.count("inserts", 3)
        elif op.kind == "discontinue":
            st.articles.remove(op.article)
            st.count("deletes", 3)
        else:
            st.count("updates")


def _columns(tdef: TableDef, alias: str = "") -> sql.Composable:
    prefix = sql.SQL(f"{alias}." if alias else "")
    names = [sql.Identifier(c.pg_name) for c in tdef.columns]
    return sql.SQL(", ").join([prefix + n for n in names] + [prefix + sql.SQL("_rrn")])


def _row(tdef: TableDef, values: Sequence[Any]) -> tuple[Row, int]:
    width = len(tdef.columns)
    row = {c.name: v for c, v in zip(tdef.columns, values[:width], strict=True)}
    return row, int(values[width])


def _inserts(
    cur: Cursor[Any],
    tables: dict[str, TableDef],
    images: _Images,
    ops: list[_Op],
    now: dt.datetime,
) -> None:
    values: dict[str, list[tuple[Any, ...]]] = {"ARTICLE": [], "PRIX": [], "STOCK": []}
    for op in ops:
        ean, label, family, unit, shelf, weight, price, quantity, floor = op.params
        values["ARTICLE"].append(
            (op.article, ean, label, family, unit, shelf, weight, now.date())
        )
        values["PRIX"].append(
            (
                op.article,
                price,
                None,
                None,
                None,
                now.time().replace(microsecond=0),
                now,
            )
        )
        values["STOCK"].append((op.article, STORE, quantity, floor, 0, now))
    for name, rows in values.items():
        tdef = tables[name]
        query = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING {}").format(
            tdef.ident,
            sql.SQL(", ").join(sql.Identifier(c.pg_name) for c in tdef.columns),
            sql.SQL(", ").join(sql.Placeholder() * len(tdef.columns)),
            _columns(tdef),
        )
        for op, found in zip(ops, _run(cur, query, rows), strict=True):
            row, rrn = _row(tdef, found)
            op.entries.append(images.entry("PT", tdef, row, rrn))


# kind -> (table, SET clause over the old row "o", parameters before the key)
_UPDATES = {
    "price": ("PRIX", "prix = %s, heure_maj = %s, maj_le = %s"),
    "promotion": (
        "PRIX",
        "prix_promo = %s, deb_promo = %s, fin_promo = %s, heure_maj = %s, maj_le = %s",
    ),
    "stock": (
        "STOCK",
        "quantite = o.quantite + %s, mouvements = o.mouvements + 1, dern_mvt = %s",
    ),
    "describe": ("ARTICLE", "libelle = %s"),
}


def _update_params(op: _Op, now: dt.datetime) -> tuple[Any, ...]:
    hour = now.time().replace(microsecond=0)
    if op.kind == "price":
        return (op.params[0], hour, now, op.article)
    if op.kind == "promotion":
        promo, ends = op.params
        start = now.date()
        end = None if ends else start + dt.timedelta(days=7)
        return (promo, None if ends else start, end, hour, now, op.article)
    if op.kind == "stock":
        return (op.params[0], now, op.article, STORE)
    return (op.params[0], op.article)


def _updates(
    cur: Cursor[Any],
    tables: dict[str, TableDef],
    images: _Images,
    ops: list[_Op],
    now: dt.datetime,
) -> None:
    for kind, (name, sets) in _UPDATES.items():
        group = [o for o in ops if o.kind == kind]
        tdef = tables[name]
        where = " AND ".join(f"{k.lower()} = %s" for k in tdef.key)
        query = sql.SQL(
            "UPDATE {t} AS n SET "
            + sets
            + " FROM (SELECT * FROM {t} WHERE "
            + where
            + " FOR UPDATE) AS o WHERE n._rrn = o._rrn RETURNING {o}, {n}"
        ).format(t=tdef.ident, o=_columns(tdef, "o"), n=_columns(tdef, "n"))
        params = [_update_params(o, now) for o in group]
        width = len(tdef.columns) + 1
        for op, found in zip(group, _run(cur, query, params), strict=True):
            before, rrn = _row(tdef, found[:width])
            after, _ = _row(tdef, found[width:])
            op.entries += [
                images.entry("UB", tdef, before, rrn),
                images.entry("UP", tdef, after, rrn),
            ]


def _deletes(
    cur: Cursor[Any], tables: dict[str, TableDef], images: _Images, ops: list[_Op]
) -> None:
    for name in ("STOCK", "PRIX", "ARTICLE"):
        tdef = tables[name]
        where = " AND ".join(f"{k.lower()} = %s" for k in tdef.key)
        query = sql.SQL("DELETE FROM {} WHERE " + where + " RETURNING {}").format(
            tdef.ident, _columns(tdef)
        )
        params = [(o.article, STORE) if name == "STOCK" else (o.article,) for o in ops]
        for op, found in zip(ops, _run(cur, query, params), strict=True):
            row, rrn = _row(tdef, found)
            op.entries.append(images.entry("DL", tdef, row, rrn))


def _journal(emu: Emulator, cur: Cursor[Any], st: _State, ops: list[_Op]) -> None:
    """The batch's entries: per job, autocommit changes first, then cycles."""
    plain: dict[str, list[Entry]] = {job: [] for job in JOBS}
    cycles: dict[str, list[Entry]] = {job: [] for job in JOBS}
    index = 0
    while index < len(ops):
        job = st.rng.choice(JOBS)
        if st.rng.random() < AUTOCOMMIT:
            plain[job] += ops[index].entries
            index += 1
            st.count("autocommit")
            continue
        size = st.rng.randint(1, 5)
        cycles[job].append(Entry("C", "SC"))
        for op in ops[index : index + size]:
            cycles[job] += op.entries
        cycles[job].append(Entry("C", "CM"))
        index += size
        st.count("commits")
    for job in JOBS:
        if plain[job]:
            emu.emit(cur, job, 0, plain[job])
        if cycles[job]:
            emu.emit(cur, job, None, cycles[job])
        st.count("entries", len(plain[job]) + len(cycles[job]))
