"""The SDK's logger, ``logging.getLogger("flameup_analytics")``, made when it is first used.

A healthy client in the default mode never logs (the SDK logs what went wrong), and
``logging`` (with the ``traceback``, ``string`` and ``weakref`` it imports) is a fifth of what
``import flameup_analytics`` would load. ``logger`` stands in for the real logger and imports
``logging`` the first time it is asked for anything; configuring ``"flameup_analytics"`` in the
application works as it does for any library, before or after.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

NAME = "flameup_analytics"


class _Logger:
    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        import logging

        return getattr(logging.getLogger(NAME), name)

    def __repr__(self) -> str:
        return f"<logger {NAME!r}, made on first use>"


if TYPE_CHECKING:
    from logging import Logger

    logger: Logger
else:
    logger = _Logger()


def enable_debug() -> None:
    """``Client(debug=True)``: the SDK's messages, from DEBUG up, on stderr (unless the logger
    already has a handler: the application's configuration wins)."""
    import logging

    sdk_logger = logging.getLogger(NAME)
    sdk_logger.setLevel(logging.DEBUG)
    if not sdk_logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        sdk_logger.addHandler(handler)
