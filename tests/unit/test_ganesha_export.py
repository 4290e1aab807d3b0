"""The closed grammar of what reaches a Ganesha config: addresses and CIDRs only, written
the way Ganesha 4.3 parses them (the integration tests check the same against it)."""

import pytest

from sharemesh.ganesha import (
    ClientRule,
    Export,
    client_rules,
    parse_client,
    share_of_pseudo,
    share_pseudo,
)
from sharemesh.runtime.errors import InvalidArgument


def test_ipv6_hosts_render_bare_ipv4_and_networks_with_prefix() -> None:
    text = Export(
        3,
        "/srv/x",
        "/x",
        clients=(
            ClientRule(("2001:db8::7/128", "10.0.0.5"), "RW"),
            ClientRule(("fd00::/64", "10.1.0.0/16"), "RO"),
        ),
    ).render()
    assert "Clients = 2001:db8::7, 10.0.0.5/32; Access_Type = RW;" in text
    assert "Clients = fd00::/64, 10.1.0.0/16; Access_Type = RO;" in text
    assert "Export_Id = 3;" in text


def test_every_client_is_written_as_the_two_halves_of_its_family() -> None:
    export = Export(1, "/srv/x", "/x", clients=client_rules([("0.0.0.0/0", "RW"), ("::/0", "RO")]))
    text = export.render()
    assert "Clients = 0.0.0.0/1, 128.0.0.0/1; Access_Type = RW;" in text
    assert "Clients = ::/1, 8000::/1; Access_Type = RO;" in text
    assert "0.0.0.0/0" not in text and "::/0" not in text
    assert export.expected_clients() == [
        ("0.0.0.0/1", "RW"),
        ("128.0.0.0/1", "RW"),
        ("::/1", "RO"),
        ("8000::/1", "RO"),
    ]


def test_the_unspecified_ipv4_host_is_never_written_bare() -> None:
    # Ganesha reads a bare `0.0.0.0` as every client.
    text = Export(1, "/srv/x", "/x", clients=client_rules([("0.0.0.0", "RW")])).render()
    assert "Clients = 0.0.0.0/32;" in text


def test_clients_are_canonical() -> None:
    assert str(parse_client("10.1.2.3/8")) == "10.0.0.0/8"
    assert str(parse_client("2001:DB8:0::7")) == "2001:db8::7/128"
    assert client_rules([("2001:DB8::7", "RW"), ("10.0.0.0/8", "RO"), ("10.1.2.3/8", "RW")]) == (
        ClientRule(("2001:db8::7/128",), "RW"),
        ClientRule(("10.0.0.0/8",), "RO"),  # named twice: the lesser access
    )


@pytest.mark.parametrize(
    "hostile",
    [
        "fe80::1%eth0",
        "fe80::1%a;}x{",
        "10.0.0.1; }",
        "10.0.0.1\n",
        "10.0.0.1\x00",
        "10.0.0.0/8}{",
        '10.0.0.1"',
        "*",
        "host.example.com",
        "",
        " 10.0.0.1",
        "10.0.0.1 #",
        "2001:db8::/112",  # Ganesha 4.3 silently drops IPv6 prefixes /100 to /127
        "1" * 100,
    ],
)
def test_anything_but_an_address_or_cidr_is_refused(hostile: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        client_rules([(hostile, "RW")])
    assert caught.value.field_violations[0][0] == "access_to"
    with pytest.raises(InvalidArgument):
        Export(1, "/srv/x", "/x", clients=(ClientRule((hostile,), "RW"),))


@pytest.mark.parametrize("field", ["path", "pseudo"])
@pytest.mark.parametrize("bad", ['/a"b', "/a\nb", "/a;b", "/a}b", "/a\tb", "/a\x7fb"])
def test_paths_that_could_end_a_string_or_block_are_refused(field: str, bad: str) -> None:
    values = {"path": "/srv/x", "pseudo": "/x", field: bad}
    with pytest.raises(InvalidArgument):
        Export(1, values["path"], values["pseudo"])


def test_pseudo_paths_name_their_share() -> None:
    assert share_of_pseudo(share_pseudo("0123abcd")) == "0123abcd"
    assert share_of_pseudo("/t/data") is None
    assert share_of_pseudo("/shares/") is None
    assert share_of_pseudo("/shares/a/b") is None
