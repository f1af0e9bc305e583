"""The git smart HTTP endpoints: `info/refs`, `git-upload-pack` and `git-receive-pack`.

A push's response streams: the receive-pack handler runs in a thread of its own and writes
pkt-lines into a queue that the WSGI response iterates, so the build's output reaches the client
as it is produced. The request body is read whole first (straight from `wsgi.input`, which
gunicorn de-chunks; Django's own stream would see no body without a Content-Length).
"""

from __future__ import annotations

import base64
import binascii
import logging
import queue
import threading
import zlib
from collections.abc import Callable, Iterator
from io import BytesIO
from tempfile import SpooledTemporaryFile
from typing import IO, Any

from django.contrib.auth.models import User
from django.db import connections
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from dulwich.objects import Commit
from dulwich.protocol import (
    CAPABILITY_SIDE_BAND_64K,
    SIDE_BAND_CHANNEL_PROGRESS,
    ZERO_SHA,
    ReceivableProtocol,
)
from dulwich.repo import Repo
from dulwich.server import Backend, ReceivePackHandler, UploadPackHandler

from core import authz
from core.authz import Verb
from core.errors import Forbidden, NotFound
from core.models import ApiToken, App
from core.models.api_token import TOKEN_PREFIX, token_digest
from gitserver import repos
from gitserver.deploy import ClientGone, run_build

log = logging.getLogger(__name__)

SERVICES = {"git-upload-pack": Verb.APP_READ, "git-receive-pack": Verb.APP_DEPLOY}
_CHUNK = 1 << 16
_KEEP_WHEN_OVER = 1 << 20  # the ref commands come first; keep this much of a body over the limit


def _text(status: int, message: str, **headers: str) -> HttpResponse:
    resp = HttpResponse(message.rstrip("\n") + "\n", status=status,
                        content_type="text/plain; charset=utf-8")
    for key, value in headers.items():
        resp[key] = value
    resp["Cache-Control"] = "no-cache"
    return resp


def _challenge(message: str) -> HttpResponse:
    return _text(401, message, **{"WWW-Authenticate": 'Basic realm="paas"'})


def _authenticate(request: HttpRequest) -> User | HttpResponse:
    """The user whose API token is the basic-auth password (any user name, as on Heroku)."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if not header:
        return _challenge("Log in with `paas login`, or give an API token as the password.")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return _challenge("Use HTTP basic auth with an API token as the password.")
    try:
        _user, _, token = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return _challenge("The Authorization header is not valid basic auth.")
    row = None
    if token.startswith(TOKEN_PREFIX):
        row = (ApiToken.objects.active().select_related("user")
               .filter(digest=token_digest(token)).first())
    if row is None or not row.user.is_active:
        return _challenge("The token is wrong or has been revoked.")
    row.touch()
    return row.user


def _authorize(request: HttpRequest, name: str, verb: Verb) -> tuple[User, App] | HttpResponse:
    user = _authenticate(request)
    if isinstance(user, HttpResponse):
        return user
    try:
        app = authz.app_get(user, name, verb)
    except NotFound as e:
        return _text(404, str(e))
    except Forbidden as e:
        return _text(403, str(e))
    return user, app


class _Backend(Backend):
    def __init__(self, repo: Repo) -> None:
        self.repo = repo

    def open_repository(self, path: Any) -> Any:
        return self.repo


@csrf_exempt
def info_refs(request: HttpRequest, app: str) -> HttpResponseBase:
    service = request.GET.get("service", "")
    if service not in SERVICES:
        return _text(403, "Only git's smart HTTP protocol is served; use git 1.6.6 or later.")
    if request.method not in ("GET", "HEAD"):
        return _text(405, "Use GET.")
    auth = _authorize(request, app, SERVICES[service])
    if isinstance(auth, HttpResponse):
        return auth
    repo = repos.open_repo(auth[1].name)
    try:
        out = BytesIO()
        proto = ReceivableProtocol(BytesIO().read, out.write)
        handler_cls = ReceivePackHandler if service == "git-receive-pack" else UploadPackHandler
        handler = handler_cls(_Backend(repo), ["/"], proto, stateless_rpc=True,
                              advertise_refs=True)
        proto.write_pkt_line(b"# service=" + service.encode() + b"\n")
        proto.write_pkt_line(None)
        handler.handle()
    finally:
        repo.close()
    resp = HttpResponse(out.getvalue(), content_type=f"application/x-{service}-advertisement")
    resp["Cache-Control"] = "no-cache"
    return resp


def _read_body(request: HttpRequest, limit: int) -> tuple[IO[bytes], int]:
    """The whole request body (gunzipped) in a temporary file, and its full size.

    Past `limit` bytes only the size is counted; the kept part still holds the ref commands.
    """
    stream = request.META["wsgi.input"]
    length = request.META.get("CONTENT_LENGTH")
    left = int(length) if length and "HTTP_TRANSFER_ENCODING" not in request.META else None
    gunzip = (zlib.decompressobj(16 + zlib.MAX_WBITS)
              if request.META.get("HTTP_CONTENT_ENCODING", "").lower() in ("gzip", "x-gzip") else None)
    spool: IO[bytes] = SpooledTemporaryFile(max_size=8 << 20)  # noqa: SIM115 — the caller closes it
    size = 0
    while left is None or left > 0:
        data = stream.read(_CHUNK if left is None else min(_CHUNK, left))
        if not data:
            break
        if left is not None:
            left -= len(data)
        if gunzip is not None:
            data = gunzip.decompress(data)
        if size <= limit or size < _KEEP_WHEN_OVER:
            spool.write(data)
        size += len(data)
    spool.seek(0)
    return spool, size


class _Stream:
    """The response body: pkt-lines from the handler's thread, as they come."""

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self.gone = threading.Event()

    def write(self, data: bytes) -> None:
        if self.gone.is_set():
            raise ClientGone
        self._queue.put(bytes(data))

    def end(self) -> None:
        self._queue.put(None)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        item = self._queue.get()
        if item is None:
            raise StopIteration
        return item

    def close(self) -> None:
        # The server calls this when the response ends, or when writing to the client failed.
        self.gone.set()


