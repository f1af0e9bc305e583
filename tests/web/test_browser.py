"""The dashboard driven by a real browser (Debian's headless Chromium) against a live server:
log in, create an app, set a config var, scale, roll back, open the hosts page. Each main page is
photographed into test-artifacts/screenshots/, on a laptop-sized and a phone-sized screen."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import connections

from core import actions
from core.models import App, ContainerState, Formation, Host, HostState, Release
from router.metrics import logs_key
from web import live

from .conftest import (
    PASSWORD,
    delete_keys,
    deploy,
    make_acme,
    make_host,
    place_containers,
    seed_live_data,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def orm_in_test(browser: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Playwright's sync API keeps an event loop in this thread; the test's own database reads
    # are still plain synchronous code (the live server answers in its own thread).
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    yield
    # With that loop running, Django keeps the test's connection per context, not per thread:
    # close it here, while the loop still runs, or PostgreSQL keeps a session to the test
    # database open past its teardown.
    connections.close_all()


def shoot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_it_walks_through_login_create_config_scale_rollback_and_hosts(
    live_server: Any, browser: Any, orm_in_test: None, request: pytest.FixtureRequest
) -> None:
    acme = make_acme()
    host = make_host("node-1")
    make_host("node-2", address="192.0.2.11", memory_mb_used=7600, cpus_used=3.8)
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # the confirmations before rollback etc.

    # Log in.
    page.goto(f"{live_server.url}/apps/shop/")
    assert "/login/" in page.url
    shoot(page, "login")
    page.get_by_label("User name").fill("olive")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Log in").click()
    assert page.get_by_role("alert").inner_text().startswith("Your user name and password did not")
    page.get_by_label("User name").fill("olive")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/apps/shop/$"))

    # Create an app.
    page.goto(f"{live_server.url}/")
    page.get_by_label("Name").fill("storefront")
    page.get_by_label("Team").select_option("acme")
    page.get_by_role("button", name="Create app").click()
    page.wait_for_url(re.compile(r"/apps/storefront/$"))
    assert "Created storefront in team acme." in page.get_by_role("status").first.inner_text()
    app = App.objects.get(name="storefront")
    assert app.team == acme.team and app.current_release().version == 1

    # Set a config var; its value is masked until revealed.
    page.get_by_role("link", name="Config").click()
    page.wait_for_url(re.compile(r"/apps/storefront/config/$"))
    page.get_by_label("Key").fill("GREETING")
    page.get_by_label("Value").fill("hello from the browser")
    page.get_by_role("button", name="Set", exact=True).click()
    page.wait_for_url(re.compile(r"/apps/storefront/config/$"))
    assert "Set GREETING: made v2." in page.get_by_role("status").first.inner_text()
    assert "hello from the browser" not in page.content()
    page.get_by_role("button", name="Reveal the value of GREETING").click()
    page.get_by_text("hello from the browser").wait_for()
    assert app.config() == {"GREETING": "hello from the browser"}
    shoot(page, "app-config")

    # A git push (recorded through the build actions) gives the app process types to scale.
    deploy(app, acme.owner)
    place_containers(app, host, [ContainerState.READY, ContainerState.STARTING])
    live_keys = seed_live_data("storefront", time.time())
    request.addfinalizer(lambda: delete_keys(live_keys))
    page.get_by_role("link", name="Overview").click()
    page.wait_for_url(re.compile(r"/apps/storefront/$"))
    page.get_by_label("Quantity of web").fill("3")
    page.get_by_label("Size of web").fill("1G")
    page.get_by_role("button", name="Apply scale").click()
    page.wait_for_url(re.compile(r"/apps/storefront/$"))
    assert "Scaled web to 3 \N{MULTIPLICATION SIGN} 1G, worker to 0 \N{MULTIPLICATION SIGN} basic." in page.get_by_role("status").first.inner_text()
    web = Formation.objects.get(app=app, type="web")
    assert (web.quantity, web.size, web.memory_mb) == (3, "1G", 1024)
    page.locator("#metrics figure").first.wait_for()
    shoot(page, "app-overview")

    # Roll back to v2 (the config-only release), confirming first.
    page.get_by_role("link", name="Releases").click()
    page.wait_for_url(re.compile(r"/apps/storefront/releases/$"))
    assert Release.objects.filter(app=app).count() == 3
    page.get_by_role("button", name="Roll back to v2").click()
    page.wait_for_url(re.compile(r"/apps/storefront/releases/$"))
    assert "Rolled back: made v4 (Rollback to v2)." in page.get_by_role("status").first.inner_text()
    assert app.current_release().description == "Rollback to v2"
    shoot(page, "app-releases")

    # A build that is still running streams its output into the open page.
    running = actions.build_create(actor=acme.owner, app=app, commit="e" * 40)
    build_stream = live.build_logs_key(running.pk)
    request.addfinalizer(lambda: delete_keys([build_stream]))
    r = redis.Redis.from_url(settings.REDIS_URL)
    r.xadd(build_stream, {"tag": "build", "line": "-----> Python app detected"})
    page.get_by_role("link", name="Builds").click()
    page.wait_for_url(re.compile(r"/apps/storefront/builds/$"))
    shoot(page, "app-builds")
    page.get_by_role("link", name=f"#{running.pk}").click()
    page.get_by_text("Python app detected").wait_for()
    r.xadd(build_stream, {"tag": "build", "line": "-----> Installing requirements"})
    page.get_by_text("Installing requirements").wait_for(timeout=15_000)
    shoot(page, "app-build-running")
    page.go_back()
    page.get_by_role("link", name="Logs").click()
    page.get_by_text("GET /items/3 200").last.wait_for()
    shoot(page, "app-logs")
    # A new line shows up without a reload (htmx polls for lines after the last one shown).
    redis.Redis.from_url(settings.REDIS_URL).xadd(
        logs_key("storefront"), {"time": str(time.time()), "tag": "app[web.1]",
                                 "line": "a line written while the page was open"})
    page.get_by_text("a line written while the page was open").wait_for(timeout=15_000)
    assert page.get_by_text("a line written while the page was open").count() == 1
    page.get_by_role("link", name="Activity").click()
    page.wait_for_url(re.compile(r"/apps/storefront/events/$"))
    assert page.get_by_text("release.rollback").count() == 1
    shoot(page, "app-activity")

    # The hosts page, and the apps list with the new app's status.
    page.get_by_role("link", name="Hosts").click()
    page.wait_for_url(re.compile(r"/hosts/$"))
    page.get_by_role("heading", name="node-1").wait_for()
    assert page.get_by_role("meter").count() == 4
    shoot(page, "hosts")
    page.get_by_role("link", name="Apps", exact=True).click()
    page.wait_for_url(f"{live_server.url}/")
    page.get_by_role("link", name="storefront", exact=True).wait_for()
    shoot(page, "apps")
    page.get_by_role("link", name="Teams").click()
    page.wait_for_url(re.compile(r"/teams/$"))
    page.get_by_role("link", name="acme", exact=True).click()
    page.wait_for_url(re.compile(r"/teams/acme/$"))
    shoot(page, "team")
    page.get_by_role("link", name="Account").click()
    page.wait_for_url(re.compile(r"/account/tokens/$"))
    page.get_by_label("Description").fill("laptop")
    page.get_by_role("button", name="Create token").click()
    token = page.locator("#new-token").inner_text()
    assert token.startswith("paas_")
    shoot(page, "tokens")

    # The same pages on a phone-sized screen.
    phone = browser.new_context(viewport=PHONE, storage_state=context.storage_state())
    small = phone.new_page()
    for name, path in (("apps", "/"), ("app-overview", "/apps/storefront/"),
                       ("app-releases", "/apps/storefront/releases/"),
                       ("app-config", "/apps/storefront/config/"), ("team", "/teams/acme/"),
                       ("hosts", "/hosts/")):
        small.goto(f"{live_server.url}{path}")
        if name == "app-overview":
            small.locator("#metrics figure").first.wait_for()
        shoot(small, f"phone-{name}")
    phone.close()
    # And once in the dark colour scheme.
    dark = browser.new_context(viewport=LAPTOP, color_scheme="dark",
                               storage_state=context.storage_state())
    night = dark.new_page()
    night.goto(f"{live_server.url}/apps/storefront/")
    night.locator("#metrics figure").first.wait_for()
    shoot(night, "dark-app-overview")
    dark.close()
    context.close()


def test_it_logs_out_with_the_keyboard(live_server: Any, browser: Any, orm_in_test: None) -> None:
    make_acme()
    page = browser.new_page(viewport=LAPTOP)
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("User name").fill("vic")
    page.get_by_label("Password").fill(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{live_server.url}/")
    page.keyboard.press("Tab")  # the skip link comes first
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.get_by_role("button", name="Log out").focus()
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/login/$"))
    page.goto(f"{live_server.url}/hosts/")
    assert "/login/?next=/hosts/" in page.url


def test_it_lets_staff_drain_a_host_after_confirming(live_server: Any, browser: Any,
                                                    orm_in_test: None) -> None:
    make_acme()
    make_host("node-1")
    page = browser.new_page(viewport=LAPTOP)
    questions: list[str] = []

    def answer(dialog: Any) -> None:
        questions.append(dialog.message)
        dialog.dismiss() if len(questions) == 1 else dialog.accept()

    page.on("dialog", answer)
    page.goto(f"{live_server.url}/login/?next=/hosts/")
    page.get_by_label("User name").fill("ops")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/hosts/$"))
    page.get_by_role("button", name="Drain node-1").click()  # dismissed: nothing happens
    assert Host.objects.get(name="node-1").state == HostState.READY
    page.get_by_role("button", name="Drain node-1").click()
    page.wait_for_url(re.compile(r"/hosts/$"))
    page.get_by_text("Draining node-1").wait_for()
    assert questions[0].startswith("Drain node-1?")
    assert Host.objects.get(name="node-1").state == HostState.DRAINING
    assert page.get_by_role("button", name="Drain node-1").count() == 0


LABELLED_PAGES = ["/", "/apps/shop/", "/apps/shop/config/", "/apps/shop/domains/",
                  "/apps/shop/releases/", "/teams/acme/", "/account/tokens/", "/account/password/",
                  "/hosts/"]


def test_it_labels_every_control_for_assistive_technology(live_server: Any, browser: Any,
                                                          orm_in_test: None) -> None:
    acme = make_acme()
    deploy(acme.app, acme.owner)
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("User name").fill("olive")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{live_server.url}/")
    unnamed: dict[str, list[str]] = {}
    for path in LABELLED_PAGES:
        page.goto(f"{live_server.url}{path}")
        assert page.locator("h1").count() == 1, path
        assert page.locator("main#main").count() == 1, path
        unnamed[path] = _unlabelled_controls(page)
    assert unnamed == {path: [] for path in LABELLED_PAGES}
    context.close()


def _unlabelled_controls(page: Any) -> list[str]:
    return page.evaluate("""() => {
        const controls = document.querySelectorAll(
            'input:not([type=hidden]), select, textarea, button, a[href], summary');
        return [...controls].filter(el => {
            const labelled = (el.labels && el.labels.length) || el.getAttribute('aria-label')
                || el.getAttribute('aria-labelledby') || el.textContent.trim();
            return !labelled;
        }).map(el => el.outerHTML.slice(0, 120));
    }""")
