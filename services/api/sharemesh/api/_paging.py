"""Opaque page tokens (AIP-158): the last key returned plus the read revision, so every
page of one listing reads the same snapshot."""

from __future__ import annotations

import base64
import json
from typing import TypeVar

from google.protobuf.message import Message

from sharemesh.runtime.coordination import Store, Versioned
from sharemesh.runtime.errors import InvalidArgument

M = TypeVar("M", bound=Message)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size", "must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode(last_key: str, revision: int) -> str:
    raw = json.dumps({"k": last_key, "r": revision}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str) -> tuple[str | None, int | None]:
    if not token:
        return None, None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        return str(data["k"]), int(data["r"])
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument("page_token", "is not a token this API issued") from None


async def page(
    store: Store, prefix: str, record_type: type[M], page_token: str, requested_size: int
) -> tuple[list[Versioned[M]], str]:
    """One page of the records under `prefix` and the token for the next ('' at the end)."""
    start_after, revision = decode(page_token)
    items, revision, more = await store.list(
        prefix, record_type, start_after, page_size(requested_size), revision
    )
    return items, encode(items[-1].key, revision) if more and items else ""
