"""Server bootstrap shared by every service: grpc.aio on uvloop, health, reflection,
one interceptor that authenticates public calls and maps errors, and a graceful stop
that lets in-flight calls finish."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from . import metrics, telemetry
from .errors import ShareMeshError, Unimplemented, public_status, status_code_of, to_status

log = logging.getLogger(__name__)


# Authenticates a call before its handler runs: raises (UNAUTHENTICATED) for an unknown
# caller, and returns whether the caller may read internal detail in errors (host paths,
# etcd keys), as an operator may and a tenant may not.
Authenticate = Callable[[grpc.aio.ServicerContext], bool]


@dataclass(frozen=True)
class Binding:
    """One servicer to serve: its full service name, the generated adder, the object,
    and for a public service, how its callers authenticate."""

    name: str
    add: Callable[[Any, grpc.aio.Server], None]
    servicer: Any
    authenticate: Authenticate | None = None


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates each call to a public service before anything else runs (even for a
    method that is not implemented), and maps any exception a handler raises to a rich
    status through the one error table."""

    def __init__(self, authenticators: dict[str, Authenticate] | None = None) -> None:
        self._authenticators = authenticators or {}

    async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        handler = await continuation(details)
        if handler is None:
            return None
        # details.method is `/package.Service/Method`.
        authenticate = self._authenticators.get(details.method.split("/")[1])
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _guard_unary(handler.unary_unary, details.method, authenticate),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _guard_stream(handler.unary_stream, details.method, authenticate),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


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


def _guard_unary(behavior, method, authenticate):  # type: ignore[no-untyped-def]
    async def guarded(request, context):  # type: ignore[no-untyped-def]
        detailed = authenticate is None
        try:
            if authenticate is not None:
                detailed = authenticate(context)
            return await behavior(request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as error:
            await _abort(context, error, method, detailed)

    return guarded


def _guard_stream(behavior, method, authenticate):  # type: ignore[no-untyped-def]
    async def guarded(request, context):  # type: ignore[no-untyped-def]
        detailed = authenticate is None
        try:
            if authenticate is not None:
                detailed = authenticate(context)
            async for response in behavior(request, context):
                yield response
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as error:
            await _abort(context, error, method, detailed)

    return guarded


class GrpcServer:
    """A grpc.aio server with health and reflection. `start()` returns the bound port,
    so tests can listen on port 0."""

    def __init__(
        self,
        listen: str,
        bindings: Sequence[Binding],
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self._listen = listen
        self._bindings = list(bindings)
        self._credentials = credentials
        self.health = HealthServicer()
        self._server = grpc.aio.server(
            interceptors=[
                *telemetry.server_interceptors(),
                *metrics.server_interceptors(),
                ErrorInterceptor({b.name: b.authenticate for b in bindings if b.authenticate}),
            ],
            # gRPC shares ports by default: a second server on a taken port would
            # silently get half of its calls. Fail the bind instead.
            options=[("grpc.so_reuseport", 0)],
        )
        self.port = 0

    async def start(self) -> int:
        for binding in self._bindings:
            binding.add(binding.servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        names = [b.name for b in self._bindings]
        reflection.enable_server_reflection(
            [
                *names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self._server,
        )
        if self._credentials is not None:
            self.port = self._server.add_secure_port(self._listen, self._credentials)
        else:
            self.port = self._server.add_insecure_port(self._listen)
        if not self.port:
            raise OSError(f"cannot listen on {self._listen}")
        await self._server.start()
        for name in ["", *names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        """Answers NOT_SERVING, refuses new calls, and lets in-flight ones finish."""
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace)


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
