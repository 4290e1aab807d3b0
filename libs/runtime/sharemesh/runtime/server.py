"""Server bootstrap shared by every service: grpc.aio on uvloop, health, reflection,
one interceptor that authenticates public calls (bearer keys) or authorizes internal
ones (the caller's mesh certificate) and maps errors, and a graceful stop that lets
in-flight calls finish (one that outlasts it answers UNAVAILABLE)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import ipaddress
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from . import metrics, reflection, telemetry, tls
from .config import split_host_port
from .errors import (
    FailedPrecondition,
    ShareMeshError,
    Unavailable,
    Unimplemented,
    public_status,
    status_code_of,
    to_status,
)

log = logging.getLogger(__name__)


# Authenticates a call before its handler runs: raises (UNAUTHENTICATED) for an unknown
# caller, and returns whether the caller may read internal detail in errors (host paths,
# etcd keys), as an operator may and a tenant may not.
Authenticate = Callable[[grpc.aio.ServicerContext], bool]
# Raises (PERMISSION_DENIED) unless the caller may call the method (`/pkg.Service/Method`).
Authorize = Callable[[str, grpc.aio.ServicerContext], None]


@dataclass(frozen=True)
class Binding:
    """One servicer to serve: its full service name, the generated adder, the object,
    and for a public service, how its callers authenticate."""

    name: str
    add: Callable[[Any, grpc.aio.Server], None]
    servicer: Any
    authenticate: Authenticate | None = None


class _Calls:
    """The calls a server is running. A stop interrupts those that outlast its grace so
    that they answer UNAVAILABLE (try again), where gRPC's own cancel would answer
    CANCELLED and leave the caller unsure whether a retry is safe."""

    def __init__(self) -> None:
        self._running: set[asyncio.Task[Any]] = set()
        self.stopping = False

    @contextlib.contextmanager
    def tracked(self) -> Iterator[None]:
        task = asyncio.current_task()
        assert task is not None
        self._running.add(task)
        try:
            yield
        finally:
            self._running.discard(task)

    def interrupt(self) -> None:
        self.stopping = True
        for task in list(self._running):
            task.cancel()


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates each call to a public service, or authorizes each call to an
    internal one, before anything else runs (even for a method that is not implemented),
    and maps any exception a handler raises to a rich status through the one error
    table."""

    def __init__(
        self,
        authenticators: dict[str, Authenticate] | None = None,
        authorize: Authorize | None = None,
        calls: _Calls | None = None,
    ) -> None:
        self._authenticators = authenticators or {}
        self._authorize = authorize
        self._calls = calls or _Calls()

    async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        handler = await continuation(details)
        if handler is None:
            return None
        # details.method is `/package.Service/Method`.
        authenticate = self._authenticators.get(details.method.split("/")[1])
        if authenticate is None and self._authorize is not None:
            authenticate = functools.partial(_authorized, self._authorize, details.method)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _guard_unary(handler.unary_unary, details.method, authenticate, self._calls),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _guard_stream(handler.unary_stream, details.method, authenticate, self._calls),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _authorized(authorize: Authorize, method: str, context: grpc.aio.ServicerContext) -> bool:
    authorize(method, context)
    return True  # a mesh service may read internal detail in errors


async def _abort(
    context: grpc.aio.ServicerContext, error: Exception, method: str, detailed: bool
) -> None:
    if isinstance(error, NotImplementedError):
        # A generated method with no handler yet: an answer, not a fault to log.
        error = Unimplemented(f"{method.rsplit('/', 1)[-1]} is not implemented yet")
    elif not isinstance(error, ShareMeshError):
        log.exception("unhandled error in %s", method, exc_info=error)
    status = to_status(error)
    if not detailed:
        public = public_status(status)
        if public.message != status.message:
            log.info("%s answered %s: %s", method, status_code_of(error).name, status.message)
        status = public
    context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
    await context.abort(status_code_of(error), status.message)


_STOPPING = "the service is stopping; try again"


@contextlib.asynccontextmanager
async def _answering(context, method, authenticate, calls):  # type: ignore[no-untyped-def]
    """Runs a call: authenticated first, then any exception answered through the one
    error table; a cancel by this server's stop answers UNAVAILABLE."""
    detailed = authenticate is None
    with calls.tracked():
        try:
            if authenticate is not None:
                detailed = authenticate(context)
            yield
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError:
            if not calls.stopping:
                raise
            await _abort(context, Unavailable(_STOPPING), method, detailed)
        except Exception as error:
            await _abort(context, error, method, detailed)


