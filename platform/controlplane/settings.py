"""Django settings for the control plane, read from the environment (see README, Configuration)."""

from __future__ import annotations

import secrets

import dj_database_url

from controlplane.env import ConfigError, data_dir, env_bool, env_list, env_str

DATA_DIR = data_dir()
try:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
except OSError as exc:
    raise ConfigError(
        f"cannot create the data dir {DATA_DIR} ({exc.strerror}): set PAAS_DATA_DIR to a "
        "directory this user may write"
    ) from None


def _secret_key() -> str:
    """PAAS_SECRET_KEY, else a key generated once and kept in the data dir."""
    configured = env_str("PAAS_SECRET_KEY", "")
    if configured:
        return configured
    path = DATA_DIR / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        key = secrets.token_urlsafe(50)
        # O_EXCL: two processes starting at once must agree on one key.
        try:
            with open(path, "x", opener=lambda p, f: __import__("os").open(p, f, 0o600)) as fh:
                fh.write(key)
        except FileExistsError:
            return path.read_text().strip()
        return key


SECRET_KEY = _secret_key()
DEBUG = env_bool("PAAS_DEBUG", False)
PAAS_DOMAIN = env_str("PAAS_DOMAIN", "localhost")
# How an app's URL is shown to users; `make up` adds the router's port when it is not 80.
PAAS_APP_URL = env_str("PAAS_APP_URL", "http://{app}.{domain}")
if "{app}" not in PAAS_APP_URL:
    raise ConfigError(f"PAAS_APP_URL must contain {{app}}, like https://{{app}}.{{domain}}, not {PAAS_APP_URL!r}")
ALLOWED_HOSTS = env_list("PAAS_ALLOWED_HOSTS", ["*"])

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served by the platform itself, no CDN
    "core",
    "scheduler",
    "web",
    "gitserver",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files (dashboard, API docs) are served by the web process itself, no CDN or
    # separate file server needed.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Errors under /api/ that escape the views become JSON too (see restapi.errors).
    "restapi.errors.ApiJsonErrorsMiddleware",
]

ROOT_URLCONF = "controlplane.urls"
WSGI_APPLICATION = "controlplane.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{DATA_DIR / 'paas.sqlite3'}", conn_max_age=60
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # WAL lets the web, worker and beat processes read while one of them writes.
    DATABASES["default"].setdefault("OPTIONS", {})["init_command"] = "PRAGMA journal_mode=WAL;"
    DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
    DATABASES["default"]["CONN_MAX_AGE"] = 0

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
# Serve straight from the apps' static folders: no collectstatic step to forget on upgrade.
WHITENOISE_USE_FINDERS = True
LOGIN_URL = "/login/"

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ALWAYS_EAGER = env_bool("PAAS_CELERY_EAGER", False)

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": ["restapi.auth.BearerTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON only: no browsable HTML pages, no form parsing.
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "restapi.errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
# Password logins per client address (`N/second|minute|hour|day`; empty: no limit).
PAAS_LOGIN_RATE = env_str("PAAS_LOGIN_RATE", "10/minute")
# A config PATCH may carry 500 values of 32 KiB; anything bigger is refused with 413.
DATA_UPLOAD_MAX_MEMORY_SIZE = 20 * 1024 * 1024
SPECTACULAR_SETTINGS = {
    "TITLE": "paas API",
    "VERSION": "1",
    "DESCRIPTION": "The control plane's REST API; see docs/api.md.",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "HostStateEnum": "core.models.host.HostState",
        "ContainerStateEnum": "core.models.container.ContainerState",
        "BuildStatusEnum": "core.models.build.BuildStatus",
        "ReleaseStatusEnum": "core.models.release.ReleaseStatus",
        "RoleEnum": "core.models.membership.Role",
    },
}
