from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from notify.conf import conf
from notify.retention import prune


class Command(BaseCommand):
    help = (
        "Delete notifications older than NOTIFY_RETENTION_DAYS; prints how many "
        "were removed. (Server processes also prune, every NOTIFY_PRUNE_SECONDS.)"
    )

    def handle(self, *args: Any, **options: Any) -> None:
        removed = prune()
        days = conf.retention_days
        noun = "notification" if removed == 1 else "notifications"
        self.stdout.write(f"Removed {removed} {noun} older than {days} days.")
