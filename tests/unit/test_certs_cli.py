"""`sharemesh certs rotate`, run as an operator runs it: a new key and certificate from
the same CA, for the same identity and the addresses asked for (or the old ones), and
a clear refusal that writes nothing when there is no CA to issue from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cryptography import x509

from sharemesh.runtime import certs

SHAREMESH = str(Path(sys.executable).with_name("sharemesh"))


def _rotate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHAREMESH, "certs", "rotate", *args], capture_output=True, text=True, timeout=60
    )


def _names(cert_file: Path) -> tuple[set[str], set[str]]:
    """(the URI SANs, the DNS and IP SANs) of a certificate."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    hosts = {*sans.get_values_for_type(x509.DNSName)}
    hosts |= {str(a) for a in sans.get_values_for_type(x509.IPAddress)}
    return set(sans.get_values_for_type(x509.UniformResourceIdentifier)), hosts


def test_rotate_issues_a_new_key_from_the_same_ca(tmp_path: Path) -> None:
    ca = certs.MeshCA(tmp_path / "tls")
    old_cert, old_key = ca.issue(certs.Leaf("driver-host-local", "driver-host"))
    old = (old_cert.read_bytes(), old_key.read_bytes())

    run = _rotate("driver-host-local", "--state-dir", str(tmp_path), "--host", "192.0.2.10")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(old_cert), str(old_key)]
    assert (old_cert.read_bytes(), old_key.read_bytes()) != old
    assert old_key.stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate(old_cert.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_file.read_bytes()))
    assert _names(old_cert) == ({"spiffe://sharemesh/service/driver-host"}, {"192.0.2.10"})

    # Without --host, the next rotation keeps the addresses peers dial.
    again = _rotate("driver-host-local", "--state-dir", str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert _names(old_cert)[1] == {"192.0.2.10"}


def test_rotate_without_a_ca_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    run = _rotate("scheduler", "--state-dir", str(tmp_path))
    assert run.returncode == 2
    assert "--state-dir: no mesh CA in" in run.stderr and "Traceback" not in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_rotate_refuses_a_name_that_is_no_file_name(tmp_path: Path) -> None:
    certs.MeshCA(tmp_path / "tls")
    before = sorted(p.name for p in (tmp_path / "tls").iterdir())
    run = _rotate("../escaped", "--state-dir", str(tmp_path))
    assert run.returncode == 2 and "name: '../escaped'" in run.stderr
    bad_host = _rotate("scheduler", "--state-dir", str(tmp_path), "--host", "a b")
    assert bad_host.returncode == 2 and "--host: 'a b'" in bad_host.stderr
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == before
    assert not (tmp_path / "escaped.crt").exists()
