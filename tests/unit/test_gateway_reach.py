"""What a gateway needs to reach a cluster natively: the routes and the client conf read
from a cluster's ceph.conf, and when a backend lets gateways go native at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from sharemesh.driver_host.drivers.base import check_gateway_fsal, gateways_reach
from sharemesh.network import read_ceph_conf
from sharemesh.runtime.errors import FailedPrecondition, InvalidArgument

CLUSTER_CONF = """
[global]
fsid = 2bbe162a-dd9e-4945-bc75-0323b17c9644
mon host = [v2:169.254.200.7:3300,v1:169.254.200.7:6789] v2:169.254.200.8:3300  # two mons
public_network = 169.254.200.0/24
keyring = /etc/ceph/$cluster.$name.keyring
admin_socket = /run/ceph/$cluster-$name.asok
[mon]
mon_data = /var/lib/ceph/mon/$cluster-$id
"""


def test_routes_and_client_conf_come_from_the_clusters_conf(tmp_path: Path) -> None:
    conf = tmp_path / "ceph.conf"
    conf.write_text(CLUSTER_CONF)
    cluster = read_ceph_conf(conf)
    assert cluster.routes() == ("169.254.200.7/32", "169.254.200.8/32", "169.254.200.0/24")
    rendered = cluster.render(tmp_path / "gw")
    # The mons and the fsid, and nothing of the cluster's own daemons, keys or sockets.
    assert "mon_host = [v2:169.254.200.7:3300,v1:169.254.200.7:6789] v2:169.254" in rendered
    assert "fsid = 2bbe162a-dd9e-4945-bc75-0323b17c9644" in rendered
    assert "keyring" not in rendered and "/run/ceph" not in rendered
    assert "mon_data" not in rendered
    assert f"log_file = {tmp_path / 'gw' / 'ceph-client.log'}" in rendered


def test_a_conf_without_mons_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "ceph.conf"
    conf.write_text("[global]\nfsid = x\n")
    with pytest.raises(FailedPrecondition, match="mon_host"):
        read_ceph_conf(conf)
    with pytest.raises(FailedPrecondition, match="cannot read"):
        read_ceph_conf(tmp_path / "missing.conf")


def test_gateways_go_native_only_off_the_loopback() -> None:
    assert gateways_reach(("169.254.200.7", "169.254.200.0/24"))
    assert not gateways_reach(("127.0.0.1",))  # a namespace has a loopback of its own
    assert not gateways_reach(("169.254.200.7", "127.0.0.0/8"))
    assert not gateways_reach(())
    assert not gateways_reach(("gluster.example",))  # routes need addresses
    check_gateway_fsal("NATIVE")
    check_gateway_fsal("PROXY_V4")
    with pytest.raises(InvalidArgument, match="gateway_fsal"):
        check_gateway_fsal("VFS")
