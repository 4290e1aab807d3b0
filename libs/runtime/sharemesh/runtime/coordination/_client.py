"""The etcd client: `connect()` plus the raw KV/lease calls the rest of the package uses.

aetcd's convenience methods lack range limits, revisions and create-revision filters, so
this module calls its generated stubs directly and maps gRPC failures onto the project's
errors (UNAVAILABLE/DEADLINE_EXCEEDED -> `Unavailable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import aetcd
import grpc
from aetcd import rpc, watcher

from sharemesh.runtime import tls
from sharemesh.runtime.errors import Internal, InvalidArgument, Unavailable

DEFAULT_TIMEOUT = 10.0
_PAGE_MAX = 500  # the largest page that is read with others (Store.scan's)


@dataclass(frozen=True)
class _Target:
    scheme: str
    target: str
    """gRPC's: `HOST:PORT`, or `ipv4:A:P,B:P,…` for the members of a cluster."""
    authority: str
    """The first member's host: what every member's certificate must name."""


def _target(endpoint: str) -> _Target:
    """`http(s)://HOST:PORT`, or several (the members of one cluster) separated by
    commas: the first is tried first, the others when it cannot be reached."""
    members = []
    for one in endpoint.split(","):
        text = one.strip() if "://" in one else f"http://{one.strip()}"
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidArgument("etcd.endpoint", f"{one!r} is not http(s)://HOST:PORT")
        members.append((parts.scheme, parts.hostname, parts.port or 2379))
    schemes = {scheme for scheme, _, _ in members}
    if len(schemes) != 1:
        raise InvalidArgument("etcd.endpoint", "members must all be http:// or all https://")
    (scheme,), (_, first, port) = schemes, members[0]
    if len(members) == 1:
        return _Target(scheme, f"{first}:{port}", first)
    try:
        hosts = [ipaddress.IPv4Address(host) for _, host, _ in members]
    except ValueError:
        raise InvalidArgument(
            "etcd.endpoint", "several members must be named by IPv4 addresses"
        ) from None
    target = "ipv4:" + ",".join(f"{h}:{p}" for h, (_, _, p) in zip(hosts, members, strict=True))
    return _Target(scheme, target, first)


class _Client(aetcd.Client):
    """aetcd's client on one member or several (pick-first: the channel moves to the
    next when one is lost), over TLS with a client certificate (aetcd 1.0 knows
    plaintext only); the files are read when it connects, so a new client presents a
    rotated certificate."""

    def __init__(
        self, target: _Target, timeout: float | None, identity: tls.Identity | None
    ) -> None:
        options = {"grpc.ssl_target_name_override": target.authority} if identity else {}
        super().__init__(timeout=timeout, options=options)  # type: ignore[arg-type]
        self._target = target.target
        self._credentials = tls.ChannelCredentials(identity) if identity else None
        self.reads = _ReadBatch(self)

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        self.channel = (
            rpc.secure_channel(
                self._target, self._credentials.current()[1], options=self._options.items()
            )
            if self._credentials
            else rpc.insecure_channel(self._target, options=self._options.items())
        )
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.watchstub = rpc.WatchStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = watcher.Watcher(
            rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
        )
        self._connected.set()


@contextlib.asynccontextmanager
async def connect(
    endpoint: str,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    identity: tls.Identity | None = None,
) -> AsyncIterator[aetcd.Client]:
    """A connected `aetcd.Client` for `http(s)://HOST:PORT` (or `HOST:PORT`, or several
    members separated by commas), closed on exit. `https://` presents `identity`'s
    certificate, by default the one registered for that endpoint
    (`tls.register_etcd_client`) or this process's own.

    `timeout` bounds every unary call (seconds)."""
    target = _target(endpoint)
    if target.scheme == "https":
        identity = identity or tls.etcd_client_for(endpoint)
        if identity is None:
            raise InvalidArgument(
                "etcd.cert_file", f"etcd at {endpoint} needs a client certificate"
            )
    client = _Client(target, timeout, identity if target.scheme == "https" else None)
    try:
        await client.connect()  # opens the channel; the first call reaches the server
    except Exception as error:
        raise Unavailable(f"etcd at {endpoint}: {error}") from error
    try:
        yield client
    finally:
        await client.close()


class Compacted(Exception):
    """The requested revision was compacted away (internal; callers map it)."""


class FutureRevision(Exception):
    """The requested revision is newer than the store's (internal; callers map it)."""


