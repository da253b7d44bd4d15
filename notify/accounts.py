"""The host's user model, as notify's queries name it.

notify works with any ``AUTH_USER_MODEL`` that has an integer primary key, an
``is_active`` field and ``PermissionsMixin``'s ``groups``: Django's own
``User``, or a project's ``Person`` whose username is its email. Anything
else stops the process at start (``ImproperlyConfigured``), as a bad setting
does, and ``manage.py check`` names it notify.E018. Audiences name users by
the model's ``USERNAME_FIELD``, and the tables that join users to
notifications and to groups name their user column after the model
(``person_id``, not ``user_id``): the names below are read from the models
the tables were made for, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.checks import CheckMessage, Error
from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.db import models

from notify.models import Notification


@dataclass(frozen=True, slots=True)
class Names:
    username: str  # the user model's USERNAME_FIELD
    addressed_user: str  # Notification.users' join table: the user column
    member_user: str  # the user model's groups join table: the user column
    member_group: str  # ... and the group column
    group_members: str  # from a group, the lookup to its users ("user")
    group_users: str  # a group's manager of its users ("user_set")


def _addressed() -> models.ManyToManyField[Any, Any]:
    """``Notification.users``: its model is AUTH_USER_MODEL, as loaded."""
    addressed = Notification._meta.get_field("users")
    assert isinstance(addressed, models.ManyToManyField)
    return addressed


def _groups() -> Any:
    """The user model's ``groups`` field (required at start)."""
    return _addressed().remote_field.model._meta.get_field("groups")


@cache
def names() -> Names:
    addressed = _addressed()
    model: Any = addressed.remote_field.model
    groups = _groups()
    return Names(
        username=model.USERNAME_FIELD,
        addressed_user=_column(addressed, addressed.m2m_reverse_field_name()),
        member_user=_column(groups, groups.m2m_field_name()),
        member_group=_column(groups, groups.m2m_reverse_field_name()),
        group_members=groups.related_query_name(),
        group_users=groups.remote_field.get_accessor_name() or "",
    )


@cache
def memberships() -> Any:
    """The user model's join table to its groups (``User.groups.through``),
    whose columns ``names()`` gives as ``member_user`` and ``member_group``."""
    return _groups().remote_field.through


def _column(field: models.ManyToManyField[Any, Any], name: str) -> str:
    """The attribute of the join table's foreign key ``name`` (``user_id``)."""
    through: Any = field.remote_field.through
    return str(through._meta.get_field(name).attname)


def check_user_model(model: Any) -> list[CheckMessage]:
    """notify.E018: what notify needs of ``AUTH_USER_MODEL``."""
    missing = []
    if not isinstance(model._meta.pk, models.IntegerField):  # auto fields too
        missing.append("an integer primary key")
    try:
        active = model._meta.get_field("is_active")
    except FieldDoesNotExist:
        active = None
    if not isinstance(active, models.BooleanField):
        missing.append("an is_active BooleanField")
    try:
        groups = model._meta.get_field("groups")
    except FieldDoesNotExist:
        groups = None
    if not (
        isinstance(groups, models.ManyToManyField)
        and groups.remote_field.model is Group
        and not groups.remote_field.hidden
    ):
        missing.append("a groups ManyToManyField to auth.Group (not hidden)")
    if not missing:
        return []
    return [
        Error(
            f"AUTH_USER_MODEL {model._meta.label} lacks {' and '.join(missing)}: "
            "notify addresses users by group and serves active users only.",
            hint="Subclass AbstractUser, or AbstractBaseUser with PermissionsMixin "
            "and an is_active field.",
            obj=model,
            id="notify.E018",
        )
    ]


def require_user_model() -> None:
    """Raise ``ImproperlyConfigured`` when notify.E018 applies: at start, as
    for a bad setting, since servers do not run the system checks."""
    for problem in check_user_model(get_user_model()):
        raise ImproperlyConfigured(f"{problem.msg} {problem.hint}")
