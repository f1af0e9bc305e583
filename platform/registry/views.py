"""`GET|HEAD /v2/`, `/v2/<app>/manifests/<digest|tag>` and `/v2/<app>/blobs/<digest>`.

The read half of the OCI distribution spec, served from the controller's image store
(`runtime.images.ImageStore` under the runtime root). Who may read:

- an agent, with its host token (`paashost_...`): the images of every app;
- a person, with an API token (`paas_...`) of someone who may read the app: that app's images.

Tokens come as `Authorization: Bearer <token>`, or as the password of HTTP basic auth (what
OCI clients send). An app's images are the images of its builds; a blob is the app's when one of
those images' manifests lists it. Tags: `latest` (the current release's image) and `v<N>`
(release N's). Errors are the spec's JSON (`{"errors": [{"code", "message", "detail"}]}`);
an app the token may not see is unknown (404), as in the REST API.

Digests are checked on the way out: a manifest is hashed before it is sent, a blob while it
streams, and a blob whose bytes do not match its digest is cut short, so the client's own check
fails rather than storing it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    JsonResponse,
    StreamingHttpResponse,
)
from django.views.decorators.csrf import csrf_exempt

from core import authz
from core.actions.hosts import HOST_TOKEN_PREFIX
from core.errors import Forbidden, NotFound
from core.models import ApiToken, App, Build, Host, Release
from core.models.api_token import TOKEN_PREFIX, token_digest
from runtime.client import runtime_root
from runtime.images import MEDIA_MANIFEST, ImageError, ImageStore

log = logging.getLogger(__name__)

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_VERSION_RE = re.compile(r"^v([1-9][0-9]{0,8})$")
_CHUNK = 1 << 16
API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}


def image_store() -> ImageStore:
    """The controller's image store: where builds put their images."""
    return ImageStore(runtime_root() / "images")


def _error(status: int, code: str, message: str, detail: Any = None, **headers: str) -> JsonResponse:
    body = {"errors": [{"code": code, "message": message, "detail": detail or {}}]}
    resp = JsonResponse(body, status=status)
    for k, v in {**API_VERSION_HEADER, **headers}.items():
        resp[k] = v
    return resp


def _versioned(resp: HttpResponseBase) -> HttpResponseBase:
    for k, v in API_VERSION_HEADER.items():
        resp[k] = v
    return resp


def _unauthorized(message: str) -> JsonResponse:
    return _error(401, "UNAUTHORIZED", message, **{"WWW-Authenticate": 'Basic realm="paas"'})


@dataclass(frozen=True)
class Reader:
    """Who asks: a host (any app's images) or a user (the apps they may read)."""

    host: Host | None = None
    user: Any = None

    def app(self, name: str) -> App:
        """The app `name` if this reader may pull its images; NotFound otherwise."""
        if self.host is not None:
            app = App.objects.filter(name=name).first()
            if app is None:
                raise NotFound(f"App '{name}' not found.")
            return app
        return authz.app_get(self.user, name)


def _token(request: HttpRequest) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            _user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return password or None
    return None


def _authenticate(request: HttpRequest) -> Reader | JsonResponse:
    if not request.META.get("HTTP_AUTHORIZATION"):
        return _unauthorized("Give a host token or an API token (Bearer, or as the basic-auth password).")
    token = _token(request)
    if token is None:
        return _unauthorized("The Authorization header is neither a bearer token nor basic auth.")
    if token.startswith(HOST_TOKEN_PREFIX):
        host = Host.objects.filter(token_digest=token_digest(token)).first()
        if host is not None:
            return Reader(host=host)
    elif token.startswith(TOKEN_PREFIX):
        row = (ApiToken.objects.active().select_related("user")
               .filter(digest=token_digest(token)).first())
        if row is not None and row.user.is_active:
            row.touch()
            return Reader(user=row.user)
    return _unauthorized("The token is wrong or has been revoked.")


def _app(request: HttpRequest, name: str) -> tuple[App, ImageStore] | JsonResponse:
    reader = _authenticate(request)
    if isinstance(reader, JsonResponse):
        return reader
    try:
        app = reader.app(name)
    except (NotFound, Forbidden):
        return _error(404, "NAME_UNKNOWN", f"App '{name}' not found.", {"name": name})
    return app, image_store()


def _app_manifests(app: App) -> list[str]:
    digests = Build.objects.filter(app=app).exclude(image_digest="").values_list(
        "image_digest", flat=True)
    return sorted({d for d in digests if _DIGEST_RE.match(d)})


