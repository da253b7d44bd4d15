"""System checks for the ``NOTIFY_*`` settings.

Ids are stable: notify.E001 heartbeat, E002 retry, E003 padding, E004
retention, E005 publish rate, E006 queue size, E007 replay batch, E008 resync,
E009 sync threads, E010 broker, E011 open backlog, E012 streams per user,
E013 prune interval, E014 Redis URL, E015 Redis key prefix, E016 metrics
token, E017 base template, E018 (in ``accounts``) the user model, E019 drain
rate;
notify.W001 the insecure development key; notify.W002 (in
``handler_checks``) the project's ASGI application is not notify's handler;
notify.W101-W103 (deployment,
in ``deploy_checks``) Django's security, clickjacking or CSRF middleware
missing, counting subclasses.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured

from notify import (  # noqa: F401 - register their checks
    deploy_checks,
    handler_checks,
)
from notify.accounts import check_user_model
from notify.conf import SETTINGS, conf


@register(Tags.models)
def check_the_user_model(**kwargs: Any) -> list[CheckMessage]:
    return check_user_model(get_user_model())


@register(Tags.compatibility)
def check_settings(**kwargs: Any) -> list[CheckMessage]:
    found: list[CheckMessage] = []
    for setting in SETTINGS:
        value = getattr(settings, setting.name, setting.default)
        try:
            setting.parse(value)
        except ValueError as exc:
            found.append(Error(f"{setting.name}: {exc}", id=setting.check_id))
    # The broker is built with the queue size, the resync interval and the
    # Redis settings: when those are bad, their own errors say so and the
    # broker is not blamed too.
    if not any(
        m.id in ("notify.E006", "notify.E008", "notify.E014", "notify.E015")
        for m in found
    ):
        found.extend(_check_broker())
    if not any(m.id == "notify.E017" for m in found):
        found.extend(_check_base_template())
    if settings.SECRET_KEY.startswith("django-insecure-notify") and not settings.DEBUG:
        found.append(
            Warning(
                "SECRET_KEY is the built-in development key.",
                hint="Set the SECRET_KEY environment variable in production.",
                id="notify.W001",
            )
        )
    return found


def _check_broker() -> list[CheckMessage]:
    from notify.broker import make_broker

    config = conf.broker
    if not isinstance(config, dict) or "BACKEND" not in config:
        return [Error("NOTIFY_BROKER: must be a dict with a BACKEND", id="notify.E010")]
    try:
        make_broker({**config, "HISTORY": None})
    except ImproperlyConfigured as exc:
        return [Error(str(exc), id="notify.E010")]
    return []


def _check_base_template() -> list[CheckMessage]:
    from django.template import TemplateDoesNotExist, engines
    from django.template.loader import get_template

    if not engines.all():
        return []  # a project without templates serves the API only
    try:
        get_template(conf.base_template)
    except TemplateDoesNotExist:
        return [
            Error(
                f"NOTIFY_BASE_TEMPLATE: no template named {conf.base_template!r}",
                hint="notify's pages extend it; the default is notify/base.html.",
                id="notify.E017",
            )
        ]
    return []
