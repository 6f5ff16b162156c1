"""Realistic retail activity for the emulated store (ARTICLE, PRIX, STOCK).

``seed_store`` creates the three tables and loads an initial assortment;
``run`` then writes a stream of changes: price changes and promotions, sales
and deliveries, new articles, description fixes, discontinued articles
(deleted with their price and stock rows), in autocommit changes and in
commit cycles, some rolled back, some with a savepoint rollback, some with a
second job writing while a cycle is open.

Deterministic with the seed: the same seed on the same starting data gives
the same operations in the same order (timestamps and hidden sequence gaps
aside, which come from the clock and the emulator's own seed).

After a run, ``emu.rows(table)`` is what a correct relay must have delivered.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from appliance.emulator.job import Job
from appliance.emulator.journal import Emulator
from appliance.emulator.store_tables import (
    JOBS,
    PRICES,
    PRODUCTS,
    STORE,
    create_store_tables,
    fit,
)
from appliance.errors import SourceError

logger = logging.getLogger(__name__)


@dataclass
class Store:
    """What the workload knows of the store's contents (kept in step)."""

    rng: random.Random
    emu: Emulator
    store: str = STORE
    articles: list[str] = field(default_factory=list)
    next_number: int = 1
    counts: dict[str, int] = field(default_factory=dict)
    # (k, n): this writer owns the articles whose number is k modulo n, so
    # n writers in parallel never touch one another's rows.
    shard: tuple[int, int] = (0, 1)

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    @property
    def changes(self) -> int:
        """Row changes written (rolled-back ones included)."""
        return sum(self.counts.get(k, 0) for k in ("inserts", "updates", "deletes"))

    def load(self) -> None:
        own, of = self.shard
        # Numbers only: the writers reload every few seconds, and decoding
        # every column of a store's assortment each time cost them ~10 %.
        found = self.emu.conn.execute("SELECT artnum FROM mag.article").fetchall()
        everyone = [str(row[0]) for row in found]
        self.articles = sorted(a for a in everyone if _owner(a, of) == own)
        numbers = [int(a) for a in everyone if a.isdigit()]
        first = max(numbers, default=0) + 1
        self.next_number = first + (own - first) % of

    @property
    def jobs(self) -> tuple[str, ...]:
        """The store's jobs; writer k of n > 1 runs its own (number + 10*k)."""
        own, of = self.shard
        if of == 1:
            return JOBS
        return tuple(_other_job(job, 10 * (own + 1)) for job in JOBS)

    def new_number(self) -> str:
        number = f"{self.next_number:06d}"
        self.next_number += self.shard[1]
        return number


def _other_job(job: str, offset: int) -> str:
    number, user, name = job.split("/")
    return f"{int(number) + offset:06d}/{user}/{name}"


def _owner(number: str, of: int) -> int:
    return int(number) % of if number.isdigit() else 0


Change = Callable[[Store, Job], Callable[[], None]]


def new_article(st: Store, job: Job) -> Callable[[], None]:
    number = st.new_number()
    name, family, unit = st.rng.choice(PRODUCTS)
    today = st.emu.now()
    job.insert(
        "ARTICLE",
        {
            "ARTNUM": number,
            "EAN": f"{3_000_000_000_000 + st.rng.randrange(10**12):013d}",
            "LIBELLE": fit(name, 1147),
            "FAMILLE": fit(family, 297),
            "UNITE": unit,
            "RAYON": st.rng.randrange(1, 40),
            "POIDS": None
            if unit != "KG"
            else Decimal(st.rng.randrange(50, 5000)) / 1000,
            "CREE_LE": today.date(),
        },
    )
    job.insert(
        "PRIX",
        {
            "ARTNUM": number,
            "PRIX": st.rng.choice(PRICES),
            "HEURE_MAJ": today.time().replace(microsecond=0),
            "MAJ_LE": today,
        },
    )
    job.insert(
        "STOCK",
        {
            "ARTNUM": number,
            "MAGASIN": st.store,
            "QUANTITE": Decimal(st.rng.randrange(0, 200_000)) / 1000,
            "SEUIL": st.rng.randrange(5, 50),
            "MOUVEMENTS": 0,
            "DERN_MVT": today,
        },
    )
    st.articles.append(number)
    st.count("inserts", 3)
    return lambda: st.articles.remove(number)