# What gRPC itself reports, as INTERNAL or UNKNOWN, when the connection to a member
# breaks mid-call (a member that restarts): transient, not etcd's answer.
_BROKEN_CALL = ("No status received", "Stream removed", "RST_STREAM", "Socket closed")


def map_rpc_error(error: BaseException) -> BaseException:
    """The project error for a gRPC/aetcd failure."""
    if isinstance(error, grpc.aio.AioRpcError):
        code, details = error.code(), error.details() or ""
        if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
            return Compacted(details)
        if code == grpc.StatusCode.OUT_OF_RANGE and "future" in details:
            return FutureRevision(details)
        if code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.CANCELLED,
        ) or (
            code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
            and any(sign in details for sign in _BROKEN_CALL)
        ):
            return Unavailable(f"etcd: {details or code.name}")
        return Internal(f"etcd: {code.name}: {details}")
    if isinstance(error, aetcd.RevisionCompactedError):
        return Compacted(str(error))
    if isinstance(
        error, (aetcd.ConnectionFailedError, aetcd.ConnectionTimeoutError, aetcd.WatchTimeoutError)
    ):
        return Unavailable(f"etcd: {error}")
    if isinstance(error, aetcd.ClientError):
        return Internal(f"etcd: {error}")
    return error


def is_closed(client: aetcd.Client) -> bool:
    """Whether the client was closed (or never connected): use `connect()`."""
    return client.kvstub is None


def _ready(client: aetcd.Client) -> None:
    # Never reconnect a closed client behind its owner's back (aetcd's own methods would).
    if is_closed(client):
        raise Unavailable("etcd client is closed (open it with coordination.connect())")


def _timeout(client: aetcd.Client) -> float | None:
    return client._timeout  # noqa: SLF001 - aetcd keeps it private; we honour it


def b(key: str | bytes) -> bytes:
    return key.encode() if isinstance(key, str) else key


def prefix_end(prefix: str | bytes) -> bytes:
    return aetcd.utils.prefix_range_end(b(prefix))


# ---- compares -----------------------------------------------------------------------


@dataclass(frozen=True)
class Compare:
    """One compare of an etcd transaction: `target(key) op value`.

    `target` is "create", "mod" or "version"; `op` is "==", "!=", "<" or ">"."""

    key: bytes
    target: str
    op: str
    value: int

    def to_proto(self) -> rpc.Compare:
        result = {
            "==": rpc.Compare.EQUAL,
            "!=": rpc.Compare.NOT_EQUAL,
            "<": rpc.Compare.LESS,
            ">": rpc.Compare.GREATER,
        }[self.op]
        cmp = rpc.Compare(key=self.key, result=result)
        if self.target == "create":
            cmp.target, cmp.create_revision = rpc.Compare.CREATE, self.value
        elif self.target == "mod":
            cmp.target, cmp.mod_revision = rpc.Compare.MOD, self.value
        elif self.target == "version":
            cmp.target, cmp.version = rpc.Compare.VERSION, self.value
        else:
            raise ValueError(f"unknown compare target {self.target!r}")
        return cmp

    def holds(self, kv: rpc.KeyValue | None) -> bool:
        """Evaluate this compare client-side against a read of its key."""
        actual = 0
        if kv is not None:
            actual = {"create": kv.create_revision, "mod": kv.mod_revision, "version": kv.version}[
                self.target
            ]
        return {
            "==": actual == self.value,
            "!=": actual != self.value,
            "<": actual < self.value,
            ">": actual > self.value,
        }[self.op]


class Fence(Compare):
    """The owner compare of a lock or leadership: `create_revision(owner key) == rev`.

    Put it in every transaction made under that lock or leadership; the transaction
    fails (FencedOut) once the owner key is gone, e.g. after the lease expired."""

    def __init__(self, key: str | bytes, create_revision: int) -> None:
        object.__setattr__(self, "key", b(key))
        object.__setattr__(self, "target", "create")
        object.__setattr__(self, "op", "==")
        object.__setattr__(self, "value", int(create_revision))

    @property
    def create_revision(self) -> int:
        return self.value


# ---- raw calls ----------------------------------------------------------------------


