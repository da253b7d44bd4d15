from django.apps import AppConfig


class NotifyConfig(AppConfig):
    name = "notify"
    verbose_name = "Notifications"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core.signals import setting_changed

        from notify import (
            accounts,
            checks,  # noqa: F401 - registers the system checks
            receivers,
        )
        from notify.broker import reset_brokers
        from notify.conf import conf, validate

        # A bad NOTIFY_* setting stops the process at start (every manage.py
        # command, the ASGI application) rather than at the first request.
        validate()
        accounts.require_user_model()
        setting_changed.connect(conf.clear, dispatch_uid="notify.conf.clear")
        setting_changed.connect(reset_brokers, dispatch_uid="notify.reset_brokers")
        receivers.connect()
