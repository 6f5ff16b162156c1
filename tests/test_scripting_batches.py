"""Batches in one hand-off: per-change limits, slots, and what crosses JPype."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from appliance.config import ScriptSection
from appliance.errors import ScriptError
from appliance.scripting import ScriptRuntime, sample_change

EXT = {"beanshell": "bsh", "javascript": "js", "python": "py"}
TIMEOUT_MS = 200
TIMED_OUT = f"timed out after {TIMEOUT_MS} ms"

# Each language: returns the ARTNUM; "slow" takes 80 ms, "loop" never ends,
# "boom" throws.
BEHAVIOUR = {
    "beanshell": """
enrich(change) {
    op = change.get("op");
    if (op.equals("slow")) { Thread.sleep(80); }
    if (op.equals("loop")) { while (true) { } }
    if (op.equals("boom")) { throw new IllegalStateException("price is negative"); }
    return change.get("key").get("ARTNUM");
}
""",
    "javascript": """
function enrich(change) {
  if (change.op === "slow") { var t = Date.now(); while (Date.now() - t < 80) { } }
  if (change.op === "loop") { while (true) { } }
  if (change.op === "boom") { throw new Error("price is negative"); }
  return change.key.ARTNUM;
}
""",
    "python": """
import time

def enrich(change):
    if change["op"] == "slow":
        time.sleep(0.08)
    if change["op"] == "loop":
        while True:
            pass
    if change["op"] == "boom":
        raise ValueError("price is negative")
    return change["key"]["ARTNUM"]
""",
}


def runtime(tmp_path: Path, language: str, source: str) -> ScriptRuntime:
    path = tmp_path / f"script.{EXT[language]}"
    path.write_text(source, encoding="utf-8")
    section = ScriptSection(name="s", language=language, path=path)  # type: ignore[arg-type]
    rt = ScriptRuntime(section, TIMEOUT_MS)
    rt.start(json.dumps(sample_change("MQ01")))
    return rt


def texts(*items: tuple[str, str]) -> list[str]:
    """Change texts for (op, ARTNUM) pairs."""
    return [
        json.dumps(dict(sample_change("MQ01"), op=op, key={"ARTNUM": art}))
        for op, art in items
    ]


@pytest.mark.parametrize("language", sorted(BEHAVIOUR))
def test_each_change_of_a_long_batch_has_its_own_limit(
    tmp_path: Path, language: str
) -> None:
    """Eight 80 ms changes in one hand-off (640 ms) all pass a 200 ms limit."""
    rt = runtime(tmp_path, language, BEHAVIOUR[language])
    try:
        arts = [f"{n:06d}" for n in range(8)]
        started = time.monotonic()
        out = rt.run_batch(texts(*(("slow", a) for a in arts)))
        assert time.monotonic() - started > 0.6
        assert out == arts
        assert rt.abandoned == 0
    finally:
        rt.close()


@pytest.mark.parametrize("language", sorted(BEHAVIOUR))
def test_a_stuck_change_mid_batch_fails_in_its_slot_only(
    tmp_path: Path, language: str
) -> None:
    """Changes before and after the stuck one keep their own results, in order."""
    rt = runtime(tmp_path, language, BEHAVIOUR[language])
    try:
        batch = texts(("u", "A"), ("u", "B"), ("loop", "C"), ("u", "D"), ("u", "E"))
        out = rt.run_batch(batch)
        assert out[:2] == ["A", "B"]
        assert isinstance(out[2], ScriptError)
        assert str(out[2]) == TIMED_OUT
        assert out[3:] == ["D", "E"]
        # Only BeanShell is stopped from outside (and replaced).
        assert rt.abandoned == (1 if language == "beanshell" else 0)
    finally:
        rt.close()


@pytest.mark.parametrize("language", sorted(BEHAVIOUR))
def test_a_throwing_change_mid_batch_fails_in_its_slot_only(
    tmp_path: Path, language: str
) -> None:
    """The loop resumes after a throwing change; its message is the script's."""
    rt = runtime(tmp_path, language, BEHAVIOUR[language])
    try:
        batch = texts(("u", "A"), ("boom", "B"), ("boom", "C"), ("u", "D"))
        out = rt.run_batch(batch)
        assert out[0] == "A"
        assert out[3] == "D"
        for error in out[1:3]:
            assert isinstance(error, ScriptError)
            assert "price is negative" in str(error)
        assert rt.abandoned == 0
    finally:
        rt.close()


@pytest.mark.parametrize("language", sorted(BEHAVIOUR))
def test_the_batch_separator_inside_a_value_reaches_the_script(
    tmp_path: Path, language: str
) -> None:
    """A record separator (the batch's joint) inside a string stays in it."""
    rt = runtime(tmp_path, language, BEHAVIOUR[language])
    try:
        out = rt.run_batch(texts(("u", "A\x1eB"), ("u", "\x1e")))
        assert out == ["A\x1eB", "\x1e"]
    finally:
        rt.close()


def test_javascript_argument_and_loop_lead_to_no_java(tmp_path: Path) -> None:
    """Neither the change's prototypes nor the caller's scope expose LiveConnect."""
    source = """
function enrich(change) {
  var viaCtor = change.constructor.constructor("return typeof java")();
  var viaKey = change.key.constructor.constructor("return typeof Packages")();
  var viaThis = (function () { return typeof this.java; })();
  return [viaCtor, viaKey, viaThis, typeof JavaAdapter];
}
"""
    rt = runtime(tmp_path, "javascript", source)
    try:
        assert rt.run_batch(texts(("u", "A"))) == [["undefined"] * 4]
    finally:
        rt.close()


def test_javascript_result_size_counts_java_chars(tmp_path: Path) -> None:
    """The limit counts UTF-16 units, as Java does: 2,100 emoji are 4,202 chars."""
    source = (
        'function enrich(change) { return new Array(2101).join("\\ud83d\\ude00"); }'
    )
    rt = runtime(tmp_path, "javascript", source)
    try:
        [out] = rt.run_batch(texts(("u", "A")))
        assert isinstance(out, ScriptError)
        assert str(out) == "returned 4202 chars as JSON, expected at most 4096"
    finally:
        rt.close()


def test_a_text_with_a_raw_separator_fails_alone(tmp_path: Path) -> None:
    """Not JSON (a raw control character): its own slot fails, the rest runs."""
    rt = runtime(tmp_path, "javascript", BEHAVIOUR["javascript"])
    try:
        good_a, good_b = texts(("u", "A"), ("u", "B"))
        out = rt.run_batch([good_a, good_a.replace("A", "A\x1eB"), good_b])
        assert out[0] == "A"
        assert isinstance(out[1], ScriptError)
        assert str(out[1]) == "change is not JSON: it holds a raw U+001E"
        assert out[2] == "B"
    finally:
        rt.close()


def test_javascript_stuck_outside_its_observer_is_stopped_and_rerun(
    tmp_path: Path,
) -> None:
    """A regex that backtracks for ever never reaches the observer: the thread
    is stopped, and the changes done inside its hand-off run again elsewhere."""
    source = """
function enrich(change) {
  if (change.op === "regex") { /(a+)+b/.test(new Array(40).join("a")); }
  return change.key.ARTNUM;
}
"""
    rt = runtime(tmp_path, "javascript", source)
    try:
        batch = texts(("u", "A"), ("u", "B"), ("regex", "C"), ("u", "D"))
        out = rt.run_batch(batch)
        assert out[:2] == ["A", "B"]
        assert str(out[2]) == TIMED_OUT
        assert out[3] == "D"
        assert rt.abandoned == 1
    finally:
        rt.close()
