"""The delivery worker: backoff with a controllable clock, pausing a failing publisher, backfill, SSRF refusals."""

import logging

import pytest
from django.test import override_settings

from publishers.models import DELIVERED, FAILED, PENDING, Delivery, Publisher
from publishers.outbound import OutboundRefused, destination_resolve
from publishers.services import publisher_backfill, publisher_resume
from publishers.worker import DeliveryWorker
from tests.publishers.test_forwarding import deliveries, involve_postback


def test_three_failures_then_success_delivered_on_the_fourth_try_with_backoff(
    client, involve, make_publisher, fake_publisher, clock
):
    make_publisher(url_template=fake_publisher.url + "/pb?c={conversion_id}")
    involve_postback(client)
    fake_publisher.answers(500, 503, 404)
    worker = DeliveryWorker(clock=clock, batch_size=1)

    assert worker.run_once().retried == 1  # 1st try: 500
    for waited, tries in ((59, 1), (1, 2), (299, 2), (1, 3), (1799, 3), (1, 4)):
        clock.advance(seconds=waited)
        worker.run_once()
        assert len(fake_publisher.requests()) == tries, f"after {waited}s more"
    [delivery] = deliveries(involve)
    assert delivery.state == DELIVERED and delivery.attempts == 4
    log = list(delivery.attempt_log.order_by("number"))
    assert [a.number for a in log] == [1, 2, 3, 4]
    assert [a.status_code for a in log] == [500, 503, 404, 200]
    assert log[-1].response_excerpt == '{"ok": true}'
    gaps = [
        (later.started_at - earlier.started_at).total_seconds() for earlier, later in zip(log, log[1:], strict=False)
    ]
    assert gaps == [60, 300, 1800]
    # every try carried the same idempotency key
    assert {r.headers["idempotency-key"] for r in fake_publisher.requests()} == {delivery.idempotency_key}


def test_failed_after_the_last_backoff(client, involve, make_publisher, fake_publisher, clock):
    make_publisher(url_template=fake_publisher.url + "/pb")
    involve_postback(client)
    fake_publisher.default_status = 500
    worker = DeliveryWorker(clock=clock, batch_size=1)
    for waited in (0, 60, 300, 1800, 7200, 43200, 86400):
        clock.advance(seconds=waited)
        worker.run_once()
    [delivery] = deliveries(involve)
    assert delivery.state == FAILED and delivery.attempts == 7
    clock.advance(days=30)
    worker.run_once()
    assert len(fake_publisher.requests()) == 7


def test_ten_failures_in_a_row_pause_the_publisher_until_resumed(
    client, involve, make_publisher, fake_publisher, clock, caplog
):
    publisher = make_publisher(url_template=fake_publisher.url + "/pb?c={conversion_id}")
    for number in range(12):
        involve_postback(client, conversion_id=f"P-{number}")
    fake_publisher.default_status = 500
    worker = DeliveryWorker(clock=clock, batch_size=1)

    with caplog.at_level(logging.ERROR, logger="publishers.delivery"):
        worker.run_once()
    assert len(fake_publisher.requests()) == 10
    publisher.refresh_from_db()
    assert publisher.is_paused and "10 consecutive" in publisher.paused_reason
    [line] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "publisher=rampup paused after 10 consecutive failed deliveries" in line.getMessage()

    clock.advance(days=2)  # every retry is due: still nothing is sent
    worker.run_once()
    assert len(fake_publisher.requests()) == 10

    fake_publisher.default_status = 200
    publisher_resume(publisher=publisher)
    worker.run_once()
    assert deliveries(involve).filter(state=DELIVERED).count() == 12
    assert Publisher.objects.get(pk=publisher.pk).consecutive_failures == 0


def test_a_dead_publisher_gets_no_more_than_the_failure_limit_from_a_whole_batch(
    client, involve, make_publisher, fake_publisher, clock
):
    """A batch holds up to 128 deliveries, sent 32 at a time: a publisher that answers none
    of them receives 10 (PUBLISHER_PAUSE_AFTER_FAILURES), not the batch."""
    publisher = make_publisher(url_template=fake_publisher.url + "/pb?c={conversion_id}")
    for number in range(60):
        involve_postback(client, conversion_id=f"D-{number}")
    fake_publisher.default_status = 500
    worker = DeliveryWorker(clock=clock, batch_size=128, concurrency=32)

    result = worker.run_once()
    assert len(fake_publisher.requests()) == 10
    assert (result.claimed, result.retried, result.held) == (60, 10, 50)
    assert Publisher.objects.get(pk=publisher.pk).is_paused
    untouched = deliveries(involve).filter(attempts=0)
    # the held ones were given back: no lease to wait for, no attempt counted
    assert untouched.count() == 50 and not untouched.filter(leased_until__isnull=False).exists()

    fake_publisher.default_status = 200
    publisher_resume(publisher=publisher)
    worker.run_once()
    assert len(fake_publisher.requests()) == 60  # the 50 held ones at once; the 10 retried wait their backoff
    worker.close()


