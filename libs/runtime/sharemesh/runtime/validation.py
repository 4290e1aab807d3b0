"""Request validation driven by `google.api.field_behavior` annotations (AIP-203).

REQUIRED fields must be set, OUTPUT_ONLY fields in input are cleared (the server owns
them), and an update mask may name only fields that are neither OUTPUT_ONLY nor
IMMUTABLE. Format rules that annotations cannot say (ids, CIDRs) live beside the
servicers that own them.
"""

from __future__ import annotations

from google.api import field_behavior_pb2
from google.protobuf import descriptor, field_mask_pb2, message

from .errors import InvalidArgument

FB = field_behavior_pb2.FieldBehavior


def _behaviors(field: descriptor.FieldDescriptor) -> set[int]:
    return set(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def _is_set(msg: message.Message, field: descriptor.FieldDescriptor) -> bool:
    if field.is_repeated:
        return len(getattr(msg, field.name)) > 0
    if field.message_type is not None or field.has_presence:
        return msg.HasField(field.name)
    return getattr(msg, field.name) != field.default_value


def check_required(msg: message.Message, prefix: str = "", partial: str = "") -> None:
    """Raises InvalidArgument naming the first REQUIRED field left unset, at any depth.
    `partial` names the resource of an Update: only its masked fields matter (AIP-134)."""
    for field in msg.DESCRIPTOR.fields:
        if field.name == partial:
            continue
        path = f"{prefix}{field.name}"
        if FB.REQUIRED in _behaviors(field) and not _is_set(msg, field):
            raise InvalidArgument(path, "is required")
        if (
            field.message_type is not None
            and not field.is_repeated
            and not field.message_type.GetOptions().map_entry
            and msg.HasField(field.name)
        ):
            check_required(getattr(msg, field.name), f"{path}.")


def clear_output_only(msg: message.Message) -> None:
    """Drops what a caller may not set; AIP-203 says ignore, not reject."""
    for field in msg.DESCRIPTOR.fields:
        if FB.OUTPUT_ONLY in _behaviors(field):
            msg.ClearField(field.name)
        elif field.message_type is not None and not field.is_repeated and msg.HasField(field.name):
            clear_output_only(getattr(msg, field.name))


def check_request(
    request: message.Message, resource_field: str | None = None, *, update: bool = False
) -> None:
    """The standard checks for a request: REQUIRED fields, and no OUTPUT_ONLY input.
    For an Update, the resource's own REQUIRED fields are not demanded."""
    if resource_field:
        clear_output_only(getattr(request, resource_field))
    check_required(request, partial=resource_field if update and resource_field else "")


def check_update_mask(
    resource: descriptor.Descriptor, mask: field_mask_pb2.FieldMask, field: str = "update_mask"
) -> list[str]:
    """The mask's paths, refusing unknown, OUTPUT_ONLY and IMMUTABLE ones."""
    if not mask.paths:
        raise InvalidArgument(field, "must name at least one field")
    for path in mask.paths:
        target = resource.fields_by_name.get(path.split(".")[0])
        if target is None:
            raise InvalidArgument(field, f"{path!r} is not a field of {resource.name}")
        behaviors = _behaviors(target)
        if FB.OUTPUT_ONLY in behaviors or FB.IMMUTABLE in behaviors or FB.IDENTIFIER in behaviors:
            raise InvalidArgument(field, f"{path!r} cannot be changed")
    return list(mask.paths)
