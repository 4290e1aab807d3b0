"""Matches a share type's extra specs against a pool's capabilities, with Manila's
operators: `== N`, `!= N`, `>= N`, `<= N` (numbers), `<in> s` (substring),
`<is> True|False`, `<or> a <or> b`, or a plain value (equal, ignoring case)."""

from __future__ import annotations

import operator
from collections.abc import Callable

from .._placement import Candidate, Request

# Keys other filters read, not capabilities a pool reports.
_NOT_CAPABILITIES = {"availability_zones", "thin_provisioning"}
_NUMERIC = {"==": operator.eq, "!=": operator.ne, ">=": operator.ge, "<=": operator.le}

Test = Callable[[str | None], bool]


def compile_spec(spec: str) -> Test:
    """The test one extra spec makes of a capability (None when the pool lacks it)."""
    words = spec.split()
    if not words:
        return lambda capability: capability in (None, "")
    op = words[0]
    if op in _NUMERIC and len(words) == 2:
        compare, wanted = _NUMERIC[op], words[1]

        def numeric(capability: str | None) -> bool:
            try:
                return capability is not None and compare(float(capability), float(wanted))
            except ValueError:
                return False

        return numeric
    if op == "<in>":
        part = spec.split("<in>", 1)[1].strip()
        return lambda capability: capability is not None and part in capability
    if op == "<is>" and len(words) == 2:
        # A pool that does not report a boolean capability lacks it.
        flag = words[1].lower()
        return lambda capability: (capability or "false").strip().lower() == flag
    if op == "<or>":
        options = {o.strip().lower() for o in spec.split("<or>") if o.strip()}
        return lambda capability: capability is not None and capability.strip().lower() in options
    plain = spec.strip().lower()
    if plain == "false":
        return lambda capability: (capability or "false").strip().lower() == "false"
    return lambda capability: capability is not None and capability.strip().lower() == plain


def matches(capability: str | None, spec: str) -> bool:
    return compile_spec(spec)(capability)


class CapabilitiesFilter:
    name = "capabilities"

    def predicate(self, request: Request) -> Callable[[Candidate], bool]:
        tests = [
            (key, compile_spec(spec))
            for key, spec in request.extra_specs.items()
            if key not in _NOT_CAPABILITIES
        ]
        return lambda pool: all(test(pool.capabilities.get(key)) for key, test in tests)

    def reason(self, request: Request) -> str:
        wanted = ", ".join(
            f"{k}={v}" for k, v in sorted(request.extra_specs.items()) if k not in _NOT_CAPABILITIES
        )
        return f"no pool has the capabilities the share type asks for ({wanted})"
