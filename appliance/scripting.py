"""Enrichment scripts: BeanShell and JavaScript (Rhino) in the JVM, and Python.

Every script file defines ``enrich(change)``. ``change`` is the change event
(``store``, ``table``, ``op``, ``key``, ``before``, ``after``, ``source``); the
function returns a string, a number, a boolean, null, or a map (lists allowed
inside), which the enricher stores under ``enrichment[<script name>]``.

What each language receives:

- JavaScript: a plain JS object (``JSON.parse`` of the change). The scope is
  Rhino's *safe* standard objects: no ``java``, ``Packages`` or
  ``JavaAdapter``, so a JS script cannot reach the JVM or the file system.
  The batch loop runs in that scope too and is given no Java object.
- BeanShell: a read-only ``java.util.Map`` (Rhino's JSON parser, done on the
  Java side: one string crosses JPype per call, about 3x faster than building
  a ``HashMap`` from Python). Nested objects are maps, arrays are lists,
  integers are ``Integer`` (``Double`` beyond 32 bits), decimals are strings.
- Python: a fresh ``dict`` per call (:func:`jsontext.loads`, the meaning of
  ``json.loads``), so a script that mutates its argument cannot touch the
  message.

Rhino takes a batch in one JPype crossing (the JSON texts joined by
:data:`_SEP`), loops over it in the script's scope and returns the results'
JSON texts joined the same way. BeanShell is called once per change: the same
loop written with LiveConnect cost more (reflection) than JPype's calls.

Invariants:

- A call never hangs the caller. Each script runs on its own worker thread;
  the caller watches the item in progress. JavaScript stops itself through
  Rhino's instruction observer (a ``ContextFactory`` subclass made with
  Rhino's ``JavaAdapter``, since JPype cannot subclass a Java class); Python
  through a ``sys.settrace`` deadline (a call stuck in C code, such as a
  sleep, cannot be stopped: its thread is abandoned); BeanShell ignores
  ``Thread.interrupt``, so its thread is stopped with ``Thread.stop`` (works
  on JDK 17). When a worker is stopped from outside it is abandoned and a
  fresh one (new interpreter, script loaded again) takes the next change: a
  half-stopped interpreter is never reused.
- The time limit is per change, also when a whole batch goes to the worker in
  one hand-off: the watchdog measures each item from its own start. Rhino's
  loop reports how many items it has begun; such an item is timed from the
  first poll that sees it (at most 10 ms late), and Rhino's observer gives
  each item its own deadline. Results of items that ended inside a hand-off
  stopped from outside are lost with it: a fresh worker runs them again.
- Every failure of a call (exception, time limit, wrong type, result over
  :data:`MAX_RESULT_CHARS` as JSON) comes back as a :class:`ScriptError` in
  that change's slot; the other changes of the batch are not affected.
- A script that cannot be loaded fails every call with its load error; the
  relay goes on (the enricher parks those changes).

Scripts are operator-configured code: the limits guard against bugs, not
malice (a BeanShell or Python script can still call ``System.exit``).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import math
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import jpype

from appliance import jsontext, jvm
from appliance.config import ScriptSection
from appliance.errors import ScriptError

logger = logging.getLogger(__name__)

MAX_RESULT_CHARS = 4096
# Loading happens once, at start, in a JVM that may be cold on a slow or busy
# box (seen: >10 s under qemu TCG). Stopping a thread while the JVM
# initialises a class poisons that class for the life of the process
# (NoClassDefFoundError later), so the limit is generous. The enricher unit's
# TimeoutStartSec covers three scripts at this limit.
LOAD_LIMIT_S = 60.0
# How long past its limit a self-stopping script (JS, Python) may take
# before the watchdog stops its thread from outside.
SOFT_GRACE_S = 0.25
# Rhino calls the observer after this many interpreted instructions.
OBSERVER_THRESHOLD = 10_000
_MESSAGE_CHARS = 300

Outcome = Any  # a JSON-able value, or a ScriptError for that change


def sample_change(store_id: str) -> dict[str, Any]:
    """A plausible change of ``store_id`` to warm the scripts with."""
    return {
        "store": store_id,
        "table": "ARTICLE",
        "op": "u",
        "key": {"ARTNUM": "000000"},
        "before": {"ARTNUM": "000000"},
        "after": {"ARTNUM": "000000"},
        "source": {"store": store_id, "table": "ARTICLE", "sequence": 0},
    }


def checked(value: Any) -> Any:
    """Return ``value`` if it is a small JSON value, else raise ScriptError."""
    if isinstance(value, int) or (isinstance(value, str) and len(value) < 1000):
        return value  # the common case, cheaply (bool is an int)
    if not isinstance(value, str | int | float | bool | dict | list | type(None)):
        raise ScriptError(
            f"returned a {type(value).__name__}, expected a string, number or map"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ScriptError(f"returned {value!r}, expected a finite number")
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ScriptError(f"returned a value that is not JSON: {exc}") from exc
    if len(text) > MAX_RESULT_CHARS:
        raise ScriptError(
            f"returned {len(text)} chars as JSON, expected at most {MAX_RESULT_CHARS}"
        )
    return value


def _short(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > _MESSAGE_CHARS:
        return text[: _MESSAGE_CHARS - 3] + "..."
    return text


def _java_message(exc: BaseException) -> str:
    """The Java exception's own message (without the class name) when it has one."""
    target = getattr(exc, "getTarget", None)  # BeanShell's TargetError
    if callable(target) and target() is not None:
        line = exc.getErrorLineNumber()  # type: ignore[attr-defined]
        return _short(f"{target().toString()} (line {line})")
    get = getattr(exc, "getMessage", None)
    message = str(get()) if callable(get) and get() is not None else str(exc)
    return _short(message)


