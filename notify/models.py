from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.utils import timezone


class Level(models.TextChoices):
    INFO = "info"
    SUCCESS = "success"
    WARNING = "warning"
    CRITICAL = "critical"


class Audience(models.TextChoices):
    ALL = "all", "All signed-in users"
    USER = "user", "Users"
    GROUP = "group", "Groups"


class Notification(models.Model):
    """A notification; its primary key is the SSE event id (increasing)."""

    id = models.BigAutoField(primary_key=True)
    level = models.CharField(max_length=8, choices=Level.choices, default=Level.INFO)
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True, default="")
    url = models.CharField(max_length=2000, blank=True, null=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    audience = models.CharField(max_length=5, choices=Audience.choices)
    users = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="addressed_notifications"
    )
    groups = models.ManyToManyField(
        Group, blank=True, related_name="addressed_notifications"
    )
    sender = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="sent_notifications",
    )
    recipients = models.PositiveIntegerField(
        default=0, help_text="Active users it was addressed to when sent."
    )

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["sender", "created_at"])]

    def __str__(self) -> str:
        return f"#{self.id} {self.title}"


class ReadMark(models.Model):
    """One notification marked read by one user."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    notification = models.ForeignKey(Notification, on_delete=models.CASCADE)
    read_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "notification"], name="notify_readmark_unique"
            )
        ]


class ReadCursor(models.Model):
    """Everything up to ``up_to`` is read for this user ("mark all read")."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, primary_key=True, on_delete=models.CASCADE
    )
    up_to = models.BigIntegerField(default=0)


class APIToken(models.Model):
    """A bearer token. Only its SHA-256 is stored; the token is shown once."""

    name = models.CharField(max_length=100, unique=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    can_publish = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API token"

    def __str__(self) -> str:
        return self.name


class RetentionMark(models.Model):
    """The highest notification id removed by retention (a single row)."""

    pruned_through = models.BigIntegerField(default=0)
