"""The base of the SDK's immutable value types: ``Event``, ``RetryPolicy``, ``Stats``, ``Request``...

Not dataclasses: importing :mod:`dataclasses` costs 8 ms (it imports :mod:`inspect`) and defining
each class 0.6 ms more (it compiles its generated methods), which together were a third of the
package's import time (docs/benchmarks.md). A subclass names its fields in ``__slots__``, in the
order of its ``__init__``'s parameters, and sets them there with :meth:`Value._set` (or, in the
classes made once per message, with :data:`set_field`, field by field: 0.4 µs less). It gets what
a frozen dataclass has: equality and hashing by value, a repr, copying and pickling, and
immutability, plus :meth:`Value.replace` (also ``copy.replace()`` on Python 3.13+).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # a TypeVar bound by name costs 1 ms to make at import
    _V = TypeVar("_V", bound="Value")

#: Sets one field of a :class:`Value` being made (its own ``__setattr__`` refuses).
set_field = object.__setattr__


class Value:
    """An immutable value: change one by making a changed copy, ``value.replace(field=...)``."""

    __slots__: tuple[str, ...] = ()

    def _set(self, *values: Any) -> None:
        """Sets the fields, in ``__slots__`` order: only ``__init__`` calls it."""
        for name, value in zip(self.__slots__, values, strict=True):
            set_field(self, name, value)

    def replace(self: _V, **changes: Any) -> _V:
        """A copy with ``changes`` applied, checked as the constructor checks its arguments."""
        fields = {name: getattr(self, name) for name in self.__slots__}
        fields.update(changes)
        return type(self)(**fields)

    #: ``copy.replace(value, field=...)``, Python 3.13+.
    __replace__ = replace

    def _values(self) -> tuple[Any, ...]:
        return tuple([getattr(self, name) for name in self.__slots__])

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Value)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__qualname__}({fields})"

    def __reduce__(self) -> tuple[type[Value], tuple[Any, ...]]:
        return type(self), self._values()

    if not TYPE_CHECKING:  # hidden from type checkers, which would accept any attribute name

        def __setattr__(self, name: str, value: Any) -> None:
            raise AttributeError(
                f"{type(self).__name__} is immutable: make a changed copy, .replace({name}=...)"
            )

        def __delattr__(self, name: str) -> None:
            raise AttributeError(f"{type(self).__name__} is immutable")
