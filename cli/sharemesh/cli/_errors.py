"""One clear line per failure, and the exit codes the CLI documents.

Exit codes:
    0  done
    1  the API refused the request, or the operation ended with an error
    2  the command line is wrong (argparse's own code), or names no project
    3  the API could not be reached, or refused the key (UNAVAILABLE, UNAUTHENTICATED,
       DEADLINE_EXCEEDED): check SHAREMESH_ENDPOINT and SHAREMESH_TOKEN
    4  the operation is still running after --timeout; `sharemesh operations wait` follows it
  130  interrupted (Ctrl-C); an operation already started goes on in the mesh
"""

from __future__ import annotations

import sys

import grpc

from sharemesh.runtime.errors import ShareMeshError

OK, FAILED, USAGE, UNREACHABLE, TIMED_OUT, INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_CODES = __doc__.split("Exit codes:\n", 1)[1]

_CONNECTION = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


def hint(code: grpc.StatusCode, endpoint: str, sources: dict[str, str]) -> str:
    """What to try next; names where the endpoint and key came from."""

    def where(key: str, var: str) -> str:
        return sources.get(key, f"unset; set {var}")

    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return (
            f"is the mesh running at {endpoint} (from {where('endpoint', 'SHAREMESH_ENDPOINT')})? "
            "Set SHAREMESH_ENDPOINT or --endpoint"
        )
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return (
            f"the key (from {where('token', 'SHAREMESH_TOKEN')}) is not accepted; "
            "set SHAREMESH_TOKEN or `token` in the config file "
            "(an admin key is in STATE_DIR/admin.token)"
        )
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return "this key's role or project does not allow it; check --project"
    if code == grpc.StatusCode.NOT_FOUND:
        return "check the name (and --project); `list` shows what exists"
    return ""


def line(code: grpc.StatusCode, error: ShareMeshError, hint_text: str = "") -> str:
    """`error: CODE [REASON]: message; field: why (hint: …)`, on one line."""
    text = f"error: {code.name}"
    if error.reason and error.reason != code.name:
        text += f" [{error.reason}]"
    message = " ".join(error.message.split())
    text += f": {message}" if message else ""
    for field, description in error.field_violations:
        if f"{field}: {description}" not in message:  # InvalidArgument repeats its one field
            text += f"; {field}: {description}"
    for subject, description in error.quota_violations:
        if description not in message:
            text += f"; {subject}: {description}"
    return text + (f" (hint: {hint_text})" if hint_text else "")


def report(
    code: grpc.StatusCode, error: ShareMeshError, endpoint: str, sources: dict[str, str]
) -> int:
    print(line(code, error, hint(code, endpoint, sources)), file=sys.stderr)
    return UNREACHABLE if code in _CONNECTION else FAILED
