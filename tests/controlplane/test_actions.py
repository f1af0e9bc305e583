from __future__ import annotations

import pytest

from core import actions
from core.errors import Conflict, Forbidden, Invalid, NotFound, TooLarge
from core.models import (
    ApiToken,
    App,
    AuditEvent,
    Build,
    ConfigVar,
    Domain,
    Formation,
    Host,
    Membership,
    Release,
    Role,
    Team,
)

from .conftest import COMMIT, DIGEST

pytestmark = pytest.mark.django_db


def _counts() -> dict[str, int]:
    models = (App, Release, ConfigVar, Formation, Domain, Build, Membership, Team, ApiToken,
              Host, AuditEvent)
    return {m.__name__: m.objects.count() for m in models}


# --- apps ---------------------------------------------------------------------------------


def test_it_creates_an_app_with_release_v1_and_an_audit_event(acme) -> None:
    app = actions.app_create(actor=acme.admin, name="web1", team=acme.team)
    release = app.current_release()
    assert (release.version, release.name, release.build, release.config) == (1, "v1", None, {})
    event = AuditEvent.objects.filter(app=app, action="app.create").get()
    assert event.actor == acme.admin and event.team == acme.team


def test_it_creates_an_app_in_the_personal_team_by_default(acme) -> None:
    app = actions.app_create(actor=acme.stranger, name="solo-app")
    assert app.team == acme.stranger.personal_team


@pytest.mark.parametrize(
    "name",
    ["ab", "a" * 31, "Web1", "1web", "web-", "we--b", "web_1", "web 1", "", "api", "wéb"],
)
def test_it_refuses_bad_app_names_and_writes_nothing(acme, name: str) -> None:
    before = _counts()
    with pytest.raises(Invalid) as exc:
        actions.app_create(actor=acme.owner, name=name, team=acme.team)
    assert "name" in exc.value.fields
    assert _counts() == before


def test_it_refuses_a_taken_app_name_and_writes_nothing(acme, web1) -> None:
    before = _counts()
    with pytest.raises(Conflict, match="taken"):
        actions.app_create(actor=acme.stranger, name="web1")
    assert _counts() == before


@pytest.mark.parametrize("persona", ["member", "viewer"])
def test_it_lets_only_admins_and_owners_create_apps(acme, persona: str) -> None:
    with pytest.raises(Forbidden):
        actions.app_create(actor=acme.user(persona), name="web2", team=acme.team)
    assert not App.objects.filter(name="web2").exists()


def test_it_hides_a_team_from_a_stranger(acme) -> None:
    with pytest.raises(NotFound):
        actions.app_create(actor=acme.stranger, name="web2", team=acme.team)


def test_it_destroys_an_app_with_everything_it_owns(acme, deployed) -> None:
    actions.config_set(actor=acme.member, app=deployed, values={"A": "1"})
    actions.domain_add(actor=acme.member, app=deployed, hostname="www.example.com")
    actions.app_destroy(actor=acme.admin, app=deployed)
    assert not App.objects.filter(name="web1").exists()
    assert Release.objects.count() == Build.objects.count() == ConfigVar.objects.count() == 0
    assert Domain.objects.count() == Formation.objects.count() == 0
    event = AuditEvent.objects.get(action="app.destroy")
    assert event.app_name == "" and event.data == {"name": "web1"} and event.team == acme.team


def test_it_lets_a_member_not_destroy_an_app(acme, web1) -> None:
    with pytest.raises(Forbidden):
        actions.app_destroy(actor=acme.member, app=web1)
    assert App.objects.filter(pk=web1.pk).exists()


# --- config and releases -----------------------------------------------------------------


