from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings

import flameup_analytics as fa


class AnalyticsConfig(AppConfig):
    name = "django_app"
    client: fa.Client | None = None

    def ready(self) -> None:
        # ready() runs once per process, after settings are loaded and before any request: the
        # place for process-wide resources. One client per process, shared by every thread.
        # With `gunicorn --preload` this happens in the master before the fork; the SDK's fork
        # hook gives each worker a fresh queue, thread and connections, so nothing else is needed.
        if AnalyticsConfig.client is None:  # Django may call ready() again, e.g. in tests
            AnalyticsConfig.client = fa.Client(
                api_key=settings.FLAMEUP_API_KEY,
                workspace_id=settings.FLAMEUP_WORKSPACE_ID,
                host=settings.FLAMEUP_HOST,
            )


def analytics() -> fa.Client:
    """The process's client, for views, signals and management commands."""
    assert AnalyticsConfig.client is not None, "django_app is not in INSTALLED_APPS"
    return AnalyticsConfig.client
