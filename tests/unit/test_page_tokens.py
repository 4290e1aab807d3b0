"""Page tokens are sealed: they reveal no key, cannot be altered or forged, and are
good only for the list that issued them."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.fernet import Fernet

from sharemesh.runtime import page_tokens
from sharemesh.runtime.errors import InvalidArgument
from sharemesh.runtime.page_tokens import PageTokens, Position

SHARES = page_tokens.binding("/sharemesh/shares/projects/alpha/shares/")
ACTIVE = page_tokens.binding("/sharemesh/shares/projects/alpha/shares/", "state=ACTIVE")
OTHER = page_tokens.binding("/sharemesh/shares/projects/beta/shares/")


def _refused(tokens: PageTokens, bound_to: str, token: str) -> str:
    with pytest.raises(InvalidArgument) as error:
        tokens.read(bound_to, token)
    field, description = error.value.field_violations[0]
    assert field == "page_token"
    return description


def test_round_trip_and_first_page() -> None:
    tokens = PageTokens(Fernet.generate_key())
    token = tokens.issue(SHARES, Position("data-7", 42))
    assert tokens.read(SHARES, token) == Position("data-7", 42)
    assert tokens.read(SHARES, "") is None


def test_a_token_reveals_no_key() -> None:
    token = PageTokens(Fernet.generate_key()).issue(SHARES, Position("secret-share", 42))
    raw = base64.urlsafe_b64decode(token)
    assert b"secret-share" not in raw and b"sharemesh" not in raw


def test_another_api_process_with_the_same_secret_reads_it() -> None:
    secret = Fernet.generate_key()
    token = PageTokens(secret).issue(SHARES, Position("a", 1))
    assert PageTokens(secret).read(SHARES, token) == Position("a", 1)


@pytest.mark.parametrize("position", [0, 10, 60, -5])
def test_a_tampered_token_is_refused(position: int) -> None:
    tokens = PageTokens(Fernet.generate_key())
    token = tokens.issue(SHARES, Position("a", 1))
    flipped = "A" if token[position] != "A" else "B"
    tampered = token[:position] + flipped + token[position + 1 :]
    assert _refused(tokens, SHARES, tampered) == page_tokens.NOT_ISSUED


def test_a_token_of_another_mesh_is_refused() -> None:
    foreign = PageTokens(Fernet.generate_key()).issue(SHARES, Position("a", 1))
    assert _refused(PageTokens(Fernet.generate_key()), SHARES, foreign) == page_tokens.NOT_ISSUED


@pytest.mark.parametrize(
    "forged",
    [
        # What tokens were before: base64 JSON of the etcd key and the revision.
        base64.urlsafe_b64encode(
            json.dumps({"k": "/sharemesh/shares/projects/alpha/shares/a", "r": 1}).encode()
        ).decode(),
        "garbage!",
        "x" * 5000,
        "\x00",
    ],
)
def test_forged_tokens_are_refused(forged: str) -> None:
    tokens = PageTokens(Fernet.generate_key())
    assert _refused(tokens, SHARES, forged) == page_tokens.NOT_ISSUED
    assert not tokens.issued(forged)


@pytest.mark.parametrize("other", [ACTIVE, OTHER])
def test_a_token_of_another_list_is_refused(other: str) -> None:
    tokens = PageTokens(Fernet.generate_key())
    token = tokens.issue(SHARES, Position("a", 1))
    assert tokens.issued(token)
    assert "another list" in _refused(tokens, other, token)
