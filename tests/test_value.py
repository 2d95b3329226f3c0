"""The SDK's value types (``flameup_analytics._value.Value``): what a frozen dataclass gave them, kept."""

from __future__ import annotations

import copy
import inspect
import pickle
from pathlib import Path

import pytest

import flameup_analytics as fa
from flameup_analytics._value import Value
from flameup_analytics.delivery import Outcome, Result, Verdict
from flameup_analytics.ledger import MessageOutcome
from flameup_analytics.message import Event
from flameup_analytics.spool import SpoolSummary

#: One instance of each value type, every field given.
EXAMPLES: list[Value] = [
    fa.Event("track", "user_1", {"plan": "pro"}, "played", None),
    fa.RetryPolicy(3, 0.25, 5.0, 30.0),
    fa.Stats(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, None),
    fa.RelayStats(1, 2, 3, 4, 5, 6, 7, 8, 9, 10.0, 11.0, 12, "boom", 13.0, 14.0),
    fa.Request("POST", "http://127.0.0.1/x", {"A": "b"}, b"{}"),
    fa.Response(201, {"A": "b"}, b"{}"),
    fa.Outcome(fa.Result.DELIVERED, 1, None, None),
    fa.MessageOutcome(fa.Message("track", "user_1", b"{}", "key-1"), "delivered", 202, 1, None),
    Verdict(Result.REJECTED, None, 1.5, True),
    SpoolSummary(Path("/tmp/spool"), 1, 2, 3, 4, 5.0, 6.0, 7),
]


def value_types() -> set[type[Value]]:
    """Every Value subclass the package defines (the check below covers new ones by itself)."""
    found: set[type[Value]] = set()
    pending = list(Value.__subclasses__())
    while pending:
        cls = pending.pop()
        found.add(cls)
        pending.extend(cls.__subclasses__())
    return {cls for cls in found if cls.__module__.startswith("flameup_analytics")}


def test_every_value_type_has_an_example_here() -> None:
    assert value_types() == {type(example) for example in EXAMPLES}


@pytest.mark.parametrize("cls", sorted(value_types(), key=str))
def test_the_constructors_parameters_are_the_fields_in_order(cls: type[Value]) -> None:
    # _set() and pickling both rely on this order.
    parameters = [name for name in inspect.signature(cls).parameters]
    assert parameters == list(cls.__slots__)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda example: type(example).__name__)
def test_a_value_is_immutable(example: Value) -> None:
    name = example.__slots__[0]
    before = getattr(example, name)
    with pytest.raises(AttributeError, match="immutable"):
        setattr(example, name, "changed")
    with pytest.raises(AttributeError, match="immutable"):
        delattr(example, name)
    with pytest.raises(AttributeError):
        example.not_a_field = 1  # type: ignore[attr-defined]
    assert getattr(example, name) is before


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda example: type(example).__name__)
def test_a_value_equals_its_copies_and_pickles_and_not_a_changed_one(example: Value) -> None:
    assert copy.copy(example) == example
    assert copy.deepcopy(example) == example
    assert pickle.loads(pickle.dumps(example)) == example
    name = example.__slots__[1]
    given = getattr(example, name)
    changed = example.replace(**{name: given + 1000 if isinstance(given, (int, float)) else "other"})
    assert changed != example
    assert type(changed) is type(example)
    kept = [other for other in example.__slots__ if other != name]
    assert [getattr(changed, other) for other in kept] == [getattr(example, other) for other in kept]
    assert example != tuple(getattr(example, name) for name in example.__slots__)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda example: type(example).__name__)
def test_the_repr_names_every_field(example: Value) -> None:
    shown = repr(example)
    assert shown.startswith(f"{type(example).__name__}(")
    for name in example.__slots__:
        assert f"{name}={getattr(example, name)!r}" in shown


def test_equal_values_hash_alike_and_a_value_holding_a_dict_is_unhashable() -> None:
    assert hash(fa.RetryPolicy(3)) == hash(fa.RetryPolicy(3))
    assert len({fa.RetryPolicy(3), fa.RetryPolicy(3), fa.RetryPolicy(4)}) == 2
    with pytest.raises(TypeError, match="unhashable"):
        hash(fa.Response(200, {"A": "b"}))


def test_replace_checks_the_new_values_as_the_constructor_does() -> None:
    policy = fa.RetryPolicy()
    with pytest.raises(fa.ConfigurationError, match="max_retries"):
        policy.replace(max_retries=-1)
    with pytest.raises(TypeError):
        policy.replace(retries=3)
    assert policy.replace(max_retries=2) == fa.RetryPolicy(max_retries=2)


def test_copy_replace_of_python_3_13_finds_the_method_it_calls() -> None:
    event = Event("identify", "user_1", {"plan": "pro"})
    # copy.replace(event, **changes) is type(event).__replace__(event, **changes).
    assert type(event).__replace__(event, user_id="user_2") == Event("identify", "user_2", {"plan": "pro"})


def test_defaults_are_the_documented_ones() -> None:
    assert fa.RetryPolicy() == fa.RetryPolicy(6, 0.5, 10.0, 60.0)
    assert fa.Response(204) == fa.Response(204, {}, b"")
    assert Outcome(Result.DELIVERED, 1) == Outcome(Result.DELIVERED, 1, None, None)
    assert fa.Stats(0, 0, 0, 0, 0, 0, 0, 0, 0, 0).relay is None
    outcome = MessageOutcome(fa.Message("identify", "user_1", b"{}", "key-1"), "dropped", None, 0, None)
    assert outcome.kind == "identify"
