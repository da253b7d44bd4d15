from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect

from notify.exceptions import NotifyError, RateLimitedError, ValidationError
from notify.models import APIToken, Audience, Notification
from notify.publishing import persist, send
from notify.validation import Draft, validate

# What a new notification is written with; the rest is set when it is sent.
_COMPOSED = (
    "audience",
    "users",
    "groups",
    "level",
    "title",
    "body",
    "url",
    "data",
    "expires_at",
)


class NotificationForm(forms.ModelForm):  # type: ignore[type-arg]
    """Checks a new notification as the publish API does (``validate``);
    its errors are shown on the fields they name."""

    draft: Draft | None = None

    class Meta:
        model = Notification
        fields = _COMPOSED

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        audience = cleaned.get("audience")
        users = [u.get_username() for u in cleaned.get("users") or []]
        groups = [g.name for g in cleaned.get("groups") or []]
        if users and audience != Audience.USER:
            self.add_error("users", "Only for the audience “Users”.")
        if groups and audience != Audience.GROUP:
            self.add_error("groups", "Only for the audience “Groups”.")
        payload: dict[str, Any] = {
            k: cleaned[k]
            for k in ("title", "body", "level", "url", "data", "expires_at")
            if cleaned.get(k) not in (None, "")
        }
        payload["title"] = cleaned.get("title", "")
        if audience == Audience.USER:
            payload["audience"] = {"users": users}
        elif audience == Audience.GROUP:
            payload["audience"] = {"groups": groups}
        else:
            payload["audience"] = "all"
        try:
            self.draft = validate(payload)
        except ValidationError as exc:
            self.draft = None
            for field, problems in exc.errors.items():
                if field == "audience" and audience in (Audience.USER, Audience.GROUP):
                    field = "users" if audience == Audience.USER else "groups"
                if field not in self.fields:
                    field = None  # type: ignore[assignment]  # the whole form
                elif field in self.errors:
                    continue  # the form field said it already
                for problem in problems:
                    self.add_error(field, problem)
        return cleaned


class _NotSentError(Exception):
    def __init__(self, cause: NotifyError) -> None:
        self.cause = cause


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Adding a notification publishes it like the API: validated, saved by
    ``persist`` (in id order, with the sender's rate limit) and broadcast
    once committed. A notification once sent cannot be edited, since the
    change would never reach those who received it; it can be deleted."""

    form = NotificationForm
    list_display = (
        "id",
        "level",
        "title",
        "audience",
        "recipients",
        "created_at",
        "expires_at",
        "sender",
    )
    list_filter = ("level", "audience")
    search_fields = ("title", "body")
    filter_horizontal = ("users", "groups")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return _COMPOSED
        return ("id", *_COMPOSED, "created_at", "sender", "recipients")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return () if obj is None else self.get_fields(request, obj)

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except _NotSentError as exc:
            # Found only while saving (the form checked the rest): another
            # publish reached the rate limit, or a user or group was deleted.
            cause = exc.cause
            if isinstance(cause, ValidationError):
                text = "; ".join(" ".join(v) for v in cause.errors.values())
            else:
                text = str(cause)
            self.message_user(request, f"Not sent: {text}", messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def save_model(
        self, request: HttpRequest, obj: Notification, form: Any, change: bool
    ) -> None:
        if change or form.draft is None:
            raise PermissionError("a sent notification cannot be changed")
        try:
            published = persist(form.draft, request.user)  # type: ignore[arg-type]
        except (ValidationError, RateLimitedError) as exc:
            raise _NotSentError(exc) from exc
        # The admin goes on with this object (its link, its log entry).
        obj.__dict__.update(published.notification.__dict__)
        transaction.on_commit(lambda: async_to_sync(send)(published.message))

    def save_related(
        self, request: HttpRequest, form: Any, formsets: Any, change: bool
    ) -> None:
        pass  # persist() addressed it


@admin.register(APIToken)
class APITokenAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("name", "user", "can_publish", "created_at", "last_used_at")
    list_filter = ("can_publish",)
    # USERNAME_FIELD itself, not accounts.names(): the admin is loaded before
    # notify checks the user model, whose clear error names() would hide.
    search_fields = ("name", f"user__{get_user_model().USERNAME_FIELD}")
    readonly_fields = ("key_hash", "created_at", "last_used_at")

    def has_add_permission(self, request: object) -> bool:
        # The secret is shown once, so tokens are made with `manage.py notify_token`.
        return False
