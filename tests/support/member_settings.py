"""The demo's settings with a user model notify cannot serve: people.Member."""

from tests.support.custom_user_settings import *  # noqa: F403

AUTH_USER_MODEL = "people.Member"
