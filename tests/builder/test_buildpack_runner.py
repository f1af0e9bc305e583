from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from builder.buildpack import HOST_PATH, BuildRequest, build, default_cache_dir
from builder.errors import BuildError, BuildTimeout, ProcfileError, SourceError
from builder.executor import HostExecutor
from builder.slug import launch_argv

from .conftest import BUILD_USER, MakeBuildpack, Output, pid_gone

RequestFor = Callable[..., BuildRequest]


def test_it_detects_with_the_first_built_in_that_accepts_the_app(
    app_source: Path, request_for: RequestFor, output: Output
) -> None:
    (app_source / "index.html").write_text("<h1>hi</h1>")
    result = build(request_for(app_source), HostExecutor(), output.append)
    assert result.kinds == ("Static site",)
    assert result.buildpacks == ("static",)
    assert output[0] == "-----> Static site app detected"


def test_it_names_what_it_looked_for_when_nothing_detects_the_app(
    tmp_path: Path, request_for: RequestFor, output: Output
) -> None:
    src = tmp_path / "empty"
    src.mkdir()
    (src / "README").write_text("nothing to run")
    with pytest.raises(BuildError) as err:
        build(request_for(src), HostExecutor(), output.append)
    message = str(err.value)
    assert message.startswith("No buildpack detected this app. Looked for: package.json (Node.js);")
    for looked_for in ("requirements.txt", "pyproject.toml", "index.html", "Procfile"):
        assert looked_for in message


def test_it_runs_compile_with_build_cache_and_env_dirs_and_config_vars_only_as_files(
    app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack, output: Output
) -> None:
    bp = make_buildpack("env", compile="""
        cp "$3/GREETING" "$1/from-env-dir"
        echo "${GREETING:-not in the environment}" > "$1/from-environment"
        echo "cache=$2 stack=$STACK version=$SOURCE_VERSION"
    """)
    req = request_for(app_source, buildpacks=[str(bp)], config={"GREETING": "hello there"})
    result = build(req, HostExecutor(), output.append)
    assert (result.app_dir / "from-env-dir").read_text() == "hello there"
    assert (result.app_dir / "from-environment").read_text() == "not in the environment\n"
    assert f"cache={req.cache_dir} stack=debian-12 version=c0ffee" in output


def test_it_streams_compile_output_after_the_detected_heading(
    app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack, output: Output
) -> None:
    bp = make_buildpack("talk", detect="echo Talkative", compile="echo '-----> Step one'; echo '       done'")
    build(request_for(app_source, buildpacks=[str(bp)]), HostExecutor(), output.append)
    assert output[:3] == ["-----> Talkative app detected", "-----> Step one", "       done"]


def test_it_uses_release_yaml_for_default_types_and_config_vars(
    tmp_path: Path, request_for: RequestFor, make_buildpack: MakeBuildpack, output: Output
) -> None:
    src = tmp_path / "noprocfile"
    src.mkdir()
    bp = make_buildpack("rel", release="""
        cat <<'YAML'
        ---
        config_vars:
          LANG: en_US.UTF-8
          WORKERS: 3
        default_process_types:
          web: bin/server --port $PORT
          worker: bin/worker
        YAML
    """)
    result = build(request_for(src, buildpacks=[str(bp)]), HostExecutor(), output.append)
    assert result.process_types.types == {"web": "bin/server --port $PORT", "worker": "bin/worker"}
    assert result.config_vars == {"LANG": "en_US.UTF-8", "WORKERS": "3"}
    assert "WORKERS=3" in result.image_config["config"]["Env"]
    assert "       Default types for buildpack -> web, worker" in output


def test_it_lets_the_procfile_win_and_recognises_the_release_type(
    app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack, output: Output
) -> None:
    (app_source / "Procfile").write_text("web: ./serve $PORT\nrelease: ./migrate\n")
    bp = make_buildpack("rel", release="printf -- '---\\ndefault_process_types:\\n  web: default\\n'")
    result = build(request_for(app_source, buildpacks=[str(bp)]), HostExecutor(), output.append)
    assert result.process_types.types == {"web": "./serve $PORT"}
    assert result.process_types.release == "./migrate"
    labels = result.image_config["config"]["Labels"]
    assert json.loads(labels["paas.process-types"]) == {"web": "./serve $PORT", "release": "./migrate"}
    assert "       Release command -> ./migrate" in output