class Engine:
    """One language's interpreter, created and used on its worker thread only."""

    #: seconds past the limit before the watchdog stops the thread from outside
    grace_s = SOFT_GRACE_S

    def __init__(self, path: Path, source: str, timeout_s: float) -> None:
        self.path = path
        self.source = source
        self.timeout_s = timeout_s

    def load(self) -> None:
        """Compile the script and resolve ``enrich``; raise ScriptError."""
        raise ScriptError("no engine")  # pragma: no cover - overridden

    def call(self, change_json: str) -> Any:
        """Run ``enrich`` on one change; return the checked value or raise."""
        raise ScriptError("no engine")  # pragma: no cover - overridden

    def call_many(self, inputs: Sequence[str], start: int) -> list[Outcome]:
        """Outcomes of ``inputs[start:]`` in order, up to the first that raised.

        One item per hand-off here; Rhino loops over the batch in JS.
        """
        try:
            return [self.call(inputs[start])]
        except ScriptError as exc:
            return [exc]

    def started(self) -> int | None:
        """Items begun by the running :meth:`call_many`; None: one per hand-off."""
        return None

    def release(self) -> None:
        """Free what the engine holds on its thread (best effort)."""

    def stop_from_outside(self, thread: threading.Thread) -> None:
        """Stop ``thread`` (the worker) while it runs a call of this engine."""


class _ScriptTimeout(BaseException):
    """Raised inside a Python script past its deadline (BaseException: harder
    for the script's own ``except Exception`` to swallow)."""


