"""Two real worker processes, one SIGKILLed mid-batch, over 1,000 due deliveries on PostgreSQL."""

import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict

import pytest
from django.db import connections

from conversions.models import PartnerConversion
from publishers.deliveries import delivery_values
from publishers.models import DELIVERED, Delivery
from publishers.selectors import publisher_route
from tests.e2e.server import PROJECT_DIR, free_port, service_env
from tests.support.fake_publisher import FakePublisher

DELIVERIES = 1000
LEASE_SECONDS = 3.0


def outbox_fill(partner, publisher, count: int) -> None:
    alias = partner.database_alias
    route = publisher_route(publisher)
    conversions = PartnerConversion.objects.using(alias).bulk_create(
        PartnerConversion(partner_id=partner.pk, conversion_id=f"W-{n}", sub_id=f"RPID{n}", is_processed=True)
        for n in range(count)
    )
    Delivery.objects.using(alias).bulk_create(
        Delivery(
            conversion_id=conversion.pk,
            **delivery_values(
                route=route,
                conversion={"conversion_id": conversion.conversion_id, "sub_id": conversion.sub_id},
                partner=partner,
                event="recorded",
                source="postback",
            ),
        )
        for conversion in conversions
    )
    connections[alias].close()


def start_worker(env: dict[str, str], log_path) -> subprocess.Popen:
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [sys.executable, "manage.py", "deliver_postbacks"],
            cwd=PROJECT_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
@pytest.mark.direct_postgres
def test_two_workers_and_one_killed_mid_batch_send_every_delivery_never_concurrently(involve, make_publisher, tmp_path):
    with FakePublisher(delay=0.05) as fake:
        publisher = make_publisher(url_template=fake.url + "/pb?c={conversion_id}&k={idempotency_key}")
        outbox_fill(involve, publisher, DELIVERIES)
        default = connections["default"].settings_dict
        env = service_env(
            DATABASE_URL=f"postgres://root@127.0.0.1:5432/{default['NAME']}",
            OUTBOUND_ALLOW_PRIVATE="1",
            DELIVERY_LEASE_SECONDS=str(LEASE_SECONDS),
            # One wave per batch, each send under 2.5 s: a live worker's lease outlasts its
            # sends (publishers.W001), and each delivery is sent right after its claim.
            DELIVERY_BATCH_SIZE="16",
            DELIVERY_CONCURRENCY="16",
            DELIVERY_CONNECT_TIMEOUT="0.5",
            DELIVERY_READ_TIMEOUT="2",
            DELIVERY_POLL_SECONDS="0.2",
        )
        victim = start_worker(env, tmp_path / "victim.log")
        metrics_port = free_port()
        survivor = start_worker({**env, "DELIVERY_METRICS_PORT": str(metrics_port)}, tmp_path / "survivor.log")
        try:
            deadline = time.monotonic() + 120
            while len(fake.requests()) < 150:  # both are sending by now
                assert time.monotonic() < deadline, (tmp_path / "victim.log").read_text()
                time.sleep(0.01)
            # Answers slow to a second: each worker surely has sends in flight when one is killed.
            fake.delay = 1.0
            time.sleep(0.5)
            victim.send_signal(signal.SIGKILL)
            killed_at = time.time()
            victim.wait(timeout=10)
            fake.delay = 0.05
            outbox = Delivery.objects.using(involve.database_alias)
            while outbox.exclude(state=DELIVERED).exists():
                assert time.monotonic() < deadline, (tmp_path / "survivor.log").read_text()
                time.sleep(0.2)
            connections[involve.database_alias].close()
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        finally:
            survivor.send_signal(signal.SIGTERM)
            code = survivor.wait(timeout=30)
            if victim.poll() is None:
                victim.kill()
        assert code == 0, (tmp_path / "survivor.log").read_text()  # a graceful stop
        received = fake.requests()
    # the worker's own metrics: what it delivered, by publisher and outcome
    assert 'publisher_deliveries_total{outcome="delivered",publisher="rampup"}' in metrics

    keys = set(Delivery.objects.using(involve.database_alias).values_list("idempotency_key", flat=True))
    by_key = defaultdict(list)
    for request in received:
        by_key[request.query["k"][0]].append(request)
    assert set(by_key) == keys and len(keys) == DELIVERIES  # every one sent, none lost
    repeats = 0
    for requests in by_key.values():
        requests.sort(key=lambda r: r.started)
        assert {r.headers["idempotency-key"] for r in requests} == {requests[0].query["k"][0]}
        for earlier, later in zip(requests, requests[1:], strict=False):
            repeats += 1
            assert later.started >= earlier.finished, "sent twice concurrently"
            # claimed again only once the killed worker's lease expired (it was sent right after its claim)
            assert later.started - earlier.started >= LEASE_SECONDS - 1.0
            assert earlier.started <= killed_at
    assert repeats > 0, "the killed worker held no leases: it was not killed mid-batch"
