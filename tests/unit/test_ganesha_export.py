from sharemesh.ganesha import ClientRule, Export


def test_hosts_render_bare_and_networks_with_prefix():
    text = Export(
        3,
        "/srv/x",
        "/x",
        clients=(
            ClientRule(("2001:db8::7/128", "10.0.0.5/32"), "RW"),
            ClientRule(("fd00::/64", "10.1.0.0/16"), "RO"),
        ),
    ).render()
    assert "Clients = 2001:db8::7, 10.0.0.5; Access_Type = RW;" in text
    assert "Clients = fd00::/64, 10.1.0.0/16; Access_Type = RO;" in text
    assert "Export_Id = 3;" in text
