"""ASGI entry point: ``uvicorn project.asgi:application --lifespan off``.

With ``DEBUG`` on (the demo, ``scripts/run``) static files are served here,
by Django's ``ASGIStaticFilesHandler``, as nginx serves them in the stack. It
reads each file on a thread and hands it on as an asynchronous iterator, where
the ``serve`` view would return a ``FileResponse`` that Django's ASGI handling
warns about ("StreamingHttpResponse must consume synchronous iterators"). Those
requests go through Django's own ASGI handler, not notify's, and not through
the middleware: enough for the demo, not for production.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.handlers.asgi import ASGIHandler

from notify.asgi import get_asgi_application

application: ASGIHandler = get_asgi_application()
if settings.DEBUG:
    application = ASGIStaticFilesHandler(application)
