"""Retention: notifications older than ``NOTIFY_RETENTION_DAYS`` are
deleted, and the mark of the newest deleted id tells a resuming client that
its cursor is older than what is kept (``event: reset``)."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from notify.conf import conf
from notify.models import Notification, RetentionMark


def prune(now: datetime | None = None) -> int:
    """Delete notifications older than the retention period; return how many."""
    cutoff = (now or timezone.now()) - timedelta(days=conf.retention_days)
    with transaction.atomic():
        old = Notification.objects.filter(created_at__lt=cutoff)
        newest_old = old.aggregate(m=Max("id"))["m"]
        if newest_old is None:
            return 0
        mark, _ = RetentionMark.objects.get_or_create(pk=1)
        if newest_old > mark.pruned_through:
            mark.pruned_through = newest_old
            mark.save(update_fields=["pruned_through"])
        # delete() also counts cascaded rows (read marks, audience links).
        _, per_model = Notification.objects.filter(id__lte=newest_old).delete()
    return per_model.get(Notification._meta.label, 0)
