"""What the admin's dashboards draw: the stats selectors' numbers shaped as charts.

Every number comes from conversions/selectors.py (the `/stats` API's selectors); this
module only arranges them into Chart.js datasets (conversions/static/conversions/
dashboard.js draws them) and the tables shown beside the charts.

Each dataset names what it counts (`kind`: an outcome or a status), so a row's kind and
the network's status never share a colour: invalid postbacks amber, rejected sales red.
"""

from decimal import Decimal
from typing import Any

from conversions.selectors import ConversionStats, PartnerStats, PrefixTotals
from partners.lifecycle import STATUSES

NO_STATUS = "no status"


def _number(value: Decimal | int) -> float | int:
    return float(value) if isinstance(value, Decimal) else value


def _chart(chart_id: str, title: str, labels: list[str], datasets: list[dict[str, Any]], **options: Any) -> dict:
    return {"id": chart_id, "title": title, "labels": labels, "datasets": datasets, **options}


def _statuses(stats: ConversionStats) -> list[str | None]:
    present = {status for day in stats.days for status in day.statuses}
    ordered: list[str | None] = [status for status in STATUSES if status in present]
    ordered += sorted(status for status in present if status is not None and status not in STATUSES)
    return ordered + ([None] if None in present else [])


def _status_kind(status: str | None) -> str:
    return f"status:{status}" if status in STATUSES else "status:other"


def dashboard_partner_charts(*, stats: ConversionStats, prefixes: list[PrefixTotals]) -> list[dict[str, Any]]:
    """The charts of one partner's dashboard."""
    days = [day.day.isoformat() for day in stats.days]
    statuses = _statuses(stats)
    outcomes = _chart(
        "chart-outcomes",
        "Postbacks per day",
        days,
        [
            {"label": "originals", "kind": "outcome:original", "data": [day.originals for day in stats.days]},
            {"label": "duplicates", "kind": "outcome:duplicate", "data": [day.duplicates for day in stats.days]},
            {"label": "invalid", "kind": "outcome:invalid", "data": [day.rejected for day in stats.days]},
        ],
        stacked=True,
    )
    by_status = _chart(
        "chart-statuses",
        "Originals per day, by status",
        days,
        [
            {
                "label": status or NO_STATUS,
                "kind": _status_kind(status),
                "data": [day.statuses[status].originals if status in day.statuses else 0 for day in stats.days],
            }
            for status in statuses
        ],
        stacked=True,
    )
    revenue = _chart(
        "chart-revenue",
        "Revenue (USD sales) per day, by status, and earnings",
        days,
        [
            {
                "label": f"sales: {status or NO_STATUS}",
                "kind": _status_kind(status),
                "data": [
                    _number(day.statuses[status].usd_sale_amount) if status in day.statuses else 0 for day in stats.days
                ],
                "stack": "sales",
            }
            for status in statuses
        ]
        + [
            {
                "label": "earnings",
                "type": "line",
                "data": [_number(day.usd_earning) for day in stats.days],
            }
        ],
        stacked=True,
    )
    offers = _chart(
        "chart-offers",
        "Top offers (originals)",
        [offer.offer_name or offer.offer_id or "-" for offer in stats.top_offers],
        [{"label": "originals", "kind": "outcome:original", "data": [offer.originals for offer in stats.top_offers]}],
        horizontal=True,
    )
    top_prefixes = _chart(
        "chart-prefixes",
        "Top sub_id prefixes (originals)",
        [prefix.prefix if prefix.prefix is not None else "(no sub_id)" for prefix in prefixes],
        [{"label": "originals", "kind": "outcome:original", "data": [prefix.originals for prefix in prefixes]}],
        horizontal=True,
    )
    return [outcomes, by_status, revenue, offers, top_prefixes]


def dashboard_overview_charts(*, results: list[PartnerStats]) -> list[dict[str, Any]]:
    """The charts of the all-partners overview: each partner's share of every day."""
    readable = [result for result in results if result.stats is not None]
    days = [day.day.isoformat() for day in readable[0].stats.days] if readable else []
    originals = _chart(
        "chart-overview-originals",
        "Originals per day, by partner",
        days,
        [
            {"label": result.partner.partner_code, "data": [day.originals for day in result.stats.days]}
            for result in readable
        ],
        stacked=True,
    )
    revenue = _chart(
        "chart-overview-revenue",
        "Revenue (USD sales) per day, by partner",
        days,
        [
            {
                "label": result.partner.partner_code,
                "data": [_number(day.usd_sale_amount) for day in result.stats.days],
            }
            for result in readable
        ],
        stacked=True,
    )
    return [originals, revenue]


def dashboard_status_rows(stats: ConversionStats) -> list[dict[str, Any]]:
    """The table beside the status charts: one row per day, one column per status."""
    statuses = _statuses(stats)
    return [
        {
            "day": day.day,
            "cells": [
                (day.statuses[status].originals, day.statuses[status].usd_sale_amount)
                if status in day.statuses
                else (0, Decimal("0.00"))
                for status in statuses
            ],
        }
        for day in stats.days
    ]


def dashboard_status_names(stats: ConversionStats) -> list[str]:
    return [status or NO_STATUS for status in _statuses(stats)]
