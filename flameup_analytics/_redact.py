"""Internal. Keep credentials out of every text the SDK shows: errors, logs, ``on_error`` causes.

A proxy URL or a ``host`` may carry ``user:password@``; an exception raised by a library below us
may quote either. Everything that turns such a value into text goes through here.
"""

from __future__ import annotations

import re
import urllib.parse

#: What stands in for a secret.
MASK = "***"

# user:password@ in any URL-like text, whatever the scheme.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@\s:]*):(?P<password>[^/@\s]*)@")


def redact_url(url: str) -> str:
    """``url`` with the password of its user-info (if any) replaced by ``***``."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return redact_text(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def redact_text(text: str, *secrets: str | None) -> str:
    """``text`` with every URL password and each of ``secrets`` (an API key, ...) masked."""
    text = _USERINFO.sub(lambda match: f"{match['scheme']}{match['user']}:{MASK}@", text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, MASK)
    return text


def redact_key(api_key: str) -> str:
    """An API key as it may be shown: enough to recognise it, not enough to use it."""
    if len(api_key) <= 12:
        return MASK
    return api_key[:12] + MASK
