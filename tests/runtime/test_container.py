from __future__ import annotations

import pytest

from tests.runtime.daemon_fixtures import (  # noqa: F401  (fixtures)
    Daemon,
    Image,
    daemon_fixture,
    rt_fixture,
    tiny_fixture,
)

pytestmark = pytest.mark.root


def test_it_runs_a_command_to_completion_and_records_its_exit_code(rt: Daemon, tiny: Image) -> None:
    c = rt.run(tiny, ["sh", "-c", "echo hello; exit 3"])
    done = rt.wait(c["id"])
    assert done["state"] == "exited" and done["exit_code"] == 3
    assert rt.output(c["id"]) == "hello"
