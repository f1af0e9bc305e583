from __future__ import annotations

import pytest
from django.db import IntegrityError, connection, transaction

from core import actions
from core.models import ApiToken, App, ConfigVar, ImmutableReleaseError, Membership, Release, Role
from core.models.api_token import token_digest

pytestmark = pytest.mark.django_db


def test_it_gives_every_new_user_a_personal_team_they_own(acme) -> None:
    team = acme.owner.personal_team
    assert team.name == "olive" and team.is_personal
    assert Membership.objects.get(team=team, user=acme.owner).role == Role.OWNER


def test_it_stores_only_the_sha256_of_a_token(acme) -> None:
    row, token = actions.token_create(actor=acme.owner, description="laptop")
    assert token.startswith("paas_") and len(token) == 45
    stored = ApiToken.objects.get(pk=row.pk)
    assert stored.digest == token_digest(token)
    assert token not in {stored.digest, stored.prefix, stored.description}
    assert stored.prefix == token[:12]


def test_it_keeps_config_values_encrypted_in_the_database(acme, web1) -> None:
    actions.config_set(actor=acme.member, app=web1, values={"SECRET": "hunter2-plaintext"})
    with connection.cursor() as cursor:
        cursor.execute("SELECT value_encrypted FROM core_configvar")
        (raw,) = cursor.fetchone()
        cursor.execute("SELECT config_encrypted FROM core_release")
        snapshots = [row[0] for row in cursor.fetchall()]
    assert "hunter2" not in raw and all("hunter2" not in s for s in snapshots)
    assert ConfigVar.objects.get(app=web1, key="SECRET").value == "hunter2-plaintext"
    assert web1.current_release().config == {"SECRET": "hunter2-plaintext"}


def test_it_refuses_to_change_a_saved_release(web1) -> None:
    release = web1.current_release()
    release.description = "rewritten history"
    with pytest.raises(ImmutableReleaseError):
        release.save()
    with pytest.raises(ImmutableReleaseError):
        release.set_config({"A": "b"})
    assert Release.objects.get(pk=release.pk).description == "Initial release"


def test_it_lets_the_roll_out_status_change(web1) -> None:
    release = web1.current_release()
    release.status = "failed"
    release.save(update_fields=["status"])
    assert Release.objects.get(pk=release.pk).status == "failed"


def test_it_enforces_one_release_per_app_and_version_in_the_database(acme, web1) -> None:
    release = Release(app=web1, version=1, description="dup")
    release.set_config({})
    with pytest.raises(IntegrityError), transaction.atomic():
        release.save()


def test_it_enforces_unique_app_names_in_the_database(acme, web1) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        App.objects.create(name="web1", team=acme.team)


def test_it_names_a_container_after_its_process_type_and_number(deployed) -> None:
    from core.models import Container

    container = Container(id="c1", app=deployed, release=deployed.current_release(),
                          type="web", number=2)
    assert container.name == "web.2"
