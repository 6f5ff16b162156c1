"""The relay bench's table: each figure beside its target and raw limit.

:mod:`appliance.benchrelay` measures; this module turns its findings into
rows (:func:`table`) and prints them (:func:`show`), with the notes under the
table that say which raw limit each row is set against.

The end-to-end rows (catch-up, sustained) are set against the chain's limit
(:func:`chain_limit`): every raw part runs on the same cores at once, so what the
machine allows the whole chain is its cores divided by the sum of the CPU
each part spends per change, not the rate of the slowest part alone.
"""

from __future__ import annotations

from typing import Any

from appliance.benchprocs import cores as machine_cores

TARGETS = {
    "sustained": 50_000.0,
    "catch_up": 1_000_000 / 60,
    "p99_polling_ms": 1500.0,
    "p99_waiting_ms": 300.0,
    "rss_mb": 400.0,
    "outbox_bytes": 600.0,
    "ibmi_entries_per_s": 15_000.0,
}
# Journal entries the relay reads per change when the run does not say
# (before images, commit boundaries: 2.07-2.08 in the runs of 2026-12-05).
ENTRIES_PER_CHANGE = 2.07
CHAIN_PARTS = (
    "SQLite insert",
    "Kafka produce",
    "Kafka consume",
    "PostgreSQL upsert",
    "decode",
    "journal read",
)


def chain_limit(found: dict[str, Any]) -> dict[str, Any] | None:
    """Machine CPU per change of each raw part, their sum, the chain's rate.

    SQLite, Kafka and PostgreSQL count once per change (one row, message,
    upsert), the decoder once per record image of a change, the ODBC read
    once per journal entry of a change (the catch-up's entries / changes).
    ``changes_per_s`` is the cores' microseconds per second over the sum:
    every part busy on every core, nothing waiting. None when the run
    measured no CPU (older findings).
    """
    raw, decode = found["raw"], found["decode"]
    cpu = raw.get("cpu_us_per_row")
    read = found.get("ibmi", {}).get("raw", {}).get("cpu_us_per_entry")
    if not cpu or read is None or "cpu_us_per_record" not in decode:
        return None
    catch = found.get("catch_up") or {}
    if catch.get("changes") and catch.get("journal_entries"):
        entries, whence = catch["journal_entries"] / catch["changes"], "catch-up"
    else:
        entries, whence = ENTRIES_PER_CHANGE, "default"
    us = dict(
        zip(
            CHAIN_PARTS,
            (
                cpu["sqlite"]["total"],
                cpu["kafka_produce"]["total"],
                cpu["kafka_consume"]["total"],
                cpu["pg_upsert"]["total"],
                decode["cpu_us_per_record"] * decode["records_per_change"],
                read["total"] * entries,
            ),
            strict=True,
        )
    )
    total = sum(us.values())
    cores = float(raw.get("cores") or machine_cores())
    return {
        "us_per_change": {k: round(v, 2) for k, v in us.items()},
        "total_us": round(total, 1),
        "entries_per_change": round(entries, 3),
        "entries_from": whence,
        "cores": cores,
        "changes_per_s": round(cores * 1e6 / total) if total else 0,
    }


# -- the table --------------------------------------------------------------


