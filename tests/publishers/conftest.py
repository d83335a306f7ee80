"""Fixtures for the forwarding tests: a fake publisher on 127.0.0.1 and publishers aimed at it."""

import datetime
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.test import override_settings
from django.utils import timezone

from publishers.models import Publisher
from publishers.selectors import publisher_directory
from publishers.services import publisher_save
from tests.support.fake_publisher import FakePublisher


@pytest.fixture
def fake_publisher() -> Iterator[FakePublisher]:
    with FakePublisher() as fake:
        yield fake


@pytest.fixture(autouse=True)
def _outbound_to_the_fake_publisher() -> Iterator[None]:
    # The fake publisher listens on 127.0.0.1: a private address, refused by default.
    with override_settings(OUTBOUND_ALLOW_PRIVATE=True):
        publisher_directory.clear()
        yield
        publisher_directory.clear()


@pytest.fixture
def make_publisher(live_db) -> Callable[..., Publisher]:
    def make(*, partners: list | None = None, **fields: Any) -> Publisher:
        values = {
            "code": "rampup",
            "name": "RAMPUP",
            "match_regex": "^(RAMPUP|RPID.*)",
            "url_template": "http://127.0.0.1:1/pb?click={click_id}",
            "events": ["recorded", "approved", "rejected", "paid"],
            "payout_kind": "percent_sale",
            "payout_value": Decimal("1"),
            **fields,
        }
        publisher = Publisher(**values)
        publisher.full_clean()
        publisher.save()
        if partners:
            publisher.partners.set(partners)
        publisher_save(publisher=publisher)
        return publisher

    return make


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime.datetime | None = None):
        # Ahead of the real time the deliveries of a test are written at: they are due.
        self.now = start or timezone.now() + datetime.timedelta(minutes=5)

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += datetime.timedelta(**delta)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
