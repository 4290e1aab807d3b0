"""Matches a share type's extra specs against a pool's capabilities, with Manila's
operators: `== N`, `!= N`, `>= N`, `<= N` (numbers), `<in> s` (substring),
`<is> True|False`, `<or> a <or> b`, or a plain value (equal, ignoring case)."""

from .._placement import Candidate, Request

# Keys other filters read, not capabilities a pool reports.
_NOT_CAPABILITIES = {"availability_zones", "thin_provisioning"}
_NUMERIC = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
}


def matches(capability: str | None, spec: str) -> bool:
    words = spec.split()
    if not words:
        return capability in (None, "")
    if capability is None:
        # A pool that does not report a boolean capability lacks it.
        return (
            words[0] == "<is>"
            and len(words) == 2
            and words[1].lower() == "false"
            or spec.strip().lower() == "false"
        )
    op = words[0]
    if op in _NUMERIC and len(words) == 2:
        try:
            return _NUMERIC[op](float(capability), float(words[1]))
        except ValueError:
            return False
    if op == "<in>":
        return spec.split("<in>", 1)[1].strip() in capability
    if op == "<is>" and len(words) == 2:
        return capability.strip().lower() == words[1].lower()
    if op == "<or>":
        options = [o.strip().lower() for o in spec.split("<or>") if o.strip()]
        return capability.strip().lower() in options
    return capability.strip().lower() == spec.strip().lower()


class CapabilitiesFilter:
    name = "capabilities"

    def passes(self, pool: Candidate, request: Request) -> bool:
        return all(
            matches(pool.capabilities.get(key), spec)
            for key, spec in request.extra_specs.items()
            if key not in _NOT_CAPABILITIES
        )

    def reason(self, request: Request) -> str:
        wanted = ", ".join(
            f"{k}={v}" for k, v in sorted(request.extra_specs.items()) if k not in _NOT_CAPABILITIES
        )
        return f"no pool has the capabilities the share type asks for ({wanted})"