def _resolve_tag(app: App, reference: str) -> str | None:
    """The manifest digest a tag of `app` names, or None."""
    release: Release | None
    if reference == "latest":
        release = app.current_release()
    else:
        m = _VERSION_RE.match(reference)
        release = Release.objects.filter(app=app, version=int(m.group(1))).first() if m else None
    if release is None or release.build is None or not release.build.image_digest:
        return None
    return release.build.image_digest


def _method_not_allowed(request: HttpRequest) -> JsonResponse | None:
    if request.method not in ("GET", "HEAD"):
        resp = _error(405, "UNSUPPORTED", "This registry is read-only: GET and HEAD only.")
        resp["Allow"] = "GET, HEAD"
        return resp
    return None


@csrf_exempt
def base(request: HttpRequest) -> HttpResponseBase:
    """`/v2/`: 200 to a reader with a valid token (how clients probe for the API)."""
    refused = _method_not_allowed(request)
    if refused is not None:
        return refused
    reader = _authenticate(request)
    if isinstance(reader, JsonResponse):
        return reader
    return _versioned(JsonResponse({}))


@csrf_exempt
def manifest(request: HttpRequest, app: str, reference: str) -> HttpResponseBase:
    """An image manifest of the app, by digest or tag."""
    refused = _method_not_allowed(request)
    if refused is not None:
        return refused
    found = _app(request, app)
    if isinstance(found, JsonResponse):
        return found
    the_app, store = found
    if reference.startswith("sha256:"):
        if not _DIGEST_RE.match(reference):
            return _error(400, "DIGEST_INVALID", f"Invalid digest {reference!r}: expected sha256:<64 hex>.")
        digest: str | None = reference if reference in _app_manifests(the_app) else None
    else:
        digest = _resolve_tag(the_app, reference)
    unknown = _error(404, "MANIFEST_UNKNOWN", f"No manifest {reference} for app '{app}'.",
                     {"reference": reference})
    if digest is None or not store.has_blob(digest):
        return unknown
    data = store.blob_path(digest).read_bytes()
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        log.error("image store blob %s does not match its digest", digest)
        return _error(500, "UNKNOWN", f"The stored manifest {digest} is corrupt.")
    try:
        media = str(store.read_json_blob(digest).get("mediaType") or MEDIA_MANIFEST)
    except ImageError:
        return unknown
    resp = HttpResponse(b"" if request.method == "HEAD" else data, content_type=media)
    resp["Content-Length"] = str(len(data))
    resp["Docker-Content-Digest"] = digest
    return _versioned(resp)


def _app_blobs(app: App, store: ImageStore) -> set[str]:
    out: set[str] = set()
    for digest in _app_manifests(app):
        try:
            _d, m = store.manifest(digest)
        except ImageError:
            continue
        out.add(digest)
        out.add(str(m["config"].get("digest", "")))
        out.update(str(layer.get("digest", "")) for layer in m["layers"])
    return out


def _stream(path: Any, digest: str) -> Iterator[bytes]:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            yield chunk
    if "sha256:" + h.hexdigest() != digest:
        # Already partly sent: end the response short of its Content-Length, so no client
        # takes the bytes for the blob.
        log.error("image store blob %s does not match its digest", digest)
        raise ImageError(f"blob {digest} in the image store is corrupt")


@csrf_exempt
def blob(request: HttpRequest, app: str, digest: str) -> HttpResponseBase:
    """A blob (manifest, config or layer) of one of the app's images, streamed."""
    refused = _method_not_allowed(request)
    if refused is not None:
        return refused
    found = _app(request, app)
    if isinstance(found, JsonResponse):
        return found
    the_app, store = found
    if not _DIGEST_RE.match(digest):
        return _error(400, "DIGEST_INVALID", f"Invalid digest {digest!r}: expected sha256:<64 hex>.")
    path = store.blob_path(digest)
    if digest not in _app_blobs(the_app, store) or not path.is_file():
        return _error(404, "BLOB_UNKNOWN", f"No blob {digest} for app '{app}'.", {"digest": digest})
    size = path.stat().st_size
    resp: HttpResponseBase
    if request.method == "HEAD":
        resp = HttpResponse(b"", content_type="application/octet-stream")
    else:
        resp = StreamingHttpResponse(_stream(path, digest), content_type="application/octet-stream")
    resp["Content-Length"] = str(size)
    resp["Docker-Content-Digest"] = digest
    return _versioned(resp)


@csrf_exempt
def unknown(request: HttpRequest) -> HttpResponseBase:
    return _error(404, "NAME_UNKNOWN", f"No such registry endpoint: {request.path}.")
