"""Operations endpoints: ``/healthz`` and ``/metrics``."""

from __future__ import annotations

import asyncio
import logging
import secrets

from asgiref.sync import sync_to_async
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from prometheus_client import CONTENT_TYPE_LATEST

from notify import metrics
from notify.broker import get_broker
from notify.conf import conf
from notify.permissions import acaller, is_staff
from notify.views.http import error, json_response, methods, unauthenticated

logger = logging.getLogger(__name__)


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception:
        logger.warning("database check failed", exc_info=True)
        return False


@csrf_exempt
@methods("GET")
async def healthz(request: HttpRequest) -> HttpResponse:
    broker = get_broker()
    try:
        async with asyncio.timeout(2):
            database = await sync_to_async(_database_ok)()
    except TimeoutError:
        database = False
    broker_ok = await broker.ping()
    ok = database and broker_ok
    body = {
        "status": "ok" if ok else "unavailable",
        "broker": broker.name,
        "database": "ok" if database else "unavailable",
    }
    if not broker_ok:
        body["broker_status"] = "unavailable"
    response = json_response(body, status=200 if ok else 503)
    response["Cache-Control"] = "no-store"
    return response


@csrf_exempt
@methods("GET")
async def metrics_view(request: HttpRequest) -> HttpResponse:
    token = conf.metrics_token
    presented = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    # Bytes: compare_digest refuses str with non-ASCII characters.
    if not (token and secrets.compare_digest(presented.encode(), token.encode())):
        caller = await acaller(request)
        if not caller.authenticated:
            return unauthenticated(bad_token=caller.bad_token)
        if not is_staff(caller):
            return error(403, "metrics are for staff")
    # In multiprocess mode rendering reads every process's files: off the loop.
    body = await sync_to_async(metrics.render, thread_sensitive=False)()
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
