"""Admin forms for partners: the mapping table editor and the partner form."""

import io
import sqlite3
from typing import Any
from urllib.parse import urlsplit

from django import forms
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.handlers.wsgi import WSGIRequest
from django.db import DatabaseError, connections
from django.http import HttpRequest

from infra.databases import (
    PartnerDatabaseUnavailable,
    partner_database,
    partner_database_check,
    partner_database_url,
)
from infra.databases.config import POSTGRES_ENGINES
from infra.databases.registry import alias_settings
from infra.masking import MASK, url_mask_password
from partners.lifecycle import STATUSES
from partners.mapping import CANONICAL_FIELDS, TOKEN_PARAM, parameter_name_error, postback_example
from partners.models import Partner, database_name_default

# One row per canonical field is enough: a field can be mapped once.
MAPPING_ROWS = len(CANONICAL_FIELDS)
SPARE_ROWS = 3  # blank rows under the status tables' entries
ORDERED_MAPPINGS = ("parameter_mapping", "status_mapping")  # Partner.row_order keeps their rows' order

Row = tuple[str, str]
MappingRows = list[Row]
DATABASE_URL_SCHEMES = frozenset({"postgres", "postgresql", "pgsql", "sqlite"})
# A partner's stored conversions are counted up to this many before its database may be
# changed: enough to say how many, without a count of a huge table outlasting the
# statement timeout (which would also open the database's breaker for its postbacks).
STORED_COUNT_CAP = 100_000
MOVE_COMMAND = "python manage.py move_partner {code} --to-url URL"


def storage_location(url: str) -> tuple[str, ...]:
    """Where a database URL keeps a partner's conversions: engine, server, database and
    schema. Two URLs differing only in user, password or connection options reach the
    same tables."""
    try:
        config = alias_settings(url)
    except (ImproperlyConfigured, ValueError):
        return (url,)
    port = config["PORT"]
    if config["ENGINE"] in POSTGRES_ENGINES:
        port = port or "5432"
    return (config["ENGINE"], config["HOST"].lower(), port, config["NAME"], config["SCHEMA"])


def stored_conversions_count(partner: Partner) -> int:
    """The conversions the partner's current database holds (counted up to STORED_COUNT_CAP
    + 1); 0 for one that answers but was never provisioned (it has no conversions table).

    Raises PartnerDatabaseUnavailable (or ImproperlyConfigured) when it cannot be read.
    Partners import no conversions: the table is named, as infra's health check does.
    """
    with partner_database(partner) as alias:
        try:
            with connections[alias].cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM (SELECT 1 FROM partner_conversions LIMIT %s) AS stored",
                    [STORED_COUNT_CAP + 1],
                )
                return cursor.fetchone()[0]
        except DatabaseError as exc:
            if _is_missing_table(exc):
                return 0
            raise


def _is_missing_table(exc: DatabaseError) -> bool:
    cause = exc.__cause__
    if getattr(cause, "sqlstate", None) == "42P01":  # PostgreSQL's undefined_table
        return True
    return isinstance(cause, sqlite3.OperationalError) and str(cause).startswith("no such table")


class RowsWidget(forms.Widget):
    """A table of two-column rows (`<name>-<index>-<column>` inputs, `<name>-TOTAL` rows).

    A column is a text box, or a list to choose from when it has choices. Rows keep the
    order they were given in; only rows the field found wrong are marked (`row_errors`,
    set by the field when it cleans).
    """

    template_name = "partners/widgets/rows.html"

    def __init__(
        self,
        *,
        columns: tuple[tuple[str, str, tuple[str, ...] | None], ...],
        arrow: str,
        min_rows: int,
        spare_rows: int = 0,
    ):
        super().__init__()
        self.columns = columns
        self.arrow = arrow
        self.min_rows = min_rows  # at least this many rows shown
        self.spare_rows = spare_rows  # and at least this many blank ones
        self.row_errors: dict[int, str] = {}

    def rows_from_value(self, value: Any) -> MappingRows:
        return [tuple(row) for row in value] if isinstance(value, list | tuple) else []

    def format_value(self, value: Any) -> MappingRows:
        rows = self.rows_from_value(value)
        blank = ("",) * len(self.columns)
        return rows + [blank] * max(self.spare_rows, self.min_rows - len(rows))

    def get_context(self, name: str, value: Any, attrs: dict | None) -> dict[str, Any]:
        context = super().get_context(name, value, attrs)
        context["widget"]["rows"] = [
            {
                "index": index,
                "number": index + 1,
                "error": self.row_errors.get(index),
                "cells": [
                    {
                        "key": key,
                        "label": label,
                        "value": cell,
                        "choices": choices,
                        "known": choices is None or cell in choices,
                    }
                    for (key, label, choices), cell in zip(self.columns, row, strict=True)
                ],
            }
            for index, row in enumerate(context["widget"]["value"])
        ]
        context["widget"]["headers"] = [label for _, label, _ in self.columns]
        context["widget"]["arrow"] = self.arrow
        return context

    def value_from_datadict(self, data, files, name: str) -> MappingRows:
        try:
            total = min(int(data.get(f"{name}-TOTAL", self.min_rows)), 100)
        except (TypeError, ValueError):
            total = self.min_rows
        return [
            tuple(data.get(f"{name}-{index}-{key}", "").strip() for key, _, _ in self.columns) for index in range(total)
        ]

    def value_omitted_from_data(self, data, files, name: str) -> bool:
        return f"{name}-TOTAL" not in data


