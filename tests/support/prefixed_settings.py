"""The demo's settings as a host project would change them: its own URLconf
(tests/support/prefixed_urls.py, notify under /notifications/), LOGIN_URL by
name, and its own base template (with the bell) for notify's pages."""

from typing import Any

from project.settings import *  # noqa: F403
from project.settings import TEMPLATES

_TEMPLATES: dict[str, Any] = TEMPLATES[0]

ROOT_URLCONF = "tests.support.prefixed_urls"
LOGIN_URL = "login"

HOST_BASE = """{% load notify %}<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{% block title %}{% endblock %} · Host</title>
  {% block extra_head %}{% endblock %}
</head>
<body>
  <header id="host-header">Host site {% notify_bell %}</header>
  <main id="host-main">{% block content %}{% endblock %}</main>
  {% block extra_scripts %}{% endblock %}
</body>
</html>
"""

TEMPLATES = [
    {
        **_TEMPLATES,
        "APP_DIRS": False,
        "OPTIONS": {
            **_TEMPLATES["OPTIONS"],
            "loaders": [
                (
                    "django.template.loaders.locmem.Loader",
                    {"host/base.html": HOST_BASE},
                ),
                "django.template.loaders.filesystem.Loader",
                "django.template.loaders.app_directories.Loader",
            ],
        },
    }
]
NOTIFY_BASE_TEMPLATE = "host/base.html"
