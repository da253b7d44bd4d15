"""The pages people use: the inbox, the staff console, and the console's live
list of recent alerts with how many of their recipients are connected now."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt, ensure_csrf_cookie

from notify import accounts, wire
from notify.broker import get_broker
from notify.client import client_config
from notify.conf import conf
from notify.models import Audience, Level, Notification
from notify.permissions import Caller, is_staff
from notify.views.http import (
    authenticated,
    error,
    field_errors,
    int_param,
    json_response,
    methods,
)

RECENT_DEFAULT, RECENT_MAX = 20, 100
SUGGESTIONS = 500  # names offered for completion on the console


@login_required
@ensure_csrf_cookie
def inbox(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "notify/inbox.html",
        {"notify_base_template": conf.base_template, "active": "inbox"},
    )


@login_required
@ensure_csrf_cookie
def broadcast(request: HttpRequest) -> HttpResponse:
    if not is_staff(Caller(request.user)):
        raise PermissionDenied("The broadcast console is for staff.")
    username = accounts.names().username
    users = get_user_model()._default_manager.filter(is_active=True)
    users = users.order_by(username)
    context = {
        "notify_base_template": conf.base_template,
        "config": client_config(request),
        "active": "broadcast",
        "levels": Level.choices,
        "groups": list(
            Group.objects.order_by("name").values_list("name", flat=True)[:SUGGESTIONS]
        ),
        "usernames": list(users.values_list(username, flat=True)[:SUGGESTIONS]),
    }
    return render(request, "notify/broadcast.html", context)


def _recent(limit: int, present: set[int]) -> dict[str, Any]:
    """The newest notifications, each with how many of its recipients have a
    stream open now. A fixed number of queries, whatever the audience size."""
    users = get_user_model()._default_manager
    online = set(
        users.filter(pk__in=present, is_active=True).values_list("pk", flat=True)
    )
    members: dict[int, set[int]] = defaultdict(set)
    names = accounts.names()
    through = users.model.groups.through.objects.filter(
        **{f"{names.member_user}__in": online}
    )
    for user_id, group_id in through.values_list(names.member_user, names.member_group):
        members[group_id].add(user_id)
    rows = (
        Notification.objects.select_related("sender")
        .prefetch_related("users", "groups")
        .order_by("-id")[:limit]
    )
    results = []
    for n in rows:
        if n.audience == Audience.USER:
            addressed = list(n.users.all())
            targets = sorted(u.get_username() for u in addressed)
            reached = {u.pk for u in addressed} & online
        elif n.audience == Audience.GROUP:
            groups = list(n.groups.all())
            targets = sorted(g.name for g in groups)
            reached = set().union(*(members[g.pk] for g in groups))
        else:
            targets, reached = [], online
        item: dict[str, Any] = dict(wire.to_wire(n))
        del item["read"]
        item |= {
            "targets": targets,
            "sender": n.sender.get_username() if n.sender else None,
            "recipients": n.recipients,
            "connected": len(reached),
        }
        results.append(item)
    return {"results": results, "connected_users": len(online)}


@csrf_exempt
@methods("GET")
@authenticated
async def recent_broadcasts(request: HttpRequest, caller: Caller) -> HttpResponse:
    if not is_staff(caller):
        return error(403, "recent alerts are for staff")
    errors: dict[str, list[str]] = {}
    limit = int_param(request, ["limit"], errors, minimum=1, maximum=RECENT_MAX)
    if errors:
        return field_errors(errors)
    present = {
        int(pk)
        for channel in await get_broker().present_channels()
        if (pk := channel.removeprefix("user:")).isdigit()
    }
    body = await sync_to_async(_recent)(limit or RECENT_DEFAULT, present)
    response = json_response(body)
    response["Cache-Control"] = "no-store"
    return response