class PythonEngine(Engine):
    """Python scripts, each in its own module namespace."""

    def __init__(self, path: Path, source: str, timeout_s: float) -> None:
        super().__init__(path, source, timeout_s)
        self._enrich: Callable[[dict[str, Any]], Any] | None = None
        self._deadline = 0.0

    def _trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        del frame, event, arg
        if time.monotonic() > self._deadline:
            raise _ScriptTimeout
        return self._trace

    def _guarded(self, limit_s: float, func: Callable[[], Any]) -> Any:
        self._deadline = time.monotonic() + limit_s
        sys.settrace(self._trace)
        try:
            return func()
        except _ScriptTimeout:
            raise ScriptError(f"timed out after {int(limit_s * 1000)} ms") from None
        except Exception as exc:
            raise ScriptError(_short(f"{type(exc).__name__}: {exc}")) from exc
        finally:
            sys.settrace(None)

    def load(self) -> None:
        namespace: dict[str, Any] = {
            "__name__": f"appliance_script_{self.path.stem}",
            "__file__": str(self.path),
        }
        try:
            code = compile(self.source, str(self.path), "exec")
        except SyntaxError as exc:
            raise ScriptError(_short(f"SyntaxError: {exc}")) from exc
        self._guarded(LOAD_LIMIT_S, lambda: exec(code, namespace))  # noqa: S102
        enrich = namespace.get("enrich")
        if not callable(enrich):
            raise ScriptError("does not define a function enrich(change)")
        self._enrich = enrich

    def call(self, change_json: str) -> Any:
        assert self._enrich is not None
        enrich = self._enrich
        change = jsontext.loads(change_json)
        return checked(self._guarded(self.timeout_s, lambda: enrich(change)))

    # No stop_from_outside: PyThreadState_SetAsyncExc on a thread blocked in C
    # code (time.sleep) stalled every other thread of 3.11 until the call
    # returned. The trace deadline stops Python loops; a thread stuck in C is
    # only abandoned, and ends when its call returns.


class JvmEngine(Engine):
    """What BeanShell and Rhino share: the JVM thread and its hard stop."""

    def __init__(self, path: Path, source: str, timeout_s: float) -> None:
        super().__init__(path, source, timeout_s)
        self._java_thread: Any = None

    def attach(self) -> None:
        self._java_thread = jpype.JClass("java.lang.Thread").currentThread()

    def stop_from_outside(self, thread: threading.Thread) -> None:
        del thread
        target = self._java_thread
        if target is None:
            return
        target.interrupt()
        try:
            # Deprecated, and gone from JDK 20 on; there the worker is only
            # abandoned (see ScriptRuntime) and finishes on its own.
            target.stop()
        except Exception as exc:
            logger.warning("cannot stop script thread error=%s", _short(str(exc)))


# Joins a batch's JSON texts (and the JSON texts of Rhino's results): JSON
# escapes every control character inside strings and allows none outside.
_SEP = "\x1e"


# Made once per Rhino engine in a context with LiveConnect: a ContextFactory
# whose instruction observer throws past deadline[0] (System.nanoTime units).
# Once watched[0] holds the batch loop's state, each item's deadline is
# deadline[1] ns after the observer first sees its ticket.
_RHINO_BOOT = """
var deadline = java.lang.reflect.Array.newInstance(java.lang.Long.TYPE, 2);
var watched = java.lang.reflect.Array.newInstance(java.lang.Object, 1);
var clock = java.lang.System;
var seen = -1;
var factory = new JavaAdapter(org.mozilla.javascript.ContextFactory, {
  observeInstructionCount: function (cx, count) {
    var now = clock.nanoTime();
    var state = watched[0];
    if (state !== null && state.ticket !== seen) {
      seen = state.ticket;
      deadline[0] = now + deadline[1];
    } else if (now > deadline[0]) {
      throw new java.lang.Error("script timed out");
    }
  }
});
[factory, deadline, watched];
"""

# The batch loop, in the script's safe scope (given no Java object). It stops
# at the first item that throws (the second function then gives the texts
# before it); its errors keep the lines (4, 7) of the former per-call wrapper.
_RHINO_LOOP = (
    "(function (state, done) { function run(enrich, batch) {\n"
    "    var items = batch.split('\\u001e'), result, text; done.length = 0;\n"
    "    for (var i = 0; i < items.length; i++) {"
    " state.ticket += 1; result = enrich(JSON.parse(items[i]));\n"
    '      if (result === undefined) { throw new Error("enrich returned nothing"); }\n'
    "      text = JSON.stringify(result);\n"
    '      if (typeof text !== "string") {\n'
    '        throw new Error("enrich returned a " + typeof result + ", not JSON");\n'
    "      }\n"
    "      done.push(text);\n"
    "    }\n"
    "    return done.join('\\u001e');\n"
    "  }\n"
    "  return [run, function () { return done.join('\\u001e'); }, state];\n"
    "})({ticket: 0}, [])\n"
)


