"""The mesh CA and the certificates it issues, with `cryptography`: one per service and
host, its identity a SPIFFE URI SAN (`spiffe://sharemesh/service/{role}`) and the names
and addresses it listens on as DNS and IP SANs.

Files are PEM: `{name}.crt` and `{name}.key` beside `ca.crt` and `ca.key`, keys 0600.
An existing certificate is kept while it is signed by the CA, names what it must, and
has time left; otherwise it is issued again (a rotation is that, on purpose).

    python -m sharemesh.runtime.certs DIR NAME [--role ROLE] [--host H ...]

issues (or rotates) `DIR/NAME.crt` and `.key` from the CA in DIR, creating it if new."""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .tls import TRUST_DOMAIN

CA_DAYS = 3650
LEAF_DAYS = 365
LOOPBACK = ("localhost", "127.0.0.1")
# A certificate with less than this left is issued again on the next start.
RENEW_BEFORE = datetime.timedelta(days=30)


def spiffe_id(role: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/service/{role}"


def role_of(name: str) -> str:
    """The role of a certificate named for what holds it: `scheduler-2` is a scheduler,
    `driver-host-local` a driver-host, `etcd-peer` etcd; api, gateway, operator as is;
    `gateway@host-2` is the gateway of host-2."""
    name = name.split("@", 1)[0]
    for role in ("scheduler", "driver-host", "etcd"):
        if name.startswith(role):
            return role
    return name


@dataclass(frozen=True)
class Leaf:
    """What a certificate must say: its file name, its role, and where it is reached."""

    name: str
    role: str
    hosts: tuple[str, ...] = LOOPBACK


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomically, so that a server reloading its files never reads half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    tmp.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class MeshCA:
    """The CA under `directory`, created on first use."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.cert_file = directory / "ca.crt"
        self.key_file = directory / "ca.key"
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.cert_file.exists():
            self._create()
        self.cert = x509.load_pem_x509_certificate(self.cert_file.read_bytes())
        key = serialization.load_pem_private_key(self.key_file.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self._key = key

    def _create(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sharemesh mesh CA")])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        # The key first: a CA certificate without its key would be taken as complete.
        _write(self.key_file, _key_pem(key), 0o600)
        _write(self.cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)

    def paths(self, name: str) -> tuple[Path, Path]:
        return self.directory / f"{name}.crt", self.directory / f"{name}.key"

    def ensure(self, leaf: Leaf) -> tuple[Path, Path]:
        """`leaf`'s certificate and key files, issued unless the ones there still fit."""
        cert_file, key_file = self.paths(leaf.name)
        if not (cert_file.exists() and key_file.exists() and self._fits(cert_file, leaf)):
            self.issue(leaf)
        return cert_file, key_file

    def issue(self, leaf: Leaf) -> tuple[Path, Path]:
        """A new key and certificate for `leaf` (a rotation when they existed)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, TRUST_DOMAIN),
                        x509.NameAttribute(NameOID.COMMON_NAME, leaf.name),
                    ]
                )
            )
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
            .add_extension(x509.SubjectAlternativeName(_sans(leaf)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            # Every mesh process is both: it serves, and calls its peers and etcd.
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        cert_file, key_file = self.paths(leaf.name)
        # The key first: a server reloading on the certificate's change reads both.
        _write(key_file, _key_pem(key), 0o600)
        _write(cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cert_file, key_file

    def _fits(self, cert_file: Path, leaf: Leaf) -> bool:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, Exception):  # noqa: BLE001 - any mismatch: reissue
            return False
        if cert.not_valid_after_utc - _now() < RENEW_BEFORE:
            return False
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return set(sans) >= set(_sans(leaf))


def _sans(leaf: Leaf) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id(leaf.role))]
    for host in _unique(leaf.hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sharemesh.runtime.certs",
        description="Issue, or rotate, a mesh certificate from the CA in DIR.",
    )
    parser.add_argument("dir", type=Path, help="the CA's directory (`sharemesh up`: DIR/tls)")
    parser.add_argument("name", help="file name: scheduler, driver-host-local, etcd-server, …")
    parser.add_argument("--role", help="the identity's role (default: from the name)")
    parser.add_argument(
        "--host", action="append", default=[], help="a DNS name or IP address it is reached at"
    )
    args = parser.parse_args(argv)
    hosts = tuple(args.host) or LOOPBACK
    cert_file, key_file = MeshCA(args.dir).issue(
        Leaf(args.name, args.role or role_of(args.name), hosts)
    )
    print(f"{cert_file}\n{key_file}")


if __name__ == "__main__":
    main()