def _guard_unary(behavior, method, authenticate, calls):  # type: ignore[no-untyped-def]
    async def guarded(request, context):  # type: ignore[no-untyped-def]
        async with _answering(context, method, authenticate, calls):
            return await behavior(request, context)

    return guarded


def _guard_stream(behavior, method, authenticate, calls):  # type: ignore[no-untyped-def]
    async def guarded(request, context):  # type: ignore[no-untyped-def]
        async with _answering(context, method, authenticate, calls):
            responses = behavior(request, context)
            if inspect.isasyncgen(responses):
                async for response in responses:
                    yield response
            else:  # it writes with `context.write` (grpc's health Watch does)
                await responses

    return guarded


def _loopback(listen: str) -> bool:
    host = split_host_port(listen)[0]
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve anywhere
        return False


class GrpcServer:
    """A grpc.aio server with health and reflection. `start()` returns the bound port,
    so tests can listen on port 0.

    `credentials` serve a public service (its own TLS, bearer keys); `identity` makes it
    an internal one: mutual TLS with the mesh CA, each call authorized by the caller's
    role (`tls.CALLERS`). With neither it is plaintext, which only loopback may be.
    `probe_listen` adds a plaintext port that answers health checks and nothing else."""

    def __init__(
        self,
        listen: str,
        bindings: Sequence[Binding],
        credentials: grpc.ServerCredentials | None = None,
        *,
        identity: tls.Identity | None = None,
        probe_listen: str = "",
    ) -> None:
        self._listen = listen
        self._bindings = list(bindings)
        if credentials is None and identity is not None:
            credentials = tls.server_credentials(identity)
        elif credentials is None and not _loopback(listen):
            raise FailedPrecondition(
                f"an internal service listens on {listen} beyond loopback without mutual "
                "TLS: configure tls.ca_file, tls.cert_file and tls.key_file"
            )
        self._credentials = credentials
        self._probe_listen = probe_listen
        self.health = HealthServicer()
        self._calls = _Calls()
        self._server = grpc.aio.server(
            interceptors=[
                *telemetry.server_interceptors(),
                *metrics.server_interceptors(),
                ErrorInterceptor(
                    {b.name: b.authenticate for b in bindings if b.authenticate},
                    tls.authorize if identity is not None else None,
                    self._calls,
                ),
            ],
            # gRPC shares ports by default: a second server on a taken port would
            # silently get half of its calls. Fail the bind instead.
            options=[("grpc.so_reuseport", 0)],
        )
        self._probe: grpc.aio.Server | None = None
        self.port = 0
        self.probe_port = 0

    async def start(self) -> int:
        for binding in self._bindings:
            binding.add(binding.servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        names = [b.name for b in self._bindings]
        reflection.enable(
            [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name], self._server
        )
        if self._credentials is not None:
            self.port = self._server.add_secure_port(self._listen, self._credentials)
        else:
            self.port = self._server.add_insecure_port(self._listen)
        if not self.port:
            raise OSError(f"cannot listen on {self._listen}")
        await self._server.start()
        if self._probe_listen:
            # A server of its own, so that nothing but health is ever plaintext; its
            # calls are counted like any other.
            self._probe = grpc.aio.server(
                interceptors=[*telemetry.server_interceptors(), *metrics.server_interceptors()],
                options=[("grpc.so_reuseport", 0)],
            )
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._probe)
            self.probe_port = self._probe.add_insecure_port(self._probe_listen)
            if not self.probe_port:
                raise OSError(f"cannot listen on {self._probe_listen}")
            await self._probe.start()
        for name in ["", *names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        """Answers NOT_SERVING, refuses new calls, and lets in-flight ones finish; those
        still running near the end of `grace` answer UNAVAILABLE."""
        await self.health.enter_graceful_shutdown()
        stopped = asyncio.ensure_future(self._server.stop(grace))
        done, _ = await asyncio.wait({stopped}, timeout=grace * 0.8)
        if not done:
            self._calls.interrupt()
        await stopped
        if self._probe is not None:
            await self._probe.stop(0)


def run(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Runs `main(stop)` on uvloop; SIGTERM and SIGINT set `stop` so main can shut down
    in order (drain calls, revoke leases) instead of dying mid-write."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # The launcher starts services with these blocked, so that one sent while the
        # process was still importing waits for the handlers above.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
        await main(stop)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        r.run(runner())
