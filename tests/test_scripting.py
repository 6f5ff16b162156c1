"""Script runtimes: the three languages, time limits, errors and bad results."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from appliance.config import ScriptSection
from appliance.errors import ScriptError
from appliance.scripting import MAX_RESULT_CHARS, ScriptRuntime, sample_change

SCRIPTS = Path(__file__).resolve().parent.parent / "config" / "scripts"
EXT = {"beanshell": "bsh", "javascript": "js", "python": "py"}
TIMEOUT_MS = 200
# Thread start, JSON, Thread.stop and polling; generous for a loaded CI box.
MARGIN_S = 0.8


def change(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "store": "MQ01",
        "table": "PRIX",
        "op": "u",
        "key": {"ARTNUM": "000123"},
        "before": {"ARTNUM": "000123", "PRIX": "12.50", "PRIX_PROMO": None},
        "after": {"ARTNUM": "000123", "PRIX": "11.90", "PRIX_PROMO": None},
        "source": {"store": "MQ01", "table": "PRIX", "sequence": 41},
    }
    base.update(over)
    return base


def runtime(path: Path, language: str, name: str = "s") -> ScriptRuntime:
    rt = ScriptRuntime(
        ScriptSection(name=name, language=language, path=path), TIMEOUT_MS
    )  # type: ignore[arg-type]
    rt.start(json.dumps(sample_change("MQ01")))
    return rt


def write(tmp_path: Path, language: str, source: str) -> Path:
    path = tmp_path / f"script.{EXT[language]}"
    path.write_text(source, encoding="utf-8")
    return path


def run(rt: ScriptRuntime, *changes: dict[str, object]) -> list[object]:
    return rt.run_batch([json.dumps(c) for c in changes])


# Each language: loops when op == "loop", throws when op == "boom", else "ok".
BEHAVIOUR = {
    "beanshell": """
enrich(change) {
    op = change.get("op");
    if (op.equals("loop")) { while (true) { } }
    if (op.equals("boom")) { throw new IllegalStateException("price is negative"); }
    return "ok";
}
""",
    "javascript": """
function enrich(change) {
  if (change.op === "loop") { while (true) { } }
  if (change.op === "boom") { throw new Error("price is negative"); }
  return "ok";
}
""",
    "python": """
def enrich(change):
    if change["op"] == "loop":
        while True:
            pass
    if change["op"] == "boom":
        raise ValueError("price is negative")
    return "ok"
""",
}


def test_beanshell_sample_builds_business_key() -> None:
    """business_key.bsh joins the store id and ARTNUM, else the key values."""
    rt = runtime(SCRIPTS / "business_key.bsh", "beanshell")
    try:
        out = run(rt, change(), change(store="GP02", key={"B": "x", "A": "7"}))
        assert out == ["MQ01:000123", "GP02:7/x"]
    finally:
        rt.close()


def test_javascript_sample_maps_store_prefix_to_region() -> None:
    """region.js knows the five regions and refuses an unknown prefix."""
    rt = runtime(SCRIPTS / "region.js", "javascript")
    try:
        stores = ["MQ01", "GP02", "RE03", "GF04", "MF05"]
        out = run(rt, *(change(store=s) for s in stores))
        assert out == ["MQ", "GP", "RE", "GF", "MF"]
        [bad] = run(rt, change(store="ZZ01"))
        assert isinstance(bad, ScriptError)
        assert "unknown region for store ZZ01" in str(bad)
    finally:
        rt.close()


def test_python_sample_scores_interest() -> None:
    """interest.py: PRIX 80, promo 90, STOCK 50, ARTICLE 30, deletes +10."""
    rt = runtime(SCRIPTS / "interest.py", "python")
    promo = change(after={"ARTNUM": "000123", "PRIX": "9.90", "PRIX_PROMO": "8.90"})
    try:
        out = run(
            rt,
            change(),
            promo,
            change(table="STOCK"),
            change(table="ARTICLE"),
            change(table="ARTICLE", op="d", after=None),
        )
        assert out == [80, 90, 50, 30, 40]
    finally:
        rt.close()


@pytest.mark.parametrize("language", sorted(BEHAVIOUR))
def test_endless_loop_is_stopped_and_next_change_runs(
    tmp_path: Path, language: str
) -> None:
    """A looping call ends within the limit plus a margin; the next one works."""
    rt = runtime(write(tmp_path, language, BEHAVIOUR[language]), language)
    try:
        started = time.monotonic()
        out = run(rt, change(op="loop"), change(), change(op="loop"), change())
        elapsed = time.monotonic() - started
        assert isinstance(out[0], ScriptError)
        assert str(out[0]) == f"timed out after {TIMEOUT_MS} ms"
        assert out[1] == "ok"
        assert isinstance(out[2], ScriptError)
        assert out[3] == "ok"
        assert elapsed < 2 * (TIMEOUT_MS / 1000 + MARGIN_S)
    finally:
        rt.close()


@pytest.mark.parametrize("language", sorted(BEHAVIOUR))
def test_throwing_script_reports_its_message(tmp_path: Path, language: str) -> None:
    """An exception in the script becomes a ScriptError carrying its message."""
    rt = runtime(write(tmp_path, language, BEHAVIOUR[language]), language)
    try:
        out = run(rt, change(op="boom"), change())
        assert isinstance(out[0], ScriptError)
        assert "price is negative" in str(out[0])
        assert out[1] == "ok"
    finally:
        rt.close()


BAD_RESULTS = {
    "beanshell": """
