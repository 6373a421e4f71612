"""What the API's areas share: ISO 8601 query times, bearer-token auth, the predictor lookup."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from core.samples import parse_time_ns
from twin.ports import ApiHost

# times the store can hold: int64 nanoseconds since the epoch (1677-09-21 .. 2262-04-11)
TIME_MIN_NS, TIME_MAX_NS = -(2**63) + 1, 2**63 - 1


def query_time(name: str, value: str | None, default_ns: int) -> int:
    """A query parameter's ISO 8601 time (with offset) in ns, or ``default_ns``; 422 naming ``name``."""
    if value is None:
        return default_ns
    if len(value) > 64:
        raise HTTPException(422, detail=[{"loc": ["query", name], "msg": f"a time is at most 64 characters, got "
                                          f"{len(value)}", "type": "value_error"}])
    try:
        ns = parse_time_ns(value)
    except (ValueError, OverflowError) as err:
        raise HTTPException(422, detail=[{"loc": ["query", name], "msg": str(err), "type": "value_error"}]) from err
    if not TIME_MIN_NS <= ns <= TIME_MAX_NS:
        raise HTTPException(422, detail=[{"loc": ["query", name], "msg": f"{value!r} is outside the times the store "
                                          "holds (1677-09-21 .. 2262-04-11 UTC)", "type": "value_error"}])
    return ns


class Principal(BaseModel):
    name: str
    scopes: list[str]


def make_auth(daemon: ApiHost) -> Any:
    """A dependency factory: ``Depends(auth("write"))``. Bearer tokens from the config (stored as
    SHA-256). Without configured tokens reads are open and every write is refused (read-only)."""
    bearer = HTTPBearer(auto_error=False)

    def auth(scope: str) -> Any:
        def check(cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
            tokens = daemon.config.api.tokens
            if not tokens:
                if scope == "read":
                    return Principal(name="anonymous", scopes=["read"])
                raise HTTPException(403, detail="this twin is read-only: no API tokens are configured "
                                                "(add [[api.tokens]] with the write scope, see docs/configuration.md)")
            if cred is None:
                raise HTTPException(401, detail="a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
            digest = hashlib.sha256(cred.credentials.encode()).hexdigest()
            for t in tokens:
                if hmac.compare_digest(digest, t.sha256):
                    have = [x.value for x in t.scopes]
                    if scope not in have:
                        raise HTTPException(403, detail=f"token {t.name!r} lacks the {scope!r} scope")
                    return Principal(name=t.name, scopes=have)
            raise HTTPException(401, detail="unknown token", headers={"WWW-Authenticate": "Bearer"})
        return check

    return auth


def predictor_or_404(daemon: ApiHost) -> Any:
    """The daemon's surrogate predictor; 404 when it is not enabled."""
    p = daemon.predictor
    if p is None:
        raise HTTPException(404, detail="the surrogate predictor is not enabled ([predictor] enabled = true)")
    return p
