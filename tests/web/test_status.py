"""An app's status at a glance, decided from its formation, containers, release and builds."""

from __future__ import annotations

import pytest

from core.models import Container, Formation, ReleaseStatus
from web.reads import CRASH_LOOP_RESTARTS, app_status


def _formation(**quantities: int) -> list[Formation]:
    return [Formation(type=t, quantity=q) for t, q in quantities.items()]


def _container(number: int, state: str, restarts: int = 0) -> Container:
    return Container(type="web", number=number, state=state, restarts=restarts)


DEPLOYED = ReleaseStatus.DEPLOYED


@pytest.mark.parametrize(("formation", "containers", "release", "building", "expected"), [
    (_formation(web=2), [_container(1, "ready"), _container(2, "running")], DEPLOYED, False,
     "running"),
    (_formation(web=2), [_container(1, "ready"), _container(2, "failed")], DEPLOYED, False,
     "crashing"),
    (_formation(web=1), [_container(1, "oom")], DEPLOYED, True, "crashing"),
    (_formation(web=1), [_container(1, "starting", CRASH_LOOP_RESTARTS)], DEPLOYED, False,
     "crashing"),
    (_formation(web=1), [_container(1, "starting", 1)], DEPLOYED, False, "starting"),
    (_formation(web=1), [_container(1, "ready")], ReleaseStatus.PENDING, False, "deploying"),
    (_formation(web=1), [_container(1, "ready")], DEPLOYED, True, "deploying"),
    (_formation(web=0, worker=0), [], DEPLOYED, False, "idle"),
    ([], [], DEPLOYED, False, "idle"),
    (_formation(web=3), [_container(1, "ready")], DEPLOYED, False, "starting"),
])
def test_it_tells_running_crashing_deploying_starting_and_idle_apart(
    formation: list[Formation], containers: list[Container], release: str, building: bool,
    expected: str
) -> None:
    status = app_status(formation=formation, containers=containers, release_status=release,
                        building=building)
    assert status.key == expected


def test_it_says_which_containers_are_down() -> None:
    status = app_status(formation=_formation(web=3),
                        containers=[_container(1, "ready"), _container(2, "exited"),
                                    _container(3, "oom")],
                        release_status=DEPLOYED, building=False)
    assert status.detail == "Stopped or failed: web.2, web.3."


def test_it_says_when_a_release_never_got_ready() -> None:
    status = app_status(formation=_formation(web=1), containers=[],
                        release_status=ReleaseStatus.FAILED, building=False)
    assert (status.key, status.label) == ("crashing", "failed")
