from __future__ import annotations

import pytest

from podbay import InvalidSpec, PodSpec


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"volume": "Bad Name!"}, "volume"),
        ({"env": {"1BAD": "x"}}, "env"),
        ({"env": {"PODBAY_DB_URL": "x"}}, "env"),
        ({"vcpus": 0}, "vcpus"),
        ({"memory_mib": 1}, "memory_mib"),
        ({"context": {"x": object()}}, "context"),
        ({"colour": "blue"}, "colour"),
        ({"network": True}, "network"),
    ],
)
def test_bad_fields_name_themselves_and_a_fix(fields: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        PodSpec.parse(**fields)
    assert caught.value.field.startswith(field)
    assert caught.value.fix
    assert field in str(caught.value)


def test_defaults_are_a_small_microvm() -> None:
    spec = PodSpec.parse()
    assert (spec.backend, spec.vcpus, spec.memory_mib, spec.network) == ("qemu", 1, 256, False)
