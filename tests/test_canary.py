"""Canaries on the Django code that notify mirrors or depends on in detail.

``notify/asgi.py``, ``notify/middleware.py``, ``notify/credentials.py``,
``notify/prepared.py`` and ``notify/insertion.py`` each reproduce a piece of Django's behaviour more cheaply (docs/ARCHITECTURE.md
says what each saves). If the installed Django's version of that piece
changes, the copy may silently diverge, so each one's source is fingerprinted
here. A failure means: read the new Django source, bring the notify module in
line with it, then record the new fingerprint for that Django version. The
asgiref code ``notify/asgi.py`` mirrors is fingerprinted by asgiref release.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

import asgiref
import django
import pytest
from django.utils.module_loading import import_string

# What each fingerprinted object is mirrored by.
MIRRORED_BY = {
    "django.core.handlers.asgi.ASGIHandler.__call__": "notify/asgi.py",
    "django.core.handlers.asgi.ASGIHandler.handle": "notify/asgi.py",
    "django.core.handlers.asgi.ASGIHandler.read_body": "notify/asgi.py",
    "django.core.handlers.asgi.ASGIHandler.send_response": "notify/asgi.py",
    "django.core.handlers.base.BaseHandler.get_response_async": "notify/asgi.py",
    "django.dispatch.dispatcher.Signal.asend": "notify/asgi.py",
    "django.http.response.HttpResponseBase.close": "notify/views/events.py",
    "django.utils.deprecation.MiddlewareMixin.__acall__": "notify/middleware.py",
    "django.contrib.sessions.middleware.SessionMiddleware.process_request": (
        "notify/middleware.py"
    ),
    "django.contrib.sessions.middleware.SessionMiddleware.process_response": (
        "notify/middleware.py"
    ),
    "django.contrib.messages.middleware.MessageMiddleware.process_request": (
        "notify/middleware.py"
    ),
    "django.contrib.messages.middleware.MessageMiddleware.process_response": (
        "notify/middleware.py"
    ),
    "django.middleware.csrf.CsrfViewMiddleware.process_request": (
        "notify/middleware.py"
    ),
    "django.middleware.csrf.CsrfViewMiddleware.process_view": "notify/middleware.py",
    "django.middleware.csrf.CsrfViewMiddleware.process_response": (
        "notify/middleware.py"
    ),
    "django.contrib.auth.middleware.AuthenticationMiddleware.process_request": (
        "notify/middleware.py"
    ),
    "django.contrib.auth.get_user": "notify/credentials.py",
    "django.contrib.auth._get_user_session_key": "notify/credentials.py",
    "django.contrib.sessions.backends.db.SessionStore._get_session_from_db": (
        "notify/credentials.py"
    ),
    "django.contrib.sessions.backends.db.SessionStore.load": "notify/credentials.py",
    "django.contrib.auth.backends.ModelBackend.get_user": "notify/credentials.py",
    "django.contrib.auth.backends.ModelBackend.user_can_authenticate": (
        "notify/credentials.py"
    ),
    "django.contrib.auth.base_user.AbstractBaseUser.get_session_auth_hash": (
        "notify/credentials.py"
    ),
    "django.db.models.sql.compiler.SQLCompiler.apply_converters": "notify/prepared.py",
    "django.db.models.query.ModelIterable.__iter__": "notify/prepared.py",
    "django.db.models.query.RelatedPopulator.populate": "notify/prepared.py",
    "django.db.models.base.Model._save_table": "notify/insertion.py",
    "django.db.models.base.Model._do_insert": "notify/insertion.py",
    "django.db.models.sql.compiler.SQLInsertCompiler.prepare_value": (
        "notify/insertion.py"
    ),
    "django.db.models.sql.compiler.SQLInsertCompiler.pre_save_val": (
        "notify/insertion.py"
    ),
}

# Fingerprints per Django feature release, as reviewed.
FINGERPRINTS: dict[tuple[int, int], dict[str, str]] = {
    (5, 2): {
        "django.contrib.auth._get_user_session_key": "2464912aca557b09",
        "django.contrib.auth.backends.ModelBackend.get_user": "ab2f0fe767938110",
        "django.contrib.auth.backends.ModelBackend.user_can_authenticate": "5b8b04b353c75ae1",
        "django.contrib.auth.base_user.AbstractBaseUser.get_session_auth_hash": "de2fe0aa429dbaef",
        "django.contrib.auth.get_user": "08a852f701f765bc",
        "django.contrib.auth.middleware.AuthenticationMiddleware.process_request": "6dd39b90ad6373e2",
        "django.contrib.messages.middleware.MessageMiddleware.process_request": "7f4834ba26ee0583",
        "django.contrib.messages.middleware.MessageMiddleware.process_response": "04469c9493c90e26",
        "django.contrib.sessions.backends.db.SessionStore._get_session_from_db": "775c8d22becd60bd",
        "django.contrib.sessions.backends.db.SessionStore.load": "89d644d66ff7dc2d",
        "django.contrib.sessions.middleware.SessionMiddleware.process_request": "6782d24847e4a926",
        "django.contrib.sessions.middleware.SessionMiddleware.process_response": "fbaf5503c20d7dd0",
        "django.core.handlers.asgi.ASGIHandler.__call__": "f756809e9c9308dc",
        "django.core.handlers.asgi.ASGIHandler.handle": "98faeb5bef800331",
        "django.core.handlers.asgi.ASGIHandler.read_body": "cf4aa904631d5410",
        "django.core.handlers.base.BaseHandler.get_response_async": "ad82c920df0cebbb",
        "django.core.handlers.asgi.ASGIHandler.send_response": "77eda2b08689b44e",
        "django.http.response.HttpResponseBase.close": "84589f5b23acbb23",
        "django.dispatch.dispatcher.Signal.asend": "b27a0e4474a61569",
        "django.middleware.csrf.CsrfViewMiddleware.process_request": "9aec8dfd81c88a56",
        "django.middleware.csrf.CsrfViewMiddleware.process_response": "9fe1054c0f64b37f",
        "django.middleware.csrf.CsrfViewMiddleware.process_view": "cdbdabe04318fc2f",
        "django.utils.deprecation.MiddlewareMixin.__acall__": "adf8cbcaf9f11e45",
        "django.db.models.sql.compiler.SQLCompiler.apply_converters": "c034ce3e5090aa2e",
        "django.db.models.query.ModelIterable.__iter__": "c2a744b8c18e0b4a",
        "django.db.models.query.RelatedPopulator.populate": "c939cb628b0376fe",
        "django.db.models.base.Model._do_insert": "7fc7e9ecbfc33991",
        "django.db.models.base.Model._save_table": "2a39268c21f5b8e6",
        "django.db.models.sql.compiler.SQLInsertCompiler.prepare_value": "2e49a07e78afaae1",
        "django.db.models.sql.compiler.SQLInsertCompiler.pre_save_val": "f9efbaa8ba5cb0c8",
    },
}
# Django 6.1, reviewed against 5.2: ASGIHandler.handle races the disconnect
# listener in a TaskGroup (the same outcome as ours: request_finished without
# a response, response.close() with one); read_body writes to a spooled file
# already on disk in a thread (ours defers to it for any body not in one
# message); send_response's Set-Cookie encoding is the same bytes (ours in
# _start_message); Signal.asend runs the sync receivers before the async ones
# (ours hands the signal to Django's asend whenever there is an async
# receiver); process_view changed a comment only. Model instances from rows
# gain a fetch mode (the default one tracks no peers, as ours do not); a save
# returns the values of fields set to expressions (ours saves any such row
# with save() itself).
FINGERPRINTS[(6, 1)] = FINGERPRINTS[(5, 2)] | {
    "django.db.models.query.ModelIterable.__iter__": "ecb74201bf2b1945",
    "django.db.models.query.RelatedPopulator.populate": "18ad7db51aeccf14",
    "django.db.models.base.Model._save_table": "67bc3b41cd9792ae",
    "django.core.handlers.asgi.ASGIHandler.handle": "c91f27c7fcdc3fff",
    "django.core.handlers.asgi.ASGIHandler.read_body": "88b4e284fc829700",
    "django.core.handlers.asgi.ASGIHandler.send_response": "d91e83d2c6859eda",
    "django.dispatch.dispatcher.Signal.asend": "251720ef067471e0",
    "django.middleware.csrf.CsrfViewMiddleware.process_view": "912b151aa62a145e",
}


def _resolve(path: str) -> Any:
    module_path, _, attribute = path.rpartition(".")
    try:
        return getattr(import_string(module_path), attribute)
    except ImportError:
        owner_module, _, owner = module_path.rpartition(".")
        return getattr(getattr(import_string(owner_module), owner), attribute)


def fingerprint(path: str) -> str:
    source = inspect.getsource(_resolve(path))
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def _assert_reviewed(
    path: str,
    library: str,
    version: str,
    known: dict[str, str] | None,
    mirrored_by: dict[str, str],
) -> None:
    """``path``'s source is the one reviewed for this release of ``library``
    (``known``: its fingerprints, None when the release was never reviewed)."""
    assert known is not None, (
        f"{library} {version} has not been reviewed: compare "
        f"{mirrored_by[path]} with it, then add its fingerprints here"
    )
    assert fingerprint(path) == known.get(path), (
        f"{path} changed in {library} {version}: review "
        f"{mirrored_by[path]} against it, then record {fingerprint(path)!r}"
    )


@pytest.mark.parametrize("path", sorted(MIRRORED_BY))
def test_the_mirrored_django_code_is_unchanged(path):
    known = FINGERPRINTS.get(django.VERSION[:2])
    _assert_reviewed(path, "Django", django.__version__, known, MIRRORED_BY)


# asgiref code that notify/asgi.py mirrors (_RequestContext enters a
# ThreadSensitiveContext as asgiref does, less one write; its exit is
# asgiref's), by asgiref release.
ASGIREF_MIRRORED_BY = {
    "asgiref.sync.ThreadSensitiveContext.__aenter__": "notify/asgi.py",
    "asgiref.sync.ThreadSensitiveContext.__aexit__": "notify/asgi.py",
}
ASGIREF_FINGERPRINTS: dict[tuple[int, int], dict[str, str]] = {
    (3, 13): {
        "asgiref.sync.ThreadSensitiveContext.__aenter__": "b0355bf6b275a7c2",
        "asgiref.sync.ThreadSensitiveContext.__aexit__": "5571fec562fa6e84",
    },
}


@pytest.mark.parametrize("path", sorted(ASGIREF_MIRRORED_BY))
def test_the_mirrored_asgiref_code_is_unchanged(path):
    major, minor = (int(part) for part in asgiref.__version__.split(".")[:2])
    known = ASGIREF_FINGERPRINTS.get((major, minor))
    _assert_reviewed(path, "asgiref", asgiref.__version__, known, ASGIREF_MIRRORED_BY)
