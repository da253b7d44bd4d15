from __future__ import annotations

import secrets
import shlex
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from notify import accounts
from notify.models import APIToken
from notify.tokens import create_token

# username -> (staff, groups)
DEMO_USERS: dict[str, tuple[bool, tuple[str, ...]]] = {
    "admin": (True, ()),
    "alice": (False, ()),
    "bob": (False, ("ops",)),
}
STREAM_TOKEN = ("demo-alice-stream", "alice", False)
PUBLISH_TOKEN = ("demo-admin-publish", "admin", True)


class Command(BaseCommand):
    help = (
        "Create (or refresh) the demo users admin, alice and bob and the group "
        "ops, with new random passwords and API tokens, and print how to use them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--url",
            default="http://127.0.0.1:8000",
            help="where the server listens (for the printed commands)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        base = options["url"].rstrip("/")
        with transaction.atomic():
            passwords = {name: self._user(name) for name in DEMO_USERS}
            stream = self._token(*STREAM_TOKEN)
            publish = self._token(*PUBLISH_TOKEN)
        self.stdout.write(self._summary(base, passwords, stream, publish))

    def _user(self, username: str) -> str:
        staff, groups = DEMO_USERS[username]
        model = get_user_model()
        lookup: dict[str, Any] = {accounts.names().username: username}
        user, _ = model._default_manager.get_or_create(**lookup)
        password = secrets.token_urlsafe(12)
        user.set_password(password)
        user.is_active = True
        user.is_staff = staff
        user.is_superuser = staff
        user.save()
        for name in groups:
            group, _ = Group.objects.get_or_create(name=name)
            user.groups.add(group)
        return password

    def _token(self, name: str, username: str, can_publish: bool) -> str:
        # Only a hash is stored, so a fresh token replaces the old one.
        APIToken.objects.filter(name=name).delete()
        user = get_user_model()._default_manager.get_by_natural_key(username)
        return create_token(user, name=name, can_publish=can_publish)[1]

    def _summary(
        self, base: str, passwords: dict[str, str], stream: str, publish: str
    ) -> str:
        body = '{"audience":"all","title":"Hello from curl","level":"success"}'
        roles = {"admin": "staff: /broadcast/ and /admin/", "bob": "group ops"}
        width = max(len(name) for name in passwords)
        users = "\n".join(
            f"    {name.ljust(width)}  {password}"
            + (f"   ({roles[name]})" if name in roles else "")
            for name, password in passwords.items()
        )
        rule = "=" * 72
        return (
            f"{rule}\n"
            f"notify demo (passwords and tokens are new on every run)\n\n"
            f"  Sign in at {base}/accounts/login/ and keep the inbox ({base}/) open:\n"
            f"{users}\n\n"
            f"  Watch alice's stream:\n"
            f"    curl -N -H {shlex.quote('Authorization: Bearer ' + stream)} "
            f"{base}/events/\n\n"
            f"  Publish to everyone as admin:\n"
            f"    curl -X POST -H {shlex.quote('Authorization: Bearer ' + publish)} "
            f"-H 'Content-Type: application/json' -d {shlex.quote(body)} "
            f"{base}/api/notifications\n\n"
            f"  Or from the command line:\n"
            f"    .venv/bin/python manage.py notify_send --group ops --title 'Disk almost full' --level warning\n"
            f"{rule}"
        )
