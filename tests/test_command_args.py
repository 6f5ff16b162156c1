"""Command arguments are checked before a leg ever sees them."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import cli, commands, store


@pytest.mark.parametrize(
    "name",
    [
        "\uff30\uff32\uff29\uff38",
        "stra\u00dfe",
        "PRIX; DROP",
        "1PRIX",
        "P" * 31,
        "PR\u0130X",
        "",
    ],
)
def test_resend_refuses_what_is_not_an_ibm_i_system_name(name: str) -> None:
    """Full-width and other non-ASCII look-alikes are refused, not upper-cased."""
    with pytest.raises(commands.CommandError, match="is not a table name"):
        commands.resend_args({"table": name})


def test_resend_takes_system_names_in_any_case() -> None:
    """Lower case is the same name; #, @, $ and _ are valid IBM i characters."""
    assert commands.resend_args({"table": "prix"}) == {"table": "PRIX"}
    assert commands.resend_args({"table": "$ST_K#1@"}) == {"table": "$ST_K#1@"}


def test_a_pending_twin_is_not_queued_again(tmp_path: Path) -> None:
    """Two requests of the same command from two connections queue one row."""
    path = tmp_path / "pipeline.db"
    first, second = store.connect(path), store.connect(path)
    commands.ensure_schema(first)
    args = {"table": "PRIX"}
    a = commands.request_once(first, "control", "load", args, "tech")
    b = commands.request_once(second, "control", "load", args, "tech")
    assert a == (a[0], True) and b == (a[0], False)
    count = first.execute("SELECT count(*) FROM commands").fetchone()[0]
    audits = first.execute("SELECT count(*) FROM audit").fetchone()[0]
    assert (count, audits) == (1, 1)
    # Once taken, the same command can be asked again.
    assert [c.id for c in commands.take(first, "control")] == [a[0]]
    assert commands.request_once(second, "control", "load", args, "tech")[1]


def test_a_busy_database_delays_commands_instead_of_killing_the_leg(
    tmp_path: Path,
) -> None:
    """Another leg holding the write lock past the busy timeout: poll again later."""

    class Leg:
        name = "control"

        def handle_command(self, kind: str, args: dict[str, object]) -> str:
            return f"{kind} done"

    path = tmp_path / "pipeline.db"
    other = store.connect(path)
    mine = store.connect(path, timeout_s=0.2)
    commands.ensure_schema(other)
    command_id = commands.request(other, "control", "check", {}, "tech")
    clock = [0.0]
    runner = commands.Runner(mine, Leg(), "control", clock=lambda: clock[0])
    other.execute("BEGIN IMMEDIATE")
    clock[0] += 1
    assert runner.run_pending() == 0
    other.execute("COMMIT")
    clock[0] += 1
    assert runner.run_pending() == 1
    row = other.execute(
        "SELECT state, result FROM commands WHERE id = ?", (command_id,)
    )
    assert tuple(row.fetchone()) == ("done", "check done")


def test_a_guardian_dead_letter_is_discarded_by_its_own_leg_only(
    tmp_path: Path,
) -> None:
    """Newcomer run: control letters could not be cleared from the page."""

    class Leg:
        name = "control"

    conn = store.connect(tmp_path / "pipeline.db")
    commands.ensure_schema(conn)
    with store.transaction(conn):
        store.park(conn, stage="control", reason="bad guardian request")
    letter = conn.execute("SELECT max(id) FROM dead_letters").fetchone()[0]
    clock = [0.0]
    for leg in ("transformer", "control"):
        commands.request(conn, leg, "discard_dead_letter", {"id": letter}, "tech")
        clock[0] += 1
        commands.Runner(conn, Leg(), leg, clock=lambda: clock[0]).run_pending()
    rows = conn.execute(
        "SELECT leg, state, result FROM commands ORDER BY id"
    ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [
        ("transformer", "failed"),
        ("control", "done"),
    ]
    assert "is of stage 'control'" in rows[0][2]
    state = conn.execute("SELECT state FROM dead_letters WHERE id = ?", (letter,))
    assert state.fetchone()[0] == "discarded"


def test_a_skip_past_64_bits_names_its_argument() -> None:
    huge = "9" * 30
    with pytest.raises(commands.CommandError) as refused:
        commands.skip_entry_args({"receiver": "MAG/QSQJRN0001", "sequence": huge})
    assert (
        str(refused.value) == "argument sequence: expected an integer that fits 64 bits"
    )


def test_the_cli_names_a_sequence_that_is_not_whole(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(["skip-entry", "--receiver", "MAG/QSQJRN0001", "--sequence", "1e3"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "argument --sequence: expected a whole number >= 1 (got 1e3)" in err
