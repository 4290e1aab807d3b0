"""Opaque page tokens (AIP-158): where a listing stopped, sealed with a per-mesh secret.

A token is a Fernet token (AES-128-CBC, then HMAC-SHA256) over the last id returned,
the read revision and a digest of the list it belongs to. So it reveals no key, any
change to it is detected, and it is good only for the list (prefix and filter) that
issued it. The secret is made once per mesh, in etcd under the mesh root, and every api
process reads it from there, so each accepts the others' tokens.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import weakref
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken
from google.protobuf import wrappers_pb2

from .coordination import Store, keys
from .errors import AlreadyExists, InvalidArgument

# A token here is ~250 characters; anything much longer was not made here.
MAX_TOKEN = 1024
NOT_ISSUED = "is not a token this API issued"


@dataclass(frozen=True)
class Position:
    """Where the previous page ended: the last id it returned, read at `revision`."""

    after: str
    revision: int


def binding(prefix: str, scope: str = "") -> str:
    """What a token is good for: the listed prefix and whatever else shapes the list
    (its filter and order)."""
    return hashlib.sha256(f"{prefix}\0{scope}".encode()).hexdigest()[:32]


class PageTokens:
    """Issues and reads tokens under one secret (a Fernet key)."""

    def __init__(self, secret: bytes) -> None:
        self._fernet = Fernet(secret)

    def issue(self, bound_to: str, position: Position) -> str:
        payload = {"a": position.after, "r": position.revision, "b": bound_to}
        return self._fernet.encrypt(json.dumps(payload).encode()).decode()

    def issued(self, token: str) -> bool:
        """Whether this secret sealed `token` (whatever list it is for)."""
        return self._open(token) is not None

    def read(self, bound_to: str, token: str) -> Position | None:
        """The position `token` carries; None for the first page."""
        if not token:
            return None
        opened = self._open(token)
        if opened is None:
            raise InvalidArgument("page_token", NOT_ISSUED)
        issued_for, position = opened
        if issued_for != bound_to:
            raise InvalidArgument(
                "page_token",
                "belongs to another list (another parent or filter); list again without it",
            )
        return position

    def _open(self, token: str) -> tuple[str, Position] | None:
        """The list a token was issued for and its position; None unless sealed here."""
        if len(token) > MAX_TOKEN:
            return None
        try:
            payload = json.loads(self._fernet.decrypt(token.encode()))
            return str(payload["b"]), Position(str(payload["a"]), int(payload["r"]))
        except (InvalidToken, ValueError, KeyError, TypeError):
            return None


# One reader per store (per api process), made from the secret in etcd on first use.
_cache: weakref.WeakKeyDictionary[Store, PageTokens] = weakref.WeakKeyDictionary()


async def _fetch(store: Store) -> PageTokens | None:
    """The codec under the mesh's secret as etcd has it now; None if there is none."""
    found = await store.get(keys.page_token_secret_key(store.root), wrappers_pb2.BytesValue)
    if found is None:
        return None
    _cache[store] = tokens = PageTokens(found.value.value)
    return tokens


async def load(store: Store) -> PageTokens:
    """The mesh's codec, for issuing. The first issue in a mesh makes the secret; when
    api processes race to, one create wins and all read its secret."""
    if (cached := _cache.get(store)) is not None:
        return cached
    while (tokens := await _fetch(store)) is None:
        with contextlib.suppress(AlreadyExists):
            secret = wrappers_pb2.BytesValue(value=Fernet.generate_key())
            await store.create(keys.page_token_secret_key(store.root), secret)
    return tokens


async def read(store: Store, bound_to: str, token: str) -> Position | None:
    """`PageTokens.read` with the mesh's secret. A token that does not open under the
    cached secret is tried once more against etcd's (the secret was made anew, e.g.
    after etcd lost its data); reading never writes, so a refused call changes nothing."""
    if not token:
        return None
    tokens = _cache.get(store)
    if tokens is None or not tokens.issued(token):
        tokens = await _fetch(store)
        if tokens is None:  # no secret yet: nothing was ever issued
            raise InvalidArgument("page_token", NOT_ISSUED)
    return tokens.read(bound_to, token)
