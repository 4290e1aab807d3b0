"""The etcd key codec: resource names <-> keys, plus the fixed internal keys.

A resource `a/1/b/2/c/3` of collection `c` (the second-to-last segment) lives at
`{root}c/a/1/b/2/c/3`. All resources of one collection under one parent therefore share
the prefix `{root}c/a/1/b/2/c/`, which is the list range in key order, and a nested
collection (`.../c/3/d/4`) lives under `{root}d/...`, outside its parent's range.

All functions are pure and validate their segments, so a caller-supplied id can never
inject a `/` and land in another range.
"""

from __future__ import annotations

import re

from sharemesh.runtime.errors import InvalidArgument

_COLLECTION = re.compile(r"^[a-z][A-Za-z0-9]*$")
_FORBIDDEN = re.compile(r"[/\x00-\x1f\x7f]")


def _check_root(root: str) -> str:
    if not root.startswith("/") or not root.endswith("/") or "//" in root:
        raise InvalidArgument(
            "root", f"must start and end with '/' and have no empty segment: {root!r}"
        )
    if _FORBIDDEN.search(root.replace("/", "")):
        raise InvalidArgument("root", f"control characters are not allowed: {root!r}")
    return root


def check_segment(segment: str, field: str = "name") -> str:
    """One path segment: non-empty, no '/', no control characters, not '.' or '..'."""
    if not isinstance(segment, str) or not segment:
        raise InvalidArgument(field, "empty segment")
    if _FORBIDDEN.search(segment):
        raise InvalidArgument(field, f"segment {segment!r} contains '/' or a control character")
    if segment in (".", ".."):
        raise InvalidArgument(field, f"segment {segment!r} is not allowed")
    return segment


def check_collection(collection: str, field: str = "collection") -> str:
    if not isinstance(collection, str) or not _COLLECTION.match(collection):
        raise InvalidArgument(field, f"{collection!r} is not a collection id (lowerCamelCase)")
    return collection


def _split_name(name: str, field: str = "name") -> list[str]:
    if not isinstance(name, str) or not name:
        raise InvalidArgument(field, "empty resource name")
    segments = name.split("/")
    if len(segments) % 2:
        raise InvalidArgument(field, f"{name!r} is not collection/id pairs")
    for i, segment in enumerate(segments):
        if i % 2 == 0:
            check_collection(segment, field)
        else:
            check_segment(segment, field)
    return segments


def check_name(name: str, field: str = "name") -> str:
    """A resource name: `collection/id` pairs, e.g. `projects/p1/shares/s1`."""
    _split_name(name, field)
    return name


def collection_of(name: str) -> str:
    """The collection a resource belongs to: the second-to-last segment."""
    return _split_name(name)[-2]


def parent_of(name: str) -> str:
    """The parent resource name ('' for a top-level resource)."""
    return "/".join(_split_name(name)[:-2])


def key_of(root: str, name: str) -> str:
    """`projects/p1/shares/s1` -> `{root}shares/projects/p1/shares/s1`."""
    _check_root(root)
    return f"{root}{collection_of(name)}/{name}"


def prefix_of(root: str, parent: str, collection: str) -> str:
    """The key prefix of one collection of one parent (parent may be '')."""
    _check_root(root)
    check_collection(collection)
    if parent:
        check_name(parent, "parent")
        return f"{root}{collection}/{parent}/{collection}/"
    return f"{root}{collection}/{collection}/"


def name_of(root: str, key: str | bytes) -> str:
    """The inverse of `key_of`; raises InvalidArgument for a key that is not a resource."""
    _check_root(root)
    if isinstance(key, bytes):
        key = key.decode()
    if not key.startswith(root):
        raise InvalidArgument("key", f"{key!r} is not under {root!r}")
    collection, sep, name = key[len(root) :].partition("/")
    if not sep:
        raise InvalidArgument("key", f"{key!r} is not a resource key")
    check_collection(collection, "key")
    if collection_of(name) != collection:
        raise InvalidArgument("key", f"{key!r}: collection {collection!r} does not match the name")
    return name


# Fixed internal keys.


def backend_key(root: str, backend: str) -> str:
    return f"{_check_root(root)}registry/backends/{check_segment(backend, 'backend')}"


def backends_prefix(root: str) -> str:
    return f"{_check_root(root)}registry/backends/"


def host_key(root: str, host: str) -> str:
    return f"{_check_root(root)}registry/hosts/{check_segment(host, 'host')}"


def hosts_prefix(root: str) -> str:
    return f"{_check_root(root)}registry/hosts/"


def allocation_key(root: str, backend: str, pool: str) -> str:
    return (
        f"{_check_root(root)}allocations/"
        f"{check_segment(backend, 'backend')}/{check_segment(pool, 'pool')}"
    )


def pool_allocation_key(root: str, pool: str) -> str:
    """The allocation record of the pool named `backends/{backend}/pools/{pool}`."""
    parts = pool.split("/")
    if len(parts) != 4 or parts[0] != "backends" or parts[2] != "pools":
        raise InvalidArgument("pool", f"{pool!r} is not backends/{{backend}}/pools/{{pool}}")
    return allocation_key(root, parts[1], parts[3])


def pool_of_allocation_key(root: str, key: str) -> str:
    """The inverse of `pool_allocation_key`."""
    backend, pool = key[len(allocations_prefix(root)) :].split("/")
    return f"backends/{backend}/pools/{pool}"


def allocations_prefix(root: str, backend: str | None = None) -> str:
    if backend is None:
        return f"{_check_root(root)}allocations/"
    return f"{_check_root(root)}allocations/{check_segment(backend, 'backend')}/"