def test_it_makes_a_new_release_for_each_config_change(acme, web1) -> None:
    r2 = actions.config_set(actor=acme.member, app=web1, values={"A": "1", "B": "2"})
    r3 = actions.config_unset(actor=acme.member, app=web1, keys=["A"])
    r4 = actions.config_set(actor=acme.member, app=web1, values={"B": None, "C": "3"})
    assert [r2.version, r3.version, r4.version] == [2, 3, 4]
    assert r2.config == {"A": "1", "B": "2"} and r3.config == {"B": "2"}
    assert r4.config == {"C": "3"} and web1.config() == {"C": "3"}
    assert r4.description == "Set C; Unset B"
    assert list(AuditEvent.objects.filter(action="config.unset").values_list("data", flat=True)) == [
        {"set": [], "unset": ["A"], "version": 3}
    ]


def test_it_never_puts_config_values_in_the_audit_log(acme, web1) -> None:
    actions.config_set(actor=acme.member, app=web1, values={"TOKEN": "s3cr3t-value"})
    assert all("s3cr3t" not in str(e.data) for e in AuditEvent.objects.all())


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"1BAD": "x"}, Invalid),
        ({"BAD-KEY": "x"}, Invalid),
        ({"": "x"}, Invalid),
        ({"GOOD": "x", "NOT OK": "y"}, Invalid),
        ({"NUMBER": 5}, Invalid),
        ({"BIG": "x" * (32 * 1024 + 1)}, TooLarge),
        ({}, Invalid),
    ],
)
def test_it_refuses_bad_config_and_writes_nothing(acme, web1, values, error) -> None:
    before = _counts()
    with pytest.raises(error):
        actions.config_set(actor=acme.member, app=web1, values=values)
    assert _counts() == before


def test_it_accepts_a_value_of_exactly_32_kib(acme, web1) -> None:
    actions.config_set(actor=acme.member, app=web1, values={"BIG": "x" * 32 * 1024})
    assert len(web1.config()["BIG"]) == 32 * 1024


def test_it_caps_an_app_at_500_config_keys(acme, web1) -> None:
    actions.config_set(actor=acme.member, app=web1, values={f"K{i}": "v" for i in range(500)})
    before = _counts()
    with pytest.raises(TooLarge):
        actions.config_set(actor=acme.member, app=web1, values={"ONE_MORE": "v"})
    assert _counts() == before


def test_it_lets_a_viewer_not_change_config(acme, web1) -> None:
    with pytest.raises(Forbidden):
        actions.config_set(actor=acme.viewer, app=web1, values={"A": "1"})
    assert web1.config() == {}


def test_it_turns_a_good_build_into_a_release_with_a_formation(acme, deployed) -> None:
    release = deployed.current_release()
    assert release.version == 2 and release.build.image_digest == DIGEST
    assert release.description == "Deploy 0123456"
    assert {(f.type, f.quantity) for f in deployed.formation.all()} == {("web", 1), ("worker", 0)}


def test_it_gives_the_release_phase_no_formation_row(acme, web1) -> None:
    build = actions.build_create(actor=acme.member, app=web1, commit=COMMIT)
    actions.build_finish(actor=acme.member, build=build, succeeded=True, image_digest=DIGEST,
                         process_types={"web": "gunicorn app:app", "release": "flask db upgrade"})
    assert sorted(web1.formation.values_list("type", flat=True)) == ["web"]
    with pytest.raises(Invalid, match="release phase"):
        actions.formation_scale(actor=acme.member, app=web1,
                                updates=[{"type": "release", "quantity": 1}])


def test_it_makes_no_release_for_a_failed_build(acme, web1) -> None:
    build = actions.build_create(actor=acme.member, app=web1, commit=COMMIT)
    assert actions.build_finish(actor=acme.member, build=build, succeeded=False, log="boom") is None
    build.refresh_from_db()
    assert build.status == "failed" and web1.current_release().version == 1


def test_it_finishes_a_build_only_once(acme, web1) -> None:
    build = actions.build_create(actor=acme.member, app=web1, commit=COMMIT)
    actions.build_finish(actor=acme.member, build=build, succeeded=False)
    with pytest.raises(Conflict):
        actions.build_finish(actor=acme.member, build=build, succeeded=False)


