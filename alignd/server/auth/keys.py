"""API keys: `alignd keys create` makes them, a JSON keys file keeps them, the server checks them.

A key reads ``alignd-<id>-<secret>``: the id (public, 12 hex digits) finds the key's record, the
secret (32 random bytes, base64url) is checked against the record's salted scrypt hash; the
secret itself is printed once and never stored. Checking a hash costs tens of milliseconds on
purpose, so the server remembers the SHA-256 of each key it has verified (in memory only) and
compares a presented key's digest with it in constant time; a revoked key drops out when the file is reloaded.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alignd.config import ROLES
from alignd.errors import Unauthenticated
from alignd.server.auth.quotas import UNLIMITED, Quota, QuotaError

log = logging.getLogger("alignd.auth")

PREFIX = "alignd"
FILE_VERSION = 1
# scrypt's cost (interactive logins' parameters): 16 MiB and ~50 ms per check.
SCRYPT = {"n": 2**14, "r": 8, "p": 1}
SCRYPT_MAX_MEMORY = 64 * 1024 * 1024
RELOAD_CHECK_SECONDS = 1.0  # how often a request may look at the keys file for changes


class KeysFileError(ValueError):
    """A keys file that cannot be read or is malformed (the message names the file)."""


@dataclass(frozen=True)
class KeyRecord:
    id: str
    name: str
    role: str
    salt: str  # hex
    hash: str  # hex, scrypt(secret, salt)
    created: str
    revoked: str = ""  # when; "" while the key is valid
    quota: Quota = UNLIMITED
    scrypt: dict[str, int] = field(default_factory=lambda: dict(SCRYPT))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "salt": self.salt,
            "hash": self.hash,
            "scrypt": self.scrypt,
            "created": self.created,
            "revoked": self.revoked,
            "quota": self.quota.as_dict(),
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> KeyRecord:
        if not isinstance(data, dict):
            raise KeysFileError(f"{where}: must be an object")
        for name in ("id", "role", "salt", "hash"):
            if not isinstance(data.get(name), str):
                raise KeysFileError(f"{where}.{name}: missing, or not a string")
        record = cls(
            id=data["id"],
            name=str(data.get("name", "")),
            role=data["role"],
            salt=data["salt"],
            hash=data["hash"],
            created=str(data.get("created", "")),
            revoked=str(data.get("revoked") or ""),
            quota=_quota(data.get("quota") or {}, f"{where}.quota"),
            scrypt=_scrypt_params(data.get("scrypt", SCRYPT), f"{where}.scrypt"),
        )
        if record.role not in ROLES:
            raise KeysFileError(f"{where}.role: must be one of {ROLES}, got {record.role!r}")
        if len(record.id) != 12 or not all(c in "0123456789abcdef" for c in record.id):
            raise KeysFileError(f"{where}.id: must be 12 lower-case hexadecimal digits, got {record.id!r}")
        for name, size in (("salt", None), ("hash", 32)):
            try:
                value = bytes.fromhex(getattr(record, name))
            except ValueError:
                raise KeysFileError(f"{where}.{name}: not hexadecimal") from None
            if not value or (size is not None and len(value) != size):
                raise KeysFileError(f"{where}.{name}: must be {size or 'some'} bytes, got {len(value)}")
        return record


def _quota(values: Any, where: str) -> Quota:
    try:
        return Quota.from_dict(values, where)
    except QuotaError as error:
        raise KeysFileError(str(error)) from None


def _scrypt_params(values: Any, where: str) -> dict[str, int]:
    """scrypt's cost parameters, checked so that a hand-edited file cannot make checks fail."""
    if not isinstance(values, dict) or set(values) != set(SCRYPT):
        raise KeysFileError(f"{where}: must hold exactly {sorted(SCRYPT)}")
    n, r, p = (values[k] for k in ("n", "r", "p"))
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (n, r, p)):
        raise KeysFileError(f"{where}: n, r and p must be whole numbers >= 1")
    # What OpenSSL accepts (n a power of 2 below 2^(16 r), within the memory bound), and p small
    # enough that one check cannot run for minutes.
    if n < 2 or n & (n - 1) or n >= 2 ** (16 * r) or p > 16 or 128 * r * (n + p + 2) > SCRYPT_MAX_MEMORY:
        raise KeysFileError(
            f"{where}: n must be a power of 2 below 2^(16 r), p at most 16, and 128 r (n + p + 2) at most "
            f"{SCRYPT_MAX_MEMORY} bytes"
        )
    return {"n": n, "r": r, "p": p}


