"""API keys → principals (tenant, user, roles, rate limit), and what each principal may reach.

Keys are never stored in the policy: an entry gives either the key's SHA-256 (`key_sha256`) or
the name of an environment variable that holds it (`key_env`, hashed when the policy loads).
Callers send `Authorization: Bearer KEY` (or `x-api-key: KEY`). Without an `auth` section every
caller is the anonymous principal of tenant `default`: chat completions and feedback are open,
but the operator surfaces (`admin`: reload and cache deletion; `explain`: `/v1/route/explain` and
the `x-sigroute-debug` header) are closed unless `server.open_without_auth` lists them. With
keys, each surface needs one of the roles the policy names for it (`auth.admin_roles`,
`explain_roles`, `metrics_roles`); see `policies.schema.server.Auth`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from typing import Mapping

from sigroute.gateway.errors import Forbidden, Unauthorized
from sigroute.policies.schema import ApiKey, Auth, RateLimit
from sigroute.signals.context import ANONYMOUS, Principal

log = logging.getLogger("sigroute.auth")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class Authenticator:
    def __init__(self, auth: Auth | None, default_rate_limit: RateLimit | None = None,
                 environ: Mapping[str, str] = os.environ, open_without_auth: tuple[str, ...] = ()):
        self.enabled = auth is not None
        self.default_rate_limit = default_rate_limit
        self.admin_roles = frozenset(auth.admin_roles) if auth else frozenset()
        self.roles_for = {"admin": self.admin_roles,
                          "explain": frozenset(auth.explain_roles) if auth else frozenset(),
                          "metrics": frozenset(auth.metrics_roles) if auth else frozenset()}
        self.public_endpoints = frozenset(auth.public_endpoints) if auth else frozenset(("ready", "metrics"))
        self.open_without_auth = frozenset(open_without_auth)
        self._by_hash: dict[str, tuple[Principal, RateLimit | None]] = {}
        self.unusable: list[str] = []  # key_env entries whose variable is not set
        for i, entry in enumerate(auth.keys if auth else ()):
            digest = entry.key_sha256
            if entry.key_env is not None:
                value = environ.get(entry.key_env)
                if not value:
                    self.unusable.append(f"auth.keys[{i}]: environment variable {entry.key_env} is not set")
                    continue
                digest = hash_key(value)
            principal = Principal(tenant=entry.tenant, user=entry.user, roles=tuple(entry.roles),
                                  key_id=f"{entry.tenant}/{digest[:12]}")
            self._by_hash[digest] = (principal, entry.rate_limit)
        for problem in self.unusable:
            log.warning("%s; that key cannot be used", problem)

    def authenticate(self, headers: Mapping[str, str]) -> tuple[Principal, RateLimit | None]:
        """Resolve the caller from request headers (lower-cased names)."""
        if not self.enabled:
            return ANONYMOUS, self.default_rate_limit
        key = None
        authorization = headers.get("authorization")
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                key = value.strip()
        if key is None:
            key = headers.get("x-api-key")
        if not key:
            raise Unauthorized("missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
                               code="missing_api_key")
        digest = hash_key(key)
        found = self._by_hash.get(digest)
        if found is None:
            # constant-time comparison over the known digests so timing reveals nothing
            for known in self._by_hash:
                hmac.compare_digest(known, digest)
            raise Unauthorized("invalid API key", code="invalid_api_key")
        return found

    def may(self, principal: Principal, surface: str) -> bool:
        """Whether `principal` may use an operator surface: admin, explain or metrics."""
        if not self.enabled:
            return surface == "metrics" or surface in self.open_without_auth
        return bool(self.roles_for[surface].intersection(principal.roles))

    def is_admin(self, principal: Principal) -> bool:
        return self.may(principal, "admin")

    def refusal(self, surface: str, what: str) -> Forbidden:
        """The 403 for a principal that may not use `surface`, saying how to get access."""
        if not self.enabled:
            return Forbidden(f"{what} is refused: this gateway has no `auth` section, so no caller is "
                             f"authenticated; add API keys with a role in auth.{surface}_roles, or for local "
                             f"development list '{surface}' in server.open_without_auth", code=f"{surface}_only")
        roles = ", ".join(sorted(self.roles_for[surface])) or "(none configured)"
        return Forbidden(f"{what} needs one of the roles: {roles}", code=f"{surface}_only")
