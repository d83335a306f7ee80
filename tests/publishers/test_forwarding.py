"""A conversion recorded or changed reaches the publishers it matches, through the outbox and the worker."""

import json
from decimal import Decimal

import pytest

from conversions.ingest.access import postback_signature
from publishers.models import DELIVERED, Delivery, PublisherOfferPayout
from publishers.services import publisher_save
from publishers.worker import DeliveryWorker
from tests.conftest import partner_rows

TEMPLATE = (
    "{base}/pb?cid={conversion_id}&click={click_id}&sub={sub_id}&media={media_id}&offer={offer_id}"
    "&name={offer_name}&status={status}&event={event}&payout={payout}&sale={sale_amount}&earn={earning}"
    "&cur={currency}&at={conversion_datetime}&net={partner_code}&pub={publisher_code}&key={idempotency_key}"
)


def involve_postback(client, conversion_id="C-1", aff_sub="RPID42", status="pending", **extra):
    params = {
        "conversion_id": conversion_id,
        "aff_sub": aff_sub,
        "aff_sub2": "media 7",
        "aff_sub3": "click&1",
        "offer_id": "OF9",
        "offer_name": "Shopee ID (Media Buyers) - CPS",
        "usd_sale_amount": "123.45",
        "usd_payout": "10.00",
        "datetime_conversion": "2026-01-05 10:00:00",
        "conversion_status": status,
        "conversion_currency": "IDR",
        **extra,
    }
    response = client.get("/partner/involve/event", params)
    assert response.status_code == 200, response.content
    return response.json()


def deliveries(partner):
    return Delivery.objects.using(partner.database_alias).order_by("id")


def test_recorded_conversion_reaches_the_matching_publisher_with_every_macro(
    client, involve, make_publisher, fake_publisher
):
    rampup = make_publisher(partners=[involve], url_template=TEMPLATE.replace("{base}", fake_publisher.url))
    PublisherOfferPayout.objects.create(
        publisher=rampup,
        offer="Shopee ID (Media Buyers) - CPS",
        payout_kind="percent_sale",
        payout_value=Decimal("2.5"),
    )
    publisher_save(publisher=rampup)
    make_publisher(
        code="deepleaper",
        name="DeepLeaper",
        match_regex="^(OPPO|VIVO|OEM2|OEM3).*",
        url_template=fake_publisher.url + "/deep?c={conversion_id}",
    )

    involve_postback(client)
    stored = partner_rows(involve).get()
    # written with the conversion, in its database: one, for the publisher it matches
    [delivery] = deliveries(involve)
    assert delivery.conversion_id == stored.pk and delivery.publisher_id == rampup.pk

    result = DeliveryWorker().run_once()
    assert result.delivered == 1
    [request] = fake_publisher.requests()
    assert request.path == "/pb"
    q = {name: values[0] for name, values in request.query.items()}
    assert q == {
        "cid": "C-1",
        "click": "click&1",
        "sub": "RPID42",
        "media": "media 7",
        "offer": "OF9",
        "name": "Shopee ID (Media Buyers) - CPS",
        "status": "pending",
        "event": "recorded",
        "payout": "3.09",  # 2.5% of 123.45 = 3.08625, half-up to cents (the offer's override)
        "sale": "123.45",
        "earn": "10.00",
        "cur": "IDR",
        "at": "2026-01-05T10:00:00+00:00",
        "net": "involve_asia",
        "pub": "rampup",
        "key": delivery.idempotency_key,
    }
    assert request.headers["idempotency-key"] == delivery.idempotency_key
    delivery.refresh_from_db()
    assert delivery.state == DELIVERED and delivery.attempts == 1 and delivery.payout == Decimal("3.09")


def test_a_status_change_sends_the_configured_event_and_others_nothing(client, involve, make_publisher, fake_publisher):
    make_publisher(
        url_template=fake_publisher.url + "/pb?s={status}&e={event}&p={payout}",
        events=["approved"],
        payout_kind="percent_earning",
        payout_value=Decimal("10"),
    )
    involve_postback(client, status="pending")
    assert not deliveries(involve).exists()  # `recorded` is not one of its events

    body = involve_postback(client, status="approved", usd_payout="12.35")
    assert body["status"] == "updated"
    [delivery] = deliveries(involve)
    assert delivery.event == "approved"
    DeliveryWorker().run_once()
    [request] = fake_publisher.requests()
    assert request.query == {"s": ["approved"], "e": ["approved"], "p": ["1.24"]}  # 10% of 12.35 = 1.235 -> 1.24