def price_change(st: Store, job: Job) -> Callable[[], None]:
    now = st.emu.now()
    job.update(
        "PRIX",
        {"ARTNUM": st.rng.choice(st.articles)},
        {
            "PRIX": st.rng.choice(PRICES),
            "HEURE_MAJ": now.time().replace(microsecond=0),
            "MAJ_LE": now,
        },
    )
    st.count("updates")
    return _nothing


def promotion(st: Store, job: Job) -> Callable[[], None]:
    now = st.emu.now()
    start = now.date()
    ends = st.rng.random() < 0.3
    job.update(
        "PRIX",
        {"ARTNUM": st.rng.choice(st.articles)},
        {
            "PRIX_PROMO": None if ends else Decimal(st.rng.randrange(49, 999)) / 100,
            "DEB_PROMO": None if ends else start,
            "FIN_PROMO": None if ends else start + dt.timedelta(days=7),
            "HEURE_MAJ": now.time().replace(microsecond=0),
            "MAJ_LE": now,
        },
    )
    st.count("updates")
    return _nothing


def stock_movement(st: Store, job: Job) -> Callable[[], None]:
    sale = st.rng.random() < 0.75
    quantity = Decimal(st.rng.randrange(1, 6 if sale else 120))
    key = {"ARTNUM": st.rng.choice(st.articles), "MAGASIN": st.store}
    row = _current(st, key)
    job.update(
        "STOCK",
        key,
        {
            "QUANTITE": Decimal(row["QUANTITE"]) + (-quantity if sale else quantity),
            "MOUVEMENTS": row["MOUVEMENTS"] + 1,
            "DERN_MVT": st.emu.now(),
        },
    )
    st.count("updates")
    return _nothing


def description_fix(st: Store, job: Job) -> Callable[[], None]:
    name, _, _ = st.rng.choice(PRODUCTS)
    job.update(
        "ARTICLE",
        {"ARTNUM": st.rng.choice(st.articles)},
        {
            "LIBELLE": fit(name.upper() if st.rng.random() < 0.5 else name, 1147),
        },
    )
    st.count("updates")
    return _nothing


def discontinue(st: Store, job: Job) -> Callable[[], None]:
    if len(st.articles) < 20:
        return new_article(st, job)
    number = st.rng.choice(st.articles)
    job.delete("STOCK", {"ARTNUM": number, "MAGASIN": st.store})
    job.delete("PRIX", {"ARTNUM": number})
    job.delete("ARTICLE", {"ARTNUM": number})
    st.articles.remove(number)
    st.count("deletes", 3)
    return lambda: st.articles.append(number)


CHANGES: tuple[tuple[Change, int], ...] = (
    (price_change, 28),
    (stock_movement, 40),
    (promotion, 10),
    (new_article, 10),
    (description_fix, 7),
    (discontinue, 5),
)


def _nothing() -> None:
    return None


def _current(st: Store, key: dict[str, Any]) -> dict[str, Any]:
    """QUANTITE and MOUVEMENTS of the STOCK row ``key`` (one round trip)."""
    found = st.emu.conn.execute(
        "SELECT quantite, mouvements FROM mag.stock WHERE artnum = %s AND magasin = %s",
        [key["ARTNUM"], key["MAGASIN"]],
    ).fetchone()
    if found is None:
        return {"QUANTITE": 0, "MOUVEMENTS": 0}
    return {"QUANTITE": found[0], "MOUVEMENTS": found[1]}


def _one_change(st: Store, job: Job) -> Callable[[], None]:
    if not st.articles:
        return new_article(st, job)
    changes, weights = zip(*CHANGES, strict=True)
    change: Change = st.rng.choices(changes, weights)[0]
    return change(st, job)


def _cycle(st: Store, size: int, ending: str) -> None:
    """One commit cycle of ``size`` changes ending in commit/rollback/savepoint."""
    undo: list[Callable[[], None]] = []
    first = st.changes
    with st.emu.job(st.rng.choice(st.jobs)) as job:
        point = mark = saved = 0
        for index in range(size):
            if ending == "savepoint" and index == size // 2:
                point, mark, saved = job.savepoint(), len(undo), st.changes
            undo.append(_one_change(st, job))
        if ending == "savepoint":
            job.rollback_to(point)
            for revert in reversed(undo[mark:]):
                revert()
            st.count("savepoint_rollbacks")
            st.count("rolled_back", st.changes - saved)
            if st.rng.random() < 0.5:
                undo.append(_one_change(st, job))
        if ending == "rollback":
            job.rollback()
            for revert in reversed(undo):
                revert()
            st.count("rollbacks")
            st.count("rolled_back", st.changes - first)
        else:
            job.commit()
            st.count("commits")


