from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from notify.exceptions import ValidationError
from notify.models import Level
from notify.publishing import publish


class Command(BaseCommand):
    help = "Send a notification; prints its id."

    def add_arguments(self, parser: CommandParser) -> None:
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--all", action="store_true", help="every signed-in user")
        target.add_argument(
            "--user", action="append", metavar="USERNAME", help="repeatable"
        )
        target.add_argument(
            "--group", action="append", metavar="GROUP", help="repeatable"
        )
        parser.add_argument("--title", required=True)
        parser.add_argument("--body", default="")
        parser.add_argument("--level", default=Level.INFO, choices=Level.values)
        parser.add_argument("--url", default=None)
        parser.add_argument(
            "--expires-in",
            type=float,
            default=None,
            metavar="SECONDS",
            help="expire this many seconds from now",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["all"]:
            audience: Any = "all"
        elif options["user"]:
            audience = {"users": options["user"]}
        else:
            audience = {"groups": options["group"]}
        expires_in = options["expires_in"]
        expires_at = None
        if expires_in is not None:
            if not expires_in > 0:
                raise CommandError("--expires-in: must be a positive number of seconds")
            try:
                expires_at = timezone.now() + timedelta(seconds=expires_in)
            except OverflowError as exc:
                raise CommandError(f"--expires-in: {expires_in:g} is too far") from exc
        try:
            n = publish(
                audience=audience,
                title=options["title"],
                body=options["body"],
                level=options["level"],
                url=options["url"],
                expires_at=expires_at,
            )
        except ValidationError as exc:
            raise CommandError(
                "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.errors.items())
            ) from exc
        self.stdout.write(str(n.id))
