"""`sharemesh.v1.ShareTypeService`: admins define share types (extra specs the scheduler
matches against pool capabilities); everyone may read them. The default type exists
without a record and asks for nothing."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2

from sharemesh.runtime import names, operations, validation
from sharemesh.runtime.coordination import Store
from sharemesh.runtime.errors import AlreadyExists, FailedPrecondition, NotFound
from sharemesh.v1 import share_type_pb2, share_type_service_pb2, share_type_service_pb2_grpc

from . import _paging
from ._auth import Authenticator
from ._cache import WatchCache

ShareType = share_type_pb2.ShareType
DEFAULT = "shareTypes/default"


def default_type() -> ShareType:
    return ShareType(name=DEFAULT, description="The type of shares that name none.")


async def share_type(store: Store, name: str, field: str) -> ShareType:
    """The named type, or NOT_FOUND naming the field that referred to it."""
    names.SHARE_TYPE.parse(field, name)
    found = await store.get(store.key_of(name), ShareType)
    if found is not None:
        view = ShareType()
        view.CopyFrom(found.value)
        view.etag = str(found.mod_revision)
        return view
    if name == DEFAULT:
        return default_type()
    raise NotFound(f"{name} not found", field_violations=[(field, "no such share type")])


class ShareTypes(share_type_service_pb2_grpc.ShareTypeServiceServicer):
    def __init__(self, store: Store, auth: Authenticator, cache: WatchCache) -> None:
        self._store = store
        self._auth = auth
        self._cache = cache

    async def ListShareTypes(  # noqa: N802
        self,
        request: share_type_service_pb2.ListShareTypesRequest,
        context: grpc.aio.ServicerContext,
    ) -> share_type_service_pb2.ListShareTypesResponse:
        self._auth.caller(context)
        validation.check_request(request)
        items, token = await _paging.page(
            self._store,
            self._store.prefix_of("", "shareTypes"),
            ShareType,
            request.page_token,
            request.page_size,
            cache=self._cache,
        )
        types = [i.value for i in items]
        if not request.page_token and all(t.name != DEFAULT for t in types):
            types.insert(0, default_type())
        return share_type_service_pb2.ListShareTypesResponse(
            share_types=types, next_page_token=token
        )

    async def GetShareType(  # noqa: N802
        self, request: share_type_service_pb2.GetShareTypeRequest, context: grpc.aio.ServicerContext
    ) -> share_type_pb2.ShareType:
        self._auth.caller(context)
        validation.check_request(request)
        return await share_type(self._store, request.name, "name")

    async def CreateShareType(  # noqa: N802
        self,
        request: share_type_service_pb2.CreateShareTypeRequest,
        context: grpc.aio.ServicerContext,
    ) -> share_type_pb2.ShareType:
        self._auth.caller(context).check_admin()
        validation.check_request(request, "share_type")
        names.check_id("share_type_id", request.share_type_id)
        if f"shareTypes/{request.share_type_id}" == DEFAULT:
            raise AlreadyExists(f"{DEFAULT} always exists; create a type of another name")
        record = ShareType()
        record.CopyFrom(request.share_type)
        record.name = f"shareTypes/{request.share_type_id}"
        record.create_time.CopyFrom(operations.now())
        key = self._store.key_of(record.name)
        try:
            revision = await self._store.create(key, record)
        except AlreadyExists:
            existing = await self._store.get(key, ShareType)
            same = (
                existing is not None
                and request.request_id
                and existing.value.extra_specs == record.extra_specs
                and existing.value.description == record.description
            )
            if not same:
                raise AlreadyExists(f"{record.name} already exists") from None
            return await share_type(self._store, record.name, "share_type_id")
        record.etag = str(revision)
        return record

    async def DeleteShareType(  # noqa: N802
        self,
        request: share_type_service_pb2.DeleteShareTypeRequest,
        context: grpc.aio.ServicerContext,
    ) -> empty_pb2.Empty:
        self._auth.caller(context).check_admin()
        validation.check_request(request)
        names.SHARE_TYPE.parse("name", request.name)
        if request.name == DEFAULT:
            raise FailedPrecondition("the default share type cannot be deleted")
        users = await self._cache.shares_using("share_type", request.name)
        if users:
            raise FailedPrecondition(
                f"{len(users)} shares use {request.name}, e.g. {users[0]}",
                reason="SHARE_TYPE_IN_USE",
            )
        if not await self._store.delete(self._store.key_of(request.name)):
            raise NotFound(f"{request.name} not found")
        return empty_pb2.Empty()