def test_it_rolls_back_to_the_previous_release_as_a_new_release(acme, deployed) -> None:
    actions.config_set(actor=acme.member, app=deployed, values={"A": "new"})  # v3
    rollback = actions.release_rollback(actor=acme.member, app=deployed)
    assert rollback.version == 4 and rollback.description == "Rollback to v2"
    assert rollback.config == {} and deployed.config() == {}
    assert rollback.build == Release.objects.get(app=deployed, version=2).build


def test_it_rolls_back_to_a_named_version(acme, deployed) -> None:
    actions.config_set(actor=acme.member, app=deployed, values={"A": "1"})  # v3
    actions.config_set(actor=acme.member, app=deployed, values={"A": "2"})  # v4
    release = actions.release_rollback(actor=acme.member, app=deployed, version="v3")
    assert release.version == 5 and deployed.config() == {"A": "1"}


def test_it_refuses_to_roll_back_past_v1_or_to_a_missing_version(acme, web1) -> None:
    with pytest.raises(Invalid, match="nothing to roll back"):
        actions.release_rollback(actor=acme.member, app=web1)
    with pytest.raises(NotFound):
        actions.release_rollback(actor=acme.member, app=web1, version=9)
    assert Release.objects.filter(app=web1).count() == 1


# --- formation ---------------------------------------------------------------------------


def test_it_scales_quantity_and_size(acme, deployed) -> None:
    rows = actions.formation_scale(actor=acme.member, app=deployed,
                                   updates=[{"type": "web", "quantity": 3, "size": "1G"},
                                            {"type": "worker", "quantity": 2}])
    web, worker = rows
    assert (web.quantity, web.size, web.memory_mb) == (3, "1G", 1024)
    assert (worker.quantity, worker.size, worker.memory_mb) == (2, "basic", 512)


@pytest.mark.parametrize(
    "updates",
    [
        [{"type": "web", "quantity": 2}, {"type": "clock", "quantity": 1}],  # unknown type
        [{"type": "Web", "quantity": 1}],
        [{"type": "web", "quantity": 101}],
        [{"type": "web", "quantity": -1}],
        [{"type": "web", "quantity": "2"}],
        [{"type": "web", "quantity": True}],
        [{"type": "web", "size": "huge"}],
        [{"type": "web", "size": "32M"}],
        [{"type": "web"}],
        [{"type": "web", "quantity": 1, "colour": "red"}],
        [{"type": "web", "quantity": 1}, {"type": "web", "quantity": 2}],
        [],
    ],
)
def test_it_refuses_bad_scaling_and_changes_nothing(acme, deployed, updates) -> None:
    before = list(Formation.objects.values_list("type", "quantity", "size"))
    with pytest.raises(Invalid):
        actions.formation_scale(actor=acme.member, app=deployed, updates=updates)
    assert list(Formation.objects.values_list("type", "quantity", "size")) == before


def test_it_knows_no_process_types_before_the_first_deploy(acme, web1) -> None:
    with pytest.raises(Invalid, match="deploy the app first"):
        actions.formation_scale(actor=acme.member, app=web1, updates=[{"type": "web", "quantity": 1}])


def test_it_lets_a_viewer_not_scale(acme, deployed) -> None:
    with pytest.raises(Forbidden):
        actions.formation_scale(actor=acme.viewer, app=deployed,
                                updates=[{"type": "web", "quantity": 5}])
    assert Formation.objects.get(app=deployed, type="web").quantity == 1


# --- domains -----------------------------------------------------------------------------


def test_it_adds_and_removes_a_domain(acme, web1) -> None:
    domain = actions.domain_add(actor=acme.member, app=web1, hostname="WWW.Example.com.")
    assert domain.hostname == "www.example.com"
    actions.domain_remove(actor=acme.member, app=web1, hostname="www.example.com")
    assert not Domain.objects.exists()
    assert [e.action for e in AuditEvent.objects.filter(app=web1)][:2] == ["domain.remove", "domain.add"]