class RowsField(forms.Field):
    """Rows of a RowsWidget -> the stored value; each error names its row, and marks only it."""

    def prepare_value(self, value: Any) -> Any:
        return value

    def rows(self, value: Any) -> MappingRows:
        return list(value or [])

    def clean(self, value: Any) -> Any:
        result, errors = self.rows_clean([tuple(row) for row in self.rows(value)])
        self.widget.row_errors = dict(errors)
        if errors:
            raise ValidationError([message for _, message in errors])
        return result

    def rows_clean(self, rows: MappingRows) -> tuple[Any, list[tuple[int, str]]]:
        raise NotImplementedError

    def has_changed(self, initial: Any, data: Any) -> bool:
        before, _ = self.rows_clean([tuple(row) for row in self.rows(initial)])
        after, errors = self.rows_clean([tuple(row) for row in self.rows(data)])
        ordered = lambda value: list(value.items()) if isinstance(value, dict) else value  # noqa: E731
        return bool(errors) or ordered(before) != ordered(after)


class ParameterMappingField(RowsField):
    """Rows of (our field, partner parameter) -> {our_field: partner_param}, in the rows' order."""

    def __init__(self, **kwargs: Any) -> None:
        columns = (("field", "Our field", tuple(CANONICAL_FIELDS)), ("param", "Partner's parameter (macro)", None))
        kwargs.setdefault("widget", RowsWidget(columns=columns, arrow="←", min_rows=MAPPING_ROWS))
        super().__init__(**kwargs)

    def rows(self, value: Any) -> MappingRows:
        return list(value.items()) if isinstance(value, dict) else list(value or [])

    def rows_clean(self, rows: MappingRows) -> tuple[dict[str, str], list[tuple[int, str]]]:
        errors: list[tuple[int, str]] = []
        mapping: dict[str, str] = {}
        field_rows: dict[str, int] = {}
        param_rows: dict[str, int] = {}
        for index, (field, param) in enumerate(rows):
            number = index + 1
            if not field and not param:
                continue
            if not field:
                errors.append((index, f"Row {number}: choose which of our fields '{param}' fills."))
            elif field not in CANONICAL_FIELDS:
                errors.append((index, f"Row {number}: '{field}' is not one of our fields."))
            elif not param:
                errors.append((index, f"Row {number} ({field}): enter the partner's parameter name."))
            elif name_error := parameter_name_error(param):
                errors.append((index, f"Row {number} ({field}): {name_error}"))
            elif field in field_rows:
                errors.append((index, f"Row {number}: '{field}' is already mapped in row {field_rows[field]}."))
            elif param in param_rows:
                first = param_rows[param]
                errors.append((index, f"Row {number} ({field}): parameter '{param}' is already used in row {first}."))
            else:
                field_rows[field] = number
                param_rows[param] = number
                mapping[field] = param
        return mapping, errors


class StatusMappingField(RowsField):
    """Rows of (the partner's value, our status) -> {partner_value: our_status}."""

    def __init__(self, **kwargs: Any) -> None:
        columns = (("value", "Partner's status value", None), ("status", "Our status", STATUSES))
        kwargs.setdefault("widget", RowsWidget(columns=columns, arrow="→", min_rows=SPARE_ROWS, spare_rows=SPARE_ROWS))
        super().__init__(**kwargs)

    def rows(self, value: Any) -> MappingRows:
        return [(str(k), str(v)) for k, v in value.items()] if isinstance(value, dict) else list(value or [])

    def rows_clean(self, rows: MappingRows) -> tuple[dict[str, str], list[tuple[int, str]]]:
        errors: list[tuple[int, str]] = []
        mapping: dict[str, str] = {}
        seen: dict[str, int] = {}
        for index, (value, status) in enumerate(rows):
            number = index + 1
            if not value and not status:
                continue
            if not value:
                errors.append((index, f"Row {number}: enter the partner's value that means '{status}'."))
            elif status not in STATUSES:
                errors.append((index, f"Row {number} ({value}): choose one of our statuses."))
            elif value.lower() in seen:
                errors.append((index, f"Row {number}: '{value}' is already listed in row {seen[value.lower()]}."))
            else:
                seen[value.lower()] = number
                mapping[value] = status
        return mapping, errors


class StatusTransitionsField(RowsField):
    """Rows of (from, to) -> [[from, to], ...]: changes permitted besides the defaults."""

    def __init__(self, **kwargs: Any) -> None:
        columns = (("from", "From status", STATUSES), ("to", "To status", STATUSES))
        kwargs.setdefault("widget", RowsWidget(columns=columns, arrow="→", min_rows=SPARE_ROWS, spare_rows=SPARE_ROWS))
        super().__init__(**kwargs)

    def rows(self, value: Any) -> MappingRows:
        return [tuple(pair) for pair in value] if isinstance(value, list | tuple) else []

    def rows_clean(self, rows: MappingRows) -> tuple[list[list[str]], list[tuple[int, str]]]:
        errors: list[tuple[int, str]] = []
        pairs: list[list[str]] = []
        seen: dict[tuple[str, str], int] = {}
        for index, (source, target) in enumerate(rows):
            number = index + 1
            if not source and not target:
                continue
            if source not in STATUSES or target not in STATUSES:
                errors.append((index, f"Row {number}: choose both statuses, from and to."))
            elif source == target:
                errors.append((index, f"Row {number}: {source} → {target} is not a change."))
            elif (source, target) in seen:
                errors.append((index, f"Row {number}: {source} → {target} is already in row {seen[source, target]}."))
            else:
                seen[source, target] = number
                pairs.append([source, target])
        return pairs, errors


class ExtraPathsField(forms.Field):
    """Partner.extra_paths as a box of one path per line (the model validates each)."""

    widget = forms.Textarea(attrs={"rows": 3, "cols": 60, "placeholder": "/involve/event"})

    def prepare_value(self, value: Any) -> str:
        if isinstance(value, list):
            return "\n".join(str(path) for path in value)
        return value or ""

    def to_python(self, value: Any) -> list[str]:
        if isinstance(value, list):
            return value
        return [line.strip() for line in str(value or "").splitlines() if line.strip()]

    def has_changed(self, initial: Any, data: Any) -> bool:
        return self.to_python(initial or []) != self.to_python(data)


class MaskedURLInput(forms.TextInput):
    """A database URL with its password masked whenever it is rendered."""

    def format_value(self, value: Any) -> str | None:
        return url_mask_password(value) if value else value


class PartnerAdminForm(forms.ModelForm):
    """The partner form: mapping as a table, database URL with its password masked, and
    the database of a new (or moved) partner checked before it is saved."""

    parameter_mapping = ParameterMappingField(
        required=False,
        help_text="Each row: one of our fields, and the name of the partner's parameter (macro) that fills it. "
        "Our own field name is always accepted too.",
    )

    class Meta:
        model = Partner
        # The admin's fieldsets decide what is shown; this is every editable field.
        fields = [field.name for field in Partner._meta.get_fields() if getattr(field, "editable", False)]
        widgets = {"database_url": MaskedURLInput(attrs={"size": 80, "autocomplete": "off"})}
        help_texts = {
            "endpoint_path": "The path after /partner, in lowercase: /acme/event makes the postback URL "
            "/partner/acme/event. Paths are case-sensitive; letters, digits, '.', '_', '~' and '-' between slashes.",
            "database_name": "Also the database alias. Leave empty for one made of the partner code "
            "(acme -> acme_db). It never changes afterwards by itself.",
            "database_url": "Empty uses the PARTNER_DATABASE_URL template. A password is shown masked: keep the "
            "mask to keep the stored password, or type the whole URL to change it.",
        }

    extra_paths = ExtraPathsField(
        required=False,
        help_text="One path per line, served at the root exactly like the endpoint: /involve/event answers at "
        "https://<host>/involve/event. For the addresses networks were given before; never under /partner, "
        "/admin, /api, /static, /health, /info or /metrics, nor another partner's.",
    )
    status_mapping = StatusMappingField(
        required=False,
        help_text="Each row: a status value the partner sends (any case), and which of our statuses it means.",
    )
    status_transitions = StatusTransitionsField(
        required=False,
        help_text="Changes permitted besides pending → approved | rejected, approved → rejected | paid.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "token_param" in self.fields:
            self.fields["token_param"].required = False  # empty: the default, `token`
        if "database_name" in self.fields:
            self.fields["database_name"].required = False  # clean() derives it from the partner code
            self.fields["database_name"].widget.attrs.setdefault("placeholder", "<partner code>_db")
        self.database_moved = False
        self.stored_database_url = self.instance.database_url if self.instance.pk else ""
        if self.instance.pk:
            for name in ORDERED_MAPPINGS:
                if name not in (kwargs.get("initial") or {}):
                    self.initial[name] = self._rows_in_order(name)

    def _rows_in_order(self, name: str) -> MappingRows:
        """A stored mapping's rows in the order the account manager gave them (jsonb keeps none)."""
        mapping = dict(getattr(self.instance, name) or {})
        order = [key for key in (self.instance.row_order or {}).get(name, []) if key in mapping]
        order += [key for key in CANONICAL_FIELDS if key in mapping and key not in order]
        order += [key for key in mapping if key not in order]
        return [(key, str(mapping[key])) for key in order]

    def save(self, commit: bool = True) -> Partner:
        self.instance.row_order = {name: list(self.cleaned_data.get(name) or {}) for name in ORDERED_MAPPINGS}
        return super().save(commit)

    def clean_token_param(self) -> str:
        return (self.cleaned_data.get("token_param") or "").strip() or TOKEN_PARAM

    def clean_database_url(self) -> str:
        value = self.cleaned_data.get("database_url", "").strip()
        if self.stored_database_url and value == url_mask_password(self.stored_database_url):
            return self.stored_database_url
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in DATABASE_URL_SCHEMES:
            raise ValidationError(
                "Use a PostgreSQL URL (postgres://user:password@host:5432/database_name) or a SQLite one "
                "(sqlite:////absolute/path.sqlite3)."
            )
        if not parts.path.strip("/"):
            raise ValidationError("Name the database at the end of the URL, e.g. .../acme_db.")
        if parts.password == MASK:
            raise ValidationError("Type the password again: it is never shown.")
        return value

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if "database_name" in self.fields and not cleaned.get("database_name") and cleaned.get("partner_code"):
            if self.instance.pk:
                cleaned["database_name"] = self.instance.database_name  # emptied: kept, never moved by itself
            else:
                cleaned["database_name"] = database_name_default(cleaned["partner_code"])
        self.database_moved = not self.instance.pk or any(
            cleaned.get(name) != getattr(self.instance, name) for name in ("database_name", "database_url")
        )
        if self.instance.pk and self.database_moved and "database_url" in cleaned and cleaned.get("database_name"):
            self._check_stored_conversions(cleaned)
        if not self.errors and self.database_moved and cleaned.get("database_name"):
            self._check_database(cleaned)
        return cleaned

    def _check_stored_conversions(self, cleaned: dict[str, Any]) -> None:
        """Refuse to point a partner that holds conversions somewhere else: they would stay
        behind, out of its lists and out of its duplicate check. `move_partner` moves them.

        (self.instance still holds the stored values: the form copies the cleaned ones
        onto it only after clean().)
        """
        partner = self.instance
        target = Partner(database_name=cleaned["database_name"], database_url=cleaned["database_url"])
        if storage_location(partner_database_url(partner)) == storage_location(partner_database_url(target)):
            return  # e.g. a new password, or a new name for a database given by its URL
        field = "database_url" if cleaned["database_url"] != partner.database_url else "database_name"
        command = MOVE_COMMAND.format(code=partner.partner_code)
        try:
            count = stored_conversions_count(partner)
        except (PartnerDatabaseUnavailable, ImproperlyConfigured) as exc:
            raise ValidationError(
                {
                    field: f"The conversions in this partner's current database, {partner.database_name}, could "
                    f"not be counted: {getattr(exc, 'reason', exc)}. Its database cannot be changed without "
                    "knowing: any conversions stored there would be left behind, and postbacks resending their "
                    "conversion ids would be stored again as new originals. Save again once it answers, or move "
                    f"the partner with its conversions: {command}"
                }
            ) from exc
        if count:
            held = (
                f"more than {STORED_COUNT_CAP:,} conversions"
                if count > STORED_COUNT_CAP
                else f"{count:,} conversion{'' if count == 1 else 's'}"
            )
            raise ValidationError(
                {
                    field: f"This partner's current database, {partner.database_name}, holds {held}. Changing "
                    "where it is stored would leave them behind: they would no longer be listed, and postbacks "
                    "resending their conversion ids would be stored again as new originals instead of "
                    f"duplicates. To move the partner with its conversions, run: {command} (it copies them to "
                    "the new location, switches every instance and checks the counts). Or keep the current "
                    "database name and URL to save your other changes."
                }
            )

    def _check_database(self, cleaned: dict[str, Any]) -> None:
        # Changes nothing: the admin provisions the database when it saves the partner
        # (PartnerAdmin.save_model); a wrong URL comes back as a form error first.
        target = Partner(database_name=cleaned["database_name"], database_url=cleaned.get("database_url", ""))
        try:
            partner_database_check(partner=target)
        except (PartnerDatabaseUnavailable, ImproperlyConfigured) as exc:
            field = "database_url" if cleaned.get("database_url") else "database_name"
            raise ValidationError(
                {
                    field: f"Cannot prepare the partner's database: {getattr(exc, 'reason', exc)}. "
                    "Check the database URL (host, port, user, password) or leave it empty to use "
                    "PARTNER_DATABASE_URL, then save again."
                }
            ) from exc


class TestPostbackForm(forms.Form):
    """A pasted postback (a query string, a whole URL or a JSON body) and, for a partner
    with a secret or an IP allowlist, how its network would send it: with or without the
    secret, and from which address. Given the partner, it is prefilled with an example
    in the partner's own parameter names; `postback_request()` is the request the
    network would send, for the same parse and guards as a real postback."""

    payload = forms.CharField(
        label="Postback",
        widget=forms.Textarea(attrs={"rows": 6, "cols": 100, "spellcheck": "false"}),
        help_text="Paste a query string (conversion_id=1&sub_id=abc), a whole postback URL, or a JSON object body.",
        max_length=65536,
    )

    def __init__(self, data: Any = None, *args: Any, partner: Partner | None = None, **kwargs: Any) -> None:
        super().__init__(data, *args, **kwargs)
        self.partner = partner
        if partner is None:
            return
        mapping = partner.parameter_mapping or {}
        self.fields["payload"].initial = postback_example(mapping=mapping, status_mapping=partner.status_mapping)
        self.fields["payload"].help_text = (
            f"Prefilled with an example in {partner.partner_name}'s own parameter names; change the values, or paste "
            "a postback its network sent (a query string, a whole URL, or a JSON object body)."
        )
        if partner.has_postback_secret:
            self.fields["with_secret"] = forms.BooleanField(
                required=False,
                initial=True,
                label="Send the partner's secret (X-Postback-Token header), as its network must",
                help_text="Untick to see what a postback without it gets: HTTP 403 token_missing, nothing stored.",
            )
        if partner.allowed_ips.strip():
            try:
                first = next(iter(partner.allowed_networks), None)
            except ValueError:  # an unreadable list refuses every address
                first = None
            self.fields["client_ip"] = forms.GenericIPAddressField(
                label="Sent from address",
                initial=str(first.network_address) if first is not None else "",
                help_text="The partner's IP allowlist is checked against this address: from an address outside "
                "it, a postback gets HTTP 403 ip_not_allowed, nothing stored.",
            )

    def postback_request(self) -> HttpRequest:
        """The request the partner's network would send with this postback (the form must be valid)."""
        text = self.cleaned_data["payload"].strip()
        if text.startswith(("{", "[")):
            method, query, body, content_type = "POST", "", text.encode(), "application/json"
        else:
            query = urlsplit(text).query if "?" in text else text
            method, body, content_type = "GET", b"", ""
        path = f"/partner/{self.partner.endpoint_path.strip('/')}" if self.partner is not None else "/partner/"
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "SCRIPT_NAME": "",
            # PEP 3333: the query string's bytes, as latin-1 text.
            "QUERY_STRING": query.encode().decode("iso-8859-1"),
            "CONTENT_TYPE": content_type,
            "CONTENT_LENGTH": str(len(body)),
            "SERVER_NAME": "testserver",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.input": io.BytesIO(body),
            "wsgi.url_scheme": "https",
        }
        if self.partner is not None and self.cleaned_data.get("with_secret"):
            environ["HTTP_X_POSTBACK_TOKEN"] = self.partner.postback_secret
        request = WSGIRequest(environ)
        # The address the allowlist is checked against: the one given, not this server's view of it.
        request.postback_client_ip = self.cleaned_data.get("client_ip") or None
        return request
