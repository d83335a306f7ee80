"""The test send (publishers.services.publisher_test_send): what the publisher receives; nothing is stored."""

import json

from django.test import override_settings

from conversions.ingest.access import postback_signature
from publishers.services import publisher_test_send
from tests.publishers.test_forwarding import deliveries, involve_postback


def test_the_newest_matching_conversion_is_sent_signed_as_event_test_and_nothing_is_stored(
    client, involve, make_publisher, fake_publisher
):
    involve_postback(client, conversion_id="OLDER", aff_sub="RPID-1")
    involve_postback(client, conversion_id="NEWER", aff_sub="RPID-2")
    involve_postback(client, conversion_id="NEWEST", aff_sub="OPPO-3")  # not the publisher's
    publisher = make_publisher(
        url_template=fake_publisher.url + "/pb?c={conversion_id}&s={sub_id}&e={event}&p={payout}",
        signing_secret="t3st-secret",
    )

    sent = publisher_test_send(publisher=publisher)

    [request] = fake_publisher.requests()
    assert request.method == "GET" and request.path == "/pb"
    assert request.query == {"c": ["NEWER"], "s": ["RPID-2"], "e": ["test"], "p": ["1.23"]}
    query = "c=NEWER&s=RPID-2&e=test&p=1.23"
    assert request.headers["x-postback-signature"] == postback_signature(
        secret="t3st-secret", query_string=query.encode(), body=b"", timestamp=request.headers["x-postback-timestamp"]
    )
    assert len(request.headers["idempotency-key"]) == 32
    assert (sent.method, sent.url) == ("GET", f"{fake_publisher.url}/pb?{query}")
    assert sent.answer.succeeded and sent.answer.status_code == 200 and sent.answer.excerpt == '{"ok": true}'
    assert not deliveries(involve).exists()


def test_a_post_publisher_receives_the_json_body_and_its_answer_is_returned(
    client, involve, make_publisher, fake_publisher
):
    involve_postback(client, conversion_id="P-1", aff_sub="RAMPUP-9")
    publisher = make_publisher(url_template=fake_publisher.url + "/hook?c={conversion_id}", http_method="POST")
    fake_publisher.answers(503)

    sent = publisher_test_send(publisher=publisher)

    [request] = fake_publisher.requests()
    body = json.loads(request.body)
    assert request.method == "POST" and request.headers["content-type"] == "application/json"
    assert (body["conversion_id"], body["sub_id"], body["event"]) == ("P-1", "RAMPUP-9", "test")
    assert "x-postback-signature" not in request.headers  # no secret, no signature
    assert not sent.answer.succeeded and sent.answer.status_code == 503
    assert not deliveries(involve).exists()


def test_nothing_is_sent_when_no_recent_conversion_matches(client, involve, make_publisher, fake_publisher):
    involve_postback(client, conversion_id="X-1", aff_sub="OPPO-1")
    publisher = make_publisher(url_template=fake_publisher.url + "/pb?c={conversion_id}")

    assert publisher_test_send(publisher=publisher) is None
    assert fake_publisher.requests() == []


def test_a_private_destination_is_refused_as_the_worker_refuses_it(client, involve, make_publisher, fake_publisher):
    involve_postback(client, conversion_id="R-1", aff_sub="RPID-1")
    publisher = make_publisher(url_template=fake_publisher.url + "/pb?c={conversion_id}")

    with override_settings(OUTBOUND_ALLOW_PRIVATE=False):
        sent = publisher_test_send(publisher=publisher)

    assert fake_publisher.requests() == []
    assert sent.answer.status_code is None and "127.0.0.1 is a loopback address" in sent.answer.error