def test_it_adds_a_wildcard_domain_for_one_label(acme, web1) -> None:
    domain = actions.domain_add(actor=acme.member, app=web1, hostname="*.Shop.example.com")
    assert domain.hostname == "*.shop.example.com"
    actions.domain_remove(actor=acme.member, app=web1, hostname="*.shop.example.com")
    assert not Domain.objects.exists()


@pytest.mark.parametrize("hostname", ["localhost", "x.localhost", "nodots", "-a.com", "a..com", "1.2.3.4", 7,
                                      "*.com", "*", "a.*.com", "**.example.com", "*example.com", "*.*.example.com"])
def test_it_refuses_bad_hostnames(acme, web1, hostname) -> None:
    with pytest.raises(Invalid):
        actions.domain_add(actor=acme.member, app=web1, hostname=hostname)
    assert not Domain.objects.exists()


def test_it_refuses_a_domain_another_app_has(acme, web1) -> None:
    other = actions.app_create(actor=acme.stranger, name="other")
    actions.domain_add(actor=acme.stranger, app=other, hostname="shop.example.com")
    with pytest.raises(Conflict):
        actions.domain_add(actor=acme.member, app=web1, hostname="shop.example.com")


# --- teams and members -------------------------------------------------------------------


def test_it_makes_the_creator_the_owner_of_a_new_team(acme) -> None:
    team = actions.team_create(actor=acme.viewer, name="side-project")
    assert Membership.objects.get(team=team, user=acme.viewer).role == Role.OWNER


@pytest.mark.parametrize("name", ["acme", "sam", "Bad", "-x", "a" * 41, ""])
def test_it_refuses_taken_or_bad_team_names(acme, name: str) -> None:
    before = _counts()
    with pytest.raises((Invalid, Conflict)):
        actions.team_create(actor=acme.owner, name=name)
    assert _counts() == before


def test_it_lets_an_admin_manage_members_but_not_owners(acme) -> None:
    actions.member_role_set(actor=acme.admin, team=acme.team, user=acme.viewer, role="member")
    with pytest.raises(Forbidden):
        actions.member_role_set(actor=acme.admin, team=acme.team, user=acme.member, role="owner")
    with pytest.raises(Forbidden):
        actions.member_remove(actor=acme.admin, team=acme.team, user=acme.owner)
    with pytest.raises(Forbidden):
        actions.member_add(actor=acme.admin, team=acme.team, user=acme.stranger, role="owner")
    actions.member_remove(actor=acme.admin, team=acme.team, user=acme.member)
    assert set(Membership.objects.filter(team=acme.team).values_list("user__username", "role")) == {
        ("olive", "owner"), ("adam", "admin"), ("vic", "member")
    }


def test_it_keeps_at_least_one_owner(acme) -> None:
    with pytest.raises(Conflict, match="last owner"):
        actions.member_remove(actor=acme.owner, team=acme.team, user=acme.owner)
    with pytest.raises(Conflict, match="last owner"):
        actions.member_role_set(actor=acme.owner, team=acme.team, user=acme.owner, role="admin")
    actions.member_role_set(actor=acme.owner, team=acme.team, user=acme.admin, role="owner")
    actions.member_remove(actor=acme.admin, team=acme.team, user=acme.owner)
    assert list(Membership.objects.filter(team=acme.team, role="owner").values_list(
        "user__username", flat=True)) == ["adam"]


def test_it_refuses_an_unknown_role_and_a_second_membership(acme) -> None:
    with pytest.raises(Invalid):
        actions.member_add(actor=acme.owner, team=acme.team, user=acme.stranger, role="boss")
    with pytest.raises(Conflict):
        actions.member_add(actor=acme.owner, team=acme.team, user=acme.member, role="viewer")