def test_it_refuses_invalid_release_yaml_with_a_clear_message(
    app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack, output: Output
) -> None:
    bp = make_buildpack("bad", release="echo 'default_process_types: [web'")
    with pytest.raises(BuildError, match=r"bin/release of buildpack .*bad printed invalid YAML"):
        build(request_for(app_source, buildpacks=[str(bp)]), HostExecutor(), output.append)


def test_it_refuses_a_procfile_with_bad_lines(
    app_source: Path, request_for: RequestFor, output: Output
) -> None:
    (app_source / "Procfile").write_text("web: ok\nworker\n")
    with pytest.raises(ProcfileError, match=r"^Procfile line 2: expected `type: command`, got 'worker'"):
        build(request_for(app_source), HostExecutor(), output.append)


def test_it_passes_exports_to_later_buildpacks_and_into_the_image(
    app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack, output: Output
) -> None:
    first = make_buildpack("first", compile="""
        mkdir -p "$1/vendor/bin"
        echo "export PATH=\\"$1/vendor/bin:\\$PATH\\"" > "$(dirname "$0")/../export"
        echo 'export TOOL_HOME=/opt/tool' >> "$(dirname "$0")/../export"
    """)
    second = make_buildpack("second", compile='echo "second sees TOOL_HOME=$TOOL_HOME"')
    req = request_for(app_source, buildpacks=[str(first), str(second)])
    result = build(req, HostExecutor(), output.append)
    assert "second sees TOOL_HOME=/opt/tool" in output
    assert result.exported_env["TOOL_HOME"] == "/opt/tool"
    assert result.exported_env["PATH"].startswith("/app/vendor/bin:")
    assert "TOOL_HOME=/opt/tool" in result.image_config["config"]["Env"]


def test_it_runs_the_buildpacks_listed_in_dot_buildpacks_in_order(
    app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack, output: Output
) -> None:
    one = make_buildpack("one", detect="echo One")
    two = make_buildpack("two", detect="echo Two")
    (app_source / ".buildpacks").write_text(f"# ours\n{one}\n\n{two}\n")
    result = build(request_for(app_source), HostExecutor(), output.append)
    assert result.kinds == ("One", "Two")
    assert [line for line in output if "detected" in line] == [
        "-----> One app detected", "-----> Two app detected",
    ]


def test_it_uses_the_buildpack_url_config_var(
    app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack, output: Output
) -> None:
    bp = make_buildpack("fromconfig", detect="echo Configured")
    result = build(request_for(app_source, config={"BUILDPACK_URL": str(bp)}), HostExecutor(), output.append)
    assert result.kinds == ("Configured",)