def test_a_non_matching_publisher_gets_nothing(client, involve, rector, make_publisher, fake_publisher):
    make_publisher(url_template=fake_publisher.url + "/pb", partners=[rector])  # another network
    make_publisher(
        code="mkk", name="MKK", match_regex="", match_prefixes="MKK", url_template=fake_publisher.url + "/mkk"
    )
    involve_postback(client, aff_sub="RPID42")
    assert not deliveries(involve).exists()
    assert DeliveryWorker().run_once().claimed == 0
    assert fake_publisher.requests() == []


def test_prefixes_match_on_media_id_and_post_sends_a_signed_json_body(client, involve, make_publisher, fake_publisher):
    make_publisher(
        match_regex="",
        match_prefixes="media, other",
        match_field="media_id",
        http_method="POST",
        payout_kind="fixed",
        payout_value=Decimal("0.5"),
        signing_secret="s3cret-value",
        url_template=fake_publisher.url + "/post?c={conversion_id}",
    )
    involve_postback(client)
    DeliveryWorker().run_once()
    [request] = fake_publisher.requests()
    body = json.loads(request.body)
    assert request.method == "POST" and body["payout"] == "0.50" and body["media_id"] == "media 7"
    expected = postback_signature(
        secret="s3cret-value",
        query_string=b"c=C-1",
        body=request.body,
        timestamp=request.headers["x-postback-timestamp"],
    )
    assert request.headers["x-postback-signature"] == expected
    # the secret is in no stored row
    [delivery] = deliveries(involve)
    stored = json.dumps(
        [delivery.url, delivery.body, delivery.last_error, list(delivery.attempt_log.values())], default=str
    )
    assert "s3cret-value" not in stored


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_reprocessed_rejected_postback_fires_too(client, involve, make_publisher, fake_publisher):
    from conversions.ingest.reprocess import conversion_reprocess

    make_publisher(url_template=fake_publisher.url + "/pb?c={conversion_id}")
    response = client.get(
        "/partner/involve/event", {"conversion_id": "R-1", "aff_sub": "RAMPUP1", "usd_sale_amount": "x"}
    )
    assert response.status_code == 400
    rejected = partner_rows(involve).get()
    rejected.raw_data = {**rejected.raw_data, "usd_sale_amount": "5.00"}
    rejected.save(using=involve.database_alias)
    conversion_reprocess(partner=involve, conversion=rejected)
    [delivery] = deliveries(involve)
    assert delivery.source == "reprocess" and delivery.event == "recorded"


def test_concurrent_repeats_of_a_conversion_write_one_delivery(client, involve, make_publisher, fake_publisher):
    from django.test import Client

    from tests.conftest import run_concurrently

    make_publisher(url_template=fake_publisher.url + "/pb?c={conversion_id}")

    def post(_index):
        return (
            Client()
            .get("/partner/involve/event", {"conversion_id": "RACE-1", "aff_sub": "RPID1", "usd_sale_amount": "5"})
            .json()["status"]
        )

    outcomes = run_concurrently(post, 8)
    assert sorted(outcomes) == ["duplicate"] * 7 + ["success"]
    [delivery] = deliveries(involve)
    assert delivery.conversion_id == partner_rows(involve).get(is_duplicate=False).pk


def test_the_configuration_database_down_before_publishers_load_is_a_503_not_the_partners_fault(
    client, involve, make_publisher, monkeypatch
):
    from django.db import OperationalError

    from infra.databases.breaker import database_guard
    from publishers import deliveries as deliveries_module
    from publishers.models import Publisher
    from publishers.selectors import PublisherDirectory

    make_publisher(partners=[involve])
    monkeypatch.setattr(deliveries_module, "publisher_directory", PublisherDirectory())  # never loaded here

    def down(*args, **kwargs):
        raise OperationalError("connection to server at 127.0.0.1, port 5432 failed: Connection refused")

    with monkeypatch.context() as patched:
        patched.setattr(Publisher.objects, "filter", down)
        response = client.get("/partner/involve/event", {"conversion_id": "C-9", "aff_sub": "RPID42"})
    assert response.status_code == 503
    assert response.json()["message"] == "The configuration database is unavailable; retry later"
    assert response.headers["Retry-After"]
    assert not partner_rows(involve).exists()  # nothing stored: the retry will forward it
    assert not database_guard(involve.database_alias).is_open  # the partner's database did nothing wrong

    assert involve_postback(client, conversion_id="C-9")["status"] == "success"
    assert deliveries(involve).count() == 1