def test_a_publisher_already_at_the_failure_limit_is_paused_and_nothing_is_claimed_for_it(
    client, involve, make_publisher, fake_publisher, clock, settings
):
    """E.g. PUBLISHER_PAUSE_AFTER_FAILURES lowered while a publisher had failures: the worker
    pauses it instead of claiming and giving back its deliveries on every pass."""
    publisher = make_publisher(url_template=fake_publisher.url + "/pb?c={conversion_id}")
    involve_postback(client, conversion_id="L-1")
    Publisher.objects.filter(pk=publisher.pk).update(consecutive_failures=4)
    settings.PUBLISHER_PAUSE_AFTER_FAILURES = 3
    worker = DeliveryWorker(clock=clock, batch_size=128, concurrency=32)
    result = worker.run_once()
    assert (result.claimed, len(fake_publisher.requests())) == (0, 0)
    assert Publisher.objects.get(pk=publisher.pk).is_paused
    worker.close()


def test_a_publisher_that_stops_answering_mid_batch_gets_nothing_after_the_limit(
    client, involve, make_publisher, fake_publisher, clock
):
    publisher = make_publisher(url_template=fake_publisher.url + "/pb?c={conversion_id}")
    for number in range(60):
        involve_postback(client, conversion_id=f"M-{number}")
    fake_publisher.answers(*[200] * 5)
    fake_publisher.default_status = 503
    worker = DeliveryWorker(clock=clock, batch_size=128, concurrency=4)
    worker.run_once()
    received = len(fake_publisher.requests())
    # 5 answered, then 10 failures in a row; at most the sends already in flight then
    assert 15 <= received <= 15 + 4, received
    assert Publisher.objects.get(pk=publisher.pk).is_paused
    worker.close()


def test_backfill_sends_exactly_the_matching_conversions_never_delivered(
    client, involve, make_publisher, fake_publisher, clock
):
    for number, sub in enumerate(["RAMPUP-a", "RPID-b", "OPPO-c", "RPIDd", "MKK-e"]):
        involve_postback(client, conversion_id=f"B-{number}", aff_sub=sub)
    old = involve_postback(client, conversion_id="B-old", aff_sub="RAMPUP-old")["conversion"]
    from conversions.models import PartnerConversion

    PartnerConversion.objects.using(involve.database_alias).filter(conversion_id="B-old").update(
        received_at=clock() - __import__("datetime").timedelta(days=40)
    )
    assert old and not deliveries(involve).exists()  # the publisher did not exist yet

    publisher = make_publisher(url_template=fake_publisher.url + "/pb?c={conversion_id}")
    involve_postback(client, conversion_id="B-live", aff_sub="RPID-live")  # delivered by the hook
    worker = DeliveryWorker(clock=clock)
    worker.run_once()

    assert publisher_backfill(publisher=publisher, days=30) == 3
    worker.run_once()
    sent = sorted(r.query["c"][0] for r in fake_publisher.requests())
    assert sent == ["B-0", "B-1", "B-3", "B-live"]
    assert {d.source for d in deliveries(involve)} == {"postback", "backfill"}

    assert publisher_backfill(publisher=publisher, days=30) == 0
    worker.run_once()
    assert len(fake_publisher.requests()) == 4


def test_backfill_sends_only_the_events_the_publisher_takes(client, involve, make_publisher, fake_publisher, clock):
    involve_postback(client, conversion_id="APP-1", status="approved")
    involve_postback(client, conversion_id="PEN-1", status="pending")
    publisher = make_publisher(url_template=fake_publisher.url + "/pb?c={conversion_id}&e={event}", events=["approved"])
    assert publisher_backfill(publisher=publisher, days=7) == 1
    DeliveryWorker(clock=clock).run_once()
    [request] = fake_publisher.requests()
    assert request.query == {"c": ["APP-1"], "e": ["approved"]}
    assert [d.event for d in deliveries(involve)] == ["approved"]


def test_concurrent_backfills_count_exactly_what_each_queued(client, involve, make_publisher):
    from tests.conftest import run_concurrently

    for number in range(30):
        involve_postback(client, conversion_id=f"CB-{number}")
    publisher = make_publisher()
    counts = run_concurrently(lambda _index: publisher_backfill(publisher=publisher, days=7), 4)
    assert all(isinstance(count, int) for count in counts), counts
    stored = deliveries(involve).filter(source="backfill").count()
    assert stored == 30 and sum(counts) == 30, counts


@pytest.mark.parametrize(
    "url, resolved",
    [
        ("http://127.0.0.1:8000/pb", None),
        ("http://10.1.2.3/pb", None),
        ("http://169.254.169.254/latest/meta-data/", None),
        ("http://[::1]/pb", None),
        ("http://[::ffff:10.0.0.1]/pb", None),
        ("https://rebind.example/pb", ["10.0.0.7"]),
        ("https://metadata.example/pb", ["169.254.169.254"]),
        ("http://mixed.example/pb", ["93.184.215.14", "127.0.0.1"]),
    ],
)
def test_private_and_metadata_destinations_are_refused(url, resolved):
    def resolve(host, port):
        return resolved

    with pytest.raises(OutboundRefused):
        destination_resolve(url, allow_private=False, resolve=resolve)


