"""The page in a real Chromium, over TLS, with the whole relay running.

Debian's chromium driven by Playwright; the relay is a devstack Stack (five
leg processes, Kafka, PostgreSQL, the emulator); the page is served by
``python -m webui.server`` as systemd would run it. Screenshots of every
page go to artifacts/screenshots/.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from appliance.devstack import Services, Stack

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
PASSWORD = "Prix-du-jour-2026!"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(what: str, check: Any, timeout_s: float, every_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"{what} not seen within {timeout_s}s")


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    sys.path.insert(0, str(REPO / "scripts"))
    import services

    from appliance.emulator import workload

    stack = Stack(
        Services.from_state(services.ensure_up()),
        tmp_path_factory.mktemp("webui"),
        name="webui",
        store_id="MQ09",
    )
    stack.prepare()
    stack.start_legs()
    try:
        emulator = stack.emulator()
        workload.seed_store(emulator, articles=40, seed=3)
        workload.run(emulator, rate_per_s=2000, changes=300, seed=4)
        stack.wait_drained(timeout_s=120)
        yield stack
        # The command runner in every leg leaves SIGTERM handling intact.
        stopped = stack.stop_legs(timeout_s=30)
        assert all(code == 0 for code, _ in stopped.values()), stopped
    finally:
        stack.close()


@pytest.fixture(scope="module")
def page_server(relay: Stack) -> Iterator[tuple[str, Path]]:
    """The web page served over TLS; yields its URL and its stderr file."""
    port = _free_port()
    state_dir = relay.workdir / "webui-state"
    err = relay.workdir / "webui.stderr"
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    env["APPLIANCE_WEBUI__PORT"] = str(port)
    env["APPLIANCE_WEBUI__STATE_DIR"] = str(state_dir)
    with err.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "webui.server", "--config", str(relay.box_config)],
            stdout=out,
            stderr=out,
            env=env,
        )
    try:
        _wait("the page's port", lambda: _listening(port), 30, 0.2)
        yield f"https://127.0.0.1:{port}", err
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0
    key = state_dir / "tls.key"
    assert key.stat().st_mode & 0o777 == 0o600


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_technician_sets_up_logs_in_and_resends_a_table(
    relay: Stack, page_server: tuple[str, Path]
) -> None:
    """Setup code -> password -> state -> re-send PRIX -> ODH whole -> audit."""
    from playwright.sync_api import sync_playwright

    base, stderr = page_server
    code = re.findall(r"setup code: (\S+)", stderr.read_text())[-1]
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=ARGS
        )
        ctx = browser.new_context(ignore_https_errors=True, locale="fr-FR")
        page = ctx.new_page()
        page.set_default_timeout(15_000)

        # First access: only the setup form, which wants the console's code.
        reply = page.goto(base + "/")
        assert reply is not None
        assert "default-src 'self'" in reply.headers["content-security-policy"]
        assert page.url.endswith("/setup")
        page.screenshot(path=str(SHOTS / "setup.png"), full_page=True)
        page.fill("input[name=code]", code)
        page.fill("input[name=user]", "technicien")
        page.fill("input[name=password]", PASSWORD)
        page.fill("input[name=confirm]", PASSWORD)
        page.click("#setup")
        assert page.locator("#api-token").inner_text()
        page.click("#continue")

        page.fill("input[name=user]", "technicien")
        page.fill("input[name=password]", "pas le bon mot")
        page.click("#login")
        assert "incorrect" in page.content()
        page.screenshot(path=str(SHOTS / "login.png"), full_page=True)
        page.fill("input[name=user]", "technicien")
        page.fill("input[name=password]", PASSWORD)
        page.click("#login")
        cookies = {c["name"]: c for c in ctx.cookies()}
        session = cookies["__Host-appliance"]
        assert session["secure"] and session["httpOnly"]
        assert session["sameSite"] == "Strict"

        # The state: four legs running, nothing behind, French by default.
        page.goto(base + "/")
        for leg in ("miner", "transformer", "enricher", "shipper"):
            cell = page.locator(f"tr[data-leg={leg}] td.state")
            assert cell.inner_text() == "en marche", leg
        assert int(page.locator("tr[data-leg=enricher] td.count").inner_text()) > 0
        assert page.locator("#lag-entries").inner_text() == "0"
        page.screenshot(path=str(SHOTS / "overview.png"), full_page=True)
        for name in ("journal", "outbox", "dead-letters"):
            page.goto(f"{base}/{name}")
            page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
        assert "QSQJRN" in page.goto(base + "/journal").text()  # type: ignore[union-attr]

        # Behind the relay's back, a price disappears from the ODH.
        conninfo = relay.services.conninfo(relay.odh_db)
        with psycopg.connect(conninfo, autocommit=True) as pg:
            row = pg.execute(
                "DELETE FROM odh.prix WHERE (store_id, pk) IN (SELECT store_id, pk"
                " FROM odh.prix WHERE store_id = %s AND NOT deleted LIMIT 1)"
                " RETURNING pk",
                (relay.store_id,),
            ).fetchone()
        assert row is not None
        assert not relay.compare()["PRIX"]["equal"]

        # Re-send PRIX from the Actions page.
        page.goto(base + "/actions")
        page.select_option("#resend select[name=table]", "PRIX")
        page.click("#resend button[type=submit]")
        assert "commande" in page.locator(".flash.info").inner_text()
        page.screenshot(path=str(SHOTS / "actions.png"), full_page=True)

        _wait("PRIX whole again", lambda: relay.compare()["PRIX"]["equal"], 60)
        report = relay.compare()
        assert all(item["equal"] for item in report.values()), report
        counts = relay.counts()
        assert counts["hub.applied"] == counts["hub.applied_distinct"]

        def audited() -> bool:
            page.goto(base + "/audit")
            outcome = page.locator("#audit tr", has_text="resend").first
            return "done" in outcome.inner_text()

        _wait("the re-send in the audit log", audited, 20)
        assert "technicien" in page.locator("#audit").inner_text()
        page.screenshot(path=str(SHOTS / "audit.png"), full_page=True)

        # The guardian's page: a check of PRIX, confirmed, queued and audited.
        page.goto(base + "/")
        page.click("header nav >> text=Gardien")
        assert page.locator("h1").inner_text() == "Gardien"
        page.screenshot(path=str(SHOTS / "guardian.png"), full_page=True)
        page.select_option("#guardian-check select[name=table]", "PRIX")
        page.click("#guardian-check button[type=submit]")
        assert "PRIX" in page.locator("#guardian-plan").inner_text()
        page.screenshot(path=str(SHOTS / "guardian-confirm.png"), full_page=True)
        page.click("#guardian-confirm")
        assert "commande" in page.locator(".flash.info").inner_text()
        page.goto(base + "/audit")
        assert "check" in page.locator("#audit").inner_text()

        # English on request.
        page.goto(base + "/")
        page.click("text=English")
        assert page.locator("h1").inner_text() == "Overview"

        # Logging out ends the session on the server, not only in the browser.
        saved = ctx.cookies()
        page.click("text=Log out")
        assert page.url.endswith("/login")
        ctx.add_cookies(saved)  # type: ignore[arg-type]
        page.goto(base + "/")
        assert page.url.endswith("/login")
        browser.close()