def table(found: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per figure: scenario, figure, unit, target, raw limit."""
    raw, decode = found["raw"], found["decode"]
    parts = {
        "SQLite insert": raw["sqlite_rows_per_s"],
        "Kafka produce": raw["kafka_msgs_per_s"],
        "Kafka consume": raw["kafka_consumed_per_s"],
        "PostgreSQL upsert": raw["pg_upserts_per_s"],
        # records/s over the record images of one change: changes/s
        "decode": round(decode["records_per_s"] / decode["records_per_change"]),
    }
    slowest = min(parts, key=lambda k: parts[k])
    limit = chain_limit(found)
    if limit:
        flow = (
            limit["changes_per_s"],
            f"the chain of raw parts on {limit['cores']:g} cores, every part busy"
            f" (slowest part alone: {slowest}, {parts[slowest]:,.0f}/s)",
        )
    else:
        flow = (parts[slowest], f"slowest part: {slowest}")
    chain = (raw["chain_p99_ms"], "one message through SQLite, Kafka, PostgreSQL")
    catch, sus, out = found["catch_up"], found["sustained"], found["outbox"]
    fast, ibmi = found["sustained_fast"], found["ibmi"]
    odbc = (ibmi["raw"]["entries_per_s"], "same windows read through ODBC")
    bare = (out["bare_bytes_per_row"], "same payloads, bare SQLite table")
    at_least, at_most = ">=", "<="
    rows = [
        _row("catch-up, start-up included", catch["changes_per_s"], "changes/s",
             (at_least, TARGETS["catch_up"]), flow),
        _row("catch-up, first to last confirmation", catch["confirmed_per_s"],
             "changes/s", (at_least, TARGETS["catch_up"]), flow),
        *_cpu_rows(catch, limit),
        _row("sustained, relay confirmed", sus["relay_per_s"], "changes/s",
             (at_least, TARGETS["sustained"]), flow),
        _row("sustained, store writers", sus["writers"]["rate"], "changes/s"),
        _row("sustained, fast source, relay", fast["relay_per_s"], "changes/s",
             (at_least, TARGETS["sustained"]), flow),
        _row("sustained, fast source, written", fast["source_rate"], "changes/s"),
        _latency_row("latency p99, polling read", found["polling"],
                     TARGETS["p99_polling_ms"], chain),
        _latency_row("latency p99, waiting read", found["waiting"],
                     TARGETS["p99_waiting_ms"], chain),
        _row("memory, all legs peak RSS", catch["rss_peak_mb"], "MB",
             (at_most, TARGETS["rss_mb"])),
        _row("memory, all legs peak PSS", catch.get("pss_peak_mb"), "MB"),
        _row("outbox bytes per pending message", out["bytes_per_pending"], "B",
             (at_most, TARGETS["outbox_bytes"]), bare),
        _row("outbox table alone, per message",
             out["outbox_table_bytes_per_pending"] or 0.0, "B",
             (at_most, TARGETS["outbox_bytes"]), bare),
        _row("IBM i: miner entries/s at 50 ms/call", ibmi["entries_per_s"],
             "entries/s", (at_least, TARGETS["ibmi_entries_per_s"]), odbc),
        _row("IBM i: round trips/s", ibmi["round_trips_per_s"], "calls/s"),
        _row("IBM i: rows per round trip", ibmi["rows_per_round_trip"], "rows"),
    ]  # fmt: skip
    for label, value, unit in (
        ("SQLite insert, fsync per 500", raw["sqlite_rows_per_s"], "rows/s"),
        ("Kafka produce, acks=all", raw["kafka_msgs_per_s"], "msgs/s"),
        ("Kafka consume", raw["kafka_consumed_per_s"], "msgs/s"),
        ("PostgreSQL upsert, 500/commit", raw["pg_upserts_per_s"], "rows/s"),
        ("decode, one process", decode["records_per_s"], "records/s"),
    ):
        rows.append(_row(f"raw: {label}", value, unit))
    _part_notes(rows, found)
    rows += _chain_rows(limit)
    rows.append(_row("raw: one message through all, p99", raw["chain_p99_ms"], "ms"))
    return rows


def _part_notes(rows: list[dict[str, Any]], found: dict[str, Any]) -> None:
    """Each raw part's row says its CPU per row, by process (no new rows)."""
    cpu = found["raw"].get("cpu_us_per_row")
    decode = found["decode"]
    if not cpu:
        return
    by_label = {
        "raw: SQLite insert, fsync per 500": cpu["sqlite"],
        "raw: Kafka produce, acks=all": cpu["kafka_produce"],
        "raw: Kafka consume": cpu["kafka_consume"],
        "raw: PostgreSQL upsert, 500/commit": cpu["pg_upsert"],
    }
    for row in rows:
        spent = by_label.get(row["scenario"])
        if spent:
            parts = ", ".join(f"{k} {v:g}" for k, v in spent.items() if k != "total")
            row["note"] = f"{spent['total']:g} us CPU per row ({parts})"
        elif row["scenario"] == "raw: decode, one process" and (
            "cpu_us_per_record" in decode
        ):
            row["note"] = f"{decode['cpu_us_per_record']:g} us CPU per record"


def _chain_rows(limit: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The chain's CPU per change and its rate, against the sustained target."""
    if not limit:
        return []
    cores = limit["cores"]
    spent = _row(
        "raw: chain, CPU per change",
        limit["total_us"],
        "us",
        ("<=", cores * 1e6 / TARGETS["sustained"]),
    )
    spent["note"] = (
        " + ".join(f"{k} {v:g}" for k, v in limit["us_per_change"].items())
        + f" (journal read: {limit['entries_per_change']:g} entries per change,"
        f" {'from the catch-up' if limit['entries_from'] == 'catch-up' else 'default'})"
    )
    rate = _row(
        f"raw: chain, changes/s on {cores:g} cores",
        limit["changes_per_s"],
        "changes/s",
        (">=", TARGETS["sustained"]),
    )
    rate["note"] = (
        f"cores x 1,000,000 us / {limit['total_us']:g} us;"
        f" {limit['changes_per_s'] / TARGETS['catch_up']:.2f}x the catch-up target"
        f" ({TARGETS['catch_up']:,.0f}/s)"
    )
    return [spent, rate]


def _cpu_rows(
    catch: dict[str, Any], limit: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """The catch-up's CPU per change, every process, against the cores' budget.

    The budget is what the catch-up target leaves on this machine: its
    cores' microseconds per second divided by 16,667 changes per second; the
    raw limit is the chain's own CPU per change.
    """
    cpu = catch.get("cpu")
    if not cpu or not catch.get("changes"):
        return []
    cores = limit["cores"] if limit else machine_cores()
    budget = cores * 1e6 / TARGETS["catch_up"]
    spent = cpu["machine_busy_s"] * 1e6 / catch["changes"]
    name = "catch-up, CPU per change (machine)"
    raw = (
        (limit["total_us"], "CPU per change of the chain of raw parts")
        if limit
        else None
    )
    return [_row(name, round(spent, 1), "us", ("<=", budget), raw)]


def _row(
    scenario: str,
    figure: float | None,
    unit: str,
    target: tuple[str, float] | None = None,
    raw: tuple[float, str] | None = None,
) -> dict[str, Any]:
    row: dict[str, Any] = {"scenario": scenario, "figure": figure, "unit": unit}
    if target:
        row["target"] = {"op": target[0], "value": round(target[1], 1)}
        if figure:
            row["met"] = (
                figure >= target[1] if target[0] == ">=" else figure <= target[1]
            )
            row["figure_to_target"] = round(figure / target[1], 4)
    if raw:
        row["raw"] = {"value": raw[0], "what": raw[1]}
        if figure and raw[0]:
            row["figure_to_raw"] = round(figure / raw[0], 4)
    return row


def _latency_row(
    scenario: str, found: dict[str, Any], target: float, raw: tuple[float, str]
) -> dict[str, Any]:
    if found.get("available") is False:
        row = _row(scenario, None, "ms", ("<=", target), None)
        row["note"] = "not available: " + found["why"]
        return row
    achieved = found["writers"]["rate"]
    row = _row(scenario, found.get("p99_ms"), "ms", ("<=", target), raw)
    row["note"] = (
        f"p50 {found.get('p50_ms', 0):,.0f} ms, max {found.get('max_ms', 0):,.0f} ms"
        f" over {found.get('messages', 0):,} messages, {achieved:,.0f} changes/s"
        f" written (asked {found['asked_rate']:,.0f})"
    )
    return row


def show(found: dict[str, Any]) -> None:
    """Print the table, then the details each figure needs to be read."""
    header = ("scenario", "figure", "target", "raw limit", "fig/target", "fig/raw")
    lines = [header]
    for row in found["rows"]:
        unit = row["unit"]
        figure = (
            "not available"
            if row["figure"] is None
            else f"{_num(row['figure'])} {unit}"
        )
        target = (
            f"{row['target']['op']} {_num(row['target']['value'])}"
            if "target" in row
            else "-"
        )
        raw = f"{_num(row['raw']['value'])}" if "raw" in row else "-"
        lines.append(
            (
                row["scenario"],
                figure,
                target,
                raw,
                _ratio(row.get("figure_to_target")),
                _ratio(row.get("figure_to_raw")),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for n, line in enumerate(lines):
        cells = [
            line[i].ljust(widths[i]) if i == 0 else line[i].rjust(widths[i])
            for i in range(len(header))
        ]
        print(" | ".join(cells).rstrip())
        if n == 0:
            print("-+-".join("-" * w for w in widths))
    print()
    for row in found["rows"]:
        notes = [f"raw = {row['raw']['what']}"] if "raw" in row else []
        notes += [row["note"]] if "note" in row else []
        if notes:
            print(f"  {row['scenario']}: {'; '.join(notes)}")
    catch, sus = found["catch_up"], found["sustained"]
    fast = found["sustained_fast"]
    print(
        f"  catch-up: {catch['changes']:,} changes"
        f" ({catch['journal_entries']:,} entries)"
        f" in {catch['seconds']} s, first confirmation after"
        f" {catch['start_to_first_confirmation_s']} s; ODH equals source:"
        f" {catch['odh_equals_source']}; applied {catch['messages']:,},"
        f" distinct {catch['applied_distinct']:,}"
    )
    print(
        f"  sustained: {sus['writers']['writers']} writers wrote"
        f" {sus['writers']['changes']:,} changes in {sus['writers']['seconds']} s;"
        f" relay left {sus['left_at_writers_end']} at their end, drained"
        f" {sus['drain_after_writers_s']} s later; limited by {sus['limited_by']}"
    )
    print(
        f"  sustained, fast source: {fast['source_changes']:,} changes written in"
        f" {fast['source_seconds']} s; relay left {fast['left_at_source_end']} at"
        f" the source's end, drained {fast['drain_after_source_s']} s later"
    )
    print(f"  memory peak by leg (MB): {catch['rss_peak_by_leg_mb']}")
    cpu = catch.get("cpu")
    if cpu:
        print(
            f"  catch-up CPU: {cpu['machine_busy_s']} of"
            f" {cpu['machine_capacity_s']} core-seconds busy"
            f" ({cpu['machine_busy_share']:.0%}); microseconds per change:"
            f" {cpu['cpu_us_per_change']}"
        )
    out = found["outbox"]
    print(
        f"  outbox: {out['pending']:,} pending, average payload"
        f" {out['avg_payload_bytes']} B, db {out['db_bytes']:,} B + WAL"
        f" {out['wal_bytes']:,} B; outbox table alone"
        f" {out['outbox_table_bytes_per_pending']} B/message"
    )
    start, end = found["load"]["start"], found["load"]["end"]
    print(f"  load average {start[0]:.2f} -> {end[0]:.2f}")


def _num(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"


def _ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if value < 10 else f"{value:,.1f}x"
