"""Resource names (AIP-122): parse, build and validate, naming the field that is wrong."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidArgument

# AIP-122 ids: lower case, digits and hyphens, starting with a letter, at most 63 long.
ID_PATTERN = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")


# What an error message may echo of a caller's value: enough to recognise it, never
# a 100 KB string sent back whole.
_SHOWN = 72


def shown(value: str) -> str:
    """`value` quoted for an error message, cut short when long."""
    return repr(value if len(value) <= _SHOWN else value[:_SHOWN] + "...")


def check_id(field: str, value: str) -> str:
    # fullmatch: `$` alone would also take a trailing newline.
    if not ID_PATTERN.fullmatch(value):
        raise InvalidArgument(
            field,
            f"{shown(value)} must be 1-63 characters of a-z, 0-9 and '-', "
            "starting with a letter and not ending with '-'",
        )
    return value


@dataclass(frozen=True)
class Pattern:
    """A name pattern such as `projects/{project}/shares/{share}`."""

    template: str

    @property
    def _parts(self) -> list[str]:
        return self.template.split("/")

    def parse(self, field: str, name: str) -> dict[str, str]:
        parts = name.split("/")
        if len(parts) != len(self._parts):
            raise InvalidArgument(field, f"{shown(name)} is not of the form {self.template}")
        values: dict[str, str] = {}
        for want, got in zip(self._parts, parts):
            if want.startswith("{"):
                values[want.strip("{}")] = check_id(field, got) if got != "-" else got
            elif want != got:
                raise InvalidArgument(field, f"{shown(name)} is not of the form {self.template}")
        return values

    def format(self, **values: str) -> str:
        return self.template.format(**values)


PROJECT = Pattern("projects/{project}")
SHARE = Pattern("projects/{project}/shares/{share}")
ACCESS_RULE = Pattern("projects/{project}/shares/{share}/accessRules/{access_rule}")
SNAPSHOT = Pattern("projects/{project}/shares/{share}/snapshots/{snapshot}")
SHARE_NETWORK = Pattern("projects/{project}/shareNetworks/{share_network}")
SHARE_TYPE = Pattern("shareTypes/{share_type}")
OPERATION = Pattern("projects/{project}/operations/{operation}")
POOL = Pattern("backends/{backend}/pools/{pool}")


def project_of(name: str) -> str:
    """The project a project-scoped name belongs to ('' when it has none)."""
    parts = name.split("/")
    return parts[1] if len(parts) >= 2 and parts[0] == "projects" else ""
