"""``/api/v1``: who am I, boards, tokens (admin), webhooks and the notification feed."""

from __future__ import annotations

import functools
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from robopt_compile.service import notify as notes
from robopt_compile.service.auth import ADMIN, OPERATOR, VIEWER
from robopt_compile.service.tokens import ROLES, Token, create_token, list_tokens, revoke_token

router = APIRouter(tags=["admin"])


class NewToken(BaseModel):
    name: str = Field(min_length=1, max_length=80)
    role: str = Field("viewer", description=" | ".join(ROLES))


class NewWebhook(BaseModel):
    url: str = Field(max_length=2000)
    events: list[str] = Field(default_factory=list, description="kinds; empty: all")


@router.get("/me")
def me(token: Token = VIEWER) -> dict[str, Any]:
    """The calling token (never its secret)."""
    return token.to_json()


@functools.cache
def _targets() -> dict[str, Any]:
    import robopt_compile.api as robopt

    return robopt.targets().to_json()


@router.get("/targets")
def targets(token: Token = VIEWER) -> dict[str, Any]:
    """Every board profile with its facts and which backends build and run here."""
    return _targets()


@router.post("/tokens", status_code=201)
def new_token(body: NewToken, request: Request, token: Token = ADMIN) -> dict[str, Any]:
    """A new token: the ``token`` field is shown this once."""
    rec, text = create_token(request.app.state.store, body.name, body.role)
    return {**rec.to_json(), "token": text}


@router.get("/tokens")
def tokens(request: Request, token: Token = ADMIN) -> list[dict[str, Any]]:
    return [t.to_json() for t in list_tokens(request.app.state.store)]


@router.delete("/tokens/{token_id}")
def revoke(token_id: str, request: Request, token: Token = ADMIN) -> dict[str, Any]:
    return revoke_token(request.app.state.store, token_id).to_json()


@router.post("/webhooks", status_code=201)
def new_webhook(body: NewWebhook, request: Request, token: Token = OPERATOR) -> dict[str, Any]:
    """Subscribe a URL; the ``secret`` (HMAC-SHA256 key of X-Robopt-Signature) is shown once."""
    return notes.add_webhook(request.app.state.store, body.url, body.events, owner=token.id)


@router.get("/webhooks")
def webhooks(request: Request, token: Token = VIEWER) -> list[dict[str, Any]]:
    return notes.list_webhooks(request.app.state.store)


@router.delete("/webhooks/{webhook_id}")
def remove_webhook(webhook_id: str, request: Request, token: Token = OPERATOR) -> dict[str, Any]:
    notes.remove_webhook(request.app.state.store, webhook_id)
    return {"removed": webhook_id}


@router.get("/notifications")
def notifications(request: Request, after: int = 0, limit: int = 100, token: Token = VIEWER
                  ) -> list[dict[str, Any]]:  # fmt: skip
    """The feed, newest first, with each delivery's state (pending, delivered, dead)."""
    return notes.notifications(request.app.state.store, after, min(max(limit, 1), 500))
