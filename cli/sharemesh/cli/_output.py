"""How the CLI prints resources: `--format table|json|yaml|value`, `-c COLUMN`, sizes
with units, an Operation's metadata decoded, and a share's ready-to-use mount lines."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import grpc
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, descriptor_pool, json_format, message, message_factory

from sharemesh.v1 import operation_metadata_pb2

FORMATS = ("table", "json", "yaml", "value")
OPERATION_COLUMNS = ["name", "verb", "target", "done", "progress", "status", "error"]


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        "-f",
        choices=FORMATS,
        default="table",
        help="output format (default: table; value prints bare values, one row a line)",
    )
    parser.add_argument("--json", action="store_true", help="the same as --format json")
    parser.add_argument(
        "--column",
        "-c",
        action="append",
        metavar="COLUMN",
        help="print only this column (repeatable); e.g. -c name -c state",
    )


def _format(args: argparse.Namespace) -> str:
    return "json" if getattr(args, "json", False) else getattr(args, "format", "table")


def data_of(item: message.Message) -> dict[str, Any]:
    """The resource as JSON-ready data; an Operation with its metadata and result decoded."""
    if isinstance(item, operations_pb2.Operation):
        return operation_data(item)
    return json_format.MessageToDict(item, preserving_proto_field_name=True)


def operation_data(op: operations_pb2.Operation) -> dict[str, Any]:
    meta = operation_metadata_pb2.OperationMetadata()
    if op.metadata.Is(meta.DESCRIPTOR):
        op.metadata.Unpack(meta)
    data: dict[str, Any] = {
        "name": op.name,
        "verb": meta.verb,
        "target": meta.target,
        "done": op.done,
        "progress": meta.progress_percent,
        "status": meta.status_detail,
    }
    if op.HasField("error"):
        data["error"] = f"{_code_name(op.error.code)}: {op.error.message}"
    if op.HasField("response"):
        # Decoded through the registered sharemesh types (the modules are imported).
        data["response"] = json_format.MessageToDict(op.response, preserving_proto_field_name=True)
    return data


def unpack(packed: any_pb2.Any) -> message.Message | None:
    """The message in an `Any`, of whichever registered type it names; None for Empty."""
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(packed.TypeName())
    except KeyError:
        return None
    result = message_factory.GetMessageClass(descriptor)()
    packed.Unpack(result)
    return result if result.ListFields() else None


def _code_name(code: int) -> str:
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))


def size(gib: object) -> str:
    return f"{gib} GiB" if gib not in ("", None) else ""


def mount_lines(share: dict[str, Any]) -> dict[str, str]:
    """For each export location: an `nfs://` URL (libnfs's form, e.g. for `nfs-cp`) and a
    `mount -t nfs` command, with the ports this mesh serves on."""
    lines: dict[str, str] = {}
    share_id = str(share.get("name", "share")).rsplit("/", 1)[-1]
    for i, location in enumerate(share.get("export_locations", [])):
        host, _, pseudo = location["path"].partition(":")
        nfs_port, mount_port = location.get("nfs_port", 2049), location.get("mount_port", 0)
        suffix = f"_{i + 1}" if i else ""
        url = f"nfs://{host}{pseudo}?version=3&nfsport={nfs_port}"
        lines[f"nfs_url{suffix}"] = url + (f"&mountport={mount_port}" if mount_port else "")
        lines[f"mount{suffix}"] = (
            f"mount -t nfs -o vers=4.1,port={nfs_port} {location['path']} /mnt/{share_id}"
        )
    return lines


def _human(column: str, value: Any) -> str:
    """A cell as people read it; JSON output keeps the raw values."""
    if value is None or value == "":
        return ""
    if column.endswith("_gib") or column == "size":
        return size(value)
    if column == "export_locations":
        return ", ".join(
            f"{e['path']} (nfs {e.get('nfs_port')}, mount {e.get('mount_port')})" for e in value
        )
    if column == "labels":
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if column == "progress":
        return f"{value}%"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _columns(args: argparse.Namespace, default: list[str]) -> list[str]:
    return list(getattr(args, "column", None) or default)


def _dump(data: Any, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(data, indent=2))
    else:
        import yaml  # type: ignore[import-untyped]

        print(yaml.safe_dump(data, sort_keys=False, width=10_000).rstrip())


def show(args: argparse.Namespace, item: message.Message, columns: list[str]) -> None:
    """One resource: a two-column table, or the whole resource as JSON or YAML."""
    data = data_of(item)
    fmt = _format(args)
    if isinstance(item, operations_pb2.Operation):
        columns = OPERATION_COLUMNS  # --no-wait: the Operation, not the resource's rows
    elif "export_locations" in data and fmt != "json":
        lines = mount_lines(data)
        data.update(lines)
        columns = columns + list(lines)
    selected = _columns(args, columns)
    if fmt in ("json", "yaml"):
        _dump({c: data.get(c) for c in selected} if args_column(args) else data, fmt)
    elif fmt == "value":
        for column in selected:
            print(_human(column, data.get(column)))
    else:
        width = max(len(c) for c in selected)
        for column in selected:
            print(f"{column:{width}}  {_human(column, data.get(column))}")
    sys.stdout.flush()


def args_column(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "column", None))


def table(args: argparse.Namespace, rows: list[message.Message], columns: list[str]) -> None:
    """Many resources: a table with a header, or a JSON/YAML list."""
    data = [data_of(r) for r in rows]
    fmt = _format(args)
    selected = _columns(args, columns)
    if fmt in ("json", "yaml"):
        if args_column(args):
            data = [{c: d.get(c) for c in selected} for d in data]
        _dump(data, fmt)
        return
    cells = [[_human(c, d.get(c)) for c in selected] for d in data]
    if fmt == "value":
        for row in cells:
            print("\t".join(row))
        return
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(selected)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(selected, widths)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