def _interleaved(st: Store) -> None:
    """A cycle left open while another job writes, then committed."""
    with (
        st.emu.job(st.jobs[0]) as first,
        st.emu.job(st.jobs[1], autocommit=True) as second,
    ):
        _one_change(st, first)
        # New rows only: an existing row may be locked by the open cycle.
        new_article(st, second)
        st.count("autocommit")
        first.commit()
        st.count("commits")


def step(st: Store) -> None:
    """One unit of work: an autocommit change or a whole commit cycle."""
    draw = st.rng.random()
    try:
        if draw < 0.40:
            with st.emu.job(st.rng.choice(st.jobs), autocommit=True) as job:
                _one_change(st, job)
            st.count("autocommit")
        elif draw < 0.85:
            _cycle(st, st.rng.randint(1, 5), "commit")
        elif draw < 0.92:
            _cycle(st, st.rng.randint(1, 5), "rollback")
        elif draw < 0.97:
            _cycle(st, st.rng.randint(2, 6), "savepoint")
        else:
            _interleaved(st)
    except SourceError as exc:
        # A row locked by another job's open cycle is refused, as on IBM i;
        # the implicit rollback undid the cycle, so re-read what exists.
        if exc.cpf != "CPF5027":
            raise
        st.count("refused")
        st.load()


def seed_store(
    emu: Emulator, articles: int = 200, *, seed: int = 0, store: str = STORE
) -> dict[str, int]:
    """Create the tables and load ``articles`` articles with price and stock."""
    create_store_tables(emu)
    rng = random.Random(seed)  # noqa: S311  (test data, not secrets)
    st = Store(rng, emu, store)
    st.load()
    started = time.monotonic()
    while len(st.articles) < articles:
        with emu.job("100000/BATCH/CHARGEMENT") as job:
            for _ in range(min(50, articles - len(st.articles))):
                new_article(st, job)
            job.commit()
    logger.info(
        "store seeded count=%d elapsed_s=%.1f",
        len(st.articles),
        time.monotonic() - started,
    )
    return {"articles": len(st.articles), "inserts": st.counts.get("inserts", 0)}


def run(
    emu: Emulator,
    rate_per_s: float,
    duration_s: float | None = None,
    changes: int | None = None,
    seed: int = 0,
    *,
    store: str = STORE,
    shard: tuple[int, int] = (0, 1),
) -> dict[str, float]:
    """Write activity until ``duration_s`` passed or ``changes`` were made.

    ``rate_per_s`` <= 0 means as fast as possible. ``shard`` (k, n): this
    writer changes only articles numbered k modulo n and numbers its new
    ones so, for n writers side by side (seeding is left to one writer
    beforehand). Returns the counts
    (changes = inserts + updates + deletes, rolled back ones included;
    rolled_back = row changes undone by a rollback or a savepoint rollback;
    commits, rollbacks, savepoint_rollbacks, autocommit, refused) and
    elapsed_s and rate (changes/s).
    """
    if duration_s is None and changes is None:
        raise ValueError("give duration_s or changes, else the run never ends")
    rng = random.Random(seed)  # noqa: S311  (test data, not secrets)
    own, of = shard
    if not 0 <= own < of:
        raise ValueError(f"shard: {own} of {of} is not a writer of the store")
    st = Store(rng, emu, store, shard=shard)
    st.load()
    if not st.articles and of == 1:
        seed_store(emu, 50, seed=seed, store=store)
        st.load()
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        done = st.changes
        if (changes is not None and done >= changes) or (
            duration_s is not None and elapsed >= duration_s
        ):
            break
        if rate_per_s > 0 and done > rate_per_s * elapsed:
            time.sleep(min(0.05, done / rate_per_s - elapsed))
            continue
        step(st)
    elapsed = time.monotonic() - started
    result: dict[str, float] = dict(st.counts)
    result["changes"] = st.changes
    result["elapsed_s"] = round(elapsed, 3)
    result["rate"] = round(st.changes / elapsed, 1) if elapsed else 0.0
    logger.info("workload done count=%d elapsed_s=%.1f", st.changes, elapsed)
    return result
