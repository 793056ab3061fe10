"""API tokens: random, shown once, stored hashed, compared in constant time, each with a role.

A token reads ``rbt_<id>_<secret>``: ``id`` (12 hex digits) names its row in the store's
``tokens`` table, ``secret`` (43 URL-safe characters, 256 random bits) is kept only as its
sha256. Checking a token looks the row up by id and compares the hashes with
``hmac.compare_digest``, so the time taken says nothing about how much of a secret was right.

Roles, each including the ones before it:

    viewer    read: models, jobs, sessions, events, reports, bundles, notifications
    operator  also upload models, submit, cancel and resume jobs, manage webhooks and devices
    admin     also create, list and revoke tokens
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
from dataclasses import dataclass
from typing import Any

from robopt_compile.errors import InputError
from robopt_compile.store.records import utc_now

ROLES = ("viewer", "operator", "admin")
_FORM = re.compile(r"^rbt_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")


@dataclass(frozen=True)
class Token:
    """A token's row, never its secret."""

    id: str
    name: str
    role: str
    created: str
    last_used: str | None
    revoked: str | None

    def allows(self, role: str) -> bool:
        """Whether this token's role includes ``role``."""
        return ROLES.index(self.role) >= ROLES.index(role)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role, "created": self.created,
                "last_used": self.last_used, "revoked": self.revoked}  # fmt: skip


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _row(r: sqlite3.Row) -> Token:
    return Token(r["id"], r["name"], r["role"], r["created"], r["last_used"], r["revoked"])


def create_token(store: Any, name: str, role: str) -> tuple[Token, str]:
    """A new token with ``role``; returns its row and the whole token text (shown once).

    Raises:
        InputError: an unknown role or an empty name.
    """
    if role not in ROLES:
        raise InputError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}.")
    if not name.strip():
        raise InputError("a token needs a --name (who or what uses it, e.g. ci).")
    tid, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    now = utc_now()
    store.write(lambda c: c.execute(
        "INSERT INTO tokens(id, name, role, hash, created) VALUES (?, ?, ?, ?, ?)",
        (tid, name.strip(), role, _hash(secret), now)))  # fmt: skip
    return Token(tid, name.strip(), role, now, None, None), f"rbt_{tid}_{secret}"


def check_token(store: Any, text: str) -> Token | None:
    """The token ``text`` names if it is valid and not revoked, else None (never raises)."""
    m = _FORM.match(text or "")
    if m is None:
        return None
    rows = store.query("SELECT * FROM tokens WHERE id=?", (m.group(1),))
    if not rows:
        _hash(m.group(2))  # the same work as a known id
        return None
    r = rows[0]
    if not hmac.compare_digest(r["hash"], _hash(m.group(2))) or r["revoked"]:
        return None
    return _row(r)


def touch_many(store: Any, last_used: dict[str, str]) -> None:
    """Record when each token (id -> time) was last used, in one transaction."""
    rows = [(t, tid) for tid, t in last_used.items()]
    store.write(lambda c: c.executemany("UPDATE tokens SET last_used=? WHERE id=?", rows))


def list_tokens(store: Any) -> list[Token]:
    """Every token, newest first (revoked ones included)."""
    return [_row(r) for r in store.query("SELECT * FROM tokens ORDER BY created DESC")]


def revoke_token(store: Any, token_id: str) -> Token:
    """Revoke a token by id; it stops working at once.

    Raises:
        InputError: no such token.
    """
    store.write(
        lambda c: c.execute(
            "UPDATE tokens SET revoked=? WHERE id=? AND revoked IS NULL", (utc_now(), token_id)
        )
    )
    rows = store.query("SELECT * FROM tokens WHERE id=?", (token_id,))
    if not rows:
        raise InputError(f"no token {token_id!r}; `robopt-compile token list` lists them.")
    return _row(rows[0])
