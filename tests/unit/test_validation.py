import pytest
from google.protobuf import field_mask_pb2

from sharemesh.runtime import validation
from sharemesh.runtime.errors import InvalidArgument
from sharemesh.v1 import (
    access_rule_pb2,
    pool_service_pb2,
    share_network_pb2,
    share_network_service_pb2,
    share_pb2,
    share_service_pb2,
    share_type_pb2,
    share_type_service_pb2,
)


def test_required_fields_are_named_at_depth():
    request = share_service_pb2.CreateShareRequest(parent="projects/p", share_id="s")
    with pytest.raises(InvalidArgument) as error:
        validation.check_request(request, "share")
    assert error.value.field_violations[0][0] in ("share", "share.size_gib")


def test_output_only_input_is_cleared():
    request = share_service_pb2.CreateShareRequest(
        parent="projects/p",
        share_id="s",
        share=share_pb2.Share(size_gib=1, state=share_pb2.Share.ACTIVE, state_message="x"),
    )
    validation.check_request(request, "share")
    assert request.share.state == share_pb2.Share.STATE_UNSPECIFIED
    assert request.share.state_message == ""


@pytest.mark.parametrize("path", ["share_type", "state", "name", "nope"])
def test_update_mask_refuses_immutable_output_only_and_unknown(path):
    with pytest.raises(InvalidArgument) as error:
        validation.check_update_mask(
            share_pb2.Share.DESCRIPTOR, field_mask_pb2.FieldMask(paths=[path])
        )
    assert error.value.field_violations[0][0] == "update_mask"


def test_update_mask_accepts_labels():
    assert validation.check_update_mask(
        share_pb2.Share.DESCRIPTOR, field_mask_pb2.FieldMask(paths=["labels"])
    ) == ["labels"]


def _refused(request, resource_field=None, *, update=False) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument) as error:
        validation.check_request(request, resource_field, update=update)
    return error.value.field_violations[0]


def _create(**share: object) -> share_service_pb2.CreateShareRequest:
    return share_service_pb2.CreateShareRequest(
        parent="projects/p", share_id="s", share=share_pb2.Share(size_gib=1, **share)
    )


@pytest.mark.parametrize(
    "labels",
    [
        {f"k{i}": "v" for i in range(65)},
        {"": "v"},
        {"Team": "v"},
        {"9team": "v"},
        {"team": "Storage"},
        {"team": "x" * 64},
        {"k" * 64: "v"},
        {"team": "x" * 100_000},
        {"te am": "v"},
        {"team\x00": "v"},
        {"équipe": "v"},
    ],
)
def test_labels_outside_the_aip_rules_are_refused(labels: dict[str, str]) -> None:
    field, _ = _refused(_create(labels=labels), "share")
    assert field == "share.labels"


def test_labels_within_the_rules_pass_and_update_is_checked_too() -> None:
    good = {f"k{i}": "v" for i in range(62)} | {"team_a-1": "", "k" * 63: "v" * 63}
    validation.check_request(_create(labels=good), "share")
    update = share_service_pb2.UpdateShareRequest(
        share=share_pb2.Share(name="projects/p/shares/s", labels={"Bad": "x"}),
        update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
    )
    assert _refused(update, "share", update=True)[0] == "share.labels"


def test_labels_of_every_resource_are_checked() -> None:
    network = share_network_service_pb2.CreateShareNetworkRequest(
        parent="projects/p",
        share_network_id="n",
        share_network=share_network_pb2.ShareNetwork(cidr="10.0.0.0/24", labels={"A": "b"}),
    )
    assert _refused(network, "share_network")[0] == "share_network.labels"


@pytest.mark.parametrize("zone", ["a\x00b", "../../x", "Zone", "z" * 64, "zone\n", "zone-"])
def test_availability_zone_follows_the_id_grammar(zone: str) -> None:
    assert _refused(_create(availability_zone=zone), "share")[0] == "share.availability_zone"


def test_good_references_pass() -> None:
    validation.check_request(
        _create(
            availability_zone="zone-1",
            share_type="shareTypes/gold",
            share_network="projects/p/shareNetworks/n",
        ),
        "share",
    )


