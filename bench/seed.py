"""Create the benchmark's users and tokens; print them as JSON.

``python -m bench.seed USERS [token|session]`` with the server's environment
(DATABASE_URL, DJANGO_SETTINGS_MODULE), after ``manage.py migrate``. Prints
``{"publisher": <token>, "viewers": [<credential>, ...]}``: one staff user
whose token may publish, and USERS ordinary users with one API token each, or
with one logged-in session each (``sessionid=<key>``, as a browser sends it).
"""

from __future__ import annotations

import json
import sys

import django


def _session(user: object) -> str:
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    store = SessionStore()
    store[SESSION_KEY] = str(user.pk)  # type: ignore[attr-defined]
    store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()  # type: ignore[attr-defined]
    store.create()
    return f"sessionid={store.session_key}"


def main(count: int, auth: str) -> None:
    django.setup()
    from django.contrib.auth.models import User
    from django.db import transaction

    from notify.tokens import create_token

    with transaction.atomic():
        admin = User(username="bench-admin", is_staff=True)
        admin.set_unusable_password()
        admin.save()
        users = [User(username=f"bench-{i:05d}", password="!") for i in range(count)]
        User.objects.bulk_create(users, batch_size=500)
        created = User.objects.filter(username__startswith="bench-").exclude(
            pk=admin.pk
        )
        viewers = [
            _session(user) if auth == "session" else create_token(user)[1]
            for user in created.order_by("username")
        ]
        publisher = create_token(admin, name="bench-admin", can_publish=True)[1]
    json.dump({"publisher": publisher, "viewers": viewers}, sys.stdout)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "token")
