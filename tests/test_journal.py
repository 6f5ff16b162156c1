"""Unit tests of appliance.journal: the query text and the receiver chain walk."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

import pytest

from appliance import journal, journalrows
from appliance.journal import Bookmark, Gap, Move, Read, Receiver, Wait

T0 = "2026-12-04T08:00:00.000000"


def rcv(
    name: str,
    first: int | None,
    last: int | None,
    *,
    status: str = "ONLINE",
    prev: str | None = None,
    nxt: str | None = None,
    attach: str | None = None,
) -> Receiver:
    return Receiver(
        library="MAG",
        name=name,
        status=status,
        attach_ts=attach
        if attach is not None
        else f"2026-12-0{name[-1]}T08:00:00.000000",
        detach_ts=None if status == "ATTACHED" else T0,
        first_seq=first,
        last_seq=last,
        previous=("MAG", prev) if prev else None,
        next=("MAG", nxt) if nxt else None,
    )


def chain_with_reset() -> list[Receiver]:
    """R1 1..500, R2 (*RESET) 1..300, R3 (IPL) 1..40 attached."""
    return [
        rcv("QSQJRN0001", 1, 500, nxt="QSQJRN0002"),
        rcv("QSQJRN0002", 1, 300, prev="QSQJRN0001", nxt="QSQJRN0003"),
        rcv("QSQJRN0003", 1, 40, status="ATTACHED", prev="QSQJRN0002"),
    ]


def mark(r: Receiver, seq: int, processed: bool = True) -> Bookmark:
    return Bookmark(
        r.library,
        r.name,
        seq,
        processed,
        attach_ts=r.attach_ts or "",
        first_sequence=r.first_seq or 0,
    )


# -- SQL ----------------------------------------------------------------------


def test_sql_differs_between_dialects_only_in_from_clause_and_user_quoting() -> None:
    ibmi = journal.window_sql("ibmi")
    emu = journal.window_sql("emulator")
    assert "FROM TABLE(QSYS2.DISPLAY_JOURNAL(" in ibmi
    assert ")) AS J ORDER BY J.SEQUENCE_NUMBER" in ibmi
    assert "FROM QSYS2.DISPLAY_JOURNAL(" in emu
    assert "TABLE(" not in emu
    assert ") AS J ORDER BY J.SEQUENCE_NUMBER" in emu
    assert 'J."CURRENT_USER"' in ibmi
    assert 'J."current_user"' in emu
    normalised = (
        emu.replace("FROM QSYS2", "FROM TABLE(QSYS2")
        .replace(") AS J", ")) AS J")
        .replace('"current_user"', '"CURRENT_USER"')
    )
    assert normalised == ibmi


@pytest.mark.parametrize("dialect", ["ibmi", "emulator"])
def test_sql_pins_one_receiver_and_a_bounded_window(dialect: journal.Dialect) -> None:
    sql = journal.window_sql(dialect)
    assert sql.count("?") == 8
    assert sql.count("CAST(? AS DECIMAL(21,0))") == 2
    for name in ("STARTING_RECEIVER_NAME", "ENDING_RECEIVER_NAME", "ENDING_SEQUENCE"):
        assert f"{name} => ?" in sql or f"{name} => CAST(?" in sql
    assert "*CURCHAIN" not in sql
    assert "JOURNAL_CODES => 'C,D,F,J,R'" in sql
    assert "OBJECT_NAME" not in sql  # C entries carry no object: filter client-side
    for column in ("ENTRY_DATA", "NULL_VALUE_INDICATORS", "COMMIT_CYCLE", "OBJECT"):
        assert f"J.{column}" in sql


def test_params_name_the_same_receiver_twice_and_pass_sequences_as_decimal() -> None:
    big = 18_446_744_073_709_551_000  # *MAXOPT3 range, beyond a 64-bit integer
    r = rcv("QSQJRN0007", 1, big + 500)
    params = journal.window_params("MAG", "QSQJRN", Read(r, big, big + 99, False))
    assert params == (
        "MAG",
        "QSQJRN",
        "MAG",
        "QSQJRN0007",
        Decimal(big),
        "MAG",
        "QSQJRN0007",
        Decimal(big + 99),
    )


# -- rows ---------------------------------------------------------------------


def test_receiver_row_is_normalised() -> None:
    row = (
        "MAG       ",
        "QSQJRN0002",
        "attached",
        None,
        None,
        Decimal(1),
        Decimal(300),
        "MAG",
        "QSQJRN0001",
        None,
        "",
    )
    r = journal.receiver_from_row(row)
    assert r == Receiver(
        "MAG",
        "QSQJRN0002",
        "ATTACHED",
        None,
        None,
        1,
        300,
        previous=("MAG", "QSQJRN0001"),
        next=None,
    )
    assert r.attached and r.readable


def test_entry_row_follows_the_raw_entries_contract() -> None:
    ts = dt.datetime(2026, 12, 4, 8, 30, 1, 120)
    obj = "PRIX      MAG       PRIX"
    row = (
        ts,
        Decimal(1234),
        "R",
        "UP",
        Decimal(17),
        Decimal(1200),
        obj,
        "*QDDS",
        "1",
        "QPADEV0001",
        "CAISSE    ",
        "123456",
        "CAISSE",
        "PGMPRIX",
        "MAG",
        "QSQJRN0003",
        "0010",
        b"\xc1\xc2",
    )
    entry = journalrows.entry_from_row(row, "MAG/QSQJRN")
    assert entry["sequence"] == 1234 and isinstance(entry["sequence"], int)
    assert entry["entry_ts"] == "2026-12-04T08:30:01.000120"
    assert entry["object"] == obj.ljust(30) and len(entry["object"]) == 30
    assert entry["job"] == "123456/CAISSE/QPADEV0001"
    assert entry["rrn"] == 17 and entry["commit_cycle"] == 1200
    assert entry["null_map"] == b"0010"
    assert entry["data"] == b"\xc1\xc2"
    assert entry["receiver_name"] == "QSQJRN0003"
    assert entry["user_name"] == "CAISSE"


def test_filter_keeps_commit_entries_and_only_configured_tables() -> None:
    def entry(code: str, obj: str) -> dict[str, str]:
        return {"code": code, "object": obj.ljust(30) if obj else ""}

    tables = ["PRIX", "STOCK"]
    assert journalrows.wanted(entry("C", ""), "MAG", tables)
    assert journalrows.wanted(entry("J", ""), "MAG", tables)
    assert journalrows.wanted(entry("R", "PRIX      MAG       PRIX"), "MAG", tables)
    assert journalrows.wanted(entry("D", "STOCK     MAG       STOCK"), "MAG", tables)
    assert not journalrows.wanted(
        entry("R", "CLIENT    MAG       CLIENT"), "MAG", tables
    )
    assert not journalrows.wanted(entry("R", "PRIX      AUTRE     PRIX"), "MAG", tables)
    assert not journalrows.wanted(
        entry("F", "VENTE     MAG       VENTE"), "MAG", tables
    )


# -- chain and plan -----------------------------------------------------------


def test_first_start_enters_oldest_readable_receiver_of_the_attached_chain() -> None:
    receivers = [
        rcv("QSQJRN0001", 1, 100, status="FREED", nxt="QSQJRN0002"),
        rcv("QSQJRN0002", 101, 200, prev="QSQJRN0001", nxt="QSQJRN0003"),
        rcv("QSQJRN0003", 1, 50, status="ATTACHED", prev="QSQJRN0002"),
        rcv("QSQJRN0009", 1, 10, status="ONLINE"),  # another, broken-off chain
    ]
    action = journal.plan(None, receivers, 1000)
    assert isinstance(action, Move)
    assert action.target.name == "QSQJRN0002" and action.source is None
    entered = journal.entered(action, None)
    assert (entered.sequence, entered.processed) == (101, False)
    assert entered.first_sequence == 101


def test_window_is_bounded_by_size_and_receiver_end() -> None:
    r1, _, r3 = chain_with_reset()
    action = journal.plan(mark(r1, 100), chain_with_reset(), 150)
    assert action == Read(r1, 101, 250, at_head=False)
    action = journal.plan(mark(r1, 450), chain_with_reset(), 150)
    assert action == Read(r1, 451, 500, at_head=False)
    action = journal.plan(mark(r3, 10), chain_with_reset(), 1000)
    assert action == Read(r3, 11, 40, at_head=True)


def test_finished_receiver_moves_to_successor_that_restarts_at_one() -> None:
    r1, r2, _ = chain_with_reset()
    action = journal.plan(mark(r1, 500), chain_with_reset(), 1000)
    assert isinstance(action, Move)
    assert action.target == r2 and action.source == r1
    entered = journal.entered(action, mark(r1, 500))
    assert entered.key == ("MAG", "QSQJRN0002")
    assert (entered.sequence, entered.processed) == (1, False)
    assert journal.plan(entered, chain_with_reset(), 1000) == Read(r2, 1, 300, False)


def test_attached_receiver_at_head_waits_and_never_inverts_the_range() -> None:
    *_, r3 = chain_with_reset()
    assert isinstance(journal.plan(mark(r3, 40), chain_with_reset(), 100), Wait)
    # Head read lags the bookmark (Popsink #79): wait, do not rewind.
    stale = journal.plan(mark(r3, 45), chain_with_reset(), 100)
    assert stale == Wait("head behind bookmark")


def test_idle_journal_with_empty_window_picks_up_the_next_entry() -> None:
    """DBZ-8131: an idle journal, then one PT."""
    head = rcv("QSQJRN0001", 1, 1, status="ATTACHED")
    bookmark = mark(head, 1, processed=False)
    read = journal.plan(bookmark, [head], 100)
    assert read == Read(head, 1, 1, at_head=True)
    bookmark = journal.after_window(bookmark, read, 1, T0)
    assert isinstance(journal.plan(bookmark, [head], 100), Wait)
    grown = rcv("QSQJRN0001", 1, 2, status="ATTACHED")
    assert journal.plan(bookmark, [grown], 100) == Read(grown, 2, 2, True)


def test_missing_bookmarked_receiver_is_a_gap() -> None:
    _, r2, r3 = chain_with_reset()
    action = journal.plan(mark(chain_with_reset()[0], 77), [r2, r3], 1000)
    assert isinstance(action, Gap)
    assert action.receiver == "MAG/QSQJRN0001"
    assert action.cpf == "CPF9801"


@pytest.mark.parametrize(
    ("first", "attach"),
    [(5, "2026-12-01T08:00:00.000000"), (1, "2026-12-09T09:00:00.000000")],
)
def test_recreated_receiver_is_a_gap(first: int, attach: str) -> None:
    r1 = chain_with_reset()[0]
    bookmark = mark(r1, 77)
    again = rcv("QSQJRN0001", first, 500, nxt="QSQJRN0002", attach=attach)
    action = journal.plan(bookmark, [again, *chain_with_reset()[1:]], 1000)
    assert isinstance(action, Gap)
    assert "re-created" in action.reason
    assert action.cpf is None


def test_deleted_unread_successor_is_a_gap_not_a_skip() -> None:
    r1, _, r3 = chain_with_reset()
    assert isinstance(journal.plan(mark(r1, 500), [r1, r3], 1000), Gap)
    # Even if the chain were re-linked around the hole, the back link betrays it.
    relinked = rcv("QSQJRN0001", 1, 500, nxt="QSQJRN0003")
    action = journal.plan(mark(relinked, 500), [relinked, r3], 1000)
    assert isinstance(action, Gap)
    assert action.receiver == "MAG/QSQJRN0002"


def test_freed_receiver_with_unread_entries_is_a_gap() -> None:
    freed = rcv("QSQJRN0001", 1, 500, status="FREED", nxt="QSQJRN0002")
    action = journal.plan(mark(freed, 77), [freed, *chain_with_reset()[1:]], 1000)
    assert isinstance(action, Gap)


def test_null_attach_timestamp_after_chgjrn_waits() -> None:
    """jhc PR #55: a new receiver shows a NULL attach time for one poll."""
    r1, r2, _ = chain_with_reset()
    new = rcv("QSQJRN0003", 1, 1, status="ATTACHED", prev="QSQJRN0002", attach="")
    new = Receiver(**{**new.__dict__, "attach_ts": None})
    assert isinstance(journal.plan(mark(r2, 300), [r1, r2, new], 1000), Wait)
    assert isinstance(journal.plan(mark(new, 1, False), [r1, r2, new], 1000), Wait)


