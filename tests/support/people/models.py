from __future__ import annotations

from typing import Any

from django.contrib.auth.models import (
    AbstractBaseUser,
    BaseUserManager,
    PermissionsMixin,
)
from django.db import models


class PersonManager(BaseUserManager["Person"]):
    def create_user(
        self, email: str, password: str | None = None, **extra: Any
    ) -> Person:
        person = self.model(email=self.normalize_email(email), **extra)
        person.set_password(password)
        person.save(using=self._db)
        return person


class Person(AbstractBaseUser, PermissionsMixin):
    number = models.BigAutoField(primary_key=True)  # not "id"
    email = models.EmailField(unique=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False)

    USERNAME_FIELD = "email"

    objects = PersonManager()


class Member(AbstractBaseUser):
    """A user model notify cannot serve: no groups, no is_active field
    (tests/support/member_settings.py)."""

    email = models.EmailField(unique=True)

    USERNAME_FIELD = "email"
