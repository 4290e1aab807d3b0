"""Metrics: OpenTelemetry instruments, served as Prometheus text at
`http://{[telemetry] metrics_listen}/metrics` by each process (the launcher gives each
child a port of its own; unset, there is no endpoint and every instrument is a no-op).

Idle costs nothing: counters move only when something happens, and every gauge is
computed when scraped, from counts that their owners keep as they change (the api's
watch cache keeps its records' counts by state, never scanning them). Pools are read
from the driver (and their allocation from etcd) on a scrape, never on a timer.

The instruments are made from OpenTelemetry's global meter, a proxy until `configure`
sets the provider: the hooks in the rest of the code need not know whether metrics are
on. What a hook reports on a scrape comes from objects it registered, held weakly so
that a Ganesha or a queue that is gone leaves no series behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from opentelemetry import metrics as otel
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .config import TelemetryConfig, split_host_port

log = logging.getLogger(__name__)

GIB = 1 << 30
# gRPC latencies span a nudge (~1 ms) to a create that waits on a backend (seconds).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# A scrape waits this long for the pools; past it, it reports what it read last.
_POOL_READ_SECONDS = 5.0
# A request's head must fit and arrive in these, or the connection is closed.
_REQUEST_LIMIT = 8192
_REQUEST_SECONDS = 5.0

_meter = otel.get_meter("sharemesh")
_registry: CollectorRegistry | None = None
_server: asyncio.Server | None = None


# ---- what the rest of the code registers ---------------------------------------------


class RecordCounts(Protocol):
    def record_states(self) -> Mapping[str, Mapping[str, int]]:
        """Per collection (`shares`, `snapshots`, `operations`), records per state."""
        ...


class Queue(Protocol):
    name: str

    def depth(self) -> int: ...


class Ganesha(Protocol):
    state_dir: Any

    def export_count(self) -> int: ...


@dataclass(frozen=True)
class PoolUsage:
    """One pool as its driver-host sees it."""

    pool: str
    """Full name, `backends/{backend}/pools/{pool}`."""
    total_gib: float
    free_gib: float
    """What the backend really has left (thin shares may use less than their size)."""
    provisioned_gib: float
    allocated_gib: int
    """What the ledger has handed to shares."""


PoolReader = Callable[[], Awaitable[Sequence[PoolUsage]]]

_record_counts: weakref.WeakSet[Any] = weakref.WeakSet()
_queues: weakref.WeakSet[Any] = weakref.WeakSet()
_ganeshas: weakref.WeakSet[Any] = weakref.WeakSet()
_pool_readers: list[weakref.WeakMethod[PoolReader]] = []
_pools: dict[str, PoolUsage] = {}


def observe_records(source: RecordCounts) -> None:
    """Report `source`'s records by state as `sharemesh_{collection}{state}`."""
    _record_counts.add(source)


def observe_queue(queue: Queue) -> None:
    """Report `queue`'s depth as `sharemesh_workqueue_depth{queue}`."""
    _queues.add(queue)


def observe_ganesha(ganesha: Ganesha) -> None:
    """Report `ganesha`'s exports as `sharemesh_ganesha_exports{ganesha}`."""
    _ganeshas.add(ganesha)


def observe_pools(read: PoolReader) -> None:
    """Read the pools with `read` (a bound method) on each scrape."""
    _pool_readers.append(weakref.WeakMethod(read))  # type: ignore[arg-type]


# ---- counters that hooks move --------------------------------------------------------

_rpc_requests = _meter.create_counter(
    "sharemesh_rpc_server_requests", description="RPCs this server answered, by method and code"
)
_rpc_seconds = _meter.create_histogram(
    "sharemesh_rpc_server_duration",
    unit="s",
    description="Time from an RPC's arrival to its answer, by method and code",
    explicit_bucket_boundaries_advisory=list(_LATENCY_BUCKETS),
)
_retries = _meter.create_counter(
    "sharemesh_workqueue_retries",
    description="Keys a work queue took back with backoff after their work failed",
)
_ganesha_restarts = _meter.create_counter(
    "sharemesh_ganesha_restarts",
    description="Times a supervised Ganesha was found dead and restarted",
)
_leader_changes = _meter.create_counter(
    "sharemesh_leader_changes",
    description="Times this process became the leader of an election (sum over a "
    "service's processes for the changes of its leader)",
)
_leading = _meter.create_up_down_counter(
    "sharemesh_leader", description="1 while this process leads the election"
)


