"""The mesh CA's certificates and the caller table, without a mesh."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from sharemesh.driver.v1 import driver_service_pb2
from sharemesh.gateway.v1 import gateway_service_pb2
from sharemesh.runtime import certs, tls
from sharemesh.runtime.config import EtcdConfig, TlsConfig
from sharemesh.runtime.errors import InvalidArgument
from sharemesh.scheduler.v1 import scheduler_service_pb2


def test_every_internal_method_names_its_callers() -> None:
    methods = {
        f"/{service.full_name}/{method.name}"
        for module, name in (
            (scheduler_service_pb2, "SchedulerService"),
            (driver_service_pb2, "DriverService"),
            (gateway_service_pb2, "GatewayService"),
        )
        for service in [module.DESCRIPTOR.services_by_name[name]]
        for method in service.methods
    }
    assert methods == set(tls.CALLERS)


def test_a_leaf_names_its_role_and_addresses_and_its_key_is_private(tmp_path: Path) -> None:
    ca = certs.MeshCA(tmp_path / "tls")
    cert_file, key_file = ca.ensure(certs.Leaf("scheduler-2", "scheduler", ("10.0.0.2", "h2")))
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    cert.verify_directly_issued_by(ca.cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://sharemesh/service/scheduler"
    ]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.2"]
    assert sans.get_values_for_type(x509.DNSName) == ["h2"]
    for private in (key_file, ca.key_file):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_a_fitting_certificate_is_kept_and_a_changed_one_issued_again(tmp_path: Path) -> None:
    ca = certs.MeshCA(tmp_path / "tls")
    leaf = certs.Leaf("gateway", "gateway")
    cert_file, _ = ca.ensure(leaf)
    first = cert_file.read_bytes()
    assert certs.MeshCA(tmp_path / "tls").ensure(leaf)[0].read_bytes() == first  # a restart
    moved = certs.Leaf("gateway", "gateway", ("127.0.0.1", "10.0.0.7"))
    assert ca.ensure(moved)[0].read_bytes() != first  # a new address needs a new SAN
    # A certificate of another CA in its place is replaced too.
    other = certs.MeshCA(tmp_path / "other")
    cert_file.write_bytes(other.ensure(leaf)[0].read_bytes())
    x509.load_pem_x509_certificate(ca.ensure(leaf)[0].read_bytes()).verify_directly_issued_by(
        ca.cert
    )


def test_half_a_tls_config_is_refused_naming_the_missing_file() -> None:
    assert tls.identity(TlsConfig()) is None
    with pytest.raises(InvalidArgument) as error:
        tls.identity(TlsConfig(ca_file="/ca.crt", cert_file="/me.crt"))
    assert error.value.field_violations[0][0] == "tls.key_file"
    # etcd's client takes [tls]'s files unless [etcd] names its own.
    mine = TlsConfig(ca_file="/ca.crt", cert_file="/me.crt", key_file="/me.key")
    etcd = tls.etcd_identity(EtcdConfig(cert_file="/etcd.crt"), mine)
    assert etcd == tls.Identity("/ca.crt", "/etcd.crt", "/me.key")
