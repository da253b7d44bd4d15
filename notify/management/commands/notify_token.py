from __future__ import annotations

from datetime import UTC
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import IntegrityError, transaction

from notify.models import APIToken
from notify.tokens import create_token


class Command(BaseCommand):
    help = (
        "Manage API tokens (Authorization: Bearer <token>). "
        "`create` prints the new token once; only its hash is stored."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(
            dest="action", metavar="{create,list,revoke}", required=True
        )
        create = actions.add_parser(
            "create", help="create a token for USER and print it once"
        )
        create.add_argument(
            "username", metavar="USER", help="the user's USERNAME_FIELD (username)"
        )
        create.add_argument(
            "--publish",
            action="store_true",
            help="the token may publish notifications (POST /api/notifications)",
        )
        create.add_argument(
            "--name", default=None, help="a unique name (default: USER-<random>)"
        )
        actions.add_parser("list", help="list tokens (never their secrets)")
        revoke = actions.add_parser("revoke", help="delete the token called NAME")
        revoke.add_argument("name", metavar="NAME")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "create":
            self._create(options["username"], options["name"], options["publish"])
        elif action == "list":
            self._list()
        else:
            self._revoke(options["name"])

    def _create(self, username: str, name: str | None, can_publish: bool) -> None:
        model = get_user_model()
        try:  # as Django's ModelBackend finds who signs in
            user = model._default_manager.get_by_natural_key(username)
        except model.DoesNotExist:
            raise CommandError(f"unknown user {username!r}") from None
        if name is not None:
            name = name.strip()
            if not name or len(name) > 100:
                raise CommandError("--name: must be 1 to 100 characters")
            if APIToken.objects.filter(name=name).exists():
                raise CommandError(f"a token named {name!r} already exists")
        try:
            with transaction.atomic():
                token, secret = create_token(user, name=name, can_publish=can_publish)
        except IntegrityError as exc:  # the same name, created concurrently
            raise CommandError(f"a token named {name!r} already exists") from exc
        if not user.is_active:
            self.stderr.write(
                f"warning: {username} is inactive; the token works once it is active"
            )
        rights = "may publish" if can_publish else "may read"
        self.stderr.write(
            f"Token {token.name!r} for {username} ({rights}). "
            "It is shown only now; store it safely:"
        )
        self.stdout.write(secret)

    def _list(self) -> None:
        tokens = APIToken.objects.select_related("user").order_by("created_at", "id")
        rows = [
            (
                t.name,
                t.user.get_username(),
                "yes" if t.can_publish else "no",
                t.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            )
            for t in tokens
        ]
        if not rows:
            self.stdout.write("No API tokens.")
            return
        header = ("NAME", "USER", "PUBLISH", "CREATED (UTC)")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
        for row in [header, *rows]:
            cells = [
                cell.ljust(width) for cell, width in zip(row, widths, strict=False)
            ]
            self.stdout.write("  ".join([*cells, row[3]]))

    def _revoke(self, name: str) -> None:
        deleted, _ = APIToken.objects.filter(name=name).delete()
        if not deleted:
            raise CommandError(f"no token named {name!r}")
        self.stdout.write(f"Revoked token {name!r}.")
