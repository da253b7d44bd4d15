"""ASGI entry point: ``uvicorn project.asgi:application --lifespan off``."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

from notify.asgi import get_asgi_application

application = get_asgi_application()
