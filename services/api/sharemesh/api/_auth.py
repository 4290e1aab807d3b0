"""Bearer-key authentication: who is calling, and which project they may act in."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

import grpc

from sharemesh.runtime import names
from sharemesh.runtime.config import ApiConfig
from sharemesh.runtime.errors import NotFound, PermissionDenied, Unauthenticated


@dataclass(frozen=True)
class Caller:
    project: str
    admin: bool

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


class Authenticator:
    def __init__(self, config: ApiConfig) -> None:
        self._keys: dict[str, Caller] = {t.token: Caller(t.project, t.admin) for t in config.tokens}
        if config.admin_token_file:
            token = Path(config.admin_token_file).read_text().strip()
            self._keys[token] = Caller("", True)

    def authenticate(self, context: grpc.aio.ServicerContext) -> bool:
        """The server's check before every public call (see `server.Binding`): raises
        UNAUTHENTICATED for an unknown key; admins may read internal detail in errors."""
        return self.caller(context).admin

    def caller(self, context: grpc.aio.ServicerContext) -> Caller:
        header = dict(context.invocation_metadata() or ()).get("authorization", "")
        scheme, _, key = str(header).partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise Unauthenticated("missing 'authorization: Bearer <key>' metadata")
        for known, caller in self._keys.items():
            if hmac.compare_digest(known, key.strip()):
                return caller
        raise Unauthenticated("unknown key")