class _Receive(ReceivePackHandler):
    """receive-pack that builds the pushed commit before the branch moves."""

    cancelled: threading.Event  # set once the client has hung up
    thread: threading.Thread
    push: Callable[[_Receive, list[tuple[bytes, bytes, bytes]]], Iterator[tuple[bytes, bytes]]]

    def say(self, line: str) -> None:
        if not self.has_capability(CAPABILITY_SIDE_BAND_64K):
            return
        data = (line.rstrip("\n") + "\n").encode("utf-8", "replace")
        try:
            for i in range(0, len(data), 65000):
                self.proto.write_sideband(SIDE_BAND_CHANNEL_PROGRESS, data[i:i + 65000])
        except ClientGone:
            # Only the push's own thread unwinds; the builder's progress ticker just goes quiet
            # (the cancelled step's process group is killed by the executor).
            if threading.current_thread() is self.thread:
                raise

    def handle(self) -> None:
        self.thread = threading.current_thread()
        super().handle()

    def _apply_pack(self, refs: Any) -> Iterator[tuple[bytes, bytes]]:
        return self.push(self, list(refs))


def _push(user: User, app: App, repo: Repo, over: str) -> Callable[..., Iterator[tuple[bytes, bytes]]]:
    def apply(handler: _Receive, refs: list[tuple[bytes, bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
        if over:
            handler.say(f" !     {over}")
            yield (b"unpack", over.encode())
            for _old, _new, ref in refs:
                yield (ref, over.encode())
            return
        if any(new != ZERO_SHA for _old, new, _ref in refs):
            try:
                recv = getattr(handler.proto, "recv", None)
                repo.object_store.add_thin_pack(handler.proto.read, recv)
            except Exception as e:
                msg = str(e).replace("\n", " ") or type(e).__name__
                yield (b"unpack", msg.encode())
                for _old, _new, ref in refs:
                    yield (ref, b"unpacker error")
                return
        yield (b"unpack", b"ok")
        built = False
        for old, new, ref in refs:
            status = _update(handler, user, app, repo, old, new, ref, already=built)
            built = built or (status == b"ok" and ref in repos.DEPLOY_BRANCHES)
            yield (ref, status)

    return apply


def _update(handler: _Receive, user: User, app: App, repo: Repo, old: bytes, new: bytes,
            ref: bytes, *, already: bool) -> bytes:
    branch = ref.decode(errors="replace").removeprefix("refs/heads/")
    if ref.startswith(b"refs/tags/"):  # kept as pushed (`--follow-tags`); tags never deploy
        try:
            if new == ZERO_SHA:
                ok = repo.refs.remove_if_equals(ref, old)
            else:
                ok = repo.refs.set_if_equals(ref, None if old == ZERO_SHA else old, new)
        except (KeyError, ValueError):
            ok = False
        return b"ok" if ok else b"failed to update the tag"
    if ref not in repos.DEPLOY_BRANCHES:
        handler.say(f" !     {branch}: only main or master is deployed; to deploy another branch, "
                    "`git push paas <branch>:main`.")
        return b"only main or master is deployed"
    if new == ZERO_SHA:
        return b"deleting the deployed branch is not allowed"
    if already:
        return b"push one of main and master at a time"
    current = repo.refs.as_dict().get(ref, ZERO_SHA)
    if current != old:
        return b"stale info, fetch first"
    try:
        is_commit = isinstance(repo[new], Commit)
    except KeyError:
        is_commit = False
    if not is_commit:
        return b"not a commit"
    outcome = run_build(app=app, user=user, commit=new.decode(), repo=repos.repo_path(app.name),
                        say=handler.say, cancelled=handler.cancelled)
    if not outcome.ok:
        return outcome.reason.encode()
    if not repo.refs.set_if_equals(ref, None if old == ZERO_SHA else old, new):
        return b"failed to update the branch"
    head = repo.refs.get_symrefs().get(b"HEAD")
    if head not in repo.refs.as_dict():
        repo.refs.set_symbolic_ref(b"HEAD", ref)
    return b"ok"


def _respond(service: str, work: Callable[[_Stream], None], cleanup: Callable[[], None]) -> StreamingHttpResponse:
    stream = _Stream()

    def run() -> None:
        try:
            work(stream)
        except ClientGone:
            log.info("git client disconnected during %s", service)
        except Exception:
            log.exception("%s failed", service)
        finally:
            stream.end()
            try:
                cleanup()
            finally:
                connections.close_all()

    threading.Thread(target=run, name=service, daemon=True).start()
    resp = StreamingHttpResponse(stream, content_type=f"application/x-{service}-result")
    resp["Cache-Control"] = "no-cache"
    return resp


@csrf_exempt
def service(request: HttpRequest, app: str, service: str) -> HttpResponseBase:
    if request.method != "POST":
        return _text(405, "Use POST.")
    auth = _authorize(request, app, SERVICES[service])
    if isinstance(auth, HttpResponse):
        return auth
    user, app_row = auth
    if service == "git-upload-pack":
        body, _size = _read_body(request, 1 << 62)
        repo = repos.open_repo(app_row.name)

        def upload(stream: _Stream) -> None:
            proto = ReceivableProtocol(body.read, stream.write)
            UploadPackHandler(_Backend(repo), ["/"], proto, stateless_rpc=True).handle()

        def close_upload() -> None:
            body.close()
            repo.close()

        return _respond(service, upload, close_upload)

    lock = repos.PushLock(app_row.name)
    limit = repos.max_repo_bytes()
    try:
        current = repos.repo_size(app_row.name)
        body, size = _read_body(request, max(limit - current, 0))
        repo = repos.open_repo(app_row.name)
    except BaseException:
        lock.release()
        raise
    over = ""
    if not lock.held:
        over = f"another push to {app_row.name} is in progress; try again when it has finished"
    elif current + size > limit:
        over = (f"the repository would be {(current + size) / 2**20:.1f} MiB, over the limit of "
                f"{limit / 2**20:.0f} MiB")

    def receive(stream: _Stream) -> None:
        proto = ReceivableProtocol(body.read, stream.write)
        handler = _Receive(_Backend(repo), ["/"], proto, stateless_rpc=True)
        handler.push = _push(user, app_row, repo, over)
        handler.cancelled = stream.gone
        handler.handle()

    def close_receive() -> None:
        body.close()
        repo.close()
        lock.release()

    return _respond(service, receive, close_receive)
