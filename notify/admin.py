from django.contrib import admin

from notify.models import APIToken, Notification


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
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
    readonly_fields = ("created_at", "recipients", "sender")
    filter_horizontal = ("users", "groups")


@admin.register(APIToken)
class APITokenAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("name", "user", "can_publish", "created_at", "last_used_at")
    list_filter = ("can_publish",)
    search_fields = ("name", "user__username")
    readonly_fields = ("key_hash", "created_at", "last_used_at")

    def has_add_permission(self, request: object) -> bool:
        # The secret is shown once, so tokens are made with `manage.py notify_token`.
        return False
