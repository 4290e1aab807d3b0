"""Request validation driven by `google.api.field_behavior` annotations (AIP-203) and
one table of bounds.

REQUIRED fields must be set, OUTPUT_ONLY fields in input are cleared (the server owns
them), and an update mask may name only fields that are neither OUTPUT_ONLY nor
IMMUTABLE. Every string a caller sends, at any depth, is bounded and free of control
characters (NUL included), and the fields named in `STRINGS` and `MAPS` follow their
grammar; the table is keyed by field name, so a field means the same wherever it
appears. Rules that need state (does the share type exist?) or one method's context
(which CIDR an address must be in) stay with the servicer.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from google.api import field_behavior_pb2
from google.protobuf import descriptor, field_mask_pb2, message

from . import names
from .errors import InvalidArgument

if TYPE_CHECKING:  # the C (upb) descriptors stand for the Python ones at runtime
    from google._upb import _message as _upb

    FieldDescriptor: TypeAlias = descriptor.FieldDescriptor | _upb.FieldDescriptor
    Descriptor: TypeAlias = descriptor.Descriptor | _upb.Descriptor

FB = field_behavior_pb2.FieldBehavior


@functools.cache  # descriptors live as long as the process: read their options once
def _behaviors(field: FieldDescriptor) -> frozenset[int]:
    return frozenset(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def _is_set(msg: message.Message, field: FieldDescriptor) -> bool:
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


Check = Callable[[str, str], object]


@dataclass(frozen=True)
class Text:
    """A string field: `min_len` to `max_len` printable characters and, when set,
    `check` (which raises InvalidArgument naming the path it is given)."""

    max_len: int
    check: Check | None = None
    min_len: int = 0


@dataclass(frozen=True)
class Entries:
    """A map<string, string> field: at most `max_entries` keys, each key and value a Text."""

    max_entries: int
    key: Text
    value: Text


def _pattern(regex: str, rule: str) -> Check:
    compiled = re.compile(regex)

    def check(path: str, value: str) -> None:
        if not compiled.fullmatch(value):
            raise InvalidArgument(path, rule)

    return check


def _reference(pattern: names.Pattern) -> Check:
    return pattern.parse


# Bounds. Resource names are at most ~230 characters (three 63-character ids), so 255
# bounds them and anything else unnamed below; a page token is ~250.
MAX_TEXT = 255
MAX_ENTRIES = 64  # labels, as AIP-122/Kubernetes allow; extra specs alike
MAX_REPEATED = 100
_ID = Text(63, names.check_id)
# Address and CIDR fields: the characters an IP address or network is written with,
# and nothing a config file could take for syntax ('%' scope ids, ';', '}', spaces).
_ADDRESS = Text(49, _pattern(r"[0-9A-Fa-f.:/]+", "may hold only digits, a-f, '.', ':' and '/'"))

STRINGS: dict[str, Text] = {
    "share_id": _ID,
    "access_rule_id": _ID,
    "snapshot_id": _ID,
    "share_network_id": _ID,
    "share_type_id": _ID,
    "attachment_id": _ID,
    "availability_zone": _ID,
    "share_type": Text(MAX_TEXT, _reference(names.SHARE_TYPE)),
    "share_network": Text(MAX_TEXT, _reference(names.SHARE_NETWORK)),
    "source_snapshot": Text(MAX_TEXT, _reference(names.SNAPSHOT)),
    "snapshot": Text(MAX_TEXT, _reference(names.SNAPSHOT)),
    "access_to": _ADDRESS,
    "cidr": _ADDRESS,
    "address": _ADDRESS,
    "netns": Text(64),
    "host": Text(253),
    "etag": Text(63),
    "request_id": Text(128),  # and no '/': see _mutations.Recorder
    "description": Text(1024),
    "filter": Text(1024),
    "page_token": Text(1024),
}
DEFAULT_TEXT = Text(MAX_TEXT)

# Map keys are never empty.
DEFAULT_ENTRIES = Entries(MAX_ENTRIES, Text(MAX_TEXT, min_len=1), DEFAULT_TEXT)
# Labels as AIP-122 and Kubernetes have them, ASCII only (no international letters):
# keys 1-63 of [a-z0-9_-] starting with a letter, values 0-63 of [a-z0-9_-].
_LABEL_KEY = Text(
    63,
    _pattern(r"[a-z][a-z0-9_-]*", "is not a label key: use a-z, 0-9, '_' and '-', from a-z"),
    min_len=1,
)
_LABEL_VALUE = Text(63, _pattern(r"[a-z0-9_-]*", "is not a label value: use a-z, 0-9, '_', '-'"))
MAPS: dict[str, Entries] = {
    "labels": Entries(MAX_ENTRIES, _LABEL_KEY, _LABEL_VALUE),
    "extra_specs": DEFAULT_ENTRIES,  # Manila's keys and values ("capabilities:x", "<is> True")
}


def check_text(path: str, value: str, rule: Text) -> None:
    if len(value) > rule.max_len:
        raise InvalidArgument(path, f"must be at most {rule.max_len} characters")
    if len(value) < rule.min_len:
        raise InvalidArgument(path, f"must be at least {rule.min_len} characters")
    if not value.isprintable():
        raise InvalidArgument(path, "must not contain control characters")
    if value and rule.check is not None:
        rule.check(path, value)


def check_entries(path: str, entries: dict[str, str], rule: Entries) -> None:
    if len(entries) > rule.max_entries:
        raise InvalidArgument(path, f"at most {rule.max_entries} entries are allowed")
    for key, value in entries.items():
        for what, text, text_rule in (("key", key, rule.key), ("value of", value, rule.value)):
            try:
                check_text(path, text, text_rule)
            except InvalidArgument as error:
                problem = error.field_violations[0][1]
                raise InvalidArgument(path, f"{what} {names.shown(key)} {problem}") from None


_NETWORK = re.compile(r"[0-9A-Fa-f.:]{2,45}(/[0-9]{1,3})?")


def check_network(field: str, value: str) -> str:
    """An IPv4 or IPv6 address or CIDR in its canonical network form (`10.0.0.1/32`,
    `fd00::/64`); `0.0.0.0/0` and `::/0` are every client. The characters are checked
    first: Python's ipaddress takes IPv6 scope ids (`fe80::1%eth0`), which no config
    may carry."""
    if _NETWORK.fullmatch(value):
        try:
            return str(ipaddress.ip_network(value, strict=False))
        except ValueError:
            pass
    raise InvalidArgument(
        field,
        f"{names.shown(value)} is not an IPv4 or IPv6 address or CIDR "
        "(digits, a-f, '.' and ':', with at most one '/prefix')",
    )


def check_page_size(requested: int, field: str = "page_size") -> int:
    if requested < 0:
        raise InvalidArgument(field, "must not be negative")
    return requested


def check_bounds(msg: message.Message, prefix: str = "") -> None:
    """Every string set in `msg`, at any depth, against its rule; `page_size` is not
    negative. OUTPUT_ONLY fields are skipped: the server ignores them."""
    for field, value in msg.ListFields():
        if FB.OUTPUT_ONLY in _behaviors(field):
            continue
        path = f"{prefix}{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = field.message_type.fields
            if key_field.type == value_field.type == descriptor.FieldDescriptor.TYPE_STRING:
                check_entries(path, dict(value), MAPS.get(field.name, DEFAULT_ENTRIES))
            else:
                raise InvalidArgument(path, "maps of this type are not accepted")
        elif field.is_repeated:
            if len(value) > MAX_REPEATED:
                raise InvalidArgument(path, f"at most {MAX_REPEATED} items are allowed")
            for item in value:
                _check_value(field, path, item)
        else:
            _check_value(field, path, value)


def _check_value(field: descriptor.FieldDescriptor, path: str, value: object) -> None:
    if field.message_type is not None:
        check_bounds(value, f"{path}.")  # type: ignore[arg-type]
    elif field.type == descriptor.FieldDescriptor.TYPE_STRING:
        check_text(path, value, STRINGS.get(field.name, DEFAULT_TEXT))  # type: ignore[arg-type]
    elif field.name == "page_size":
        check_page_size(value, path)  # type: ignore[arg-type]


def check_request(
    request: message.Message, resource_field: str | None = None, *, update: bool = False
) -> None:
    """The standard checks for a request: REQUIRED fields, no OUTPUT_ONLY input, and
    every value within its bounds. For an Update, the resource's own REQUIRED fields are
    not demanded."""
    if resource_field and request.HasField(resource_field):
        # Only when present: clearing a field of an absent message makes it present.
        clear_output_only(getattr(request, resource_field))
    check_required(request, partial=resource_field if update and resource_field else "")
    check_bounds(request)


def check_update_mask(
    resource: Descriptor, mask: field_mask_pb2.FieldMask, field: str = "update_mask"
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
