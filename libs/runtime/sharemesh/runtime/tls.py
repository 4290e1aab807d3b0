"""Mutual TLS inside the mesh: credentials from `[tls]` files, who a caller is, and the
one table of which roles may call which internal method.

Servers re-read their certificate, key and CA when the files change (on the next
handshake), and clients when they next open a channel, so a certificate is rotated by
replacing its files: no process restarts (README: Certificates)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from .config import EtcdConfig, TlsConfig
from .errors import InvalidArgument, PermissionDenied

log = logging.getLogger(__name__)

# Not imported from `certs`: services never load `cryptography` (~9 MB each), only what
# issues certificates does.
TRUST_DOMAIN = "sharemesh"
_SPIFFE_PREFIX = f"spiffe://{TRUST_DOMAIN}/service/"

# Who may call each internal method, by role (the `{role}` of the caller's SPIFFE ID).
# A method that is not here is refused to everyone: a new RPC is closed until listed.
# `operator` is the launcher's and an administrator's own identity.
CALLERS: dict[str, frozenset[str]] = {
    # The api nudges a new share to placement; a driver-host, one it gave back.
    "/sharemesh.scheduler.v1.SchedulerService/PlaceShare": frozenset(
        {"api", "driver-host", "operator"}
    ),
    # The api nudges a changed share; the scheduler, one it placed.
    "/sharemesh.driver.v1.DriverService/SyncShare": frozenset({"api", "scheduler", "operator"}),
    "/sharemesh.driver.v1.DriverService/GetBackend": frozenset({"api", "scheduler", "operator"}),
    # The api nudges a changed network; a driver-host, one a share of its joined.
    "/sharemesh.gateway.v1.GatewayService/SyncShareNetwork": frozenset(
        {"api", "driver-host", "operator"}
    ),
    "/sharemesh.gateway.v1.GatewayService/SyncAttachment": frozenset(
        {"api", "driver-host", "operator"}
    ),
}
# Any mesh identity may ask these (the handshake already proved one).
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
)


@dataclass(frozen=True)
class Identity:
    """The files of one TLS identity: a CA bundle, a certificate and its key."""

    ca_file: str
    cert_file: str
    key_file: str

    def read(self) -> tuple[bytes, bytes, bytes]:
        return (
            Path(self.ca_file).read_bytes(),
            Path(self.cert_file).read_bytes(),
            Path(self.key_file).read_bytes(),
        )

    def signature(self) -> tuple[tuple[int, int, int], ...]:
        """What changes when any of the files is replaced (cheap: three stats)."""
        out = []
        for name in (self.ca_file, self.cert_file, self.key_file):
            st = os.stat(name)
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(out)


def identity(config: TlsConfig) -> Identity | None:
    """The process's identity, None for plaintext; half a configuration is an error."""
    files = {"ca_file": config.ca_file, "cert_file": config.cert_file, "key_file": config.key_file}
    given = [name for name, value in files.items() if value]
    if not given:
        return None
    for name, value in files.items():
        if not value:
            raise InvalidArgument(f"tls.{name}", f"required with tls.{given[0]}")
    return Identity(**files)


def etcd_identity(etcd: EtcdConfig, config: TlsConfig) -> Identity | None:
    """The etcd client's identity: `[etcd]`'s files, each defaulting to `[tls]`'s."""
    return identity(
        TlsConfig(
            ca_file=etcd.ca_file or config.ca_file,
            cert_file=etcd.cert_file or config.cert_file,
            key_file=etcd.key_file or config.key_file,
        )
    )


# The identity this process presents to its peers (set by `configure`), and the etcd
# clients known by endpoint (the launcher registers the etcd it runs, so code in its
# process, such as tests, reaches it with a plain `connect(endpoint)`).
_own: Identity | None = None
_etcd_clients: dict[str, Identity] = {}


def configure(config: TlsConfig) -> None:
    global _own
    _own = identity(config)


def own() -> Identity | None:
    return _own


def register_etcd_client(endpoint: str, ident: Identity) -> None:
    _etcd_clients[endpoint.rstrip("/")] = ident


def etcd_client_for(endpoint: str) -> Identity | None:
    return _etcd_clients.get(endpoint.rstrip("/"), _own)


def server_credentials(ident: Identity) -> grpc.ServerCredentials:
    """Requires a client certificate from the CA; the files are re-read on the first
    handshake after any of them changed."""
    seen = [ident.signature()]

    def configuration() -> grpc.ServerCertificateConfiguration:
        ca, cert, key = ident.read()
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC before each handshake; None keeps the current one.
        try:
            now = ident.signature()
            if now == seen[0]:
                return None
            fresh = configuration()
        except OSError as error:  # mid-replacement: keep serving with what we have
            log.warning("TLS files unreadable, keeping the loaded ones: %s", error)
            return None
        seen[0] = now
        log.info("TLS certificate reloaded from %s", ident.cert_file)
        return fresh

    return grpc.dynamic_ssl_server_credentials(
        configuration(), fetch, require_client_authentication=True
    )


class ChannelCredentials:
    """Client credentials of an identity, read again once its files change: a channel
    opened after a rotation presents the new certificate."""

    def __init__(self, ident: Identity) -> None:
        self._ident = ident
        self._signature: object = None
        self._credentials: grpc.ChannelCredentials | None = None

    def current(self) -> tuple[object, grpc.ChannelCredentials]:
        """(a token that changes with the files, the credentials)."""
        signature: object
        try:
            signature = self._ident.signature()
        except OSError:
            signature = self._signature  # mid-replacement: the last good ones
        if self._credentials is None or signature != self._signature:
            ca, cert, key = self._ident.read()
            self._credentials = grpc.ssl_channel_credentials(ca, key, cert)
            self._signature = signature
        return self._signature, self._credentials


def caller_role(context: grpc.aio.ServicerContext) -> str | None:
    """The role in the caller's certificate, None without a mesh identity."""
    auth = context.auth_context()
    for uri in auth.get("peer_spiffe_id") or auth.get("peer_uri") or []:
        text = uri.decode(errors="replace")
        if text.startswith(_SPIFFE_PREFIX):
            return text[len(_SPIFFE_PREFIX) :]
    return None


def authorize(method: str, context: grpc.aio.ServicerContext) -> None:
    """Raises PERMISSION_DENIED unless the caller's role may call `method`."""
    if method.split("/")[1] in OPEN_SERVICES:
        return
    role = caller_role(context)
    if role is None or role not in CALLERS.get(method, frozenset()):
        raise PermissionDenied(
            f"{role or 'a caller without a mesh identity'} may not call {method}"
        )
