"""One-off runs: `POST /apps/<app>/runs`, their output as NDJSON, and stopping them.

The output endpoint streams one JSON object per line, flushed as the run's agent writes them
(see `scheduler.oneoff.follow`): `{"state": ...}`, `{"stream", "line", "time"}` per output line,
and last `{"exit": <code or null>, "message"}`; an empty line every 15 s while the run is quiet.
It holds one web thread while it follows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import redis
from django.contrib.auth.models import User
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core import authz
from core.actions.runs import run_create, run_stop
from core.authz import Verb
from core.errors import Conflict, Invalid
from core.models import App
from scheduler import oneoff

log = logging.getLogger("restapi")


def _user(request: Request) -> User:
    user = request.user
    assert isinstance(user, User)
    return user


def _unavailable(e: redis.RedisError) -> Conflict:
    log.warning("one-offs: redis is away: %s", e)
    return Conflict("One-offs cannot be run right now: the platform's Redis does not answer.")


class RunListView(APIView):
    @extend_schema(operation_id="apps_runs_list", responses=OpenApiTypes.OBJECT)
    def get(self, request: Request, app: str) -> Response:
        """The app's one-offs that are still running."""
        row = authz.app_get(_user(request), app)
        try:
            runs = oneoff.running(row)
        except redis.RedisError as e:
            raise _unavailable(e) from None
        return Response([r.to_dict() for r in runs])

    @extend_schema(request=OpenApiTypes.OBJECT, responses={201: OpenApiTypes.OBJECT})
    def post(self, request: Request, app: str) -> Response:
        """Start a one-off of the current release: `{"command": [..] or "...", "size"?}`."""
        user = _user(request)
        row = authz.app_get(user, app)
        data = request.data
        if not isinstance(data, dict):
            raise Invalid("The body must be a JSON object like {\"command\": [\"ls\", \"-l\"]}.")
        unknown = sorted(set(data) - {"command", "size"})
        if unknown:
            raise Invalid(f"Unknown field(s): {', '.join(map(str, unknown))}.",
                          fields={str(k): ["Unknown field."] for k in unknown})
        command = data.get("command")
        oneoff.command_argv(command)  # a bad command is refused before anything else

        def launch(memory_mb: int, cpu: float) -> dict[str, Any]:
            try:
                return oneoff.start(row, command, memory_mb=memory_mb, cpu=cpu).to_dict()
            except redis.RedisError as e:
                raise _unavailable(e) from None

        run = run_create(actor=user, app=row, size=data.get("size"), launch=launch)
        return Response(dict(run), status=201)


def _run_of(request: Request, app: str, run_id: str) -> tuple[User, App, oneoff.OneOff]:
    user = _user(request)
    row = authz.app_get(user, app, Verb.APP_DEPLOY)
    try:
        return user, row, oneoff.get(row, run_id)
    except redis.RedisError as e:
        raise _unavailable(e) from None


class RunView(APIView):
    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request: Request, app: str, run_id: str) -> Response:
        """One one-off, with its exit status once it has ended (`exit` is absent before)."""
        run = _run_of(request, app, run_id)[2]
        answer = run.to_dict()
        try:
            ended = oneoff.exit_of(run.id)
        except redis.RedisError as e:
            raise _unavailable(e) from None
        if ended is not None:
            answer["exit"], answer["message"] = ended.get("exit"), ended.get("message", "")
        return Response(answer)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, app: str, run_id: str) -> Response:
        """Stop a one-off (SIGTERM, then SIGKILL); its output then ends with its exit."""
        user, row, run = _run_of(request, app, run_id)
        run_stop(actor=user, app=row, run=run.to_dict(), stop=lambda: oneoff.stop(run))
        return Response(status=204)


class RunOutputView(APIView):
    @extend_schema(responses={(200, "application/x-ndjson"): OpenApiTypes.STR})
    def get(self, request: Request, app: str, run_id: str) -> StreamingHttpResponse:
        """The one-off's output from its start, followed until it exits (NDJSON)."""
        run = _run_of(request, app, run_id)[2]
        response = StreamingHttpResponse(_ndjson(run), content_type="application/x-ndjson")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response


def _ndjson(run: oneoff.OneOff) -> Iterator[bytes]:
    try:
        for entry in oneoff.follow(run):
            # An empty line while the run is quiet: a client that has gone away is noticed.
            yield json.dumps(entry, ensure_ascii=False).encode() + b"\n" if entry else b"\n"
    except redis.RedisError as e:
        log.warning("following one-off %s: redis is away: %s", run.id, e)
        yield json.dumps({"exit": None, "message": "the platform's Redis stopped answering"}).encode() + b"\n"
