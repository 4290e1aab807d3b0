"""Access-rule methods of `sharemesh.v1.ShareService`. The driver-host applies a
share's whole rule set at once (`update_access`), so every change here is a nudge to
sync the share."""

from __future__ import annotations

import uuid

import grpc
from google.longrunning import operations_pb2

from sharemesh.ganesha import parse_client
from sharemesh.runtime import lifecycle, names, operations, telemetry, validation
from sharemesh.runtime.coordination import Txn, Versioned
from sharemesh.runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import access_rule_pb2, share_pb2, share_service_pb2

from . import _paging
from ._auth import Caller
from ._base import Base, check_etag, view

AccessRule = access_rule_pb2.AccessRule
_LEVELS = (AccessRule.READ_WRITE, AccessRule.READ_ONLY)


def rule_view(caller: Caller, found: Versioned[records_pb2.AccessRuleRecord]) -> AccessRule:
    return view(caller, found.value.rule, found.mod_revision)


def _check_access_to(value: str) -> str:
    """The client as the canonical network the record stores and Ganesha is given: the
    Ganesha library's grammar, so the API never takes what an export cannot hold."""
    return str(parse_client(value, "access_rule.access_to"))


class AccessRules(Base):
    async def _rule(self, name: str, field: str) -> Versioned[records_pb2.AccessRuleRecord]:
        return await self.record(names.ACCESS_RULE, name, field, records_pb2.AccessRuleRecord)

    async def _share_takes_changes(self, rule: str) -> None:
        share = await self.share_record(rule.rsplit("/accessRules/", 1)[0], "name")
        if lifecycle.share.state(share.value) == share_pb2.Share.ERROR:
            raise FailedPrecondition(
                "the share is in ERROR; delete the share instead", reason="SHARE_NOT_USABLE"
            )

    async def GetAccessRule(  # noqa: N802
        self, request: share_service_pb2.GetAccessRuleRequest, context: grpc.aio.ServicerContext
    ) -> access_rule_pb2.AccessRule:
        validation.check_request(request)
        caller = self.caller(context)
        caller.check_resource(request.name)
        return rule_view(caller, await self._rule(request.name, "name"))

    async def ListAccessRules(  # noqa: N802
        self, request: share_service_pb2.ListAccessRulesRequest, context: grpc.aio.ServicerContext
    ) -> share_service_pb2.ListAccessRulesResponse:
        validation.check_request(request)
        names.SHARE.parse("parent", request.parent)
        caller = self.caller(context)
        caller.check_resource(request.parent)
        await self.share_record(request.parent, "parent")
        items, token = await _paging.page(
            self.store,
            self.store.prefix_of(request.parent, "accessRules"),
            records_pb2.AccessRuleRecord,
            request.page_token,
            request.page_size,
            cache=self.cache,
        )
        response = share_service_pb2.ListAccessRulesResponse(
            access_rules=[rule_view(caller, i) for i in items], next_page_token=token
        )
        return response

    async def CreateAccessRule(  # noqa: N802
        self, request: share_service_pb2.CreateAccessRuleRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        validation.check_request(request, "access_rule")
        names.SHARE.parse("parent", request.parent)
        caller = self.caller(context)
        caller.check_resource(request.parent)
        rule_id = request.access_rule_id or f"rule-{uuid.uuid4().hex[:12]}"
        names.check_id("access_rule_id", rule_id)
        access_to = _check_access_to(request.access_rule.access_to)
        if request.access_rule.access_level not in _LEVELS:
            raise InvalidArgument("access_rule.access_level", "must be READ_WRITE or READ_ONLY")
        name = f"{request.parent}/accessRules/{rule_id}"

        async def write(txn: Txn, op: records_pb2.OperationRecord) -> None:
            share = await self.share_record(request.parent, "parent")
            state = lifecycle.share.state(share.value)
            if state in (share_pb2.Share.DELETING, share_pb2.Share.ERROR):
                raise FailedPrecondition(
                    f"the share is {share_pb2.Share.State.Name(state)}",
                    reason="SHARE_NOT_USABLE",
                )
            for other in await self.rule_records(request.parent):
                if other.value.rule.access_to == access_to and not other.value.delete_requested:
                    raise AlreadyExists(f"{other.value.rule.name} already grants {access_to}")
            record = records_pb2.AccessRuleRecord(pending_operations=[op.operation.name])
            record.rule.CopyFrom(request.access_rule)
            record.rule.name = name
            record.rule.access_to = access_to
            lifecycle.access_rule.requested(record)
            operations.set_progress(op, "applying the export's client list", 10)
            # The share is written, not just compared: two rules for one address created at
            # once then conflict, and a concurrent delete cannot orphan the rule.
            share.value.trace_parent = telemetry.traceparent()
            txn.put(share.key, share.value, share.mod_revision)
            txn.create(self.store.key_of(name), record)

        op = await self.mutate(caller, name, "create", request, write)
        await self.nudge_backend(request.parent)
        return op

    async def UpdateAccessRule(  # noqa: N802
        self, request: share_service_pb2.UpdateAccessRuleRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        validation.check_request(request, "access_rule", update=True)
        name = request.access_rule.name
        names.ACCESS_RULE.parse("access_rule.name", name)
        caller = self.caller(context)
        caller.check_resource(name)
        paths = validation.check_update_mask(AccessRule.DESCRIPTOR, request.update_mask)
        if paths != ["access_level"]:
            raise InvalidArgument("update_mask", "only access_level can be changed")
        if request.access_rule.access_level not in _LEVELS:
            raise InvalidArgument("access_rule.access_level", "must be READ_WRITE or READ_ONLY")

        async def write(txn: Txn, op: records_pb2.OperationRecord) -> None:
            found = await self._rule(name, "access_rule.name")
            check_etag(request.access_rule.etag, found, "access_rule.etag")
            record = found.value
            await self._share_takes_changes(name)
            if record.delete_requested:
                raise FailedPrecondition("the rule is being deleted", reason="RULE_DELETING")
            lifecycle.access_rule.update_requested(record, request.access_rule.access_level)
            self.wait_on(txn, found, op, "applying the export's client list")

        op = await self.mutate(caller, name, "update", request, write)
        await self.nudge_backend(name.rsplit("/accessRules/", 1)[0])
        return op

    async def DeleteAccessRule(  # noqa: N802
        self, request: share_service_pb2.DeleteAccessRuleRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        validation.check_request(request)
        names.ACCESS_RULE.parse("name", request.name)
        caller = self.caller(context)
        caller.check_resource(request.name)

        async def write(txn: Txn, op: records_pb2.OperationRecord) -> None:
            found = await self._rule(request.name, "name")
            check_etag(request.etag, found, "etag")
            await self._share_takes_changes(request.name)
            lifecycle.access_rule.delete_requested(found.value)
            self.wait_on(txn, found, op, "removing the client from the export")

        op = await self.mutate(caller, request.name, "delete", request, write)
        await self.nudge_backend(request.name.rsplit("/accessRules/", 1)[0])
        return op
