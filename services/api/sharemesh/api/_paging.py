"""Paging (AIP-158): one page size rule for every List, and opaque tokens that carry
where the last page ended and the read revision. The tokens are sealed by
`sharemesh.runtime.page_tokens`.

Pages come from the api's watch cache (`_cache`) when it has applied every write etcd
acknowledged, so a page costs O(page) however long the list; otherwise from etcd. A
page from the cache is read from the current state: each page starts after the last id
of the previous one, so a record that exists throughout the listing is returned exactly
once, and one created or deleted meanwhile may or may not be (AIP-158 allows either).
A token then carries the cache's revision for information only. A page read from etcd
reads at the token's revision, as before; a revision etcd compacted answers
INVALID_ARGUMENT "expired; list again"."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import Message

from sharemesh.runtime import page_tokens, validation
from sharemesh.runtime.coordination import Store, Versioned

from ._cache import WatchCache

M = TypeVar("M", bound=Message)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    """Negative is refused, 0 means the default, and more than the maximum is clamped."""
    return min(validation.check_page_size(requested) or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


async def page(
    store: Store,
    prefix: str,
    record_type: type[M],
    page_token: str,
    requested_size: int,
    *,
    scope: str = "",
    cache: WatchCache | None = None,
) -> tuple[list[Versioned[M]], str]:
    """One page of the records under `prefix` and the token for the next ('' at the end).
    `scope` is whatever else shapes the list (its filter, its order): a token is good
    only for the prefix and scope that issued it."""
    size = page_size(requested_size)
    bound_to = page_tokens.binding(prefix, scope)
    position = await page_tokens.read(store, bound_to, page_token)
    if cache is not None and cache.snapshot.cached(prefix) and await cache.consistent():
        items, more = cache.page(prefix, position.after if position else "", size, record_type)
        revision = cache.revision
    else:
        items, revision, more = await store.list(
            prefix,
            record_type,
            prefix + position.after if position else None,
            size,
            position.revision if position else None,
        )
    if not (more and items):
        return items, ""
    last = page_tokens.Position(items[-1].key[len(prefix) :], revision)
    return items, (await page_tokens.load(store)).issue(bound_to, last)
