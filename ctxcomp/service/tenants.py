"""Who is calling: bearer tokens, and the tenant each one stands for.

A server started with one token (CTXCOMP_AUTH_TOKEN) has one tenant, "default". A tokens file
(`--auth-tokens-file`) names several: one `TENANT TOKEN` pair a line, blank lines and lines
starting with '#' ignored. The tenant is mixed into every KV key the server writes (see
ctxcomp.kv.store.kv_namespace), so one tenant's requests share stored KV and different
tenants' never do: nothing in a response tells one tenant whether another sent a context.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class Tenants:
    tokens: tuple[tuple[str, bytes], ...]  # (tenant, token)

    @classmethod
    def single(cls, token: str) -> "Tenants":
        return cls.of([(DEFAULT_TENANT, token)])

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> "Tenants":
        pairs = list(pairs)
        if not pairs:
            raise ValueError("no tokens: a server with auth needs at least one")
        for tenant, token in pairs:
            if not tenant or not token:
                raise ValueError("an empty tenant name or token would accept anyone; give both")
        tokens = [token for _, token in pairs]
        if len(set(tokens)) != len(tokens):
            raise ValueError("a token is listed twice: each token names one tenant")
        return cls(tuple((tenant, token.encode()) for tenant, token in pairs))

    @classmethod
    def from_file(cls, path: str | Path) -> "Tenants":
        pairs = []
        for number, line in enumerate(Path(path).read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split()
            if len(fields) != 2:
                raise ValueError(f"{path}, line {number}: expected 'TENANT TOKEN'")
            pairs.append((fields[0], fields[1]))
        return cls.of(pairs)

    def tenant_of(self, authorization: str) -> str | None:
        """The tenant whose token an `authorization` header value presents (scheme "Bearer",
        any case, as RFC 7235 has it), or None. Every token is compared, in constant time."""
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        presented = credentials.strip().encode()
        found = None
        for tenant, token in self.tokens:
            if hmac.compare_digest(presented, token):
                found = tenant
        return found