def queue_retried(queue: str) -> None:
    _retries.add(1, {"queue": queue})


def ganesha_restarted(ganesha: Ganesha) -> None:
    _ganesha_restarts.add(1, {"ganesha": str(ganesha.state_dir)})


def leader_elected(election: str) -> None:
    _leader_changes.add(1, {"election": election})
    _leading.add(1, {"election": election})


def leader_resigned(election: str) -> None:
    _leading.add(-1, {"election": election})


# ---- gauges computed on a scrape -----------------------------------------------------


def _gauge(name: str, description: str, observe: Callable[[], Iterator[Observation]]) -> None:
    def callback(_: CallbackOptions) -> Iterable[Observation]:
        try:
            return list(observe())
        except Exception:  # a broken source must not break the whole scrape
            log.exception("metrics: %s could not be observed", name)
            return []

    _meter.create_observable_gauge(name, callbacks=[callback], description=description)


def _states(collection: str) -> Callable[[], Iterator[Observation]]:
    def observe() -> Iterator[Observation]:
        for source in list(_record_counts):
            for state, count in source.record_states().get(collection, {}).items():
                yield Observation(count, {"state": state})

    return observe


def _queue_depths() -> Iterator[Observation]:
    for queue in list(_queues):
        yield Observation(queue.depth(), {"queue": queue.name})


def _ganesha_exports() -> Iterator[Observation]:
    for ganesha in list(_ganeshas):
        yield Observation(ganesha.export_count(), {"ganesha": str(ganesha.state_dir)})


def _pool(value: Callable[[PoolUsage], float]) -> Callable[[], Iterator[Observation]]:
    def observe() -> Iterator[Observation]:
        for usage in _pools.values():
            yield Observation(value(usage) * GIB, {"pool": usage.pool})

    return observe


for _collection, _what in (
    ("shares", "Shares"),
    ("snapshots", "Snapshots"),
    ("operations", "Operations (RUNNING, SUCCEEDED or FAILED)"),
):
    _gauge(f"sharemesh_{_collection}", f"{_what} by state", _states(_collection))
_gauge("sharemesh_workqueue_depth", "Keys waiting in a work queue", _queue_depths)
_gauge("sharemesh_ganesha_exports", "Exports a Ganesha serves", _ganesha_exports)
_gauge("sharemesh_pool_capacity_bytes", "A pool's size", _pool(lambda u: u.total_gib))
_gauge(
    "sharemesh_pool_used_bytes",
    "What a pool's data really takes",
    _pool(lambda u: u.total_gib - u.free_gib),
)
_gauge(
    "sharemesh_pool_provisioned_bytes",
    "The sizes of a pool's shares added up",
    _pool(lambda u: u.provisioned_gib),
)
_gauge(
    "sharemesh_pool_allocated_bytes",
    "What the ledger has handed to a pool's shares",
    _pool(lambda u: u.allocated_gib),
)


async def _read_pools() -> None:
    readers = [read for ref in list(_pool_readers) if (read := ref()) is not None]
    _pool_readers[:] = [ref for ref in _pool_readers if ref() is not None]
    if not readers:
        return
    try:
        found = await asyncio.wait_for(
            asyncio.gather(*(read() for read in readers)), _POOL_READ_SECONDS
        )
    except Exception as error:  # noqa: BLE001 - the last values stand; say why once
        log.warning("metrics: pools not read (%s); reporting the last values", error)
        return
    _pools.clear()
    _pools.update((usage.pool, usage) for usages in found for usage in usages)


