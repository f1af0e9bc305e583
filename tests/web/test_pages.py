"""Logging in and out, passwords, API tokens, static assets, and what bad input gets back."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from django.test import Client

from core.models import ApiToken, App, AuditEvent, Container, ContainerState, Release
from core.models.api_token import token_digest

from .conftest import PASSWORD, Acme, deploy, login, make_host, place_containers

pytestmark = pytest.mark.django_db

STATIC = Path(__file__).resolve().parents[2] / "web" / "static" / "web"


# --- log in, log out, password ----------------------------------------------------------


def test_it_logs_in_with_a_password_and_goes_where_it_was_asked(client: Client, acme: Acme) -> None:
    response = client.post("/login/", {"username": "olive", "password": PASSWORD,
                                       "next": "/apps/shop/"})
    assert (response.status_code, response["Location"]) == (302, "/apps/shop/")
    assert client.get("/apps/shop/").status_code == 200


def test_it_refuses_a_wrong_password_with_a_message(client: Client, acme: Acme) -> None:
    response = client.post("/login/", {"username": "olive", "password": "nope"})
    assert response.status_code == 200
    assert b"did not match" in response.content
    assert client.get("/").status_code == 302


def test_it_logs_out_only_on_post(client: Client, acme: Acme) -> None:
    login(client, acme.owner)
    assert client.get("/logout/").status_code == 405
    assert client.post("/logout/")["Location"] == "/login/"
    assert client.get("/").status_code == 302


def test_it_changes_the_password(client: Client, acme: Acme) -> None:
    login(client, acme.owner)
    response = client.post("/account/password/", {
        "old_password": PASSWORD, "new_password1": "a much newer passphrase",
        "new_password2": "a much newer passphrase"})
    assert response.status_code == 302
    acme.owner.refresh_from_db()
    assert acme.owner.check_password("a much newer passphrase")
    assert "Your password was changed." in client.get(response["Location"]).content.decode()


def test_it_explains_a_refused_password_change(client: Client, acme: Acme) -> None:
    login(client, acme.owner)
    response = client.post("/account/password/", {
        "old_password": "wrong", "new_password1": "x", "new_password2": "y"})
    assert response.status_code == 200
    assert b"Your old password was entered incorrectly" in response.content
    acme.owner.refresh_from_db()
    assert acme.owner.check_password(PASSWORD)


# --- API tokens ---------------------------------------------------------------------------


def test_it_shows_a_new_token_once_and_stores_only_its_digest(client: Client, acme: Acme) -> None:
    login(client, acme.member)
    response = client.post("/account/tokens/", {"description": "laptop"})
    assert response.status_code == 201
    page = response.content.decode()
    token = page.split('<code id="new-token">')[1].split("</code>")[0]
    assert token.startswith("paas_") and len(token) == 45
    row = ApiToken.objects.get(user=acme.member)
    assert row.digest == token_digest(token) and row.description == "laptop"
    assert token not in client.get("/account/tokens/").content.decode()


def test_it_revokes_a_token(client: Client, acme: Acme) -> None:
    login(client, acme.member)
    client.post("/account/tokens/", {"description": "ci"})
    row = ApiToken.objects.get(user=acme.member)
    response = client.post(f"/account/tokens/{row.pk}/revoke/")
    assert response.status_code == 303
    row.refresh_from_db()
    assert row.revoked_at is not None
    assert "revoked" in client.get("/account/tokens/").content.decode()


def test_it_refuses_an_overlong_token_description_with_a_message(client: Client,
                                                                 acme: Acme) -> None:
    login(client, acme.member)
    response = client.post("/account/tokens/", {"description": "x" * 201}, follow=True)
    assert "Description must be text of at most 200 characters." in response.content.decode()
    assert not ApiToken.objects.filter(user=acme.member).exists()


# --- bad input gets a clear message, never a traceback ----------------------------------


@pytest.mark.parametrize(("url", "data", "message"), [
    ("/apps/", {"name": "Bad Name", "team": "acme"}, "App name must be 3 to 30 lowercase"),
    ("/apps/", {"name": "shop", "team": "acme"}, "The app name &#x27;shop&#x27; is taken."),
    ("/apps/shop/config/set/", {"key": "1BAD", "value": "x"}, "config key"),
    ("/apps/shop/scale/", {"type": "web", "quantity-web": "many"}, "Quantity must be a whole number"),
    ("/apps/shop/scale/", {"type": "web", "quantity-web": "1", "size-web": "huge"}, "ize"),
    ("/apps/shop/releases/rollback/", {"version": "v99"}, "Release v99 of &#x27;shop&#x27; not found."),
    ("/apps/shop/releases/rollback/", {"version": "latest"}, "is not a release version"),
    ("/apps/shop/domains/add/", {"hostname": "not a host"}, "ostname"),
    ("/teams/", {"name": "Bad Team!"}, "Name must be 1 to 40 lowercase"),
    ("/teams/acme/members/", {"user": "nobody@example.com", "role": "member"},
     "No user with the e-mail address"),
    ("/teams/acme/members/", {"user": "sam", "role": "emperor"}, "Role must be one of"),
    ("/teams/acme/members/olive/role/", {"role": "viewer"}, "last owner"),
])
def test_it_explains_bad_input_in_words(client: Client, acme: Acme, url: str,
                                        data: dict[str, str], message: str) -> None:
    deploy(acme.app, acme.member)
    login(client, acme.owner)
    response = client.post(url, data, follow=True)
    body = response.content.decode()
    assert response.status_code in (200, 404), body[:300]
    assert message.lower() in body.lower(), body[:3000]
    assert "Traceback" not in body


def test_it_says_when_there_is_nothing_to_roll_back_to(client: Client, acme: Acme) -> None:
    login(client, acme.owner)
    response = client.post("/apps/shop/releases/rollback/", {}, follow=True)
    assert "has only v1: there is nothing to roll back to." in response.content.decode()
    assert Release.objects.filter(app=acme.app).count() == 1


def test_it_refuses_get_on_forms(client: Client, acme: Acme) -> None:
    login(client, acme.owner)
    assert client.get("/apps/shop/scale/").status_code == 405
    assert client.get("/apps/shop/config/set/").status_code == 405


# --- what the pages say --------------------------------------------------------------------


def test_it_lists_apps_with_status_release_processes_and_url(client: Client, acme: Acme) -> None:
    deploy(acme.app, acme.member)
    host = make_host()
    place_containers(acme.app, host, [ContainerState.READY, ContainerState.FAILED])
    page = login(client, acme.viewer).get("/").content.decode()
    assert "shop" in page and "crashing" in page and "Stopped or failed: web.2." in page
    assert "v2" in page and "web</span> 1/1" in page and "http://shop.localhost" in page
    assert "sams-blog" not in page


def test_it_shows_each_container_with_host_state_uptime_and_restarts(client: Client,
                                                                     acme: Acme) -> None:
    deploy(acme.app, acme.member)
    place_containers(acme.app, make_host("node-7"), [ContainerState.READY, ContainerState.READY])
    page = login(client, acme.viewer).get("/apps/shop/").content.decode()
    assert page.count("node-7") == 2 and "web.1" in page and "web.2" in page
    assert re.search(r">5m \d{1,2}s<", page)  # web.1 started five minutes ago
    assert "no data yet" in page  # memory and CPU until the agents report them


def test_it_records_who_changed_what_in_the_activity_log(client: Client, acme: Acme) -> None:
    login(client, acme.member)
    client.post("/apps/shop/config/set/", {"key": "MODE", "value": "fast"})
    event = AuditEvent.objects.filter(app=acme.app, action="config.set").get()
    assert event.actor == acme.member
    app_page = login(client, acme.viewer).get("/apps/shop/events/").content.decode()
    team_page = client.get("/teams/acme/events/").content.decode()
    for page in (app_page, team_page):
        assert "config.set" in page and "mia" in page
        assert "fast" not in page  # values never reach the audit log


def test_it_shows_the_hosts_containers_without_naming_other_teams_apps(
    client: Client, acme: Acme
) -> None:
    host = make_host("shared")
    deploy(acme.app, acme.member)
    deploy(acme.stranger_app, acme.stranger)
    place_containers(acme.app, host, [ContainerState.READY])
    place_containers(acme.stranger_app, host, [ContainerState.READY])
    page = login(client, acme.viewer).get("/hosts/").content.decode()
    assert "shop" in page and "sams-blog" not in page
    assert "And 1 container of other teams' apps." in page
    staff_page = login(client, acme.staff).get("/hosts/").content.decode()
    assert "sams-blog" in staff_page and "Drain" in staff_page
    assert Container.objects.count() == 2


def test_it_creates_a_team_whose_creator_is_owner(client: Client, acme: Acme) -> None:
    response = login(client, acme.stranger).post("/teams/", {"name": "sams-crew"})
    assert response["Location"] == "/teams/sams-crew/"
    page = client.get("/teams/sams-crew/").content.decode()
    assert "Your role: owner" in page


def test_it_takes_an_app_name_that_looks_like_a_word_of_the_dashboard(client: Client,
                                                                      acme: Acme) -> None:
    login(client, acme.owner)
    response = client.post("/apps/", {"name": "new", "team": "acme"})
    assert response["Location"] == "/apps/new/"
    assert client.get("/apps/new/").status_code == 200
    assert App.objects.filter(name="new").exists()


# --- static assets ------------------------------------------------------------------------


def test_it_serves_its_own_htmx_with_the_licence_beside_it(client: Client) -> None:
    response = client.get("/static/web/vendor/htmx/htmx.min.js")
    assert response.status_code == 200
    assert response["Content-Type"].split(";")[0] in ("text/javascript", "application/javascript")
    body = b"".join(response.streaming_content)  # type: ignore[attr-defined]
    recorded = (STATIC / "vendor" / "htmx" / "README").read_text()
    assert hashlib.sha256(body).hexdigest() in recorded
    assert "Zero-Clause BSD" in (STATIC / "vendor" / "htmx" / "LICENSE").read_text()


def test_it_serves_the_stylesheet_with_caching_and_answers_conditional_requests(
    client: Client
) -> None:
    first = client.get("/static/web/app.css")
    assert first.status_code == 200 and "max-age=" in first["Cache-Control"]
    again = client.get("/static/web/app.css", HTTP_IF_MODIFIED_SINCE=first["Last-Modified"])
    assert again.status_code == 304


@pytest.mark.parametrize("path", ["/static/web/nope.css", "/static/../settings.py",
                                  "/static/web/../../views/apps.py", "/static//etc/passwd"])
def test_it_serves_nothing_outside_its_static_files(client: Client, path: str) -> None:
    assert client.get(path).status_code == 404


def test_it_links_no_asset_from_another_site(client: Client, acme: Acme) -> None:
    page = login(client, acme.owner).get("/").content.decode()
    for attribute in ('src="http', "src=\"//", 'href="//'):
        assert attribute not in page
    assert '<link rel="stylesheet" href="/static/web/app.css">' in page


def test_it_wants_the_apps_name_typed_before_destroying_it(client: Client, acme: Acme) -> None:
    login(client, acme.owner)
    response = client.post("/apps/shop/destroy/", {"confirm": "shp"}, follow=True)
    assert "Type the app&#x27;s name, shop, to confirm destroying it." in response.content.decode()
    assert App.objects.filter(name="shop").exists()


def test_it_keeps_a_team_that_still_has_apps(client: Client, acme: Acme) -> None:
    login(client, acme.owner)
    response = client.post("/teams/acme/delete/", follow=True)
    assert "still has apps (shop)" in response.content.decode()


def test_it_sends_an_expired_htmx_poll_to_the_login_page_as_a_whole_page(client: Client,
                                                                       acme: Acme) -> None:
    response = client.get("/apps/shop/logs/?after=0-0", HTTP_HX_REQUEST="true",
                          HTTP_HX_CURRENT_URL="http://testserver/apps/shop/logs/")
    assert response.status_code == 200 and response.content == b""
    assert response["HX-Redirect"] == "/login/?next=%2Fapps%2Fshop%2Flogs%2F"


def test_it_lists_builds_with_commit_state_author_and_duration(client: Client, acme: Acme) -> None:
    from datetime import timedelta

    from core.models import Build

    deploy(acme.app, acme.member)
    build = Build.objects.get(app=acme.app)
    Build.objects.filter(pk=build.pk).update(finished_at=build.started_at + timedelta(seconds=125))
    page = login(client, acme.viewer).get("/apps/shop/builds/").content.decode()
    assert "89abcde" in page and "succeeded" in page and "mia" in page and "2m 5s" in page
    detail = client.get(f"/apps/shop/builds/{build.pk}/").content.decode()
    assert "Python app detected" in detail and "took 2m 5s" in detail


@pytest.mark.parametrize(("method", "url", "data"), [
    ("post", "/account/tokens/", {"description": "a\x00b"}),
    ("post", "/teams/acme/members/", {"user": "a\x00b", "role": "member"}),
    ("post", "/apps/", {"name": "abc", "team": "a\x00b"}),
    ("post", "/apps/shop/domains/remove/", {"hostname": "a\x00b"}),
    ("get", "/apps/shop/config/a%00b/reveal/", {}),
])
def test_it_refuses_nul_characters_with_a_message(client: Client, acme: Acme, method: str,
                                                  url: str, data: dict[str, str]) -> None:
    response = getattr(login(client, acme.owner), method)(url, data)
    assert response.status_code == 400
    assert b"Input may not contain NUL characters." in response.content


@pytest.mark.parametrize(("path", "title"), [("/apps/shop/", "shop · paas"),
                                             ("/teams/acme/", "acme · paas")])
def test_it_titles_pages_with_plain_text_even_for_those_who_may_destroy(
    client: Client, acme: Acme, path: str, title: str
) -> None:
    page = login(client, acme.owner).get(path).content.decode()
    found = re.search(r"<title>(.*?)</title>", page, re.S)
    assert found is not None and found.group(1).strip() == title