def _segment_or_name(name: str, field: str) -> str:
    if isinstance(name, str) and "/" in name:
        return check_name(name, field)
    return check_segment(name, field)


def election_prefix(root: str, name: str) -> str:
    """The prefix an `Election` queues under (candidates are `{prefix}/<lease hex>`).

    `name` is one segment (`scheduler`) or a resource name."""
    return f"{_check_root(root)}elections/{_segment_or_name(name, 'election')}"


def lock_prefix(root: str, name: str) -> str:
    """The prefix a `Mutex` queues under (waiters are `{prefix}/<lease hex>`).

    `name` is one segment or a resource name (`projects/p/shares/s1` for a per-share
    lock); a nested resource's lock queue sits deeper and is ignored by its parent's."""
    return f"{_check_root(root)}locks/{_segment_or_name(name, 'lock')}"


def request_id_key(root: str, project: str, request_id: str) -> str:
    return (
        f"{_check_root(root)}requestIds/"
        f"{check_segment(project, 'project')}/{check_segment(request_id, 'request_id')}"
    )


def request_ids_prefix(root: str, project: str | None = None) -> str:
    if project is None:
        return f"{_check_root(root)}requestIds/"
    return f"{_check_root(root)}requestIds/{check_segment(project, 'project')}/"


def export_ids_key(root: str, backend: str) -> str:
    """The durable counter of export ids handed out on one backend's Ganesha."""
    return f"{_check_root(root)}exportIds/{check_segment(backend, 'backend')}"


def released_export_ids_prefix(root: str, backend: str) -> str:
    """Export ids of one backend's deleted shares, oldest release first."""
    return f"{export_ids_key(root, backend)}/released/"


def released_export_id_key(root: str, backend: str, released_ms: int, export_id: int) -> str:
    """One released export id, keyed by release time so the oldest is read first; a
    separate key per id, so that deletes never race each other for one record."""
    if released_ms < 0 or not 0 < export_id <= 0xFFFF:
        raise InvalidArgument("export_id", f"{export_id} released at {released_ms}")
    return f"{released_export_ids_prefix(root, backend)}{released_ms:015d}-{export_id:05d}"


def address_key(root: str, share_network: str, address: str) -> str:
    """The reservation of one address on a share network (created only if absent)."""
    ip = address.split("/")[0]
    return f"{_check_root(root)}addresses/{check_name(share_network, 'share_network')}/{ip}"


def addresses_prefix(root: str, share_network: str) -> str:
    return f"{_check_root(root)}addresses/{check_name(share_network, 'share_network')}/"


def network_server_key(root: str, kind: str, owner: str, share_network: str) -> str:
    """The Ganesha `owner` runs for a share network: kind `gateways` (owner a host) or
    `shareServers` (owner a backend)."""
    if kind not in ("gateways", "shareServers"):
        raise InvalidArgument("kind", f"unknown network server kind {kind!r}")
    return (
        f"{_check_root(root)}{kind}/{check_segment(owner, 'owner')}/"
        f"{check_name(share_network, 'share_network')}"
    )


def gateway_endpoint_key(root: str, share_network: str) -> str:
    """The address and ports every host's gateway on a share network serves on (each
    host's bridge is its own, so one endpoint serves the network's tenants on all)."""
    return f"{_check_root(root)}gatewayEndpoints/{check_name(share_network, 'share_network')}"


def network_servers_prefix(root: str, kind: str, owner: str) -> str:
    """Every network server of one owner (scan it: the keys below are nested names)."""
    if kind not in ("gateways", "shareServers"):
        raise InvalidArgument("kind", f"unknown network server kind {kind!r}")
    return f"{_check_root(root)}{kind}/{check_segment(owner, 'owner')}/"


def page_token_secret_key(root: str) -> str:
    """The mesh's key that seals page tokens (made once, by the first list that pages)."""
    return f"{_check_root(root)}secrets/page-token-key"


def usage_key(root: str, project: str) -> str:
    """What a project's shares hold, for its quota."""
    return f"{_check_root(root)}usage/{check_segment(project, 'project')}"


# Index keys: empty records that say which shares are whose, so that a driver-host or
# a gateway reads only its own. Each is written and deleted in the transaction that
# makes it true or false.


def backend_index_prefix(root: str, backend: str, share_network: str | None = None) -> str:
    """The shares placed on `backends/{backend}` (on one share network, if given); the
    keys end in the share's name."""
    prefix = f"{_check_root(root)}index/backends/{check_segment(backend, 'backend')}/"
    if not share_network:
        return prefix
    return f"{prefix}{check_name(share_network, 'share_network')}/"


def backend_index_key(root: str, backend: str, share: str, share_network: str = "") -> str:
    """Written at placement, deleted when the share leaves the backend or etcd."""
    return f"{backend_index_prefix(root, backend, share_network)}{check_name(share, 'share')}"


def host_index_prefix(root: str, host: str, share_network: str | None = None) -> str:
    """The shares a host's gateway serves (on one share network, if given)."""
    prefix = f"{_check_root(root)}index/hosts/{check_segment(host, 'host')}/"
    if share_network is None:
        return prefix
    return f"{prefix}{check_name(share_network, 'share_network')}/"


def host_index_key(root: str, host: str, share_network: str, share: str) -> str:
    """Written when a driver-host hands a share to its host's gateway, deleted when
    it leaves that host or etcd."""
    return f"{host_index_prefix(root, host, share_network)}{check_name(share, 'share')}"


def share_of_index_key(key: str) -> str:
    """The share name an index key ends in (`projects/{p}/shares/{s}`)."""
    return "/".join(key.split("/")[-4:])