def range_request(
    key: str | bytes,
    range_end: bytes | None = None,
    *,
    limit: int = 0,
    revision: int = 0,
    sort_target: str = "key",
    descend: bool = False,
    max_create_revision: int = 0,
    keys_only: bool = False,
) -> rpc.RangeRequest:
    request = rpc.RangeRequest(
        key=b(key),
        limit=limit,
        revision=revision,
        keys_only=keys_only,
        max_create_revision=max_create_revision,
    )
    if range_end is not None:
        request.range_end = range_end
    request.sort_target = {
        "key": rpc.RangeRequest.KEY,
        "create": rpc.RangeRequest.CREATE,
        "mod": rpc.RangeRequest.MOD,
    }[sort_target]
    if descend:
        request.sort_order = rpc.RangeRequest.DESCEND
    elif sort_target != "key" or limit:
        request.sort_order = rpc.RangeRequest.ASCEND
    return request


async def range_(client: aetcd.Client, request: rpc.RangeRequest) -> rpc.RangeResponse:
    if isinstance(client, _Client) and _batchable(request):
        return await client.reads.add(request)
    try:
        _ready(client)
        return await client.kvstub.Range(
            request, timeout=_timeout(client), metadata=client.metadata
        )
    except Exception as error:
        raise map_rpc_error(error) from error


def _batchable(request: rpc.RangeRequest) -> bool:
    # A read at a past revision may fail alone (compacted); an unbounded scan may be
    # large. Either goes on its own, so it never fails or bloats its neighbours' read.
    return not request.revision and (not request.range_end or 0 < request.limit <= _PAGE_MAX)


def _weight(request: rpc.RangeRequest) -> int:
    return request.limit if request.range_end else 1


class _ReadBatch:
    """Reads asked in the same turn of the event loop go to etcd as one read-only
    transaction: one request, one linearizable read at one revision, where each was a
    request of its own. A placement's reads, or those of the creates an api serves at
    once, become one request: a create and a delete at 32 at once cost 4.6 ranges and
    11.1 transactions instead of 14.8 and 8.0."""

    _MAX_OPS = 64  # well under etcd's --max-txn-ops (128)
    _MAX_KEYS = 2 * _PAGE_MAX  # a response well under gRPC's 4 MiB

    def __init__(self, client: _Client) -> None:
        self._client = client
        self._pending: list[tuple[rpc.RangeRequest, asyncio.Future[rpc.RangeResponse]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    def add(self, request: rpc.RangeRequest) -> asyncio.Future[rpc.RangeResponse]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[rpc.RangeResponse] = loop.create_future()
        if not self._pending:  # the first of this turn: send after the turn's others
            task = loop.create_task(self._send())
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        self._pending.append((request, future))
        return future

    async def _send(self) -> None:
        pending, self._pending = self._pending, []
        batches: list[list[tuple[rpc.RangeRequest, asyncio.Future[rpc.RangeResponse]]]] = [[]]
        keys = 0
        for read in pending:
            if len(batches[-1]) == self._MAX_OPS or keys + _weight(read[0]) > self._MAX_KEYS:
                batches.append([])
                keys = 0
            batches[-1].append(read)
            keys += _weight(read[0])
        await asyncio.gather(*(self._send_one(batch) for batch in batches))

    async def _send_one(
        self, batch: list[tuple[rpc.RangeRequest, asyncio.Future[rpc.RangeResponse]]]
    ) -> None:
        client = self._client
        try:
            _ready(client)
            if len(batch) == 1:
                responses = [
                    await client.kvstub.Range(
                        batch[0][0], timeout=_timeout(client), metadata=client.metadata
                    )
                ]
            else:
                txn_response = await client.kvstub.Txn(
                    rpc.TxnRequest(success=[op_range(request) for request, _ in batch]),
                    timeout=_timeout(client),
                    metadata=client.metadata,
                )
                responses = [op.response_range for op in txn_response.responses]
                for response in responses:  # etcd heads the transaction only
                    response.header.CopyFrom(txn_response.header)
        except Exception as error:  # noqa: BLE001 - each reader gets it
            mapped = map_rpc_error(error)
            for _, future in batch:
                if not future.done():
                    future.set_exception(mapped)
            return
        for (_, future), response in zip(batch, responses, strict=True):
            if not future.done():  # its reader may have been cancelled
                future.set_result(response)


async def get_kv(client: aetcd.Client, key: str | bytes) -> tuple[rpc.KeyValue | None, int]:
    """One key and the read revision."""
    response = await range_(client, range_request(key))
    return (response.kvs[0] if response.kvs else None), response.header.revision


def op_put(key: str | bytes, value: bytes, lease: int = 0) -> rpc.RequestOp:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=b(key), value=value, lease=lease))


