"""A host project's ASGI module as ``startproject`` writes it (never imported
by the tests: the check reads it)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.support.stocksite.settings")

application = get_asgi_application()
