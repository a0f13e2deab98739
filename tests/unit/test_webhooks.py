"""Webhook signatures (Standard Webhooks) and webhook URLs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agentcluster import api
from agentcluster.webhooks import sign, verify, webhook_url_problem

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = b'{"test": 2432232314}'


def test_the_signature_is_the_standard_webhooks_one() -> None:
    # The example of the Standard Webhooks specification.
    signature = sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, BODY)
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def _headers(signature: str, timestamp: int = 1614265330) -> dict[str, str]:
    return {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def test_verify_accepts_only_the_signed_body_recently_signed_with_the_secret() -> None:
    signature = sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, BODY)
    assert verify(SECRET, _headers(signature), BODY, now=1614265330 + 60)
    assert verify(SECRET, _headers(f"v1,bogus {signature}"), BODY, now=1614265330)
    assert not verify(SECRET, _headers(signature), BODY + b" ", now=1614265330)
    other = "whsec_" + "A" * 43 + "="
    assert not verify(other, _headers(signature), BODY, now=1614265330)
    assert not verify(SECRET, _headers(signature), BODY, now=1614265330 + 301)  # replayed late
    assert not verify(SECRET, {"webhook-signature": signature}, BODY, now=1614265330)
    assert not verify(SECRET, _headers(signature, timestamp=0) | {"webhook-timestamp": "x"}, BODY)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "http://user:pw@example.com/hook",
        "http://127.0.0.1:8265\\@example.com/",
        "/relative",
        "http://example.com:99999/",
    ],
)
def test_ambiguous_or_non_http_webhooks_are_refused_before_anything_is_stored(url: str) -> None:
    assert webhook_url_problem(url) is not None
    with pytest.raises(ValidationError):
        api.SessionCreateIn(agent="tester", webhook=url)
    with pytest.raises(ValidationError):
        api.MessageIn(content="hi", webhook=url)


def test_plain_webhooks_are_accepted() -> None:
    assert webhook_url_problem("https://hooks.example.com/agentcluster?x=1") is None
    assert api.MessageIn(content="hi", webhook="http://127.0.0.1:9000/hook").webhook
