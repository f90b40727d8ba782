"""podbay's public surface (httpx's model): every type a public method or attribute returns is exported from
`podbay`, and create_agent's keywords are PodSpec's fields, so an editor completes them and mypy checks them."""

from __future__ import annotations

import inspect
import sys
import types
import typing
from collections.abc import Iterator
from typing import Any

import pytest

import podbay
from podbay import AsyncPlatform, AsyncPools, Platform, PodSpec, Pools

EXPORTED = {getattr(podbay, name) for name in podbay.__all__}
CLASSES: list[type] = [value for value in EXPORTED if isinstance(value, type)]


def _named_types(hint: Any) -> Iterator[type]:
    """Every class a type hint names (through unions, generics and Callable)."""
    if isinstance(hint, type) and not typing.get_args(hint):
        yield hint
    for arg in typing.get_args(hint):
        if isinstance(arg, list):  # Callable's parameter list
            for item in arg:
                yield from _named_types(item)
        else:
            yield from _named_types(arg)
    origin = typing.get_origin(hint)
    if isinstance(origin, type) and origin is not types.UnionType:
        yield origin


def _acceptable(cls: type) -> bool:
    module = cls.__module__.split(".")[0]
    return cls in EXPORTED or module == "builtins" or module in sys.stdlib_module_names


def _public_hints(cls: type) -> Iterator[tuple[str, Any]]:
    """(name, hint) for each public method's return, property, and annotated attribute of a podbay class."""
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith("podbay"):
            continue
        for name, hint in typing.get_type_hints(klass).items():
            if not name.startswith("_"):
                yield name, hint
        for name, member in vars(klass).items():
            if name.startswith("_") and name not in ("__enter__", "__aenter__"):
                continue
            function = member.fget if isinstance(member, property) else member
            if isinstance(function, classmethod | staticmethod):
                function = function.__func__
            if inspect.isfunction(function):
                yield name, typing.get_type_hints(function).get("return")


def test_there_is_a_surface_to_check() -> None:
    names = {f"{cls.__name__}.{name}" for cls in CLASSES for name, _ in _public_hints(cls)}
    assert {"Platform.create_agent", "Pod.start_process", "Platform.doctor", "Pools.ensure", "Pod.files"} <= names


@pytest.mark.parametrize("cls", sorted(CLASSES, key=str), ids=str)
def test_every_returned_type_is_exported(cls: type) -> None:
    missing = {
        f"{cls.__name__}.{name} -> {named.__module__}.{named.__qualname__}"
        for name, hint in _public_hints(cls)
        for named in _named_types(hint)
        if not _acceptable(named)
    }
    assert not missing, "export these from podbay (or make the method private)"


def test_all_is_sorted_and_complete() -> None:
    assert podbay.__all__ == sorted(podbay.__all__)
    assert all(hasattr(podbay, name) for name in podbay.__all__)


@pytest.mark.parametrize("create_agent", [Platform.create_agent, AsyncPlatform.create_agent])
def test_create_agent_takes_every_pod_spec_field_with_its_default(create_agent: Any) -> None:
    parameters = inspect.signature(create_agent).parameters
    keywords = {name: p for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert list(keywords) == list(PodSpec.model_fields), "create_agent's keywords are PodSpec's fields, in order"
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    for name, field in PodSpec.model_fields.items():
        default = keywords[name].default
        expected = field.get_default(call_default_factory=True)
        assert (default if default is not None or expected is None else {}) == expected, name


@pytest.mark.parametrize("ensure", [Pools.ensure, AsyncPools.ensure])
def test_pools_ensure_takes_the_shape_fields_with_pod_spec_defaults(ensure: Any) -> None:
    parameters = inspect.signature(ensure).parameters
    shape = [name for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "wait"]
    assert shape == ["backend", "vcpus", "memory_mib", "disk_mib", "preload"]
    for name in shape:
        assert parameters[name].default == PodSpec.model_fields[name].default, name


@pytest.mark.parametrize("cls", [Platform, AsyncPlatform, podbay.Pod, podbay.AsyncPod])
def test_platforms_and_pods_are_context_managers(cls: type) -> None:
    sync = hasattr(cls, "__enter__") and hasattr(cls, "__exit__")
    asynchronous = hasattr(cls, "__aenter__") and hasattr(cls, "__aexit__")
    assert sync or asynchronous
    assert (cls.__name__.startswith("Async")) == asynchronous
