"""The emulator's DISPLAY_JOURNAL stays cheap on big receivers (issue 9).

Its generic plan's estimated cost grows with the receiver; past
``jit_above_cost`` PostgreSQL compiled the window query with JIT at every
call (20-25 ms for a query of about 1 ms on a 2.3-million-entry receiver).
The function turns JIT off for itself; here JIT is forced for everything in
the session (``jit_above_cost = 0``) and the window query must still run
without it.
"""

from __future__ import annotations

import psycopg

from appliance.emulator import Emulator, workload

WINDOW = (
    "SELECT count(*) FROM qsys2.display_journal(journal_library => 'MAG',"
    " journal_name => 'QSQJRN', starting_receiver_library => 'MAG',"
    " starting_receiver_name => 'QSQJRN0001', starting_sequence => 1::numeric,"
    " journal_codes => 'C,D,F,J,R', ending_receiver_library => 'MAG',"
    " ending_receiver_name => 'QSQJRN0001', ending_sequence => 2000::numeric)"
)


def test_window_query_never_compiles_with_jit(emu: Emulator) -> None:
    workload.seed_store(emu, articles=20, seed=3)
    with psycopg.connect(emu.conninfo, autocommit=True) as conn:
        config = conn.execute(
            "SELECT proconfig FROM pg_proc WHERE proname = 'display_journal'"
        ).fetchone()
        assert config is not None
        assert "jit=off" in config[0]
        assert "plan_cache_mode=force_generic_plan" in config[0]

        plans: list[str] = []
        conn.add_notice_handler(lambda d: plans.append(d.message_primary or ""))
        for statement in (
            "LOAD 'auto_explain'",
            "SET auto_explain.log_min_duration = 0",
            "SET auto_explain.log_nested_statements = on",
            "SET client_min_messages = log",
            "SET jit = on",
            "SET jit_above_cost = 0",
        ):
            conn.execute(statement)
        row = conn.execute(WINDOW).fetchone()
        assert row is not None and row[0] > 20
        window_plans = [p for p in plans if "FROM unnest(ids)" in p]
        assert len(window_plans) >= 2  # the start query and the window query
        assert not [p for p in window_plans if "JIT:" in p]

        # The same session compiles a query of its own when JIT exists here,
        # so the check above could have seen it.
        available = conn.execute("SELECT pg_jit_available()").fetchone()
        plans.clear()
        conn.execute("SELECT count(*) FROM qsys2.emu_entry WHERE NOT hidden")
        assert any("JIT:" in p for p in plans) == bool(available and available[0])
