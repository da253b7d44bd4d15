"""The demo's settings with a host project's own user model
(tests/support/people): ``people.Person``, signed in by email."""

from project.settings import *  # noqa: F403
from project.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.support.people"]
AUTH_USER_MODEL = "people.Person"
