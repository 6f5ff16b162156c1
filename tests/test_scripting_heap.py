"""Start-up objects frozen out of the collector after loading JVM scripts.

JPype runs a full Python collection after each young collection of the JVM;
:func:`scripting.load` freezes what start-up made so those walk only what is
new. These tests check what is frozen and that the scripts behave as before
(per-change limit, isolated failures, errors named).
"""

from __future__ import annotations

import gc
import json
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance import scripting
from appliance.config import ScriptSection
from appliance.errors import ScriptError

TIMEOUT_MS = 200
TIMED_OUT = f"timed out after {TIMEOUT_MS} ms"

SOURCES = {
    "beanshell": (
        "bsh",
        """
enrich(change) {
    op = change.get("op");
    if (op.equals("loop")) { while (true) { } }
    if (op.equals("boom")) { throw new IllegalStateException("price is negative"); }
    return change.get("key").get("ARTNUM");
}
""",
    ),
    "javascript": (
        "js",
        """
function enrich(change) {
  if (change.op === "loop") { while (true) { } }
  if (change.op === "boom") { throw new Error("price is negative"); }
  return change.key.ARTNUM;
}
""",
    ),
    "python": (
        "py",
        """
def enrich(change):
    if change["op"] == "boom":
        raise ValueError("price is negative")
    return change["key"]["ARTNUM"]
""",
    ),
}


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    """Each test starts and ends with nothing frozen (the rest of the suite
    keeps the collector as it was)."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def sections(tmp_path: Path, *languages: str) -> list[ScriptSection]:
    out = []
    for language in languages:
        ext, source = SOURCES[language]
        path = tmp_path / f"{language}.{ext}"
        path.write_text(source, encoding="utf-8")
        section = {"name": language, "language": language, "path": path}
        out.append(ScriptSection.model_validate(section))
    return out


def change(artnum: str, op: str = "u") -> str:
    return json.dumps(
        {
            "store": "MQ01",
            "table": "PRIX",
            "op": op,
            "key": {"ARTNUM": artnum},
            "before": None,
            "after": {"ARTNUM": artnum},
            "source": {"store": "MQ01", "table": "PRIX", "sequence": 1},
        }
    )


def tracked(obj: object) -> bool:
    """True if the collector still walks ``obj`` (frozen objects it does not)."""
    return any(o is obj for o in gc.get_objects())


def test_loading_jvm_scripts_freezes_what_start_up_made(tmp_path: Path) -> None:
    assert gc.get_freeze_count() == 0
    runtimes = scripting.load(
        sections(tmp_path, "beanshell", "javascript"), TIMEOUT_MS, "MQ01"
    )
    try:
        assert gc.get_freeze_count() > 0
        assert [rt.load_error for rt in runtimes] == [None, None]
        assert not tracked(runtimes)
        assert not tracked(runtimes[0])
        made_later: list[object] = []
        assert tracked(made_later)
    finally:
        for rt in runtimes:
            rt.close()


def test_python_scripts_alone_freeze_nothing(tmp_path: Path) -> None:
    runtimes = scripting.load(sections(tmp_path, "python"), TIMEOUT_MS, "MQ01")
    try:
        assert runtimes[0].load_error is None
        assert gc.get_freeze_count() == 0
        assert runtimes[0].run_batch([change("000007")]) == ["000007"]
    finally:
        runtimes[0].close()


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_start_up_garbage_is_collected_not_frozen(tmp_path: Path) -> None:
    """A garbage cycle left before the freeze is freed, not kept for good."""
    garbage = _Cycle()
    ref = weakref.ref(garbage)
    gc.disable()  # only the collection before the freeze may free it
    try:
        del garbage
        assert ref() is not None
        runtimes = scripting.load(sections(tmp_path, "beanshell"), 500, "MQ01")
        assert ref() is None
        assert gc.get_freeze_count() > 0
        runtimes[0].close()
    finally:
        gc.enable()


@pytest.mark.parametrize(
    ("language", "named"),
    [
        ("beanshell", "java.lang.IllegalStateException: price is negative"),
        ("javascript", "Error: price is negative"),
    ],
)
def test_frozen_runtimes_keep_limits_and_isolation(
    tmp_path: Path, language: str, named: str
) -> None:
    """After the freeze: a looping change times out alone, a failing change
    fails alone with its error named, the others return their values."""
    [rt] = scripting.load(sections(tmp_path, language), TIMEOUT_MS, "MQ01")
    try:
        assert gc.get_freeze_count() > 0
        out = rt.run_batch(
            [
                change("000001"),
                change("000002", op="loop"),
                change("000003"),
                change("000004", op="boom"),
                change("000005"),
            ]
        )
        assert out[0] == "000001"
        assert isinstance(out[1], ScriptError)
        assert str(out[1]) == TIMED_OUT
        assert out[2] == "000003"
        assert isinstance(out[3], ScriptError)
        assert named in str(out[3])
        assert out[4] == "000005"
        assert len(out) == 5
    finally:
        rt.close()
