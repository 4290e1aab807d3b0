import pytest

from sharemesh.runtime import names
from sharemesh.runtime.errors import InvalidArgument


def test_parse_share_name():
    assert names.SHARE.parse("name", "projects/p1/shares/data-1") == {
        "project": "p1",
        "share": "data-1",
    }


@pytest.mark.parametrize(
    "bad",
    [
        "projects/p1/shares/",
        "projects/p1/shares/Data",
        "projects/p1/shares/1abc",
        "projects/p1/shares/a/accessRules/b",
        "project/p1/shares/a",
        "projects/p1/shares/a-",
        "projects/p1/shares/" + "a" * 64,
        "projects/p1/shares/a_b",
    ],
)
def test_bad_share_names_name_the_field(bad):
    with pytest.raises(InvalidArgument) as e:
        names.SHARE.parse("name", bad)
    assert e.value.field_violations[0][0] == "name"


def test_format_round_trips():
    name = names.ACCESS_RULE.format(project="p", share="s", access_rule="r")
    assert names.ACCESS_RULE.parse("name", name)["access_rule"] == "r"


def test_project_of():
    assert names.project_of("projects/p9/shares/x") == "p9"
    assert names.project_of("shareTypes/default") == ""


@pytest.mark.parametrize("bad", ["share\n", "share\x00", "../x", "a/b", "", "s" * 64])
def test_ids_refuse_newlines_nul_and_paths(bad):
    with pytest.raises(InvalidArgument) as e:
        names.check_id("share_id", bad)
    assert e.value.field_violations[0][0] == "share_id"


def test_errors_echo_at_most_a_short_prefix_of_the_value():
    with pytest.raises(InvalidArgument) as e:
        names.SHARE.parse("name", "x" * 100_000)
    assert len(e.value.message) < 200