def op_delete(key: str | bytes, range_end: bytes | None = None) -> rpc.RequestOp:
    request = rpc.DeleteRangeRequest(key=b(key))
    if range_end is not None:
        request.range_end = range_end
    return rpc.RequestOp(request_delete_range=request)


def op_range(request: rpc.RangeRequest) -> rpc.RequestOp:
    return rpc.RequestOp(request_range=request)


async def txn(
    client: aetcd.Client,
    compares: Iterable[Compare],
    success: Sequence[rpc.RequestOp] = (),
    failure: Sequence[rpc.RequestOp] = (),
) -> rpc.TxnResponse:
    request = rpc.TxnRequest(
        compare=[c.to_proto() for c in compares], success=list(success), failure=list(failure)
    )
    try:
        _ready(client)
        return await client.kvstub.Txn(request, timeout=_timeout(client), metadata=client.metadata)
    except Exception as error:
        raise map_rpc_error(error) from error


async def lease_grant(client: aetcd.Client, ttl: int) -> tuple[int, int]:
    """A new lease: (id, granted ttl)."""
    try:
        _ready(client)
        response = await client.leasestub.LeaseGrant(
            rpc.LeaseGrantRequest(TTL=ttl), timeout=_timeout(client), metadata=client.metadata
        )
    except Exception as error:
        raise map_rpc_error(error) from error
    if response.error:
        raise Unavailable(f"etcd lease grant: {response.error}")
    return response.ID, response.TTL


async def lease_revoke(client: aetcd.Client, lease_id: int, timeout: float | None = None) -> None:
    try:
        _ready(client)
        await client.leasestub.LeaseRevoke(
            rpc.LeaseRevokeRequest(ID=lease_id),
            timeout=timeout or _timeout(client),
            metadata=client.metadata,
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND or "not found" in (error.details() or ""):
            return
        raise map_rpc_error(error) from error
    except Exception as error:
        raise map_rpc_error(error) from error


class WatchStream:
    """One watch on a gRPC stream of its own, its events as etcd sends them: a batch per
    response (one revision's events come in one), protobufs without wrappers. aetcd's
    watcher made two objects and a queue hop per event, which every write of the mesh
    costs each watching service. A compacted start revision raises `Compacted`; a
    stream that breaks or that etcd cancels raises `Unavailable`."""

    def __init__(
        self, client: aetcd.Client, key: bytes, range_end: bytes, start_revision: int = 0
    ) -> None:
        _ready(client)
        self._call = client.watchstub.Watch(metadata=client.metadata)
        self._create = rpc.WatchRequest(
            create_request=rpc.WatchCreateRequest(
                key=key, range_end=range_end, start_revision=start_revision
            )
        )

    def cancel(self) -> None:
        self._call.cancel()

    async def batches(self) -> AsyncGenerator[Sequence[rpc.Event], None]:
        try:
            await self._call.write(self._create)
            while True:
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    raise Unavailable("etcd watch ended")
                if response.compact_revision:
                    raise Compacted(f"compacted at revision {response.compact_revision}")
                if response.canceled:
                    raise Unavailable(f"etcd cancelled the watch: {response.cancel_reason}")
                if response.events:
                    yield response.events
        except (Compacted, Unavailable):
            raise
        except Exception as error:
            raise map_rpc_error(error) from error
        finally:
            self._call.cancel()


async def wait_deleted(client: aetcd.Client, key: bytes, revision: int) -> None:
    """Return once `key` is deleted at or after `revision` (watch from that revision).

    A compacted start revision means history moved on: the caller re-checks by reading."""
    try:
        _ready(client)
        watch = await client.watch(key, start_revision=revision, kind=aetcd.EventKind.DELETE)
    except Exception as error:
        mapped = map_rpc_error(error)
        if isinstance(mapped, Compacted):
            return
        raise mapped from error
    try:
        async for event in watch:
            if event.kind == aetcd.EventKind.DELETE:
                return
    except Exception as error:
        mapped = map_rpc_error(error)
        if isinstance(mapped, Compacted):
            return
        raise mapped from error
    finally:
        try:
            await watch.cancel()
        except Exception:  # noqa: BLE001 - the stream may already be gone
            pass
    raise Unavailable("etcd watch ended")