def _git(*args: str, cwd: Path) -> None:
    env = {"PATH": HOST_PATH, "HOME": str(cwd), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def test_it_clones_a_buildpack_from_a_git_url_at_a_ref(
    app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack, tmp_path: Path, output: Output
) -> None:
    work = make_buildpack("heroku-buildpack-fromgit", detect="echo Cloned v1")
    _git("init", "-q", "-b", "main", cwd=work)
    _git("add", ".", cwd=work)
    _git("commit", "-q", "-m", "v1", cwd=work)
    _git("checkout", "-q", "-b", "v2", cwd=work)
    (work / "bin" / "detect").write_text("#!/usr/bin/env bash\necho Cloned v2\n")
    _git("commit", "-q", "-am", "v2", cwd=work)
    _git("checkout", "-q", "main", cwd=work)
    bare = tmp_path / "fromgit.git"
    _git("clone", "-q", "--bare", str(work), str(bare), cwd=tmp_path)

    result = build(request_for(app_source, buildpacks=[f"file://{bare}"]), HostExecutor(), output.append)
    assert result.kinds == ("Cloned v1",)
    assert f"-----> Fetching buildpack file://{bare}" in output
    result = build(request_for(app_source, buildpacks=[f"{bare}#v2"]), HostExecutor(), output.append)
    assert result.kinds == ("Cloned v2",)


def test_it_says_when_a_git_buildpack_cannot_be_fetched(
    app_source: Path, request_for: RequestFor, tmp_path: Path, output: Output
) -> None:
    missing = tmp_path / "nowhere.git"
    with pytest.raises(BuildError, match=rf"^Cannot fetch the buildpack {missing}: "):
        build(request_for(app_source, buildpacks=[str(missing)]), HostExecutor(), output.append)


def test_it_refuses_local_buildpacks_unless_allowed(
    app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack, output: Output
) -> None:
    bp = make_buildpack("local")
    (app_source / ".buildpacks").write_text(f"{bp}\n")
    req = request_for(app_source, allow_local_buildpacks=False)
    with pytest.raises(BuildError, match=r"is a local path; only built-in buildpacks .* and https, git or ssh URLs"):
        build(req, HostExecutor(), output.append)


def test_it_refuses_an_unknown_buildpack_name(
    app_source: Path, request_for: RequestFor, output: Output
) -> None:
    with pytest.raises(BuildError, match=r"^Unknown buildpack 'ruby': expected a built-in name \(nodejs, python, static, procfile\)"):
        build(request_for(app_source, buildpacks=["ruby"]), HostExecutor(), output.append)


def test_it_fails_when_an_explicit_buildpack_does_not_accept_the_app(
    app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack, output: Output
) -> None:
    bp = make_buildpack("picky", detect="exit 1")
    with pytest.raises(BuildError, match=r"does not accept this app \(its bin/detect failed\)"):
        build(request_for(app_source, buildpacks=[str(bp)]), HostExecutor(), output.append)


def test_it_fails_with_the_exit_status_of_a_failing_compile(
    app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack, output: Output
) -> None:
    bp = make_buildpack("broken", compile="echo ' !     missing thing'; exit 3")
    with pytest.raises(BuildError, match=r"^Failed to compile the app: bin/compile of buildpack .*broken exited with status 3\.$"):
        build(request_for(app_source, buildpacks=[str(bp)]), HostExecutor(), output.append)
    assert " !     missing thing" in output


def test_it_stops_a_hanging_buildpack_and_everything_it_started(
    app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack, output: Output
) -> None:
    bp = make_buildpack("hang", compile="sleep 300 & echo \"child $!\"; sleep 300")
    req = request_for(app_source, buildpacks=[str(bp)], timeout=4)
    with pytest.raises(BuildTimeout, match=r"^The build took longer than 4 s and was stopped \(during bin/compile of hang\)\.$"):
        build(req, HostExecutor(kill_grace=1), output.append)
    child = next(int(line.split()[1]) for line in output if line.startswith("child "))
    assert pid_gone(child)


def test_it_prints_progress_while_a_step_is_silent(
    app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack, output: Output
) -> None:
    bp = make_buildpack("quiet", compile="sleep 3; echo finished")
    req = request_for(app_source, buildpacks=[str(bp)], progress_interval=0.5)
    build(req, HostExecutor(), output.append)
    progress = [line for line in output if "... still running bin/compile of quiet" in line]
    assert progress
    assert output.index(progress[0]) < output.index("finished")


def test_it_detects_a_buildpack_writing_next_to_the_app(
    app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack, output: Output
) -> None:
    bp = make_buildpack("sloppy", compile='echo x > "$1/../stray-output"')
    with pytest.raises(BuildError, match=r"wrote outside the app, cache and its own directory: stray-output$"):
        build(request_for(app_source, buildpacks=[str(bp)]), HostExecutor(), output.append)


def test_it_detects_a_buildpack_changing_the_config_vars(
    app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack, output: Output
) -> None:
    bp = make_buildpack("meddler", compile='echo changed > "$3/SECRET"')
    req = request_for(app_source, buildpacks=[str(bp)], config={"SECRET": "s"})
    with pytest.raises(BuildError, match=r"wrote outside the app, cache and its own directory: env/SECRET$"):
        build(req, HostExecutor(), output.append)


def test_it_keeps_profile_d_scripts_and_sources_them_at_start(
    app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack, output: Output
) -> None:
    bp = make_buildpack("profile", compile="""
        mkdir -p "$1/.profile.d"
        echo 'export GREETING="hello from profile.d"' > "$1/.profile.d/greet.sh"
    """)
    result = build(request_for(app_source, buildpacks=[str(bp)]), HostExecutor(), output.append)
    out = subprocess.run(
        launch_argv('echo "$GREETING in $PWD"'), env={"PATH": HOST_PATH, "HOME": str(result.app_dir)},
        capture_output=True, text=True, check=True,
    ).stdout
    assert out == f"hello from profile.d in {result.app_dir}\n"


def test_it_reuses_the_cache_dir_between_builds_until_asked_to_clear_it(
    app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack, output: Output
) -> None:
    bp = make_buildpack("counter", compile='echo x >> "$2/runs"; echo "runs: $(wc -l < "$2/runs")"')
    build(request_for(app_source, buildpacks=[str(bp)]), HostExecutor(), output.append)
    build(request_for(app_source, buildpacks=[str(bp)]), HostExecutor(), output.append)
    assert [line for line in output if line.startswith("runs:")] == ["runs: 1", "runs: 2"]
    build(request_for(app_source, buildpacks=[str(bp)], clear_cache=True), HostExecutor(), output.append)
    assert [line for line in output if line.startswith("runs:")][-1] == "runs: 1"
    assert "-----> Clearing the build cache" in output


def test_it_refuses_a_symlink_pointing_outside_the_app(
    app_source: Path, request_for: RequestFor, output: Output
) -> None:
    (app_source / "config").mkdir()
    (app_source / "config" / "keys").symlink_to("/root/.ssh/id_rsa")
    with pytest.raises(SourceError, match=r"^config/keys is a symlink to the absolute path"):
        build(request_for(app_source), HostExecutor(), output.append)
    assert output == []


def test_it_refuses_an_oversized_file(
    app_source: Path, request_for: RequestFor, output: Output
) -> None:
    (app_source / "video.mp4").write_bytes(b"\0" * 2048)
    with pytest.raises(SourceError, match=r"^video.mp4 is 2.0 KiB, over the limit of 1.0 KiB per file"):
        build(request_for(app_source, max_file_bytes=1024), HostExecutor(), output.append)


def test_it_refuses_an_oversized_slug(
    app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack, output: Output
) -> None:
    bp = make_buildpack("fat", compile='head -c 300000 /dev/zero > "$1/blob"')
    req = request_for(app_source, buildpacks=[str(bp)], max_slug_bytes=100_000)
    with pytest.raises(BuildError, match=r"over the slug limit"):
        build(req, HostExecutor(), output.append)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"app": "../etc"}, r"'../etc' is not a valid app name"),
        ({"config": {"BAD-NAME": "x"}}, r"config var name 'BAD-NAME' is not a valid environment variable name"),
    ],
)
def test_it_refuses_bad_request_values(
    app_source: Path, request_for: RequestFor, output: Output, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(BuildError, match=message):
        build(request_for(app_source, **kwargs), HostExecutor(), output.append)


def test_it_keeps_each_apps_cache_under_the_data_dir(tmp_path: Path) -> None:
    assert default_cache_dir("shop", tmp_path) == tmp_path / "cache" / "shop"
    with pytest.raises(BuildError):
        default_cache_dir("../../etc", tmp_path)


class Disconnected(Exception):
    pass


def test_it_stops_the_step_when_the_output_receiver_gives_up(
    app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack
) -> None:
    # The git receiver raises from its line callback when the client hangs up.
    bp = make_buildpack("long", compile='sleep 300 & echo "child $!"; wait')
    seen: list[str] = []

    def on_line(line: str) -> None:
        seen.append(line)
        if line.startswith("child "):
            raise Disconnected

    with pytest.raises(Disconnected):
        build(request_for(app_source, buildpacks=[str(bp)]), HostExecutor(kill_grace=1), on_line)
    assert pid_gone(int(seen[-1].split()[1]))


def test_it_summarises_the_build_as_json_ready_values(
    app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack, output: Output
) -> None:
    (app_source / "Procfile").write_text("web: serve $PORT\nrelease: migrate\n")
    bp = make_buildpack("sum", detect="echo Summed", release="printf -- '---\\nconfig_vars:\\n  A: b\\n'")
    result = build(request_for(app_source, buildpacks=[str(bp)]), HostExecutor(), output.append)
    summary = json.loads(json.dumps(result.summary()))
    assert summary["kinds"] == ["Summed"]
    assert summary["process_types"] == {"web": "serve $PORT"}
    assert summary["release_command"] == "migrate"
    assert summary["config_vars"] == {"A": "b"}
    assert summary["slug"]["digest"] == result.slug.digest


@pytest.mark.root
def test_it_hands_the_build_user_only_the_directories_a_step_may_write(
    app_source: Path, open_tmp: Path, make_buildpack: MakeBuildpack, output: Output
) -> None:
    bp = make_buildpack("asuser", compile="""
        id -u > "$1/built-by"
        echo cached > "$2/entry"
        (echo x > "$3/SECRET") 2>/dev/null && echo "env: written" || echo "env: read-only"
        (echo x > "$1/../stray") 2>/dev/null && echo "work: written" || echo "work: read-only"
    """)
    shutil.copytree(bp, open_tmp / "bp")
    shutil.copytree(app_source, open_tmp / "src")
    req = BuildRequest(
        app="demo", source_dir=open_tmp / "src", work_dir=open_tmp / "work",
        cache_dir=open_tmp / "cache", config={"SECRET": "s"}, buildpacks=[str(open_tmp / "bp")],
        allow_local_buildpacks=True, timeout=60,
    )
    result = build(req, HostExecutor(owner=BUILD_USER), output.append)
    assert (result.app_dir / "built-by").read_text() == f"{BUILD_USER[0]}\n"
    assert (req.cache_dir / "entry").stat().st_uid == BUILD_USER[0]
    assert "env: read-only" in output
    assert "work: read-only" in output


def test_it_turns_a_builder_side_os_error_into_a_build_error(
    app_source: Path, request_for: RequestFor, tmp_path: Path, output: Output
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should go")
    req = request_for(app_source, cache_dir=blocker / "cache")
    with pytest.raises(BuildError, match=r"^The builder could not go on: Not a directory"):
        build(req, HostExecutor(), output.append)


def test_it_holds_the_apps_cache_lock_while_it_builds(
    app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack
) -> None:
    # A second build of the app would wait on this lock; flock -n tells whether it is held.
    bp = make_buildpack("locker", compile="echo compiling")
    req = request_for(app_source, buildpacks=[str(bp)])
    lock = req.cache_dir / ".lock"

    def try_lock() -> int:
        return subprocess.run(["flock", "--nonblock", str(lock), "true"], check=False).returncode

    during: list[int] = []

    def on_line(line: str) -> None:
        if line == "compiling":
            during.append(try_lock())

    build(req, HostExecutor(), on_line)
    assert during == [1]
    assert try_lock() == 0


def test_it_applies_slugignore_before_the_buildpacks_run(
    app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack, output: Output
) -> None:
    (app_source / "design.psd").write_text("big")
    (app_source / ".slugignore").write_text("*.psd\n")
    bp = make_buildpack("lister", compile='ls -A "$1"')
    result = build(request_for(app_source, buildpacks=[str(bp)]), HostExecutor(), output.append)
    assert "-----> Removing what .slugignore lists (1 path)" in output
    assert "design.psd" not in output
    assert not (result.app_dir / "design.psd").exists()


def test_it_never_shows_credentials_of_a_buildpack_url() -> None:
    from builder.buildpack import redact_url

    assert redact_url("https://user:s3cret@git.example.com/bp.git") == "https://***@git.example.com/bp.git"
    assert redact_url("https://tok@git.example.com:8443/bp.git") == "https://***@git.example.com:8443/bp.git"
    assert redact_url("https://git.example.com/bp.git") == "https://git.example.com/bp.git"
    assert redact_url("/srv/buildpacks/python") == "/srv/buildpacks/python"
