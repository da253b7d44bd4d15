"""The demo's settings with the URLconf of ``bench.floors``."""

from project.settings import *  # noqa: F403

ROOT_URLCONF = "bench.floor_urls"
