"""`sharemesh.v1.ProjectService`: admins create projects, issue and revoke their API
keys, and set their quota limits. Everything here lives in etcd only, so every method
is synchronous. Who may call what is `_auth.REQUIRED`; each method here only scopes the
caller to the resource."""

from __future__ import annotations

import asyncio
import base64
import logging

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from sharemesh.runtime import names, operations, quota, validation
from sharemesh.runtime.config import QuotaConfig
from sharemesh.runtime.coordination import Store, Versioned
from sharemesh.runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from sharemesh.state.v1 import auth_pb2, records_pb2
from sharemesh.v1 import project_pb2, project_service_pb2
from sharemesh.v1 import project_service_pb2_grpc as grpc_pb

from . import _paging
from ._auth import Authenticator, key_record_key, new_key
from ._cache import WatchCache

Project = project_pb2.Project
ApiKey = project_pb2.ApiKey
API_KEY = names.Pattern("projects/{project}/apiKeys/{api_key}")
QUOTA = names.Pattern("projects/{project}/quota")
log = logging.getLogger(__name__)
_SEEN_SECONDS = 5.0


def _project_view(found: Versioned[Project]) -> Project:
    shown = Project()
    shown.CopyFrom(found.value)
    shown.etag = str(found.mod_revision)
    return shown


def _limit_paths(mask: list[str]) -> list[str]:
    """The limits an update mask names (`limits` is all of them)."""
    if not mask or mask == ["limits"]:
        return list(quota.AMOUNTS)
    chosen = []
    for path in mask:
        head, _, amount = path.partition(".")
        if head != "limits" or amount not in quota.AMOUNTS:
            raise InvalidArgument(
                "update_mask", f"{path!r} is not a limit: use limits or limits.<amount>"
            )
        chosen.append(amount)
    return chosen


