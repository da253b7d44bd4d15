"""notify.W002: the project's ASGI application is not notify's handler.

Without ``notify.asgi.get_asgi_application()`` everything works, but Django's
stock handler gives every request a thread of its own for as long as it runs,
so each open event stream holds a thread (and its database connection). The
check reads the project's ASGI module without importing it (importing would
build the application): the module named by ``ASGI_APPLICATION`` when set,
else the ``asgi`` module beside the settings module (``startproject``'s
layout). A module it cannot find is not reported.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Tags, Warning, register

HANDLER_MODULE = "notify.asgi"


def asgi_module_name() -> str | None:
    application = getattr(settings, "ASGI_APPLICATION", None)
    if isinstance(application, str) and "." in application:
        return application.rpartition(".")[0]
    settings_module = getattr(settings, "SETTINGS_MODULE", None)
    if isinstance(settings_module, str) and "." in settings_module:
        return settings_module.rpartition(".")[0] + ".asgi"
    return None


def _source_of(module: str) -> tuple[Path, str] | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    path = Path(spec.origin)
    try:
        return path, path.read_text(encoding="utf-8")
    except OSError:
        return None


def uses_notify_handler(source: str) -> bool:
    """Whether the module imports ``notify.asgi`` (or something from it)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            names = {alias.name for alias in node.names}
            if node.module == HANDLER_MODULE or (
                node.module == "notify" and "asgi" in names
            ):
                return True
        elif isinstance(node, ast.Import) and any(
            alias.name == HANDLER_MODULE for alias in node.names
        ):
            return True
    return False


@register(Tags.compatibility)
def check_asgi_handler(**kwargs: Any) -> list[CheckMessage]:
    module = asgi_module_name()
    found = _source_of(module) if module else None
    if found is None:
        return []
    path, source = found
    try:
        if uses_notify_handler(source):
            return []
    except SyntaxError:
        return []
    return [
        Warning(
            f"The ASGI application in {path} is not notify's handler: each "
            "open event stream then holds a thread and its database connection.",
            hint=(
                "In that module, build the application with "
                "`from notify.asgi import get_asgi_application` instead of "
                "Django's (README: Adding notify to an existing project)."
            ),
            id="notify.W002",
        )
    ]
