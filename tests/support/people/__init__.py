"""A host project's own user model, as Django's docs recommend starting
with: ``people.Person``, whose username is its email (custom_user_settings.py)."""