@pytest.mark.parametrize(
    "field, value",
    [
        ("share_type", "gold"),
        ("share_type", "shareTypes/../x"),
        ("share_network", "projects/p/shareNetworks/N"),
        ("source_snapshot", "snap"),
    ],
)
def test_references_follow_their_name_pattern(field: str, value: str) -> None:
    assert _refused(_create(**{field: value}), "share")[0] == f"share.{field}"


@pytest.mark.parametrize(
    "request_, field",
    [
        (share_service_pb2.GetShareRequest(name="projects/p/shares/s\x00"), "name"),
        (share_service_pb2.GetShareRequest(name="projects/p/shares/" + "s" * 300), "name"),
        (
            share_service_pb2.ListSharesRequest(parent="projects/p", filter="state=\x07"),
            "filter",
        ),
        (
            share_service_pb2.ListSharesRequest(parent="projects/p", page_token="t" * 2000),
            "page_token",
        ),
        (
            share_service_pb2.DeleteShareRequest(name="projects/p/shares/s", request_id="r" * 129),
            "request_id",
        ),
        (
            share_service_pb2.CreateAccessRuleRequest(
                parent="projects/p/shares/s",
                access_rule=access_rule_pb2.AccessRule(access_to="fe80::1%eth0", access_level=1),
            ),
            "access_rule.access_to",
        ),
        (
            share_network_service_pb2.CreateShareNetworkRequest(
                parent="projects/p",
                share_network_id="n",
                share_network=share_network_pb2.ShareNetwork(cidr="10.0.0.0/24; x"),
            ),
            "share_network.cidr",
        ),
        (
            share_service_pb2.UpdateShareRequest(
                share=share_pb2.Share(name="projects/p/shares/s"),
                update_mask=field_mask_pb2.FieldMask(paths=["labels\x00"]),
            ),
            "update_mask.paths",
        ),
    ],
)
def test_every_string_is_bounded_and_printable(request_, field: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument) as error:
        validation.check_bounds(request_)
    assert error.value.field_violations[0][0] == field


@pytest.mark.parametrize(
    "specs",
    [
        {"": "x"},
        {"k" * 256: "x"},
        {"k": "x" * 256},
        {"k": "a\nb"},
        {f"k{i}": "x" for i in range(65)},
    ],
)
def test_extra_specs_are_bounded(specs: dict[str, str]) -> None:
    request = share_type_service_pb2.CreateShareTypeRequest(
        share_type_id="t", share_type=share_type_pb2.ShareType(extra_specs=specs)
    )
    assert _refused(request, "share_type")[0] == "share_type.extra_specs"


def test_manila_extra_specs_pass() -> None:
    validation.check_request(
        share_type_service_pb2.CreateShareTypeRequest(
            share_type_id="t",
            share_type=share_type_pb2.ShareType(
                extra_specs={"capabilities:thin_provisioning": "<is> True", "zones": "a,b"}
            ),
        ),
        "share_type",
    )


def test_negative_page_size_is_refused_wherever_it_appears() -> None:
    request = pool_service_pb2.ListPoolsRequest(parent="backends/-", page_size=-1)
    assert _refused(request) == ("page_size", "must not be negative")
    validation.check_request(pool_service_pb2.ListPoolsRequest(parent="backends/-"))


def test_the_message_never_echoes_a_huge_value() -> None:
    _, description = _refused(
        share_service_pb2.CreateShareRequest(
            parent="projects/p", share_id="s" * 50 + "X" * 10, share=share_pb2.Share(size_gib=1)
        )
    )
    assert len(description) < 200


@pytest.mark.parametrize(
    "value, canonical",
    [
        ("10.0.0.1", "10.0.0.1/32"),
        ("10.1.2.3/24", "10.1.2.0/24"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("::/0", "::/0"),
        ("FD00::1/64", "fd00::/64"),
    ],
)
def test_networks_are_canonical(value: str, canonical: str) -> None:
    assert validation.check_network("f", value) == canonical


@pytest.mark.parametrize(
    "value",
    [
        "fe80::1%eth0",
        "fe80::1%a;}x{",
        " 10.0.0.1",
        "10.0.0.1\n",
        "10.0.0.1\x00",
        "10.0.0.0/33",
        "10.0.0.0/24/1",
        "10.0.0.0/255.255.255.0",
        "host.example",
        "1" * 100,
        "",
    ],
)
def test_networks_outside_the_grammar_are_refused(value: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        validation.check_network("access_rule.access_to", value)
    assert error.value.field_violations[0][0] == "access_rule.access_to"