class Projects(grpc_pb.ProjectServiceServicer):
    def __init__(
        self, store: Store, auth: Authenticator, cache: WatchCache, quotas: QuotaConfig
    ) -> None:
        self._store = store
        self._auth = auth
        self._cache = cache
        self._quotas = quotas

    async def _project(self, name: str, field: str) -> Versioned[Project]:
        names.PROJECT.parse(field, name)
        found = await self._store.get(self._store.key_of(name), Project)
        if found is None:
            raise NotFound(f"{name} not found")
        return found

    async def _holds(self, project: str, collection: str, record_type: type[Message]) -> bool:
        prefix = self._store.prefix_of(project, collection)
        return bool((await self._store.list(prefix, record_type, limit=1))[0])

    async def ListProjects(  # noqa: N802
        self, request: project_service_pb2.ListProjectsRequest, context: grpc.aio.ServicerContext
    ) -> project_service_pb2.ListProjectsResponse:
        validation.check_request(request)
        caller = self._auth.caller(context)
        if not caller.admin:  # a project's key sees its own project, record or not
            own = names.PROJECT.format(project=caller.project)
            found = await self._store.get(self._store.key_of(own), Project)
            shown = _project_view(found) if found else Project(name=own)
            return project_service_pb2.ListProjectsResponse(projects=[shown])
        items, token = await _paging.page(
            self._store,
            self._store.prefix_of("", "projects"),
            Project,
            request.page_token,
            request.page_size,
            cache=self._cache,
        )
        return project_service_pb2.ListProjectsResponse(
            projects=[_project_view(i) for i in items], next_page_token=token
        )

    async def GetProject(  # noqa: N802
        self, request: project_service_pb2.GetProjectRequest, context: grpc.aio.ServicerContext
    ) -> Project:
        validation.check_request(request)
        names.PROJECT.parse("name", request.name)
        self._auth.caller(context).check_resource(request.name)
        return _project_view(await self._project(request.name, "name"))

    async def CreateProject(  # noqa: N802
        self, request: project_service_pb2.CreateProjectRequest, context: grpc.aio.ServicerContext
    ) -> Project:
        validation.check_request(request, "project")
        names.check_id("project_id", request.project_id)
        record = Project()
        record.CopyFrom(request.project)
        record.name = names.PROJECT.format(project=request.project_id)
        record.create_time.CopyFrom(operations.now())
        key = self._store.key_of(record.name)
        try:
            revision = await self._store.create(key, record)
        except AlreadyExists:
            existing = await self._store.get(key, Project)
            same = (
                existing is not None
                and request.request_id
                and existing.value.description == record.description
            )
            if not same or existing is None:
                raise AlreadyExists(f"{record.name} already exists") from None
            return _project_view(existing)
        record.etag = str(revision)
        return record

    async def DeleteProject(  # noqa: N802
        self, request: project_service_pb2.DeleteProjectRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        validation.check_request(request)
        found = await self._project(request.name, "name")
        project = names.PROJECT.parse("name", request.name)["project"]
        held = (
            ("shares", "shares", records_pb2.ShareRecord),
            ("shareNetworks", "share networks", records_pb2.ShareNetworkRecord),
        )
        for collection, what, record_type in held:
            if await self._holds(request.name, collection, record_type):
                raise FailedPrecondition(
                    f"{request.name} still holds {what}; delete them first",
                    reason="PROJECT_NOT_EMPTY",
                )
        # The project, its keys (revoked with it) and its limits go in one transaction.
        txn = self._store.txn().delete(found.key, found.mod_revision)
        keys = self._keys_of(project)
        for key in keys:
            txn.delete(key.key, key.mod_revision)
        limits = await quota.read_limits(self._store, project)
        if limits is not None:
            txn.delete(limits.key, limits.mod_revision)
        revision = await txn.commit()
        if keys:  # only a change of the keys reaches the keys' watch
            await self._seen(revision)
        return empty_pb2.Empty()

    async def _seen(self, revision: int) -> None:
        """Returns once this process's copy of the keys holds the change at `revision`,
        so the caller's next call here sees it (other api processes see it within
        their watch's delay, milliseconds)."""
        deadline = asyncio.get_running_loop().time() + _SEEN_SECONDS
        while self._auth.keys.revision < revision:
            if asyncio.get_running_loop().time() > deadline:
                # The change is made: failing the call now would tell the caller it was
                # not. The watch catches up on its own.
                log.warning("the keys' watch is behind revision %d; answering anyway", revision)
                return
            await asyncio.sleep(0.005)

    def _keys_of(self, project: str) -> list[Versioned[auth_pb2.ApiKeyRecord]]:
        """The project's key records, from the api's in-memory copy, in name order."""
        found = [k for k in self._auth.keys.items() if k.value.project == project]
        return sorted(found, key=lambda k: k.value.api_key.name)

    async def ListApiKeys(  # noqa: N802
        self, request: project_service_pb2.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> project_service_pb2.ListApiKeysResponse:
        validation.check_request(request)
        project = names.PROJECT.parse("parent", request.parent)["project"]
        size = _paging.page_size(request.page_size)
        try:
            after = base64.urlsafe_b64decode(request.page_token.encode()).decode()
        except (ValueError, UnicodeDecodeError):
            raise InvalidArgument("page_token", "is not a token this list issued") from None
        found = [k for k in self._keys_of(project) if k.value.api_key.name > after]
        page = found[:size]
        token = ""
        if len(found) > size:
            token = base64.urlsafe_b64encode(page[-1].value.api_key.name.encode()).decode()
        return project_service_pb2.ListApiKeysResponse(
            api_keys=[k.value.api_key for k in page], next_page_token=token
        )

    def _key(self, name: str) -> Versioned[auth_pb2.ApiKeyRecord]:
        key_id = API_KEY.parse("name", name)["api_key"]
        found = self._auth.key(key_id)
        if found is None or found.value.api_key.name != name:
            raise NotFound(f"{name} not found")
        return found

    async def GetApiKey(  # noqa: N802
        self, request: project_service_pb2.GetApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> ApiKey:
        validation.check_request(request)
        return self._key(request.name).value.api_key

    async def CreateApiKey(  # noqa: N802
        self, request: project_service_pb2.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> ApiKey:
        validation.check_request(request, "api_key")
        project = names.PROJECT.parse("parent", request.parent)["project"]
        key_id, token, salt, secret_hash = new_key()
        record = auth_pb2.ApiKeyRecord(project=project, salt=salt, secret_hash=secret_hash)
        record.api_key.CopyFrom(request.api_key)
        record.api_key.name = API_KEY.format(project=project, api_key=key_id)
        record.api_key.create_time.CopyFrom(operations.now())
        # The project is compared, so a key cannot outlive a racing DeleteProject.
        found = await self._project(request.parent, "parent")
        txn = self._store.txn().create(key_record_key(self._store, key_id), record)
        await self._seen(await txn.check(found.key, found.mod_revision).commit())
        shown = ApiKey()
        shown.CopyFrom(record.api_key)
        shown.secret = token
        return shown

    async def DeleteApiKey(  # noqa: N802
        self, request: project_service_pb2.DeleteApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        validation.check_request(request)
        key_id = API_KEY.parse("name", request.name)["api_key"]
        found = await self._store.get(key_record_key(self._store, key_id), auth_pb2.ApiKeyRecord)
        if found is None or found.value.api_key.name != request.name:
            raise NotFound(f"{request.name} not found")
        await self._seen(await self._store.txn().delete(found.key, found.mod_revision).commit())
        return empty_pb2.Empty()

    async def _quota(self, project: str) -> project_pb2.Quota:
        return project_pb2.Quota(
            name=QUOTA.format(project=project),
            limits=await quota.limits(self._store, self._quotas, project),
            usage=await quota.usage(self._store, project),
        )

    async def GetQuota(  # noqa: N802
        self, request: project_service_pb2.GetQuotaRequest, context: grpc.aio.ServicerContext
    ) -> project_pb2.Quota:
        validation.check_request(request)
        project = QUOTA.parse("name", request.name)["project"]
        self._auth.caller(context).check_resource(request.name)
        return await self._quota(project)

    async def UpdateQuota(  # noqa: N802
        self, request: project_service_pb2.UpdateQuotaRequest, context: grpc.aio.ServicerContext
    ) -> project_pb2.Quota:
        validation.check_request(request, "quota", update=True)
        project = QUOTA.parse("quota.name", request.quota.name)["project"]
        amounts = _limit_paths(list(request.update_mask.paths))
        for amount in amounts:
            if getattr(request.quota.limits, amount) < 0:
                raise InvalidArgument(f"quota.limits.{amount}", "must be 0 (no limit) or more")
        found = await quota.read_limits(self._store, project)
        record = auth_pb2.QuotaLimitsRecord()
        if found is not None:
            record.CopyFrom(found.value)
        for amount in amounts:
            setattr(record, amount, getattr(request.quota.limits, amount))
        key = quota.limits_key(self._store.root, project)
        txn = self._store.txn().put(key, record, found.mod_revision if found else None)
        if found is None:
            txn.check(key, 0)
        await txn.commit()  # a racing update fails this one (ABORTED): the caller retries
        return await self._quota(project)
