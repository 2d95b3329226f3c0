"""Settings: only what the example needs. Everything secret comes from the environment."""

from __future__ import annotations

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-example-key-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]

INSTALLED_APPS = ["django_app.apps.AnalyticsConfig"]
MIDDLEWARE: list[str] = []  # a real project keeps its own (sessions, CSRF, auth)
ROOT_URLCONF = "django_app.urls"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

# The Flameup client's settings, read once by AnalyticsConfig.ready(). None falls back to the
# same environment variables, so these lines only make the dependency visible.
FLAMEUP_API_KEY = os.environ.get("FLAMEUP_API_KEY")
FLAMEUP_WORKSPACE_ID = os.environ.get("FLAMEUP_WORKSPACE_ID")
FLAMEUP_HOST = os.environ.get("FLAMEUP_HOST")