class RhinoEngine(JvmEngine):
    """JavaScript through Rhino, stopped by its instruction observer.

    Each item begun by the batch loop bumps ``state.ticket``, never reset;
    ``_base`` is its value at the hand-off.
    """

    def __init__(self, path: Path, source: str, timeout_s: float) -> None:
        super().__init__(path, source, timeout_s)
        self._cx: Any = None
        self._scope: Any = None
        self._deadline: Any = None
        self._watched: Any = None
        self._loop: Any = None
        self._taken: Any = None
        self._state: Any = None
        self._args: Any = None
        self._offset_ns = 0
        self._base = 0

    def _boot_factory(self) -> Any:
        context = jpype.JClass("org.mozilla.javascript.Context")
        boot = context.enter()
        try:
            scope = boot.initStandardObjects()
            made = boot.evaluateString(scope, _RHINO_BOOT, "<boot>", 1, None)
            factory = made.get(jpype.JInt(0))
            self._deadline = made.get(jpype.JInt(1))
            self._watched = made.get(jpype.JInt(2))
        finally:
            context.exit()
        clock = jpype.JClass("java.lang.System")
        self._offset_ns = int(clock.nanoTime()) - time.monotonic_ns()
        return factory

    def _arm(self, limit_s: float) -> None:
        due = time.monotonic_ns() + self._offset_ns + int(limit_s * 1e9)
        self._deadline[0] = jpype.JLong(due)

    def load(self) -> None:
        self.attach()
        cx = self._boot_factory().enterContext()
        cx.setLanguageVersion(_jc("org.mozilla.javascript.Context").VERSION_ES6)
        cx.setOptimizationLevel(9)
        cx.setGenerateObserverCount(True)
        cx.setInstructionObserverThreshold(OBSERVER_THRESHOLD)
        self._cx = cx
        self._scope = cx.initSafeStandardObjects()
        self._arm(LOAD_LIMIT_S)
        try:
            cx.evaluateString(self._scope, self.source, str(self.path), 1, None)
            made = cx.evaluateString(self._scope, _RHINO_LOOP, "<relay>", 1, None)
        except jpype.JException as exc:
            raise ScriptError(_java_message(exc)) from exc
        scriptable = _jc("org.mozilla.javascript.ScriptableObject")
        enrich = scriptable.getProperty(self._scope, "enrich")
        if not isinstance(enrich, jpype.JClass("org.mozilla.javascript.Function")):
            raise ScriptError("does not define a function enrich(change)")
        self._loop = made.get(jpype.JInt(0))
        self._taken = made.get(jpype.JInt(1))
        self._state = made.get(jpype.JInt(2))
        self._args = jpype.JArray(jpype.JObject)([enrich, None])
        self._deadline[1] = jpype.JLong(int(self.timeout_s * 1e9))
        self._watched[0] = self._state

    def _tickets(self) -> int:
        ticket = _jc("org.mozilla.javascript.ScriptableObject").getProperty(
            self._state, "ticket"
        )
        return int(ticket.longValue())

    def started(self) -> int | None:
        return self._tickets() - self._base

    def call_many(self, inputs: Sequence[str], start: int) -> list[Outcome]:
        self._args[1] = batch = _joined(inputs, start)
        count = batch.count(_SEP) + 1
        self._base = self._tickets()
        self._arm(self.timeout_s)
        scope = self._scope
        try:
            joined = self._loop.call(self._cx, scope, scope, self._args)
            failure = None
        except jpype.JException as exc:
            failure = self._failure(exc)
            # The observer would stop this tiny call too, past the deadline.
            self._arm(self.timeout_s)
            nothing = jpype.JArray(jpype.JObject)(0)
            joined = self._taken.call(self._cx, scope, scope, nothing)
        texts = str(joined).split(_SEP)
        outcomes: list[Outcome] = [_from_json(t) for t in texts if t]
        if failure is not None:
            outcomes.append(failure)
        if len(outcomes) > count or (failure is None and len(outcomes) < count):
            # Only a script that replaced the loop's built-ins gets here.
            lost = ScriptError(f"returned {len(outcomes)} results for {count}")
            return [lost] * count
        return outcomes

    def _failure(self, exc: BaseException) -> ScriptError:
        if time.monotonic_ns() + self._offset_ns > int(self._deadline[0]):
            return ScriptError(f"timed out after {int(self.timeout_s * 1000)} ms")
        return ScriptError(_java_message(exc))

    def release(self) -> None:
        if self._cx is not None:
            jpype.JClass("org.mozilla.javascript.Context").exit()
            self._cx = None


