"""A host project's own user model, as Django's docs recommend starting
with: ``people.Person``, whose username is its email and whose primary key is
``number`` (custom_user_settings.py); and ``people.Member``, which lacks what
notify needs (member_settings.py)."""
