"""WSGI entry point: ``gunicorn --preload django_app.wsgi`` (run from the examples directory)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_app.settings")
application = get_wsgi_application()
