"""A minimal Django project that tracks events: settings, an AppConfig that creates the client,
one view. Run it from the examples directory:

    cd examples
    FLAMEUP_API_KEY=... python -m django runserver --settings django_app.settings
    gunicorn --preload django_app.wsgi   # in production

See docs/runtimes/django.md.
"""
