"""Many users with one API token each, fast; tokens written to files.

``python -m bench.scale_seed USERS OUTDIR`` with the server's environment
(DATABASE_URL, DJANGO_SETTINGS_MODULE), after ``manage.py migrate``. Writes
``OUTDIR/viewers.txt`` (one token per line, user i on line i) and
``OUTDIR/publisher.txt`` (a staff user's token that may publish). Users get
unusable passwords and everything is inserted with ``bulk_create`` in one
transaction, so 50,000 users take seconds, not the minutes of one
``create_token`` per user.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import django


def main(count: int, outdir: Path) -> None:
    django.setup()
    from django.contrib.auth.models import User
    from django.db import transaction

    from notify.models import APIToken
    from notify.tokens import PREFIX, create_token, hash_token

    secrets_ = [PREFIX + secrets.token_urlsafe(32) for _ in range(count)]
    with transaction.atomic():
        admin = User(username="scale-admin", is_staff=True, password="!")
        admin.save()
        names = [f"scale-{i:06d}" for i in range(count)]
        User.objects.bulk_create([User(username=n, password="!") for n in names])
        ids = dict(
            User.objects.filter(username__startswith="scale-0").values_list(
                "username", "id"
            )
        )
        APIToken.objects.bulk_create(
            APIToken(name=n, user_id=ids[n], key_hash=hash_token(s))
            for n, s in zip(names, secrets_, strict=True)
        )
        publisher = create_token(admin, name="scale-admin", can_publish=True)[1]
    (outdir / "viewers.txt").write_text("".join(s + "\n" for s in secrets_))
    (outdir / "publisher.txt").write_text(publisher + "\n")


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