class BeanShellEngine(JvmEngine):
    """BeanShell: ``enrich`` resolved once, called through ``BshMethod.invoke``."""

    grace_s = 0.0  # nothing inside BeanShell watches the clock

    def __init__(self, path: Path, source: str, timeout_s: float) -> None:
        super().__init__(path, source, timeout_s)
        self._interp: Any = None
        self._method: Any = None
        self._parser: Any = None
        self._args: Any = None

    def load(self) -> None:
        self.attach()
        context = jpype.JClass("org.mozilla.javascript.Context")
        cx = context.enter()
        parser = jpype.JClass("org.mozilla.javascript.json.JsonParser")
        self._parser = parser(cx, cx.initSafeStandardObjects())
        self._interp = jpype.JClass("bsh.Interpreter")()
        try:
            self._interp.eval(jpype.JString(self.source))
        except jpype.JException as exc:
            raise ScriptError(_java_message(exc)) from exc
        for method in self._interp.getNameSpace().getMethods():
            if (
                str(method.getName()) == "enrich"
                and len(method.getParameterTypes()) == 1
            ):
                self._method = method
        if self._method is None:
            raise ScriptError("does not define a method enrich(change)")
        self._args = jpype.JArray(jpype.JObject)(1)

    def call(self, change_json: str) -> Any:
        try:
            self._args[0] = self._parser.parseValue(change_json)
            result = self._method.invoke(self._args, self._interp)
        except jpype.JException as exc:
            raise ScriptError(_java_message(exc)) from exc
        return checked(_from_java(result, depth=0))

    def release(self) -> None:
        if self._parser is not None:
            jpype.JClass("org.mozilla.javascript.Context").exit()
            self._parser = None


def _joined(inputs: Sequence[str], start: int) -> str:
    """``inputs[start:]`` as one string; ScriptError if a text holds _SEP."""
    text = _SEP.join(inputs[start:])
    if text.count(_SEP) != len(inputs) - start - 1:
        bad = next(i for i, t in enumerate(inputs) if i >= start and _SEP in t)
        if bad == start:
            raise ScriptError("change is not JSON: it holds a raw U+001E")
        text = _SEP.join(inputs[start:bad])  # up to it; it fails alone
    return text


def _from_json(text: str) -> Outcome:
    # A Rhino result (JSON text); Java counts UTF-16 units: two at most each.
    chars = len(text)
    if chars > MAX_RESULT_CHARS // 2:
        chars = len(text.encode("utf-16-le")) // 2
    if chars > MAX_RESULT_CHARS:
        return ScriptError(
            f"returned {chars} chars as JSON, expected at most {MAX_RESULT_CHARS}"
        )
    try:
        return checked(json.loads(text))
    except ScriptError as exc:
        return exc


@functools.cache
def _jc(name: str) -> Any:
    """A Java class, looked up once (JClass lookups cost more than the call)."""
    return jpype.JClass(name)


def _from_java(value: Any, depth: int) -> Any:
    """A BeanShell result as a Python value (strings, numbers, maps, lists)."""
    if depth > 8:
        raise ScriptError("returned a value nested deeper than 8 levels")
    if value is None:
        return None
    if isinstance(value, _jc("java.lang.String")):
        return str(value)
    if isinstance(value, _jc("bsh.Primitive")):
        if value.equals(_jc("bsh.Primitive").VOID):
            raise ScriptError("enrich returned nothing")
        return _from_java(value.getValue(), depth)
    return _from_java_object(value, depth)