def test_a_name_resolving_to_loopback_is_refused_by_the_system_resolver():
    with pytest.raises(OutboundRefused, match="loopback"):
        destination_resolve("http://localhost:9/pb", allow_private=False)


def test_public_destination_goes_to_the_checked_address():
    checked = destination_resolve(
        "https://pub.example:8443/p?a=1", allow_private=False, resolve=lambda h, p: ["93.184.215.14"]
    )
    assert (checked.address, checked.host_header, checked.target) == ("93.184.215.14", "pub.example:8443", "/p?a=1")


def test_metadata_is_refused_even_with_private_allowed():
    with pytest.raises(OutboundRefused, match="metadata"):
        destination_resolve("http://169.254.169.254/", allow_private=True)


def test_worker_refuses_a_private_destination_and_logs_why(client, involve, make_publisher, fake_publisher, clock):
    make_publisher(url_template=fake_publisher.url + "/pb")
    involve_postback(client)
    with override_settings(OUTBOUND_ALLOW_PRIVATE=False):
        DeliveryWorker(clock=clock).run_once()
    assert fake_publisher.requests() == []
    [delivery] = deliveries(involve)
    assert delivery.state == PENDING and "127.0.0.1 is a loopback address" in delivery.last_error
    assert "refused" in delivery.attempt_log.get().error


def test_connection_goes_to_the_checked_address_with_the_host_name_kept(
    client, involve, make_publisher, fake_publisher, clock
):
    from publishers.outbound import OutboundClient

    port = fake_publisher.port
    make_publisher(url_template=f"http://publisher.test:{port}/pb")
    involve_postback(client)
    resolutions = []

    def resolve(host, port):
        resolutions.append(host)
        return ["127.0.0.1"]  # a rebinding resolver would answer differently next time: asked once per send

    outbound = OutboundClient(
        connect_timeout=2, read_timeout=2, max_response_bytes=4096, allow_private=True, resolve=resolve
    )
    DeliveryWorker(clock=clock, client=outbound).run_once()
    [request] = fake_publisher.requests()
    assert request.headers["host"] == f"publisher.test:{port}" and resolutions == ["publisher.test"]


def test_redirects_are_not_followed(client, involve, make_publisher, fake_publisher, clock):
    make_publisher(url_template=fake_publisher.url + "/pb")
    involve_postback(client)
    fake_publisher.answers(302)
    DeliveryWorker(clock=clock).run_once()
    [delivery] = deliveries(involve)
    assert delivery.state == PENDING and delivery.last_status_code == 302
    assert len(fake_publisher.requests()) == 1
    assert Delivery.objects.using(involve.database_alias).count() == 1


def test_metrics_count_deliveries_by_publisher_and_outcome_and_show_the_queue(
    client, involve, make_publisher, fake_publisher, clock
):
    make_publisher(url_template=fake_publisher.url + "/pb")
    involve_postback(client, conversion_id="M-1")
    involve_postback(client, conversion_id="M-2")
    fake_publisher.answers(500)
    DeliveryWorker(clock=clock, batch_size=1).run_once()
    with override_settings(METRICS_TOKEN="metrics-token"):
        text = client.get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-token").content.decode()
    assert 'publisher_deliveries_total{outcome="delivered",publisher="rampup"}' in text
    assert 'publisher_deliveries_total{outcome="error",publisher="rampup"}' in text
    assert "publisher_delivery_queue_depth 1.0" in text  # the failed one waits for its retry
    assert "publisher_delivery_oldest_due_seconds 0.0" in text  # it is not due yet


def test_outbound_client_times_out_and_caps_what_it_reads():
    from publishers.outbound import OutboundClient
    from tests.support.fake_publisher import FakePublisher

    with FakePublisher(delay=0.5) as slow:
        client = OutboundClient(connect_timeout=1, read_timeout=0.1, max_response_bytes=4096, allow_private=True)
        result = client.send(method="GET", url=slow.url + "/pb", headers={}, body=None)
        assert result.status_code is None and "ReadTimeoutError" in result.error
    with FakePublisher() as fake:
        client = OutboundClient(connect_timeout=1, read_timeout=1, max_response_bytes=5, allow_private=True)
        result = client.send(method="GET", url=fake.url + "/pb", headers={}, body=None)
        assert result.succeeded and result.excerpt == '{"ok"'
        client.close()


def test_a_lease_shorter_than_a_batch_may_take_to_send_is_a_warning(settings):
    from publishers.checks import delivery_lease_check

    settings.DELIVERY_BATCH_SIZE, settings.DELIVERY_CONCURRENCY = 128, 32
    settings.DELIVERY_CONNECT_TIMEOUT, settings.DELIVERY_READ_TIMEOUT = 5.0, 10.0
    settings.DELIVERY_LEASE_SECONDS = 60.0  # four waves of sends may take 60 s
    [warning] = delivery_lease_check()
    assert warning.id == "publishers.W001" and "(60 s:" in warning.msg
    settings.DELIVERY_LEASE_SECONDS = 90.0  # the default
    assert delivery_lease_check() == []