enrich(change) {
    op = change.get("op");
    if (op.equals("huge")) { return new String(new char[5000]).replace('\0', 'x'); }
    if (op.equals("object")) { return new java.io.File("/tmp"); }
    if (op.equals("void")) { return; }
    m = new java.util.HashMap();
    m.put("n", 3);
    m.put("tags", java.util.Arrays.asList(new Object[] {"a", 1.5}));
    return m;
}
""",
    "javascript": """
function enrich(change) {
  if (change.op === "huge") { return new Array(5001).join("x"); }
  if (change.op === "object") { return function () {}; }
  if (change.op === "void") { return; }
  return {n: 3, tags: ["a", 1.5]};
}
""",
    "python": """
def enrich(change):
    if change["op"] == "huge":
        return "x" * 5000
    if change["op"] == "object":
        return object()
    if change["op"] == "void":
        return float("nan")
    return {"n": 3, "tags": ["a", 1.5]}
""",
}


@pytest.mark.parametrize("language", sorted(BAD_RESULTS))
def test_results_must_be_small_json_values(tmp_path: Path, language: str) -> None:
    """Maps pass; huge, non-JSON or missing results are ScriptErrors."""
    rt = runtime(write(tmp_path, language, BAD_RESULTS[language]), language)
    try:
        ok, huge, obj, void = run(
            rt, change(), change(op="huge"), change(op="object"), change(op="void")
        )
        assert ok == {"n": 3, "tags": ["a", 1.5]}
        assert isinstance(huge, ScriptError)
        assert f"expected at most {MAX_RESULT_CHARS}" in str(huge)
        assert isinstance(obj, ScriptError)
        assert isinstance(void, ScriptError)
    finally:
        rt.close()


@pytest.mark.parametrize(
    ("language", "source"),
    [
        ("beanshell", "enrich(change) { return 1 +; }"),
        ("javascript", "function enrich(change) { return 1 +; }"),
        ("python", "def enrich(change):\n    return 1 +\n"),
        ("javascript", "var notEnrich = 1;"),
        ("python", "enrich = 5\n"),
    ],
)
def test_unloadable_script_fails_every_call(
    tmp_path: Path, language: str, source: str
) -> None:
    """A script that does not load answers every change with its load error."""
    rt = runtime(write(tmp_path, language, source), language)
    try:
        out = run(rt, change(), change())
        assert rt.load_error is not None
        assert out == [rt.load_error, rt.load_error]
    finally:
        rt.close()


def test_python_script_cannot_swallow_its_time_limit(tmp_path: Path) -> None:
    """``except Exception`` inside the loop does not keep a Python script alive."""
    source = """
def enrich(change):
    while True:
        try:
            pass
        except Exception:
            pass
"""
    rt = runtime(write(tmp_path, "python", source), "python")
    try:
        [out] = run(rt, change())
        assert str(out) == f"timed out after {TIMEOUT_MS} ms"
    finally:
        rt.close()


def test_javascript_cannot_reach_java(tmp_path: Path) -> None:
    """JS scripts run with Rhino's safe standard objects: no LiveConnect."""
    source = "function enrich(change) { return java.lang.System.getenv('HOME'); }"
    rt = runtime(write(tmp_path, "javascript", source), "javascript")
    try:
        [out] = run(rt, change())
        assert isinstance(out, ScriptError)
        assert "java" in str(out)
    finally:
        rt.close()


def test_scripts_cannot_mutate_the_change_for_others(tmp_path: Path) -> None:
    """Each Python call gets its own copy of the change."""
    source = "def enrich(change):\n    change['key']['ARTNUM'] = 'X'\n    return 1\n"
    rt = runtime(write(tmp_path, "python", source), "python")
    shared = change()
    try:
        assert run(rt, shared) == [1]
        assert shared["key"] == {"ARTNUM": "000123"}
    finally:
        rt.close()


def test_python_script_stuck_in_c_code_is_abandoned(tmp_path: Path) -> None:
    """A sleep ignores the trace deadline; the worker is replaced, the relay goes on."""
    source = """
import time

def enrich(change):
    if change["op"] == "sleep":
        time.sleep(3)
    return "ok"
"""
    rt = runtime(write(tmp_path, "python", source), "python")
    try:
        started = time.monotonic()
        out = run(rt, change(op="sleep"), change())
        elapsed = time.monotonic() - started
        assert str(out[0]) == f"timed out after {TIMEOUT_MS} ms"
        assert out[1] == "ok"
        assert elapsed < TIMEOUT_MS / 1000 + MARGIN_S
        assert rt.abandoned == 1
    finally:
        rt.close()
