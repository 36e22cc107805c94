import asyncio
import json
import os
import time

import pytest

from alignd.config import is_loopback
from alignd.errors import PermissionDenied, Unauthenticated
from alignd.server.auth import Authenticator
from alignd.server.auth.keys import KeyRing, KeysFile, KeysFileError, new_key, split_key
from alignd.server.auth.quotas import Quota


def test_a_key_is_stored_as_a_salted_hash_never_as_its_secret(tmp_path):
    secret, record = new_key("user", "alice", Quota(concurrent=2))
    keys = KeysFile(tmp_path / "keys.json")
    keys.add(record)
    text = (tmp_path / "keys.json").read_text()
    key_id, raw = split_key(secret)
    assert key_id == record.id and raw not in text and secret not in text
    assert oct(os.stat(tmp_path / "keys.json").st_mode & 0o777) == "0o600"
    (loaded,) = keys.read()
    assert loaded == record and loaded.quota == Quota(concurrent=2)
    # Two keys never share a salt: equal secrets would still hash apart.
    assert new_key("user")[1].salt != record.salt


def test_the_ring_accepts_valid_keys_and_refuses_wrong_and_revoked_ones(tmp_path):
    keys = KeysFile(tmp_path / "keys.json")
    secret, record = keys.create("admin", "ops")
    ring = KeyRing(keys.path)
    assert ring.verify(secret) == record
    assert ring.known(secret) == record  # verified once: no scrypt again
    key_id, raw = split_key(secret)
    for wrong in (f"alignd-{key_id}-{raw[:-1]}x", f"alignd-{'0' * 12}-{raw}", "sk-123", "", f"alignd-{key_id}-"):
        with pytest.raises(Unauthenticated, match=r"^authorization: "):
            ring.verify(wrong)
    keys.revoke("ops")
    ring.reload()
    assert ring.known(secret) is None
    with pytest.raises(Unauthenticated, match="unknown or revoked"):
        ring.verify(secret)


def test_a_revoked_key_drops_out_without_a_reload_call(tmp_path):
    keys = KeysFile(tmp_path / "keys.json")
    secret, record = keys.create("user", "bob")
    ring = KeyRing(keys.path)
    ring.verify(secret)
    time.sleep(0.01)
    keys.revoke(record.id)
    deadline = time.monotonic() + 3
    while ring.known(secret) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ring.known(secret) is None
    # A key created later is accepted the same way.
    later, record2 = keys.create("user", "carol")
    time.sleep(1.1)
    assert ring.verify(later) == record2


def test_a_malformed_keys_file_keeps_the_keys_loaded_before(tmp_path, caplog):
    keys = KeysFile(tmp_path / "keys.json")
    secret, record = keys.create("user")
    ring = KeyRing(keys.path)
    keys.path.write_text("{not json")
    ring.reload()
    assert ring.verify(secret) == record
    assert "not JSON" in caplog.text and secret not in caplog.text
    for bad, message in (
        ({"version": 2, "keys": []}, "version 2"),
        ({"version": 1, "keys": [{"id": "x"}]}, r"keys\[0\]\.role: missing, or not a string"),
        ({"version": 1, "keys": [{**record.to_json(), "quota": "lots"}]}, "quota: must be a table"),
        ({"version": 1, "keys": [{**record.to_json(), "salt": "zz"}]}, r"keys\[0\]\.salt: not hexadecimal"),
        ({"version": 1, "keys": [{**record.to_json(), "scrypt": {"n": 3, "r": 8, "p": 1}}]}, "power of 2"),
        ({"version": 1, "keys": [{**record.to_json(), "scrypt": {"n": 2**30, "r": 8, "p": 1}}]}, "at most"),
        ({"version": 1, "keys": [{**record.to_json(), "scrypt": {"n": 2**16, "r": 1, "p": 1}}]}, r"below 2\^\(16 r\)"),
        ({"version": 1, "keys": [{**record.to_json(), "scrypt": {"n": 2, "r": 1, "p": 500}}]}, "p at most 16"),
        ({"version": 1, "keys": [{**record.to_json(), "id": "XYZ"}]}, r"keys\[0\]\.id: must be 12"),
        ({"version": 1, "keys": [{**record.to_json(), "hash": "ab"}]}, r"keys\[0\]\.hash: must be 32 bytes"),
        ({"version": 1, "keys": [record.to_json(), record.to_json()]}, "the same id in more than one key"),
        ({"version": 1, "keys": [{**record.to_json(), "role": "root"}]}, "keys\\[0\\].role"),
        ({"version": 1, "keys": [{**record.to_json(), "quota": {"concurrent": -1}}]}, "quota.concurrent"),
    ):
        keys.path.write_text(json.dumps(bad))
        with pytest.raises(KeysFileError, match=message):
            keys.read()
    keys.path.write_bytes(b"\xff\xfe not text")
    with pytest.raises(KeysFileError, match="not UTF-8 text"):
        keys.read()
    ring.reload()  # logged, not raised: the keys loaded before stay
    assert ring.verify(secret) == record


def test_keys_that_cannot_be_right_are_refused_without_scrypt(tmp_path):
    keys = KeysFile(tmp_path / "keys.json")
    secret, _ = keys.create("user")
    ring = KeyRing(keys.path)
    for wrong, message in (("nope", "not an alignd API key"), (f"alignd-{'f' * 12}-abc", "unknown or revoked")):
        with pytest.raises(Unauthenticated, match=message):
            ring.precheck(wrong)
    ring.precheck(secret)  # a real id: only scrypt can tell


def test_revoking_names_the_key_or_says_which_is_missing(tmp_path):
    keys = KeysFile(tmp_path / "keys.json")
    for _ in range(2):
        keys.create("user", "twin")
    with pytest.raises(KeysFileError, match="2 keys are named 'twin'"):
        keys.revoke("twin")
    with pytest.raises(KeysFileError, match="no key with id or name 'nobody'"):
        keys.revoke("nobody")


def test_roles_guard_admin_methods(tmp_path):
    keys = KeysFile(tmp_path / "keys.json")
    user, _ = keys.create("user", "u")
    admin, _ = keys.create("admin", "a")
    auth = Authenticator(keys.path)

    async def check() -> None:
        assert (await auth.caller(f"Bearer {user}", "Generate")).name == "u"
        assert (await auth.caller(f"bearer {admin}", "CreateExperiment")).role == "admin"
        with pytest.raises(PermissionDenied, match="key 'u' has role 'user'"):
            await auth.caller(f"Bearer {user}", "CreateExperiment")
        with pytest.raises(Unauthenticated, match="an API key is required"):
            await auth.caller(None, "Generate")
        with pytest.raises(Unauthenticated, match="expected 'Bearer <key>'"):
            await auth.caller(user, "Generate")

    asyncio.run(check())


def test_without_keys_every_caller_is_anonymous_with_the_configured_role():
    async def check() -> None:
        assert (await Authenticator(None, "admin").caller(None, "CreateExperiment")).role == "admin"
        with pytest.raises(PermissionDenied, match="anonymous callers have role 'user'"):
            await Authenticator(None).caller("Bearer whatever", "CreateExperiment")

    asyncio.run(check())


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("[::]", False),
        ("10.0.0.2", False),
    ],
)
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback
