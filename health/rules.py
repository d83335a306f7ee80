"""The rules of channel health: their defaults, a partner's overrides, and what fires.

Each rule reads a partner's signals (health/signals.py) and says whether it fires, with
its evidence (the numbers a person needs to judge it). A partner's `HealthSettings`
overrides any threshold of any rule, or switches a rule off (`{"enabled": false}`).

- silent: no postback for longer than 3x the normal 95th-percentile gap between postbacks
  at these hours of the week, and at least `floor_minutes`. Postbacks arriving at a normal
  rate of λ per minute have a 95th-percentile gap of ln(20)/λ, so "3x" means the window
  should have held 3·ln(20) ≈ 9 postbacks: silence is measured as the postbacks the last
  four weeks had in the same window of the week, hour by hour; quiet nights expect none.
- drop: the last hour under `share` of its normal (when the normal is at least `min_normal`);
  not while silent (a silence is one incident, not also a drop).
- invalid_spike / refusal_spike: the last hour's invalid share, the refusals since the last
  check, over a share and a minimum count.
- storage_failing: the partner's database did not answer the checker.
- reconciliation_drift: the last run of a report source lists more than `share` of the
  report as missing here.
- publisher_paused: a publisher of its conversions was paused (one incident per publisher).
- source_failing: the last run of an active report source failed.

Spikes and drops resolve once the rule has not fired for `resolve_after_minutes`, so a
burst that comes and goes opens one incident, not one a minute.
"""

import math
from dataclasses import dataclass, field
from typing import Any

from health.models import (
    DROP,
    INVALID_SPIKE,
    PUBLISHER_PAUSED,
    RECONCILIATION_DRIFT,
    REFUSAL_SPIKE,
    RULES,
    SILENT,
    SOURCE_FAILING,
    STORAGE_FAILING,
)

GAP_QUANTILE_ARRIVALS = math.log(20)  # arrivals expected in the 95th-percentile gap

DEFAULTS: dict[str, dict[str, Any]] = {
    SILENT: {"enabled": True, "floor_minutes": 30, "gap_multiple": 3, "resolve_after_minutes": 0},
    DROP: {"enabled": True, "share": 0.3, "min_normal": 20, "resolve_after_minutes": 30},
    INVALID_SPIKE: {"enabled": True, "share": 0.2, "min_count": 10, "resolve_after_minutes": 15},
    REFUSAL_SPIKE: {"enabled": True, "share": 0.2, "min_count": 10, "resolve_after_minutes": 15},
    STORAGE_FAILING: {"enabled": True, "resolve_after_minutes": 0},
    RECONCILIATION_DRIFT: {"enabled": True, "share": 0.02, "min_missing": 1, "resolve_after_minutes": 0},
    PUBLISHER_PAUSED: {"enabled": True, "resolve_after_minutes": 0},
    SOURCE_FAILING: {"enabled": True, "resolve_after_minutes": 0},
}
RULE_LABELS = dict(RULES)


@dataclass(frozen=True)
class Finding:
    """A rule that fires: for which subject (e.g. a publisher's code, or ""), why, with what numbers."""

    rule: str
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    subject: str = ""


