"""Create the benchmark's users and tokens; print them as JSON.

``python -m bench.seed USERS`` with the server's environment (DATABASE_URL,
DJANGO_SETTINGS_MODULE), after ``manage.py migrate``. Prints
``{"publisher": <token>, "viewers": [<token>, ...]}``: one staff user whose
token may publish, and USERS ordinary users with one token each.
"""

from __future__ import annotations

import json
import sys

import django


def main(count: int) -> None:
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
            create_token(user, name=user.username)[1]
            for user in created.order_by("username")
        ]
        publisher = create_token(admin, name="bench-admin", can_publish=True)[1]
    json.dump({"publisher": publisher, "viewers": viewers}, sys.stdout)


if __name__ == "__main__":
    main(int(sys.argv[1]))
