"""The life of every service process: etcd session, gRPC server, background work,
and an orderly stop (drain calls, cancel work, revoke the lease).

A process whose lease is lost exits non-zero: its registrations and locks are gone,
so it must start over with a fresh session (its supervisor restarts it). A process
that cannot *reach* etcd does not die for it: it starts once etcd answers, and its
background work rides out an outage (a lease that outlives it is still good)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aetcd

from . import logs, metrics, retry, server, telemetry, tls
from .config import MeshConfig
from .config import load as load_config
from .coordination import Session, Store, connect
from .errors import Unavailable
from .server import Binding, GrpcServer

log = logging.getLogger(__name__)


CANCEL_GRACE_SECONDS = 5.0


class LeaseLost(SystemExit):
    def __init__(self) -> None:
        super().__init__(3)


class StoppedBeforeStart(SystemExit):
    """Told to stop while still waiting for etcd: what an earlier incarnation left
    (its servers, mounts) was not let go of in order, so the exit is not clean and the
    supervisor releases it (`--release`)."""

    def __init__(self) -> None:
        super().__init__(4)


@dataclass(frozen=True)
class Context:
    """What a service gets to build itself from."""

    config: MeshConfig
    client: aetcd.Client
    store: Store
    session: Session
    stopping: asyncio.Event
    """Set when the process is told to stop in order (not when its lease is lost): only
    then may it let go of what must outlive a crash, such as a backend's Ganesha."""


class App(Protocol):
    @property
    def bindings(self) -> Sequence[Binding]:
        """The servicers the process serves."""
        ...

    async def run(self, endpoint: str) -> None:
        """Background work (registration, elections, reconcilers) until cancelled."""

    async def close(self) -> None:
        """Releases what `run` holds; called after the server has drained."""


async def serve(
    name: str,
    config: MeshConfig,
    listen: str,
    build: Callable[[Context], Awaitable[App]],
    stop: asyncio.Event,
) -> None:
    logs.configure(name, config.log_level)
    telemetry.configure(name, config.telemetry)
    await metrics.start(name, config.telemetry)  # before etcd: a waiting process is seen too
    tls.configure(config.tls)  # what its peer channels present
    etcd_identity = tls.etcd_identity(config.etcd, config.tls)
    async with connect(config.etcd.endpoint, identity=etcd_identity) as client:
        session = await _session(name, client, config.etcd.lease_ttl_seconds, stop)
        if session is None:
            log.info("%s stopped before etcd answered", name)
            raise StoppedBeforeStart()
        async with session:
            store = Store(client, config.etcd.prefix)
            app = await build(Context(config, client, store, session, stop))
            # A public service (the api) brings its own credentials; the others are
            # internal, served with mutual TLS when the config has an identity.
            public = hasattr(app, "credentials")
            server = GrpcServer(
                listen,
                app.bindings,
                getattr(app, "credentials", None),
                identity=None if public else tls.identity(config.tls),
                probe_listen=config.tls.probe_listen,
            )
            port = await server.start()
            host = listen.rpartition(":")[0]
            endpoint = f"{host}:{port}"
            log.info("%s serving on %s", name, endpoint)
            work = asyncio.create_task(_run(name, app, endpoint), name=f"{name}-run")
            lost = asyncio.create_task(session.done.wait())
            stopped = asyncio.create_task(stop.wait())
            ends = {work, lost, stopped}
            while ends:
                done, _ = await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
                if done != {work} or work.exception() is not None:
                    break
                ends.discard(work)  # background work finished cleanly: keep serving
            await server.stop()
            for task in (work, lost, stopped):
                task.cancel()
            # Bounded: work that waits on a dead etcd while it unwinds (a watch's
            # cancel, say) must not keep a process that lost its lease from exiting.
            _, stuck = await asyncio.wait({work, lost, stopped}, timeout=CANCEL_GRACE_SECONDS)
            if stuck:
                log.warning(
                    "%s: background work did not end within %.0fs of its cancel; leaving it",
                    name,
                    CANCEL_GRACE_SECONDS,
                )
            lost_lease = session.done.is_set() and not stop.is_set()
            try:
                await app.close()
            except Exception as error:
                if not lost_lease:
                    raise
                # etcd is likely away too: the lease is the reason to report.
                log.warning("%s: closing after the lost lease: %s", name, retry.reason(error))
            # A lost lease comes first: the work then fails for that reason only.
            if lost_lease:
                log.error("%s lost its etcd lease; exiting so it restarts clean", name)
                raise LeaseLost()
            if work.done() and not work.cancelled() and work.exception():
                raise work.exception()  # type: ignore[misc]
    telemetry.shutdown()
    await metrics.stop()
    log.info("%s stopped", name)


async def _session(
    name: str, client: aetcd.Client, ttl: int, stop: asyncio.Event
) -> Session | None:
    """A started session once etcd answers, waiting with backoff while it does not
    (a service started during an outage waits instead of exiting); None when told to
    stop first."""
    backoff = retry.Backoff()
    while not stop.is_set():
        session = Session(client, ttl=ttl)
        starting = asyncio.ensure_future(session.start())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting
            break
        try:
            return starting.result()
        except Unavailable as error:
            log.warning("%s waits for etcd: %s", name, error.message)
        await backoff.wait(stop)
    return None


async def _run(name: str, app: App, endpoint: str) -> None:
    """`app.run`, started again (with backoff) when a transient fault ends it: the
    services' loops ride out faults themselves; this is the net under them."""
    backoff = retry.Backoff()
    while True:
        try:
            await app.run(endpoint)
            return
        except Exception as error:
            if not retry.transient(error):
                raise
            log.warning("%s: background work stopped (%s); again", name, retry.reason(error))
        await backoff.wait()


def main(
    name: str,
    doc: str | None,
    build: Callable[[Context, argparse.Namespace], Awaitable[App]],
    listen_of: Callable[[MeshConfig, argparse.Namespace], str],
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    release: Callable[[MeshConfig, argparse.Namespace], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """The entry point of a service process: flags, config, then `serve` on uvloop.

    With `release`, `--release` lets go of the host resources that a previous
    incarnation left (its servers, mounts) without etcd, and exits: the launcher's stop
    runs it for a service that died, so a mesh stopped while etcd is dead leaves nothing."""
    parser = argparse.ArgumentParser(prog=f"sharemesh-{name}", description=doc)
    parser.add_argument("--config", help="mesh config (TOML, or the launcher's JSON)")
    parser.add_argument("--listen", help="HOST:PORT to serve on, instead of the config's")
    if release:
        parser.add_argument(
            "--release",
            action="store_true",
            help="stop the servers and release the mounts a previous run left, then exit "
            "(needs no etcd)",
        )
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args()
    config = load_config(args.config)
    if release and args.release:
        logs.configure(name, config.log_level)
        asyncio.run(release(config, args))
        return

    async def run(stop: asyncio.Event) -> None:
        await serve(
            name,
            config,
            args.listen or listen_of(config, args),
            lambda context: build(context, args),
            stop,
        )

    server.run(run)