def test_after_window_behind_head_takes_window_end_even_when_empty() -> None:
    r1 = chain_with_reset()[0]
    before = mark(r1, 100)
    read = Read(r1, 101, 200, at_head=False)
    assert journal.after_window(before, read, None, "").sequence == 200
    assert journal.after_window(before, read, 150, T0).entry_ts == T0


def test_after_window_at_head_takes_only_what_was_returned() -> None:
    r3 = chain_with_reset()[2]
    before = mark(r3, 10)
    read = Read(r3, 11, 40, at_head=True)
    assert journal.after_window(before, read, 33, T0).sequence == 33
    assert journal.after_window(before, read, None, "") == before


def _simulate(
    receivers: list[Receiver],
    visible: dict[str, list[int]],
    window: int,
    bookmark: Bookmark | None = None,
) -> tuple[journal.Action, list[tuple[str, int]]]:
    """Mine a synthetic journal with plan/after_window; return what was read."""
    got: list[tuple[str, int]] = []
    for _ in range(10_000):
        action = journal.plan(bookmark, receivers, window)
        if isinstance(action, Move):
            bookmark = journal.entered(action, bookmark)
            continue
        if not isinstance(action, Read):
            return action, got
        assert bookmark is not None and action.start == bookmark.next_sequence
        assert action.start <= action.end
        seqs = [
            s for s in visible[action.receiver.name] if action.start <= s <= action.end
        ]
        got += [(action.receiver.name, s) for s in seqs]
        bookmark = journal.after_window(
            bookmark, action, seqs[-1] if seqs else None, T0
        )
    raise AssertionError("mining did not settle")


