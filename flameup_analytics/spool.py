"""Where messages go that cannot be held in memory or delivered in time.

This is the seam for the disk spool. Until it lands, :class:`NoSpool` keeps nothing, so every
message handed on is counted as dropped and reported to ``on_error``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .message import Message


class Spool(Protocol):
    def store(self, messages: Sequence[Message]) -> int:
        """Keep what it can of ``messages``, oldest first; return how many it kept."""
        ...


class NoSpool:
    def store(self, messages: Sequence[Message]) -> int:
        return 0
