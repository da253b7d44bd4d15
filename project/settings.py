"""Django settings of the demo site, read from the environment.

This is the only module that reads environment variables (through
``project/env.py``). It configures notify as any host project would: plain
``NOTIFY_*`` settings, set only when their variable is, so notify's own
defaults apply otherwise; it never imports notify. Every bad value raises
``ImproperlyConfigured`` naming its key, so a misconfigured server fails at
start instead of at the first request (notify's own settings are checked when
the app loads).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import dj_database_url

from project.env import boolean, env, passthrough, seconds, whole

BASE_DIR = Path(__file__).resolve().parent.parent

INSECURE_DEV_KEY = "django-insecure-notify-development-key-change-me"


def _nonempty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _hosts(value: str) -> list[str]:
    hosts = [h.strip() for h in value.split(",") if h.strip()]
    if not hosts:
        raise ValueError("expected a comma-separated list of host names")
    return hosts


def _origins(value: str) -> list[str]:
    origins = [o.strip() for o in value.split(",") if o.strip()]
    for origin in origins:
        scheme, sep, host = origin.partition("://")
        if not sep or not scheme or not host:
            raise ValueError(f"expected origins such as https://host, got {origin!r}")
    return origins


_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]+$")


def _proxy_ssl_header(value: str) -> tuple[str, str] | None:
    """``X-Forwarded-Proto`` (meaning ``X-Forwarded-Proto: https``) or
    ``Name=value``: the header a TLS-terminating proxy sets on secure requests,
    as Django's ``(META key, value)``. Empty: none."""
    name, _, expected = value.partition("=")
    name, expected = name.strip(), expected.strip() or "https"
    if not name:
        return None
    if not _HEADER_NAME.match(name):
        raise ValueError(
            f"expected a header name such as X-Forwarded-Proto, got {name!r}"
        )
    return "HTTP_" + name.upper().replace("-", "_"), expected


# How long a query waits for a lock (SQLite's write lock, a PostgreSQL row or
# advisory lock) before it fails, and the client gets a 503.
DATABASE_LOCK_TIMEOUT = env("DATABASE_LOCK_TIMEOUT", seconds(minimum=0.1), 20.0)

SQLITE = "django.db.backends.sqlite3"
POSTGRESQL = "django.db.backends.postgresql"