def _from_java_object(value: Any, depth: int) -> Any:
    if isinstance(value, _jc("java.lang.Character")):
        return str(value)
    if isinstance(value, _jc("java.lang.Boolean")):
        return bool(value)
    if isinstance(value, _jc("java.math.BigDecimal")):
        return str(value.toPlainString())
    if isinstance(value, (_jc("java.lang.Double"), _jc("java.lang.Float"))):
        return float(value)
    if isinstance(value, _jc("java.lang.Number")):
        return int(value.longValue())
    if isinstance(value, _jc("java.util.Map")):
        if value.size() > MAX_RESULT_CHARS:
            raise ScriptError(f"returned a map of {value.size()} entries")
        return {
            str(e.getKey()): _from_java(e.getValue(), depth + 1)
            for e in value.entrySet()
        }
    if isinstance(value, _jc("java.util.List")):
        if value.size() > MAX_RESULT_CHARS:
            raise ScriptError(f"returned a list of {value.size()} items")
        return [_from_java(v, depth + 1) for v in value]
    raise ScriptError(
        f"returned a {value.getClass().getName()}, expected a string, number or map"
    )


_ENGINES: dict[str, type[Engine]] = {
    "python": PythonEngine,
    "javascript": RhinoEngine,
    "beanshell": BeanShellEngine,
}


class _Job:
    """A batch handed to a worker; ``current`` is (index, start) of the item."""

    def __init__(self, inputs: Sequence[str]) -> None:
        self.inputs = inputs
        self.results: list[Outcome] = []
        self.current: tuple[int, float] | None = None
        self.done = threading.Event()


class _Worker(threading.Thread):
    """Owns one engine; runs jobs until told to stop or abandoned."""

    def __init__(self, name: str, engine: Engine) -> None:
        super().__init__(name=f"script-{name}", daemon=True)
        self.engine = engine
        self.jobs: queue.Queue[_Job | None] = queue.Queue()
        self.loaded = threading.Event()
        self.load_error: ScriptError | None = None
        self.abandoned = False

    def run(self) -> None:
        try:
            self._load_and_serve()
        except BaseException:
            if not self.abandoned:
                logger.exception("script worker failed thread=%s", self.name)
        finally:
            self._release()

    def _load_and_serve(self) -> None:
        try:
            self.engine.load()
        except ScriptError as exc:
            self.load_error = exc
        except Exception as exc:
            self.load_error = ScriptError(_short(f"cannot load: {exc}"))
        finally:
            self.loaded.set()
        if self.load_error is not None:
            return
        while (job := self.jobs.get()) is not None and not self.abandoned:
            self._serve(job)

    def _serve(self, job: _Job) -> None:
        index = 0
        while index < len(job.inputs):
            if self.abandoned:
                return
            job.current = (index, time.monotonic())
            try:
                outcomes = self.engine.call_many(job.inputs, index)
            except ScriptError as exc:
                outcomes = [exc]
            except Exception as exc:
                outcomes = [ScriptError(_short(f"failed: {exc}"))]
            job.results += outcomes or [ScriptError("failed: no outcome")]
            index = len(job.results)
        job.current = None
        job.done.set()

    def _release(self) -> None:
        # A stopped thread may refuse to release; it ends anyway.
        with contextlib.suppress(BaseException):
            self.engine.release()


