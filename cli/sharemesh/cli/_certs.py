"""`sharemesh certs rotate NAME`: issue a mesh certificate again, from the CA in
`STATE_DIR/tls/` (`sharemesh up`'s state dir, or /etc/sharemesh where the deploy files
keep theirs), with the same code as `python -m sharemesh.runtime.certs`.

The new key and certificate replace the old files by a rename: every gRPC server and
etcd present the new one from their next handshake, and clients on their next
connection (under systemd, `systemctl restart` the unit: it copied the old files).
Without --host the new certificate names the addresses the old one did."""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys
from pathlib import Path

from cryptography import x509

from sharemesh.runtime import certs

from ._errors import USAGE

# A file name in the CA's directory, as the launcher and the deploy files name them.
_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
DEFAULT_STATE_DIR = Path("/etc/sharemesh")


def add_parsers(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = commands.add_parser(
        "certs", help="the mesh's TLS certificates", description=__doc__
    ).add_subparsers(dest="verb", required=True, metavar="VERB")
    rotate = group.add_parser(
        "rotate",
        help="issue a certificate again from the mesh CA (a new key too)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rotate.add_argument(
        "name", help="scheduler, driver-host-BACKEND, gateway, api, etcd-server, etcd-peer, …"
    )
    rotate.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"holds the CA in tls/ (default {DEFAULT_STATE_DIR})",
    )
    rotate.add_argument(
        "--host",
        action="append",
        default=[],
        help="a DNS name or IP address it is reached at (repeat; default: the old one's)",
    )
    rotate.set_defaults(run=run_rotate)


def _hosts(cert_file: Path) -> tuple[str, ...]:
    """The DNS names and addresses a certificate names, in its order."""
    if not cert_file.exists():
        return ()
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    names = sans.get_values_for_type(x509.DNSName)
    addresses = [str(a) for a in sans.get_values_for_type(x509.IPAddress)]
    return (*names, *addresses)


def _usage(message: str) -> int:
    print(f"sharemesh certs rotate: error: {message}", file=sys.stderr)
    return USAGE


def run_rotate(args: argparse.Namespace) -> int:
    directory: Path = args.state_dir / "tls"
    if not _NAME.fullmatch(args.name):
        return _usage(f"name: {args.name!r} is not a certificate name (a-z, 0-9, -)")
    for host in args.host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not re.fullmatch(r"(\*\.)?[A-Za-z0-9.-]+", host):
                return _usage(f"--host: {host!r} is neither a DNS name nor an IP address")
    # A new CA here would issue a certificate no peer trusts: rotation needs the old one.
    if not (directory / "ca.crt").exists() or not (directory / "ca.key").exists():
        return _usage(f"--state-dir: no mesh CA in {directory} (ca.crt and ca.key)")
    ca = certs.MeshCA(directory)
    cert_file, _ = ca.paths(args.name)
    hosts = tuple(args.host) or _hosts(cert_file) or certs.LOOPBACK
    cert_file, key_file = ca.issue(certs.Leaf(args.name, certs.role_of(args.name), hosts))
    print(f"{cert_file}\n{key_file}")
    print(
        f"issued {args.name} ({certs.spiffe_id(certs.role_of(args.name))}) for {', '.join(hosts)}",
        file=sys.stderr,
    )
    return 0