def hash_secret(secret: str, salt: bytes, params: dict[str, int]) -> bytes:
    return hashlib.scrypt(
        secret.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=params["n"],
        r=params["r"],
        p=params["p"],
        maxmem=SCRYPT_MAX_MEMORY,
        dklen=32,
    )


def new_key(role: str, name: str = "", quota: Quota = UNLIMITED) -> tuple[str, KeyRecord]:
    """A new key: the secret to hand over (once) and the record to store."""
    if role not in ROLES:
        raise ValueError(f"role: must be one of {ROLES}, got {role!r}")
    key_id = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    salt = secrets.token_bytes(16)
    record = KeyRecord(
        id=key_id,
        name=name or key_id,
        role=role,
        salt=salt.hex(),
        hash=hash_secret(secret, salt, SCRYPT).hex(),
        created=_now(),
        quota=quota,
    )
    return f"{PREFIX}-{key_id}-{secret}", record


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _digest(presented: str) -> bytes:
    return hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()


def split_key(presented: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    prefix, sep, rest = presented.partition("-")
    key_id, sep2, secret = rest.partition("-")
    if prefix != PREFIX or not sep or not sep2 or len(key_id) != 12 or not secret:
        return None
    return key_id, secret


class KeysFile:
    """The keys file: read by the server, changed by `alignd keys` under an exclusive lock and
    replaced atomically (readers never see half a file). Only its owner may read it (0600)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def read(self) -> list[KeyRecord]:
        """The records; none when the file does not exist."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as error:
            raise KeysFileError(f"keys file {str(self.path)!r}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise KeysFileError(f"keys file {str(self.path)!r}: not UTF-8 text") from None
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as error:
            raise KeysFileError(f"keys file {str(self.path)!r}: not JSON ({error})") from None
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise KeysFileError(f'keys file {str(self.path)!r}: expected {{"version": 1, "keys": [...]}}')
        if data.get("version") != FILE_VERSION:
            raise KeysFileError(
                f"keys file {str(self.path)!r}: version {data.get('version')!r}, expected {FILE_VERSION}"
            )
        records = [
            KeyRecord.from_json(item, f"keys file {str(self.path)!r}: keys[{i}]") for i, item in enumerate(data["keys"])
        ]
        ids = [r.id for r in records]
        if len(set(ids)) != len(ids):
            twice = sorted({i for i in ids if ids.count(i) > 1})
            raise KeysFileError(f"keys file {str(self.path)!r}: the same id in more than one key: {twice}")
        return records

    def update(self, change: Callable[[list[KeyRecord]], list[KeyRecord]]) -> list[KeyRecord]:
        """Apply `change` to the records and write the result; concurrent updates queue."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            records = change(self.read())
            temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as out:
                json.dump({"version": FILE_VERSION, "keys": [r.to_json() for r in records]}, out, indent=2)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        return records

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.path.with_name(f".{self.path.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def add(self, record: KeyRecord) -> None:
        self.update(lambda records: [*records, record])

    def create(self, role: str, name: str = "", quota: Quota = UNLIMITED) -> tuple[str, KeyRecord]:
        """A new key, stored: its secret (to hand over once) and its record."""
        secret, record = new_key(role, name, quota)
        self.add(record)
        return secret, record

    def revoke(self, key: str) -> KeyRecord:
        """Revoke the key with this id (or name, when only one key has it)."""
        revoked: list[KeyRecord] = []

        def change(records: list[KeyRecord]) -> list[KeyRecord]:
            matches = [r for r in records if r.id == key] or [r for r in records if r.name == key]
            if not matches:
                raise KeysFileError(f"no key with id or name {key!r} in {str(self.path)!r}")
            if len(matches) > 1:
                raise KeysFileError(f"{len(matches)} keys are named {key!r}: give the id")
            record = matches[0] if matches[0].revoked else replace(matches[0], revoked=_now())
            revoked.append(record)
            return [record if r.id == record.id else r for r in records]

        self.update(change)
        return revoked[0]


class KeyRing:
    """The valid keys as the server sees them. Changes to the file (a key created or revoked)
    take effect at the next request after a second, or at once on `reload()` (SIGHUP)."""

    NEGATIVE_CACHE = 1024  # wrong keys remembered, so repeating one costs no scrypt

    def __init__(self, path: str | Path) -> None:
        """Raises KeysFileError when the file is malformed (the server does not start on it)."""
        self.file = KeysFile(path)
        self._lock = threading.Lock()
        self._reloading = threading.Lock()  # one reload at a time: an older read never wins
        self._records: dict[str, KeyRecord] = {}
        self._verified: dict[str, tuple[bytes, KeyRecord]] = {}  # id -> (sha256 of the key, record)
        self._refused: OrderedDict[bytes, None] = OrderedDict()
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._generation = 0  # counts reloads: a check that spans one starts again
        self._install(self._file_stamp(), self.file.read())

    @property
    def count(self) -> int:
        return len(self._records)

    def reload(self) -> None:
        """Read the file again (a malformed file keeps the keys loaded before, and is logged)."""
        with self._reloading:
            stamp = self._file_stamp()
            try:
                records = self.file.read()
            except KeysFileError as error:
                log.error("%s: keeping the %d keys loaded before", error, len(self._records))
                self._stamp = stamp  # logged once, not at every request
                return
            self._install(stamp, records)
        log.info("%d API keys loaded from %s", len(self._records), self.file.path)

    def _install(self, stamp: tuple[int, int, int] | None, loaded: list[KeyRecord]) -> None:
        records = {r.id: r for r in loaded if not r.revoked}
        with self._lock:
            self._records = records
            self._verified = {i: e for i, e in self._verified.items() if records.get(i) == e[1]}
            self._refused.clear()
            self._stamp = stamp
            self._generation += 1

    def _file_stamp(self) -> tuple[int, int, int] | None:
        """What says the file changed: `alignd keys` replaces it (a new inode) and the clock moves."""
        try:
            st = self.file.path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_SECONDS:
            return
        self._checked = now
        if self._file_stamp() != self._stamp:
            self.reload()

    def known(self, presented: str) -> KeyRecord | None:
        """The record of a key verified before (no scrypt), else None."""
        self._maybe_reload()
        parts = split_key(presented)
        entry = self._verified.get(parts[0]) if parts else None
        if entry is None:
            return None
        digest, record = entry
        return record if hmac.compare_digest(digest, _digest(presented)) else None

    def precheck(self, presented: str) -> None:
        """The refusals that need no scrypt (Unauthenticated): not an alignd key, an id this file
        does not hold, or a key refused before."""
        parts = split_key(presented)
        if parts is None:
            raise Unauthenticated(f"authorization: not an alignd API key (expected {PREFIX}-<id>-<secret>)")
        if parts[0] not in self._records or _digest(presented) in self._refused:
            raise Unauthenticated("authorization: unknown or revoked API key")

    def verify(self, presented: str) -> KeyRecord:
        """The record of a valid key (slow the first time: scrypt); Unauthenticated otherwise."""
        known = self.known(presented)
        if known is not None:
            return known
        self.precheck(presented)
        key_id, secret = split_key(presented) or ("", "")
        generation = self._generation
        record = self._records.get(key_id)
        valid = record is not None and hmac.compare_digest(
            hash_secret(secret, bytes.fromhex(record.salt), record.scrypt), bytes.fromhex(record.hash)
        )
        with self._lock:
            if self._generation != generation:
                changed = True  # the file was reloaded meanwhile: check against what it holds now
            elif valid and record is not None:
                self._verified[record.id] = (_digest(presented), record)
                return record
            else:
                changed = False
                self._refused[_digest(presented)] = None
                while len(self._refused) > self.NEGATIVE_CACHE:
                    self._refused.popitem(last=False)
        if changed:
            return self.verify(presented)
        raise Unauthenticated("authorization: unknown or revoked API key")