class ScriptRuntime:
    """One configured script: its worker thread and the watchdog around it."""

    def __init__(self, script: ScriptSection, timeout_ms: int) -> None:
        self.name = script.name
        self.language = script.language
        self.path = script.path
        self.timeout_s = timeout_ms / 1000
        self.load_error: ScriptError | None = None
        self.abandoned = 0
        self._source = ""
        self._worker: _Worker | None = None

    def start(self, sample: str) -> None:
        """Load the script and warm it with one call on ``sample`` (JSON).

        A script that cannot be loaded does not raise: it is remembered in
        ``load_error`` and every later call fails with it.
        """
        if self.language != "python":
            jvm.ensure_started()
        try:
            self._source = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            self.load_error = ScriptError(f"cannot read {self.path}: {exc.strerror}")
        warm = self.run_batch([sample])[0]
        if self.load_error is not None:
            logger.error(
                "script not loaded script=%s error=%s", self.name, self.load_error
            )
        elif isinstance(warm, ScriptError):
            logger.warning("script warm-up failed script=%s error=%s", self.name, warm)

    def run_batch(self, inputs: Sequence[str]) -> list[Outcome]:
        """Run ``enrich`` on each change (JSON text), one outcome per change."""
        outcomes: list[Outcome] = []
        pending = list(inputs)
        while pending:
            worker = self._ready_worker()
            if worker is None:
                error = self.load_error or ScriptError("not loaded")
                return outcomes + [error] * len(pending)
            job = _Job(pending)
            worker.jobs.put(job)
            stuck = self._watch(worker, job)
            if stuck is None:
                return outcomes + job.results
            done = job.results[:stuck]
            self._abandon(worker)
            outcomes += done
            if len(done) < stuck:
                # Items that ended inside the stopped hand-off without
                # reporting back: a fresh worker runs them again.
                outcomes += self.run_batch(pending[len(done) : stuck])
            outcomes.append(
                ScriptError(f"timed out after {int(self.timeout_s * 1000)} ms")
            )
            pending = pending[stuck + 1 :]
        return outcomes

    def _ready_worker(self) -> _Worker | None:
        if self.load_error is not None:
            return None
        if self._worker is not None:
            return self._worker
        engine = _ENGINES[self.language](self.path, self._source, self.timeout_s)
        worker = _Worker(self.name, engine)
        worker.start()
        if not worker.loaded.wait(LOAD_LIMIT_S + 1.0):
            self.load_error = ScriptError(f"load took over {LOAD_LIMIT_S:.0f} s")
            self._abandon(worker)
            return None
        if worker.load_error is not None:
            self.load_error = worker.load_error
            return None
        self._worker = worker
        return worker

    def _watch(self, worker: _Worker, job: _Job) -> int | None:
        """Wait for ``job``; return the index of an item over its limit, if any.

        Items of a Java-side loop (``started``) are timed from the first poll
        that sees them; the hand-off's first item from the hand-off itself.
        """
        limit = self.timeout_s + worker.engine.grace_s
        item: tuple[int, float] | None = None  # (index, start)
        while not job.done.wait(min(0.01, limit)):
            current = job.current
            started = worker.engine.started() if current is not None else None
            if current is None or started is None or started <= 1:
                item = current
            elif item is None or item[0] != current[0] + started - 1:
                item = (current[0] + started - 1, time.monotonic())
            if not worker.is_alive():
                return 0 if item is None else item[0]
            if item is not None and time.monotonic() - item[1] > limit:
                return item[0]
        return None

    def _abandon(self, worker: _Worker) -> None:
        worker.abandoned = True
        worker.engine.stop_from_outside(worker)
        worker.jobs.put(None)
        self.abandoned += 1
        if self._worker is worker:
            self._worker = None
        logger.warning(
            "script thread abandoned script=%s abandoned=%d", self.name, self.abandoned
        )

    def close(self) -> None:
        """Let the worker finish and end (it is a daemon thread either way)."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.jobs.put(None)
            worker.join(1.0)


def load(
    scripts: Sequence[ScriptSection], timeout_ms: int, store_id: str
) -> list[ScriptRuntime]:
    """Start every configured script (in order), each warmed once.

    With a BeanShell or JavaScript script, the heap is then settled
    (:func:`settle_heap`).
    """
    sample = json.dumps(sample_change(store_id))
    runtimes = [ScriptRuntime(script, timeout_ms) for script in scripts]
    for runtime in runtimes:
        runtime.start(sample)
    if any(runtime.language != "python" for runtime in runtimes):
        settle_heap()
    return runtimes


def settle_heap() -> None:
    """Collect once, then put every object left out of the collector's reach.

    JPype answers each collection of the JVM's young generation with a full
    Python collection (``PyGC_Collect`` on its "Python Reference Queue"
    thread, holding the GIL). A full collection walks every tracked object,
    so its cost grows with what the process made at start (modules, JPype's
    class wrappers, the scripts): on the enricher that was about an eighth of
    its CPU. Frozen objects (:func:`gc.freeze`) are skipped by every
    collection; refcounting still frees them. What start-up leaves as cyclic
    garbage is collected first, so none of it is kept; a start-up object
    that later ends up in a garbage cycle is never reclaimed (start-up
    objects live as long as the process, but for the first worker of a
    script, if it is abandoned).
    """
    gc.collect()
    gc.freeze()