# ---- the RPC interceptor -------------------------------------------------------------


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts each call and its latency by method and final code. It sits outside the
    error interceptor, so a raised error is seen as the code it was mapped to."""

    async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method.lstrip("/")
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _timed_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _timed_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


@contextlib.contextmanager
def _timing(method: str, context: grpc.aio.ServicerContext) -> Iterator[None]:
    started = time.perf_counter()
    code = grpc.StatusCode.UNKNOWN
    try:
        yield
        code = context.code() or grpc.StatusCode.OK
    except grpc.aio.AbortError:
        code = context.code() or grpc.StatusCode.UNKNOWN
        raise
    except asyncio.CancelledError:
        code = grpc.StatusCode.CANCELLED
        raise
    finally:
        labels = {"method": method, "code": _code_name(code)}
        _rpc_requests.add(1, labels)
        _rpc_seconds.record(time.perf_counter() - started, labels)


def _code_name(code: grpc.StatusCode | int) -> str:
    # context.code() is a StatusCode after abort(), but the int given to set_code().
    if isinstance(code, grpc.StatusCode):
        return code.name
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))


def _timed_unary(behavior, method):  # type: ignore[no-untyped-def]
    async def timed(request, context):  # type: ignore[no-untyped-def]
        with _timing(method, context):
            return await behavior(request, context)

    return timed


def _timed_stream(behavior, method):  # type: ignore[no-untyped-def]
    async def timed(request, context):  # type: ignore[no-untyped-def]
        with _timing(method, context):
            async for response in behavior(request, context):
                yield response

    return timed


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The interceptor when metrics are on (every call would pay for it otherwise)."""
    return [MetricsInterceptor()] if _registry is not None else []


# ---- the endpoint --------------------------------------------------------------------


def configure(service: str, config: TelemetryConfig) -> None:
    """Makes the instruments real, once per process, when `metrics_listen` is set."""
    global _registry
    if not config.metrics_listen or _registry is not None:
        return
    # Imported here: a process without metrics does not load the exporter.
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    registry = CollectorRegistry()
    ProcessCollector(registry=registry)  # CPU, memory and fds, read from /proc on a scrape
    reader = PrometheusMetricReader(
        disable_target_info=True, scope_info_enabled=False, registry=registry
    )
    resource = Resource.create({"service.name": service})
    otel.set_meter_provider(MeterProvider(metric_readers=[reader], resource=resource))
    _registry = registry


async def scrape() -> bytes:
    """The metrics now, as Prometheus text."""
    if _registry is None:
        return b""
    await _read_pools()
    return generate_latest(_registry)


async def start(service: str, config: TelemetryConfig) -> str:
    """Configures metrics and serves them on `metrics_listen` (port 0 picks one); returns
    the endpoint's URL, or '' when metrics are off."""
    global _server
    configure(service, config)
    if _registry is None:
        return ""
    if _server is None:
        host, port = split_host_port(config.metrics_listen)
        _server = await asyncio.start_server(_answer, host, port, limit=_REQUEST_LIMIT)
    bound = _server.sockets[0].getsockname()
    url = f"http://{config.metrics_listen.rpartition(':')[0]}:{bound[1]}/metrics"
    log.info("%s metrics at %s", service, url)
    return url


async def stop() -> None:
    global _server
    if _server is not None:
        _server.close()
        await _server.wait_closed()
        _server = None


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A minimal HTTP/1.1 answer: GET /metrics, then close (what a scraper needs)."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _REQUEST_SECONDS)
        method, _, rest = head.partition(b" ")
        path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
        if method != b"GET":
            status, body, kind = "405 Method Not Allowed", b"GET only\n", "text/plain"
        elif path != b"/metrics":
            status, body, kind = "404 Not Found", b"metrics are at /metrics\n", "text/plain"
        else:
            status, body, kind = "200 OK", await scrape(), CONTENT_TYPE_LATEST
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
        pass  # not a request we answer (cut short, too long, too slow): just close
    except ConnectionError:
        pass  # the scraper went away
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