@pytest.mark.parametrize("window", [1, 7, 100, 1000])
def test_walk_across_resets_reads_every_entry_once_in_order(window: int) -> None:
    rng = random.Random(window)
    receivers = chain_with_reset()
    # Hidden internal entries leave gaps; a run of 250 hidden numbers in R1.
    visible = {
        r.name: [
            s
            for s in range(r.first_seq or 1, (r.last_seq or 0) + 1)
            if rng.random() < 0.9 and not 200 <= s < 450
        ]
        for r in receivers
    }
    end, got = _simulate(receivers, visible, window)
    expected = [(name, s) for name, seqs in visible.items() for s in seqs]
    assert got == expected
    assert end == Wait("at the head")


def test_walk_stops_at_a_deleted_receiver_without_reading_past_it() -> None:
    r1, _, r3 = chain_with_reset()
    visible = {"QSQJRN0001": list(range(1, 501)), "QSQJRN0003": list(range(1, 41))}
    end, got = _simulate([r1, r3], visible, 64, mark(r1, 1, processed=False))
    assert isinstance(end, Gap)
    assert end.receiver == "MAG/QSQJRN0002"
    assert got == [("QSQJRN0001", s) for s in range(1, 501)]


# -- head and lag -------------------------------------------------------------


def test_lag_across_a_reset_is_the_old_rest_plus_the_new_receivers() -> None:
    """(0001, 400): 100 left in 0001, 300 in 0002 (*RESET), 40 in 0003."""
    chain = chain_with_reset()
    assert journal.lag_entries(mark(chain[0], 400), chain) == 100 + 300 + 40
    assert journal.lag_entries(mark(chain[2], 40), chain) == 0
    entering = mark(chain[1], 1, processed=False)
    assert journal.lag_entries(entering, chain) == 300 + 40


def test_lag_is_unknown_when_the_chain_is_broken_or_no_bookmark() -> None:
    chain = chain_with_reset()
    assert journal.lag_entries(None, chain) is None
    broken = [chain[0], chain[2]]
    assert journal.lag_entries(mark(chain[0], 400), broken) is None


def test_head_read_is_one_entry_of_the_attached_receiver() -> None:
    read = journal.head_read(chain_with_reset())
    assert read is not None
    assert (read.receiver.name, read.start, read.end) == ("QSQJRN0003", 40, 40)
    assert journal.head_read([rcv("QSQJRN0001", 1, 5)]) is None


def test_utc_seconds_uses_the_store_zone() -> None:
    zone = dt.timezone(dt.timedelta(hours=-4))  # Martinique, no DST
    local = "2026-12-04T08:00:00.000000"
    expected = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC).timestamp()
    assert journal.utc_seconds(local, zone) == expected
    assert journal.utc_seconds("", zone) is None
