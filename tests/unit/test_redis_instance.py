"""Pure logic of the Redis provider: instance names, the configuration it writes, the admin client's RESP."""

from __future__ import annotations

import asyncio
import os
import pwd
from pathlib import Path

import pytest

from podbay.errors import DatabaseUnavailable, HostError, InvalidSpec
from podbay.state.redis_instance import (
    Account,
    AdminError,
    Instance,
    check_name,
    encode,
    instance_name,
    read_own_file,
    read_reply,
    sha256,
)


@pytest.mark.parametrize(
    ("pod_id", "name"),
    [("pod-1a2b3c", "pod_1a2b3c"), ("pod-Child-1", "pod_child_1"), ("abc", "pod_abc"), ("pod_x", "pod_pod_x")],
)
def test_instance_names_are_safe_identifiers(pod_id: str, name: str) -> None:
    assert instance_name(pod_id) == name
    assert check_name(name) == name


@pytest.mark.parametrize("pod_id", ["", "../etc", "pod-a/b", "pod a", "-pod", "p" * 65, "pod-\n"])
def test_hostile_pod_ids_and_names_are_refused(pod_id: str) -> None:
    with pytest.raises(InvalidSpec):
        instance_name(pod_id)
    with pytest.raises(InvalidSpec):
        check_name(pod_id)


def _me() -> Account:
    return Account(os.geteuid(), os.getegid(), pwd.getpwuid(os.geteuid()).pw_name)


def test_the_configuration_holds_hashes_not_secrets(tmp_path: Path) -> None:
    instance = Instance(tmp_path, "pod_abc")
    instance.dir.mkdir()
    instance.write_config("pod-secret", "admin-secret", _me(), extra=["# extra"])
    config = instance.config.read_text()
    assert "pod-secret" not in config and "admin-secret" not in config
    assert f"user default reset on #{sha256('pod-secret')} " in config
    assert f"user podbay reset on #{sha256('admin-secret')} " in config
    assert "-@admin -@dangerous" in config and "port 0\n" in config and 'save ""' in config
    assert config.endswith("# extra\n")
    assert instance.admin_secret() == "admin-secret"
    assert oct(instance.config.stat().st_mode & 0o777) == "0o600"


def test_podbay_never_reads_its_files_through_a_link(tmp_path: Path) -> None:
    target = tmp_path / "host-file"
    target.write_text("secret of the host")
    link = tmp_path / "meta.json"
    link.symlink_to(target)
    assert read_own_file(link) is None


@pytest.mark.parametrize("directory", ['we"ird', "new\nline", "back\\slash"])
def test_paths_that_cannot_go_into_the_configuration_are_refused(tmp_path: Path, directory: str) -> None:
    instance = Instance(tmp_path / directory, "pod_abc")
    with pytest.raises(HostError):
        instance.write_config("s", "a", _me(), extra=[])


def test_a_socket_path_too_long_says_what_to_do(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    instance = Instance(deep, "pod_abc")
    instance.dir.mkdir()
    with pytest.raises(DatabaseUnavailable, match="PODBAY_DB_DIR"):
        instance.write_config("s", "a", _me(), extra=[])


def _replies(raw: bytes) -> list[object]:
    async def parse() -> list[object]:
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        found = []
        while not reader.at_eof():
            found.append(await read_reply(reader))
        return found

    return asyncio.run(parse())


def test_resp_encoding_and_replies() -> None:
    assert encode("AUTH", "podbay", "pw") == b"*3\r\n$4\r\nAUTH\r\n$6\r\npodbay\r\n$2\r\npw\r\n"
    assert _replies(b"+OK\r\n:12\r\n$3\r\nabc\r\n$-1\r\n*2\r\n+a\r\n:1\r\n") == ["OK", 12, b"abc", None, ["a", 1]]
    with pytest.raises(AdminError, match="WRONGPASS"):
        _replies(b"-WRONGPASS invalid username-password pair\r\n")
    with pytest.raises(AdminError, match="unexpected"):
        _replies(b"?what\r\n")