def test_it_deletes_only_an_empty_non_personal_team_and_only_for_owners(acme, web1) -> None:
    with pytest.raises(Forbidden):
        actions.team_destroy(actor=acme.admin, team=acme.team)
    with pytest.raises(Conflict, match="still has apps"):
        actions.team_destroy(actor=acme.owner, team=acme.team)
    with pytest.raises(Conflict, match="personal"):
        actions.team_destroy(actor=acme.owner, team=acme.owner.personal_team)
    actions.app_destroy(actor=acme.owner, app=web1)
    actions.team_destroy(actor=acme.owner, team=acme.team)
    assert not Team.objects.filter(name="acme").exists()
    assert AuditEvent.objects.filter(action="team.destroy", data__name="acme").exists()


# --- tokens, users and hosts -------------------------------------------------------------


def test_it_revokes_a_token_only_for_its_owner(acme) -> None:
    row, _ = actions.token_create(actor=acme.owner, description="ci")
    with pytest.raises(NotFound):
        actions.token_revoke(actor=acme.stranger, token=row)
    actions.token_revoke(actor=acme.owner, token=row)
    assert not ApiToken.objects.active().filter(pk=row.pk).exists()
    with pytest.raises(NotFound):
        actions.token_revoke(actor=acme.owner, token=row)


def test_it_refuses_a_user_name_that_a_team_has(acme) -> None:
    with pytest.raises(Conflict):
        actions.user_create(actor=None, username="acme")


def test_it_lets_only_staff_create_users(acme) -> None:
    with pytest.raises(Forbidden):
        actions.user_create(actor=acme.owner, username="newbie")
    actions.user_create(actor=acme.staff, username="newbie")


def test_it_registers_and_drains_hosts_for_staff_only(acme) -> None:
    with pytest.raises(Forbidden):
        actions.host_register(actor=acme.owner, name="h1", address="10.0.0.1", memory_mb=4096, cpus=2)
    host, token = actions.host_register(actor=acme.staff, name="h1", address="10.0.0.1",
                                        memory_mb=4096, cpus=2, labels={"zone": "a"})
    assert token.startswith("paashost_") and token not in host.token_digest
    with pytest.raises(Conflict):
        actions.host_register(actor=acme.staff, name="h1", address="10.0.0.2", memory_mb=1, cpus=1)
    with pytest.raises(Forbidden):
        actions.host_drain(actor=acme.owner, host=host)
    assert actions.host_drain(actor=acme.staff, host=host).state == "draining"


@pytest.mark.parametrize(
    "fields",
    [{"name": "H1"}, {"address": "10.0.0.300"}, {"memory_mb": 0}, {"cpus": "2"},
     {"labels": {"a": 1}}],
)
def test_it_refuses_bad_host_registrations(acme, fields) -> None:
    args = {"name": "h1", "address": "10.0.0.1", "memory_mb": 1024, "cpus": 1} | fields
    with pytest.raises(Invalid):
        actions.host_register(actor=acme.staff, **args)
    assert not Host.objects.exists()


# --- follow-up work ----------------------------------------------------------------------


def test_it_enqueues_a_reconcile_only_after_commit(acme, deployed, django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        actions.formation_scale(actor=acme.member, app=deployed, updates=[{"type": "web", "quantity": 2}])
    assert len(callbacks) == 1


def test_it_enqueues_nothing_when_the_action_fails(acme, deployed, django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(Invalid):
        actions.formation_scale(actor=acme.member, app=deployed, updates=[{"type": "nope", "quantity": 2}])
    assert callbacks == []


def test_it_lets_a_viewer_not_make_a_release(acme, web1) -> None:
    with pytest.raises(Forbidden):
        actions.release_create(actor=acme.viewer, app=web1, build=None, config={"A": "1"},
                               description="sneaky")
    assert Release.objects.filter(app=web1).count() == 1
