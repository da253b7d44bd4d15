"""Stands for a host project's settings module (never loaded): its sibling
``asgi`` module is Django's stock one."""
