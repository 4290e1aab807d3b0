"""Bearer-key authentication and authorization: who is calling, with which role, in
which project, and whether that role may call the method at all.

Keys come from two places. The config file's (`[[api.tokens]]`, the launcher's admin
key file) bootstrap a mesh: admin or member keys, compared in constant time. Keys made
through `ProjectService` are `smk_{id}_{secret}`: the id finds the record in memory in
one lookup, and only a salted HMAC-SHA256 of the secret is stored. The secret is 256
random bits, so no guess can find it from the hash; a slow hash (scrypt) guards weak
passwords, which these are not, and would cost milliseconds of CPU on every call.

Every api process keeps the key records in memory through an etcd watch, so a revoked
key is refused by every process as soon as the watch delivers the delete (milliseconds),
and authenticating costs no etcd round trip."""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import inspect
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from sharemesh.runtime import names
from sharemesh.runtime.config import ApiConfig
from sharemesh.runtime.controllers import Informer
from sharemesh.runtime.coordination import Store, Versioned
from sharemesh.runtime.errors import NotFound, PermissionDenied, Unauthenticated, Unavailable
from sharemesh.state.v1 import auth_pb2
from sharemesh.v1 import project_pb2

ApiKey = project_pb2.ApiKey
TOKEN_PREFIX = "smk"


class Role(enum.IntEnum):
    """What a key may do; each role may do all that the ones below it may."""

    READER = 1
    MEMBER = 2
    ADMIN = 3


_ROLES = {ApiKey.ADMIN: Role.ADMIN, ApiKey.MEMBER: Role.MEMBER, ApiKey.READER: Role.READER}

_READ, _WRITE, _ADMIN = Role.READER, Role.MEMBER, Role.ADMIN
# The role each public method needs, by full method name. A method missing here is
# refused to everyone (see `Authenticator.guard`), and a unit test checks that every
# method of every public service is listed, so a new method cannot slip through.
REQUIRED: dict[str, Role] = {
    "sharemesh.v1.ShareService.ListShares": _READ,
    "sharemesh.v1.ShareService.GetShare": _READ,
    "sharemesh.v1.ShareService.CreateShare": _WRITE,
    "sharemesh.v1.ShareService.UpdateShare": _WRITE,
    "sharemesh.v1.ShareService.DeleteShare": _WRITE,
    "sharemesh.v1.ShareService.ResetShareState": _ADMIN,
    "sharemesh.v1.ShareService.ResizeShare": _WRITE,
    "sharemesh.v1.ShareService.ListAccessRules": _READ,
    "sharemesh.v1.ShareService.GetAccessRule": _READ,
    "sharemesh.v1.ShareService.CreateAccessRule": _WRITE,
    "sharemesh.v1.ShareService.UpdateAccessRule": _WRITE,
    "sharemesh.v1.ShareService.DeleteAccessRule": _WRITE,
    "sharemesh.v1.ShareService.ListSnapshots": _READ,
    "sharemesh.v1.ShareService.GetSnapshot": _READ,
    "sharemesh.v1.ShareService.CreateSnapshot": _WRITE,
    "sharemesh.v1.ShareService.DeleteSnapshot": _WRITE,
    "sharemesh.v1.ShareService.RevertShare": _WRITE,
    "sharemesh.v1.ShareTypeService.ListShareTypes": _READ,
    "sharemesh.v1.ShareTypeService.GetShareType": _READ,
    "sharemesh.v1.ShareTypeService.CreateShareType": _ADMIN,
    "sharemesh.v1.ShareTypeService.DeleteShareType": _ADMIN,
    "sharemesh.v1.ShareNetworkService.ListShareNetworks": _READ,
    "sharemesh.v1.ShareNetworkService.GetShareNetwork": _READ,
    "sharemesh.v1.ShareNetworkService.CreateShareNetwork": _WRITE,
    "sharemesh.v1.ShareNetworkService.DeleteShareNetwork": _WRITE,
    "sharemesh.v1.ShareNetworkService.ListAttachments": _READ,
    # Plugging a host's namespaces in is the hypervisor's (an operator's) job.
    "sharemesh.v1.ShareNetworkService.CreateAttachment": _ADMIN,
    "sharemesh.v1.ShareNetworkService.DeleteAttachment": _ADMIN,
    "sharemesh.v1.PoolService.ListPools": _ADMIN,
    # A project's own keys see their project (and the CLI learns a key's project so).
    "sharemesh.v1.ProjectService.ListProjects": _READ,
    "sharemesh.v1.ProjectService.GetProject": _READ,
    "sharemesh.v1.ProjectService.CreateProject": _ADMIN,
    "sharemesh.v1.ProjectService.DeleteProject": _ADMIN,
    "sharemesh.v1.ProjectService.ListApiKeys": _ADMIN,
    "sharemesh.v1.ProjectService.GetApiKey": _ADMIN,
    "sharemesh.v1.ProjectService.CreateApiKey": _ADMIN,
    "sharemesh.v1.ProjectService.DeleteApiKey": _ADMIN,
    "sharemesh.v1.ProjectService.GetQuota": _READ,
    "sharemesh.v1.ProjectService.UpdateQuota": _ADMIN,
    "google.longrunning.Operations.ListOperations": _READ,
    "google.longrunning.Operations.GetOperation": _READ,
    "google.longrunning.Operations.WaitOperation": _READ,
    "google.longrunning.Operations.DeleteOperation": _WRITE,
    "google.longrunning.Operations.CancelOperation": _WRITE,
}


