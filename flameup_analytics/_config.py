"""Internal. Turning ``Client``'s options and the environment into checked settings.

Every option is checked at construction, for its type and its range, so a bad one is a
:class:`ConfigurationError` naming it there and then, never a ``TypeError`` deep in the worker
or a client that silently delivers nothing (``flush_at=2.5``, ``timeout=inf``).
"""

from __future__ import annotations

import math
import os
import types
import urllib.parse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from ._redact import redact_url
from .errors import ConfigurationError, ValidationError

if TYPE_CHECKING:
    from .message import Codec

DEFAULT_HOST = "https://api.flameup.ai"


def require(condition: bool, message: str, option: str) -> None:
    if not condition:
        raise ConfigurationError(message, option=option)


def count(option: str, value: Any, minimum: int) -> int:
    """A whole number ``>= minimum`` (a bool or a float is refused, even 5.0: it is a slip)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{option} must be an int, not {type(value).__name__}", option=option)
    require(value >= minimum, f"{option} must be >= {minimum}, not {value}", option)
    return value


def seconds(option: str, value: Any, *, zero_allowed: bool = False) -> float:
    """A finite number of seconds, ``> 0`` (or ``>= 0`` when ``zero_allowed``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(
            f"{option} must be a number of seconds, not {type(value).__name__}", option=option
        )
    least = ">= 0" if zero_allowed else "> 0"
    valid = math.isfinite(value) and (value >= 0 if zero_allowed else value > 0)
    require(valid, f"{option} must be a finite number {least}, not {value}", option)
    return float(value)


def flag(option: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{option} must be True or False, not {type(value).__name__}", option=option)
    return value


def choice(option: str, value: Any, allowed: tuple[str, ...]) -> Any:
    if value not in allowed:
        raise ConfigurationError(
            f"{option} must be one of {', '.join(map(repr, allowed))}, not {value!r}", option=option
        )
    return value


def fsync(value: Any, delivery: str) -> Any:
    """When relay mode's appends reach the disk. Only relay mode appends per call: the in-process
    spool already fsyncs each segment it seals, so anything but "never" needs delivery="relay"."""
    mode = choice("fsync", value, ("never", "interval", "always"))
    require(
        mode == "never" or delivery == "relay",
        f"fsync={mode!r} applies to delivery='relay' only (the in-process spool fsyncs what it seals)",
        "fsync",
    )
    return mode


def optional_callable(option: str, value: Any) -> Any:
    if value is not None and not callable(value):
        raise ConfigurationError(f"{option} must be callable, not {type(value).__name__}", option=option)
    return value


def _text(option: str, value: Any, env: str) -> str | None:
    """The option as given, else the environment variable, stripped; None when neither is set."""
    if value is None:
        value = os.environ.get(env, "")
    elif not isinstance(value, str):
        raise ConfigurationError(
            f"{option} must be a str, not {type(value).__name__}", option=option, env=env
        )
    return value.strip() or None


def api_key(value: Any, disabled: bool) -> str:
    key = _text("api_key", value, "FLAMEUP_API_KEY")
    if key is None:
        if disabled:
            return ""
        raise ConfigurationError(
            "no API key: pass api_key=... or set the FLAMEUP_API_KEY environment variable "
            "(keys look like ws_live_abc12345_abc123.your_secret_here)",
            option="api_key",
            env="FLAMEUP_API_KEY",
        )
    if any(character.isspace() for character in key):
        raise ConfigurationError(
            "the API key contains white space: check FLAMEUP_API_KEY / api_key",
            option="api_key",
            env="FLAMEUP_API_KEY",
        )
    return key


def workspace_id(value: Any) -> str | None:
    return _text("workspace_id", value, "FLAMEUP_WORKSPACE_ID")


def host(value: Any) -> str:
    """The base before ``/api/v1``: scheme, host name, optional port and path prefix."""
    given = _text("host", value, "FLAMEUP_HOST") or DEFAULT_HOST
    shown = redact_url(given)
    try:
        parts = urllib.parse.urlsplit(given)
        parts.port  # noqa: B018 - raises for a port that is not a number or out of range
    except ValueError as exc:
        raise _bad_host(f"unusable host {shown!r}: {exc}; set FLAMEUP_HOST") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise _bad_host(
            f"unusable host {shown!r}: pass host=... or set FLAMEUP_HOST to a URL like "
            f"{DEFAULT_HOST} (scheme and host name, without /api/v1)"
        )
    if parts.username is not None or parts.password is not None:
        # They would never be sent (the API authenticates with the key), and would leak into
        # every error message that names the host.
        raise _bad_host(f"host {shown!r} contains credentials: the SDK authenticates with api_key only")
    path = parts.path.rstrip("/")
    if path.endswith("/api/v1"):  # a common slip: the base URL instead of the host
        path = path[: -len("/api/v1")]
    return f"{parts.scheme}://{parts.netloc}{path}"


def _bad_host(message: str) -> ConfigurationError:
    return ConfigurationError(message, option="host", env="FLAMEUP_HOST")


def spool_dir(value: Any) -> str | os.PathLike[str] | Literal[False] | None:
    if value is None or value is False:
        return value
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigurationError(
            f"spool_dir must be a path, None or False, not {type(value).__name__}", option="spool_dir"
        )
    # "" would put the spool in whatever the working directory happens to be.
    empty = os.fspath(value).strip() == ""
    require(not empty, "spool_dir must not be empty (False turns the spool off)", "spool_dir")
    return value


def transport(value: Any) -> Any:
    if value is not None and not all(callable(getattr(value, name, None)) for name in ("send", "close")):
        raise ConfigurationError(
            "transport must have send(request, timeout) and close() (see fa.Transport)", option="transport"
        )
    return value


def instance(option: str, value: Any, kind: type, default: Callable[[], Any]) -> Any:
    if value is None:
        return default()
    if not isinstance(value, kind):
        raise ConfigurationError(
            f"{option} must be a {kind.__name__}, not {type(value).__name__}", option=option
        )
    return value


def default_parameters(value: Any, codec: Codec) -> Mapping[str, Any] | None:
    """A read-only copy of ``default_parameters``, checked by encoding it once as a message would
    be; None when there is nothing to merge, so ``track`` skips the merge."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"default_parameters must be a mapping (dict), not {type(value).__name__}",
            option="default_parameters",
        )
    copied = dict(value)
    try:
        codec.encode({"parameters": copied}, {"parameters": "default_parameters"})
    except ValidationError as exc:
        raise ConfigurationError(str(exc), option="default_parameters") from None
    return types.MappingProxyType(copied) if copied else None


#: The keys of a ``proxies`` dict, as ``requests`` reads it: a scheme, ``all``, or either with a host.
_PROXY_SCHEMES = ("http", "https", "all")


def proxies(value: Any) -> dict[str, str | None] | None:
    """``proxies`` in ``requests``' shape, each proxy an ``http://[user:password@]host:port`` URL
    (``"proxy:3128"`` means ``http://``), or None for a direct connection; None when not given.

    No password appears in an error message."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"proxies must be a dict like {{'https': 'http://proxy:3128'}}, not {type(value).__name__}",
            option="proxies",
        )
    checked: dict[str, str | None] = {}
    for key, url in value.items():
        if not isinstance(key, str) or key.partition("://")[0] not in _PROXY_SCHEMES:
            raise ConfigurationError(
                f"proxies keys are 'http', 'https', 'all' or 'https://host', not {key!r}", option="proxies"
            )
        if url is None or url == "":
            checked[key] = None
            continue
        if not isinstance(url, str):
            raise ConfigurationError(
                f"proxies[{key!r}] must be a proxy URL or None, not {type(url).__name__}", option="proxies"
            )
        if "://" not in url:  # "proxy:3128" means http://, as for requests and curl
            url = "http://" + url
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port  # noqa: B018 - raises for a port that is not a number or out of range
        except ValueError:
            parsed = False
        else:
            parsed = True
        if not parsed or parts.scheme != "http" or not parts.hostname or parts.query or parts.fragment:
            # A password holding "/" or "#" unencoded splits the URL elsewhere: not shown at all.
            shown = redact_url(url) if parsed else "given"
            raise ConfigurationError(
                f"proxies[{key!r}]: cannot use the proxy {shown}: only http://[user:password@]host:port "
                "proxies are supported (HTTPS goes through a CONNECT tunnel)",
                option="proxies",
            )
        checked[key] = url
    return checked


def verify(value: Any) -> bool | str:
    """True (the CA bundle of ``REQUESTS_CA_BUNDLE``, else certifi's), False, or the path of an
    existing CA bundle (a PEM file, or a directory of hashed certificates as ``openssl rehash``
    makes it)."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigurationError(
            f"verify must be True, False or the path of a CA bundle, not {type(value).__name__}",
            option="verify",
        )
    path = os.fspath(value)
    require(
        path.strip() != "" and os.path.exists(path),
        f"verify: no CA bundle at {path!r} (a PEM file or a directory of certificates)",
        "verify",
    )
    return path
