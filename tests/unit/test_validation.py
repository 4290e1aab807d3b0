import pytest
from google.protobuf import field_mask_pb2

from sharemesh.runtime import validation
from sharemesh.runtime.errors import InvalidArgument
from sharemesh.v1 import share_pb2, share_service_pb2


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