def _database(value: str) -> dict[str, Any]:
    """The database of ``DATABASE_URL``: SQLite or PostgreSQL, nothing else."""
    try:
        config = dj_database_url.parse(value, conn_max_age=600, conn_health_checks=True)
    except Exception as exc:  # the library raises bare Exceptions and KeyErrors
        raise ValueError(f"cannot parse {value!r}: {exc}") from exc
    engine = config.get("ENGINE")
    if engine not in (SQLITE, POSTGRESQL):
        scheme = value.partition(":")[0]
        raise ValueError(
            f"unsupported database {scheme!r}: notify runs on SQLite "
            "(sqlite:///path/to/file) or PostgreSQL (postgres://user:password@host/name)"
        )
    if engine == SQLITE:
        # IMMEDIATE transactions take the write lock up front, so concurrent
        # publishers queue instead of failing with "database is locked"; WAL
        # lets readers (streams replaying) run beside a writer.
        config["OPTIONS"] = {
            "transaction_mode": "IMMEDIATE",
            "timeout": DATABASE_LOCK_TIMEOUT,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
        # The ASGI handler runs sync work on a small fixed pool of threads, and
        # Django keeps a connection per thread: keeping them open spares every
        # request a new connection (and SQLite's statement cache its compiling).
        config["CONN_MAX_AGE"] = None
        config["CONN_HEALTH_CHECKS"] = False
    else:
        options = config.setdefault("OPTIONS", {})
        # Like SQLite's timeout: a connection or a lock that takes longer is
        # an error (a 503 to the client), not a request hanging on.
        options.setdefault("connect_timeout", 10)
        lock_ms = round(DATABASE_LOCK_TIMEOUT * 1000)
        options.setdefault("options", f"-c lock_timeout={lock_ms}")
    return dict(config)


DEBUG = env("DEBUG", boolean, False)
SECRET_KEY = env("SECRET_KEY", _nonempty, INSECURE_DEV_KEY)
ALLOWED_HOSTS = env("ALLOWED_HOSTS", _hosts, ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS: list[str] = env("CSRF_TRUSTED_ORIGINS", _origins, [])

# HTTPS: off by default so that the development server works over plain HTTP;
# `manage.py check --deploy` says which are still off.
SESSION_COOKIE_SECURE = env("SESSION_COOKIE_SECURE", boolean, False)
CSRF_COOKIE_SECURE = env("CSRF_COOKIE_SECURE", boolean, False)
SECURE_SSL_REDIRECT = env("SECURE_SSL_REDIRECT", boolean, False)
SECURE_HSTS_SECONDS = env("SECURE_HSTS_SECONDS", whole(minimum=0), 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env("SECURE_HSTS_INCLUDE_SUBDOMAINS", boolean, False)
SECURE_HSTS_PRELOAD = env("SECURE_HSTS_PRELOAD", boolean, False)
SECURE_PROXY_SSL_HEADER = env("SECURE_PROXY_SSL_HEADER", _proxy_ssl_header, None)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "notify",
]

# No GZipMiddleware: it would buffer the event stream (and compressing a
# stream of tiny events buys nothing).
# Django's standard middleware, with the hooks that do no I/O run on the
# event loop instead of in a worker thread (notify/middleware.py).
MIDDLEWARE = [
    "notify.middleware.SecurityMiddleware",
    "notify.middleware.SessionMiddleware",
    "notify.middleware.CommonMiddleware",
    "notify.middleware.CsrfViewMiddleware",
    "notify.middleware.AuthenticationMiddleware",
    "notify.middleware.MessageMiddleware",
    "notify.middleware.XFrameOptionsMiddleware",
]

# Django's deployment checks look for its middleware by dotted path and so
# would say these three are missing; notify.deploy_checks counts subclasses,
# reports them as notify.W101-W103 when really missing, and runs the checks
# Django then skips (HSTS, SSL redirect, CSRF_COOKIE_SECURE, ...).
SILENCED_SYSTEM_CHECKS = ["security.W001", "security.W002", "security.W003"]

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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

_default_db = f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
DATABASES = {"default": env("DATABASE_URL", _database, _database(_default_db))}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
# The app's static files, under notify/ as in the installed app (pyproject.toml),
# so that a host's own js/page.js or img/favicon.svg never stands for notify's.
STATICFILES_DIRS = [("notify", BASE_DIR / "static")]
STATIC_ROOT = env("STATIC_ROOT", _nonempty, str(BASE_DIR / "var" / "static"))

# The publish API bounds bodies itself (413 past 64 KiB); Django's own limit
# sits above it so that check is the one that answers.
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024

# notify's settings (README "Settings"), as the environment gives them.
passthrough(
    globals(),
    {
        "REDIS_URL": "NOTIFY_REDIS_URL",
        "NOTIFY_REDIS_PREFIX": "NOTIFY_REDIS_PREFIX",
        "NOTIFY_HEARTBEAT_SECONDS": "NOTIFY_HEARTBEAT_SECONDS",
        "NOTIFY_RETRY_MS": "NOTIFY_RETRY_MS",
        "NOTIFY_PADDING_BYTES": "NOTIFY_PADDING_BYTES",
        "NOTIFY_RETENTION_DAYS": "NOTIFY_RETENTION_DAYS",
        "NOTIFY_PUBLISH_RATE": "NOTIFY_PUBLISH_RATE",
        "NOTIFY_QUEUE_SIZE": "NOTIFY_QUEUE_SIZE",
        "NOTIFY_RESYNC_SECONDS": "NOTIFY_RESYNC_SECONDS",
        "NOTIFY_SYNC_THREADS": "NOTIFY_SYNC_THREADS",
        "NOTIFY_METRICS_TOKEN": "NOTIFY_METRICS_TOKEN",
        "NOTIFY_MAX_STREAMS_PER_USER": "NOTIFY_MAX_STREAMS_PER_USER",
        "NOTIFY_PRUNE_SECONDS": "NOTIFY_PRUNE_SECONDS",
        "NOTIFY_DRAIN_RATE": "NOTIFY_DRAIN_RATE",
    },
)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "notify": {
            "handlers": ["console"],
            "level": env("NOTIFY_LOG_LEVEL", _nonempty, "INFO"),
        },
    },
}
