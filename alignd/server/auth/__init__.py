"""Who may call: API keys with roles (`keys.py`) and per-key quotas (`quotas.py`).

Every request names its method; the transports hand over the request's ``authorization`` value
(gRPC metadata or the HTTP header, ``Bearer <key>``) and get back the `Caller`, or
Unauthenticated (no key, a wrong or revoked one) or PermissionDenied (a user key on an admin
method). With authentication off every caller is the anonymous caller, whose role the config
sets (`anonymous_role`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from alignd.config import ConfigError
from alignd.errors import PermissionDenied, ResourceExhausted, Unauthenticated
from alignd.server.auth.keys import KeyRecord, KeyRing, KeysFileError
from alignd.server.auth.quotas import UNLIMITED, Quota

ADMIN_METHODS = frozenset({"CreateExperiment"})
BEARER = "bearer "
CHECKS_AT_ONCE = 2  # scrypt checks of new keys running at once (each costs ~50 ms and 16 MiB)
MAX_WAITING_CHECKS = 64  # new keys waiting for a check; more are told to retry


@dataclass(frozen=True)
class Caller:
    key_id: str  # "" for the anonymous caller (authentication off)
    name: str
    role: str
    quota: Quota = UNLIMITED


def metadata_authorization(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The `authorization` value of gRPC metadata (keys arrive lower-cased), if any."""
    for key, value in metadata or ():
        if key == "authorization":
            return value if isinstance(value, str) else None
    return None


class Authenticator:
    """Turns a request's authorization value into its Caller. `keys_file` None: authentication
    is off and every caller is anonymous with `anonymous_role`."""

    def __init__(self, keys_file: str | Path | None, anonymous_role: str = "user") -> None:
        try:
            self.ring = KeyRing(keys_file) if keys_file is not None else None
        except KeysFileError as error:
            raise ConfigError(f"auth.keys_file: {error}") from None
        self.anonymous = Caller("", "anonymous", anonymous_role)
        self._checking: dict[str, asyncio.Future[KeyRecord]] = {}  # key -> its check in progress
        self._checks = asyncio.Semaphore(CHECKS_AT_ONCE)

    @property
    def enabled(self) -> bool:
        return self.ring is not None

    def reload(self) -> None:
        if self.ring is not None:
            self.ring.reload()

    async def caller(self, authorization: str | None, method: str) -> Caller:
        """The caller, allowed to call `method`."""
        caller = self.anonymous if self.ring is None else await self._verified(self.ring, authorization)
        if method in ADMIN_METHODS and caller.role != "admin":
            why = (
                f"key {caller.name!r} has role {caller.role!r}"
                if caller.key_id
                else f"authentication is off and anonymous callers have role {caller.role!r} ([auth] anonymous_role)"
            )
            raise PermissionDenied(f"{method} is an admin RPC: {why}")
        return caller

    async def _verified(self, ring: KeyRing, authorization: str | None) -> Caller:
        if not authorization:
            raise Unauthenticated("authorization: an API key is required (authorization: Bearer <key>)")
        if authorization[: len(BEARER)].lower() != BEARER:
            raise Unauthenticated("authorization: expected 'Bearer <key>'")
        key = authorization[len(BEARER) :].strip()
        # A key seen before is checked at once; a new one costs a scrypt hash, off the event loop,
        # once however many requests bring it at the same time.
        record = ring.known(key)
        if record is None:
            ring.precheck(key)  # malformed, unknown ids and repeats cost no scrypt
            check = self._checking.get(key)
            if check is None:
                if len(self._checking) >= MAX_WAITING_CHECKS:
                    raise ResourceExhausted("authorization: too many new keys waiting to be checked", retry_after=1.0)
                check = self._checking[key] = asyncio.ensure_future(self._check(ring, key))
                check.add_done_callback(lambda done: self._forget(key, done))
            record = await asyncio.shield(check)
        return Caller(record.id, record.name, record.role, record.quota)

    def _forget(self, key: str, check: asyncio.Future[KeyRecord]) -> None:
        self._checking.pop(key, None)
        if not check.cancelled():
            check.exception()  # retrieved: a refusal nobody waits for any more is not logged

    async def _check(self, ring: KeyRing, key: str) -> KeyRecord:
        async with self._checks:
            return await asyncio.to_thread(ring.verify, key)
