"""Every dashboard page and form, for every role in the app's team and for a stranger: the
dashboard allows exactly what the API's roles table allows (docs/api.md, Roles)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from core import actions
from core.models import (
    ApiToken,
    App,
    ConfigVar,
    Domain,
    Formation,
    Host,
    HostState,
    Membership,
    Release,
    Team,
)

from .conftest import PERSONAS, Acme, deploy, login, make_host

pytestmark = pytest.mark.django_db

# The roles table of docs/api.md, written out here on purpose (not read from core.authz), so a
# change on either side shows up as a failing test.
MAY_DEPLOY = {"owner", "admin", "member"}
MAY_READ_CONFIG = {"owner", "admin", "member"}
MAY_MANAGE_APPS = {"owner", "admin"}
MAY_MANAGE_MEMBERS = {"owner", "admin"}
MAY_MANAGE_OWNERS = {"owner"}
IN_TEAM = {"owner", "admin", "member", "viewer"}

APP_PAGES = [
    "/apps/shop/", "/apps/shop/metrics/", "/apps/shop/releases/", "/apps/shop/builds/",
    "/apps/shop/builds/{build}/", "/apps/shop/config/", "/apps/shop/domains/",
    "/apps/shop/logs/", "/apps/shop/events/",
]
TEAM_PAGES = ["/teams/acme/", "/teams/acme/events/"]
OWN_PAGES = ["/", "/teams/", "/hosts/", "/account/tokens/", "/account/password/"]


@pytest.fixture
def shop(acme: Acme) -> Acme:
    deploy(acme.app, acme.member)
    actions.config_set(actor=acme.owner, app=acme.app, values={"SECRET": "s3cret-value"})
    actions.domain_add(actor=acme.owner, app=acme.app, hostname="shop.example.com")
    return acme


def _url(template: str, acme: Acme) -> str:
    return template.format(build=acme.app.builds.get().pk)


@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize("page", APP_PAGES + TEAM_PAGES)
def test_it_shows_app_and_team_pages_to_the_team_and_hides_them_from_strangers(
    client: Client, shop: Acme, persona: str, page: str
) -> None:
    response = login(client, shop.user(persona)).get(_url(page, shop))
    if persona in IN_TEAM:
        assert response.status_code == 200
    else:
        assert response.status_code == 404
        assert b"not found" in response.content
        assert b"s3cret-value" not in response.content


@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize("page", OWN_PAGES)
def test_it_shows_every_user_their_own_pages(client: Client, shop: Acme, persona: str,
                                             page: str) -> None:
    assert login(client, shop.user(persona)).get(page).status_code == 200


@pytest.mark.parametrize("page", APP_PAGES + TEAM_PAGES + OWN_PAGES)
def test_it_sends_anonymous_visitors_to_the_login_page(client: Client, shop: Acme,
                                                       page: str) -> None:
    response = client.get(_url(page, shop))
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=")


@pytest.mark.parametrize("page", [*APP_PAGES, "/apps/shop/config/SECRET/reveal/"])
def test_it_hides_another_teams_app_even_from_an_owner(client: Client, acme: Acme,
                                                       page: str) -> None:
    """acme's owner looks at sam's app: every page answers as if it did not exist."""
    deploy(acme.stranger_app, acme.stranger)
    actions.config_set(actor=acme.stranger, app=acme.stranger_app, values={"SECRET": "sams"})
    url = page.replace("/apps/shop/", "/apps/sams-blog/").format(
        build=acme.stranger_app.builds.get().pk)
    response = login(client, acme.owner).get(url)
    assert response.status_code == 404
    assert b"App &#x27;sams-blog&#x27; not found." in response.content


@pytest.mark.parametrize(("form", "data"), [
    ("config/set/", {"key": "X", "value": "1"}), ("config/unset/", {"key": "SECRET"}),
    ("scale/", {"type": "web", "quantity-web": "3"}), ("releases/rollback/", {"version": "1"}),
    ("domains/add/", {"hostname": "evil.example"}), ("domains/remove/", {"hostname": "x.example"}),
    ("destroy/", {"confirm": "sams-blog"}),
])
def test_it_refuses_every_form_on_another_teams_app_as_if_it_did_not_exist(
    client: Client, acme: Acme, form: str, data: dict[str, str]
) -> None:
    deploy(acme.stranger_app, acme.stranger)
    before = (Release.objects.count(), Domain.objects.count(), App.objects.count())
    response = login(client, acme.owner).post(f"/apps/sams-blog/{form}", data)
    assert response.status_code == 404
    assert (Release.objects.count(), Domain.objects.count(), App.objects.count()) == before


def test_it_hides_another_teams_team_pages(client: Client, acme: Acme) -> None:
    c = login(client, acme.owner)
    for url in ("/teams/sam/", "/teams/sam/events/"):
        assert c.get(url).status_code == 404
    assert c.post("/teams/sam/members/", {"user": "olive", "role": "owner"}).status_code == 404
    assert not Membership.objects.filter(team__name="sam", user=acme.owner).exists()


def test_it_answers_an_unknown_app_like_a_hidden_one(client: Client, acme: Acme) -> None:
    hidden = login(client, acme.owner).get("/apps/sams-blog/")
    unknown = client.get("/apps/no-such-app/")
    assert (hidden.status_code, unknown.status_code) == (404, 404)
    assert b"App &#x27;no-such-app&#x27; not found." in unknown.content


@pytest.mark.parametrize("persona", PERSONAS)
def test_it_reveals_config_values_only_to_roles_that_may_read_them(
    client: Client, shop: Acme, persona: str
) -> None:
    response = login(client, shop.user(persona)).get("/apps/shop/config/SECRET/reveal/",
                                                      HTTP_HX_REQUEST="true")
    if persona in MAY_READ_CONFIG:
        assert response.status_code == 200 and b"s3cret-value" in response.content
    elif persona in IN_TEAM:
        assert response.status_code == 403
        assert b"Viewers may not read config values." in response.content
    else:
        assert response.status_code == 404
    assert b"s3cret-value" not in login(client, shop.user(persona)).get("/apps/shop/config/").content


def _expect(response: Any, persona: str, allowed: set[str]) -> bool:
    """Check the status for `persona`; return whether the change was allowed."""
    if persona in allowed:
        assert response.status_code == 303, response.content[:500]
        return True
    assert response.status_code == (403 if persona in IN_TEAM else 404), response.content[:500]
    return False


def _releases(acme: Acme) -> int:
    return Release.objects.filter(app=acme.app).count()


@pytest.mark.parametrize("persona", PERSONAS)
def test_it_sets_config_only_for_roles_that_may_deploy(client: Client, shop: Acme,
                                                       persona: str) -> None:
    before = _releases(shop)
    response = login(client, shop.user(persona)).post(
        "/apps/shop/config/set/", {"key": "COLOUR", "value": "blue"})
    if _expect(response, persona, MAY_DEPLOY):
        assert shop.app.config()["COLOUR"] == "blue"
        assert _releases(shop) == before + 1
    else:
        assert "COLOUR" not in shop.app.config() and _releases(shop) == before


@pytest.mark.parametrize("persona", PERSONAS)
def test_it_unsets_config_only_for_roles_that_may_deploy(client: Client, shop: Acme,
                                                         persona: str) -> None:
    response = login(client, shop.user(persona)).post("/apps/shop/config/unset/", {"key": "SECRET"})
    allowed = _expect(response, persona, MAY_DEPLOY)
    assert ConfigVar.objects.filter(app=shop.app, key="SECRET").exists() is not allowed


@pytest.mark.parametrize("persona", PERSONAS)
def test_it_scales_only_for_roles_that_may_deploy(client: Client, shop: Acme, persona: str) -> None:
    response = login(client, shop.user(persona)).post("/apps/shop/scale/", {
        "type": ["web", "worker"], "quantity-web": "4", "size-web": "basic",
        "quantity-worker": "2", "size-worker": "256M"})
    allowed = _expect(response, persona, MAY_DEPLOY)
    quantities = dict(Formation.objects.filter(app=shop.app).values_list("type", "quantity"))
    assert quantities == ({"web": 4, "worker": 2} if allowed else {"web": 1, "worker": 0})


@pytest.mark.parametrize("persona", PERSONAS)
def test_it_rolls_back_only_for_roles_that_may_deploy(client: Client, shop: Acme,
                                                      persona: str) -> None:
    before = _releases(shop)
    response = login(client, shop.user(persona)).post("/apps/shop/releases/rollback/",
                                                      {"version": "1"})
    if _expect(response, persona, MAY_DEPLOY):
        assert shop.app.current_release().description == "Rollback to v1"
    else:
        assert _releases(shop) == before


@pytest.mark.parametrize("persona", PERSONAS)
def test_it_adds_and_removes_domains_only_for_roles_that_may_deploy(
    client: Client, shop: Acme, persona: str
) -> None:
    c = login(client, shop.user(persona))
    added = _expect(c.post("/apps/shop/domains/add/", {"hostname": "www.shop.example"}),
                    persona, MAY_DEPLOY)
    assert Domain.objects.filter(hostname="www.shop.example").exists() is added
    removed = _expect(c.post("/apps/shop/domains/remove/", {"hostname": "shop.example.com"}),
                      persona, MAY_DEPLOY)
    assert Domain.objects.filter(hostname="shop.example.com").exists() is not removed


@pytest.mark.parametrize("persona", PERSONAS)
def test_it_creates_apps_in_a_team_only_for_admins_and_owners(client: Client, acme: Acme,
                                                              persona: str) -> None:
    response = login(client, acme.user(persona)).post("/apps/", {"name": "new-shop",
                                                                 "team": "acme"})
    allowed = _expect(response, persona, MAY_MANAGE_APPS)
    assert App.objects.filter(name="new-shop", team=acme.team).exists() is allowed
    if allowed:
        assert response["Location"] == "/apps/new-shop/"


@pytest.mark.parametrize("persona", PERSONAS)
def test_it_adds_members_only_for_admins_and_owners(client: Client, acme: Acme,
                                                   persona: str) -> None:
    actions.user_create(actor=None, username="newbie", email="newbie@example.com")
    response = login(client, acme.user(persona)).post(
        "/teams/acme/members/", {"user": "newbie@example.com", "role": "viewer"})
    allowed = _expect(response, persona, MAY_MANAGE_MEMBERS)
    assert Membership.objects.filter(team=acme.team, user__username="newbie").exists() is allowed


@pytest.mark.parametrize("persona", PERSONAS)
def test_it_makes_owners_only_for_owners(client: Client, acme: Acme, persona: str) -> None:
    response = login(client, acme.user(persona)).post("/teams/acme/members/mia/role/",
                                                      {"role": "owner"})
    allowed = _expect(response, persona, MAY_MANAGE_OWNERS)
    role = Membership.objects.get(team=acme.team, user=acme.member).role
    assert role == ("owner" if allowed else "member")


@pytest.mark.parametrize("persona", PERSONAS)
def test_it_changes_and_removes_non_owners_only_for_admins_and_owners(
    client: Client, acme: Acme, persona: str
) -> None:
    c = login(client, acme.user(persona))
    changed = _expect(c.post("/teams/acme/members/vic/role/", {"role": "member"}), persona,
                      MAY_MANAGE_MEMBERS)
    assert Membership.objects.get(team=acme.team, user=acme.viewer).role == (
        "member" if changed else "viewer")
    removed = _expect(c.post("/teams/acme/members/mia/remove/"), persona, MAY_MANAGE_MEMBERS)
    assert Membership.objects.filter(team=acme.team, user=acme.member).exists() is not removed


@pytest.mark.parametrize("persona", [*PERSONAS, "staff"])
def test_it_drains_hosts_only_for_staff(client: Client, acme: Acme, persona: str) -> None:
    make_host("node-9")
    response = login(client, acme.user(persona)).post("/hosts/node-9/drain/")
    if persona == "staff":
        assert response.status_code == 303
    else:
        assert response.status_code == 403
        assert b"Only staff users may drain hosts." in response.content
    drained = Host.objects.get(name="node-9").state == HostState.DRAINING
    assert drained is (persona == "staff")


def test_it_never_revokes_another_users_token(client: Client, acme: Acme) -> None:
    token, _ = actions.token_create(actor=acme.owner, description="ci")
    response = login(client, acme.admin).post(f"/account/tokens/{token.pk}/revoke/")
    assert response.status_code == 404
    assert ApiToken.objects.get(pk=token.pk).revoked_at is None


# --- what each role is offered -----------------------------------------------------------


@pytest.mark.parametrize("persona", ["owner", "admin", "member", "viewer"])
def test_it_offers_only_the_controls_a_role_may_use(client: Client, shop: Acme,
                                                    persona: str) -> None:
    c = login(client, shop.user(persona))
    overview = c.get("/apps/shop/").content.decode()
    config = c.get("/apps/shop/config/").content.decode()
    releases = c.get("/apps/shop/releases/").content.decode()
    team = c.get("/teams/acme/").content.decode()
    apps = c.get("/").content.decode()
    assert ("Apply scale" in overview) is (persona in MAY_DEPLOY)
    assert ("Reveal the value of SECRET" in config) is (persona in MAY_READ_CONFIG)
    assert ("Add or replace a config var" in config) is (persona in MAY_DEPLOY)
    assert ("Roll back to v1" in releases) is (persona in MAY_DEPLOY)
    assert ("Add a member" in team) is (persona in MAY_MANAGE_MEMBERS)
    assert ('<option value="owner"' in team) is (persona in MAY_MANAGE_OWNERS)
    assert ("Create an app" in apps) is True  # everyone owns a personal team


@pytest.mark.parametrize("persona", PERSONAS)
def test_it_destroys_apps_only_for_admins_and_owners(client: Client, shop: Acme,
                                                     persona: str) -> None:
    response = login(client, shop.user(persona)).post("/apps/shop/destroy/", {"confirm": "shop"})
    allowed = _expect(response, persona, MAY_MANAGE_APPS)
    assert App.objects.filter(name="shop").exists() is not allowed
    if allowed:
        assert response["Location"] == "/"


@pytest.mark.parametrize("persona", PERSONAS)
def test_it_deletes_a_team_only_for_owners(client: Client, acme: Acme, persona: str) -> None:
    actions.app_destroy(actor=acme.owner, app=acme.app)
    response = login(client, acme.user(persona)).post("/teams/acme/delete/")
    allowed = _expect(response, persona, MAY_MANAGE_OWNERS)
    assert Team.objects.filter(name="acme").exists() is not allowed