@dataclass(frozen=True)
class Caller:
    project: str
    role: Role

    @property
    def admin(self) -> bool:
        return self.role is Role.ADMIN

    def check_role(self, method: str) -> None:
        required = REQUIRED.get(method)
        if required is None:
            raise PermissionDenied(f"{method} has no role assigned; nobody may call it")
        if self.role < required:
            verb = "needs an admin key" if required is Role.ADMIN else "changes resources"
            raise PermissionDenied(
                f"{method.rsplit('.', 1)[-1]} {verb}; this key's role is {self.role.name.lower()}"
            )

    def check_parent(self, project: str) -> None:
        """Creating or listing in another project is refused outright."""
        if not self.admin and project != self.project:
            raise PermissionDenied(f"this key may not act in project {project!r}")

    def check_admin(self) -> None:
        if not self.admin:
            raise PermissionDenied("this method needs an admin key")

    def check_resource(self, name: str) -> None:
        """Another project's resource answers as if it did not exist."""
        if not self.admin and names.project_of(name) != self.project:
            raise NotFound(f"{name} not found")


def hash_secret(salt: bytes, secret: str) -> bytes:
    return hmac.new(salt, secret.encode(), hashlib.sha256).digest()


def new_key() -> tuple[str, str, bytes, bytes]:
    """A new key: (id, token, salt, hash of the token's secret)."""
    # Ids are resource ids (a letter first); the secret is 256 random bits.
    key_id, secret = f"k{secrets.token_hex(8)}", secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    return key_id, f"{TOKEN_PREFIX}_{key_id}_{secret}", salt, hash_secret(salt, secret)


def key_record_key(store: Store, key_id: str) -> str:
    """Key records live by id (not by name), so the token's id finds its record."""
    return f"{store.root}apiKeys/{key_id}"


class Authenticator:
    def __init__(self, config: ApiConfig, store: Store) -> None:
        self._store = store
        self._static: dict[str, Caller] = {
            t.token: Caller(t.project, Role.ADMIN if t.admin else Role.MEMBER)
            for t in config.tokens
        }
        if config.admin_token_file:
            token = Path(config.admin_token_file).read_text().strip()
            self._static[token] = Caller("", Role.ADMIN)
        self.keys = Informer(store, f"{store.root}apiKeys/", auth_pb2.ApiKeyRecord, name="api keys")

    async def run(self) -> None:
        """Keeps the key records current (a revoked key vanishes from memory)."""
        await self.keys.run()

    def key(self, key_id: str) -> Versioned[auth_pb2.ApiKeyRecord] | None:
        return self.keys.get(key_record_key(self._store, key_id))

    def authenticate(self, context: grpc.aio.ServicerContext) -> bool:
        """The server's check before every public call (see `server.Binding`): raises
        UNAUTHENTICATED for an unknown key; admins may read internal detail in errors."""
        return self.caller(context).admin

    def caller(self, context: grpc.aio.ServicerContext) -> Caller:
        header = dict(context.invocation_metadata() or ()).get("authorization", "")
        scheme, _, key = str(header).partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthenticated("missing 'authorization: Bearer <key>' metadata")
        if key.startswith(f"{TOKEN_PREFIX}_"):
            return self._issued(key)
        for known, caller in self._static.items():
            if hmac.compare_digest(known, key):
                return caller
        raise Unauthenticated("unknown key")

    def _issued(self, token: str) -> Caller:
        _, key_id, secret = (token.split("_", 2) + ["", ""])[:3]
        if not self.keys.synced.is_set():
            raise Unavailable("the api is loading its keys; retry in a moment")
        found = self.key(key_id) if key_id.isalnum() else None
        if found is None or not hmac.compare_digest(
            found.value.secret_hash, hash_secret(found.value.salt, secret)
        ):
            raise Unauthenticated("unknown or revoked key")
        return Caller(found.value.project, _ROLES[found.value.api_key.role])

    def guard(self, servicer: Any, service: ServiceDescriptor) -> Any:
        """`servicer` with each of `service`'s methods checking the caller's role
        (`REQUIRED`) before it runs. It runs inside the server's interceptor, after
        `authenticate`, so a refusal maps through the one error table."""
        return _Guarded(servicer, service, self)


class _Guarded:
    def __init__(self, servicer: Any, service: ServiceDescriptor, auth: Authenticator) -> None:
        self._servicer = servicer
        self._methods = {m.name: f"{service.full_name}.{m.name}" for m in service.methods}
        self._auth = auth

    def __getattr__(self, name: str) -> Any:
        behavior = getattr(self._servicer, name)
        method = self._methods.get(name)
        if method is None:
            return behavior
        return _checked(behavior, method, self._auth.caller)


def _checked(
    behavior: Callable[..., Any], method: str, caller: Callable[[grpc.aio.ServicerContext], Caller]
) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        @functools.wraps(behavior)
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            caller(context).check_role(method)
            async for response in behavior(request, context):
                yield response

        return stream

    @functools.wraps(behavior)
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        caller(context).check_role(method)
        return await behavior(request, context)

    return unary