def rule_settings(overrides: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Every rule's thresholds: the defaults under the partner's overrides."""
    merged = {rule: dict(values) for rule, values in DEFAULTS.items()}
    for rule, values in (overrides or {}).items():
        if rule in merged and isinstance(values, dict):
            merged[rule].update(values)
    return merged


def overrides_error(overrides: Any) -> str:
    """Why a HealthSettings.overrides value is not valid ('' when it is)."""
    if not isinstance(overrides, dict):
        return "a JSON object: rule -> its thresholds"
    for rule, values in overrides.items():
        if rule not in DEFAULTS:
            return f"'{rule}' is not a rule (rules: {', '.join(DEFAULTS)})"
        if not isinstance(values, dict):
            return f"'{rule}': an object of thresholds, e.g. {DEFAULTS[rule]}"
        for name, value in values.items():
            if name not in DEFAULTS[rule]:
                return f"'{rule}': '{name}' is not one of its thresholds ({', '.join(DEFAULTS[rule])})"
            default = DEFAULTS[rule][name]
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    return f"'{rule}.{name}': true or false"
            elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                return f"'{rule}.{name}': a number of at least 0"
    return ""


def findings(signals: dict[str, Any], settings: dict[str, dict[str, Any]]) -> list[Finding]:
    """What fires for these signals under these thresholds."""
    found: list[Finding] = []
    on = {rule: values.get("enabled", True) for rule, values in settings.items()}
    if not signals.get("storage_ok", True):
        if on[STORAGE_FAILING]:
            error = signals.get("storage_error") or "no answer"
            found.append(Finding(STORAGE_FAILING, f"its database does not answer: {error}", {"error": error}))
        return found  # nothing else can be read
    silent = _silent(signals, settings[SILENT]) if on[SILENT] else None
    if silent:
        found.append(silent)
    elif on[DROP]:
        found.extend(_drop(signals, settings[DROP]))
    if on[INVALID_SPIKE]:
        found.extend(
            _spike(
                INVALID_SPIKE,
                signals.get("invalid", 0),
                signals.get("last_hour", 0),
                settings[INVALID_SPIKE],
                "invalid postbacks in the last hour",
            )
        )
    if on[REFUSAL_SPIKE]:
        refused = signals.get("refused", 0)
        seen = refused + signals.get("received_since_check", 0)
        found.extend(
            _spike(
                REFUSAL_SPIKE,
                refused,
                seen,
                settings[REFUSAL_SPIKE],
                "postbacks refused (403/429) since the last check",
                signals.get("refused_reasons"),
            )
        )
    if on[RECONCILIATION_DRIFT]:
        found.extend(_drift(signals, settings[RECONCILIATION_DRIFT]))
    if on[PUBLISHER_PAUSED]:
        for code in signals.get("publishers_paused", []):
            found.append(
                Finding(
                    PUBLISHER_PAUSED,
                    f"publisher {code} is paused: it receives none of these conversions",
                    {"publisher": code},
                    subject=code,
                )
            )
    if on[SOURCE_FAILING]:
        for name, error in (signals.get("sources_failing") or {}).items():
            found.append(
                Finding(
                    SOURCE_FAILING,
                    f"report source {name}: its last run failed: {error[:200]}",
                    {"source": name, "error": error[:500]},
                    subject=name[:200],
                )
            )
    return found


def _silent(signals: dict[str, Any], values: dict[str, Any]) -> Finding | None:
    age = signals.get("last_received_age_seconds")
    expected = signals.get("expected_since_last")
    if age is None or expected is None:
        return None  # never received anything, or no history to know what normal is
    minutes = age / 60
    needed = values["gap_multiple"] * GAP_QUANTILE_ARRIVALS
    if minutes < values["floor_minutes"] or expected < needed:
        return None
    return Finding(
        SILENT,
        f"no postback for {_duration(minutes)}; the last four weeks had {expected:.0f} in the same hours of the week",
        {
            "minutes_silent": round(minutes, 1),
            "last_received_at": signals.get("last_received_at"),
            "expected_in_that_time": round(expected, 1),
            "normal_per_hour_now": signals.get("normal_hour"),
        },
    )


def _drop(signals: dict[str, Any], values: dict[str, Any]) -> list[Finding]:
    normal, last = signals.get("normal_hour"), signals.get("last_hour", 0)
    if normal is None or normal < values["min_normal"] or last >= values["share"] * normal:
        return []
    share = last / normal if normal else 0
    return [
        Finding(
            DROP,
            f"{last} postbacks in the last hour, {share:.0%} of its normal {normal:.0f}",
            {"last_hour": last, "normal_hour": round(normal, 1), "share": round(share, 3)},
        )
    ]


def _spike(rule: str, count: int, total: int, values: dict[str, Any], what: str, reasons: Any = None) -> list[Finding]:
    if count < values["min_count"] or not total:
        return []
    share = count / total
    if share < values["share"]:
        return []
    evidence = {"count": count, "of": total, "share": round(share, 3)}
    if reasons:
        evidence["reasons"] = reasons
    return [Finding(rule, f"{count} {what} ({share:.0%} of {total})", evidence)]


def _drift(signals: dict[str, Any], values: dict[str, Any]) -> list[Finding]:
    found = []
    for name, run in (signals.get("reconciliations") or {}).items():
        missing, rows = run.get("missing_here", 0), run.get("report_rows", 0)
        if not rows or missing < values["min_missing"] or missing / rows < values["share"]:
            continue
        found.append(
            Finding(
                RECONCILIATION_DRIFT,
                f"report source {name}: {missing} of {rows} reported conversions ({missing / rows:.1%}) "
                "never reached us",
                {
                    "source": name,
                    "missing_here": missing,
                    "report_rows": rows,
                    "share": round(missing / rows, 4),
                    "run_at": run.get("at"),
                },
                subject=name[:200],
            )
        )
    return found


def _duration(minutes: float) -> str:
    if minutes < 90:
        return f"{minutes:.0f} minutes"
    if minutes < 48 * 60:
        return f"{minutes / 60:.1f} hours"
    return f"{minutes / 1440:.1f} days"
