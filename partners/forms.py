"""Admin forms for partners: the mapping table editor and the partner form."""

from typing import Any
from urllib.parse import urlsplit

from django import forms
from django.core.exceptions import ImproperlyConfigured, ValidationError

from partners.databases import PartnerDatabaseUnavailable, partner_database_check
from partners.dbconfig import url_mask_password
from partners.mapping import CANONICAL_FIELDS
from partners.models import Partner

# One row per canonical field is enough: a field can be mapped once.
MAPPING_ROWS = len(CANONICAL_FIELDS)

MappingRows = list[tuple[str, str]]
MASK = "****"  # what url_mask_password puts in place of a password
DATABASE_URL_SCHEMES = frozenset({"postgres", "postgresql", "pgsql", "sqlite"})


class ParameterMappingWidget(forms.Widget):
    """`parameter_mapping` as a table: our field (chosen from a list) -> the partner's parameter."""

    template_name = "partners/widgets/parameter_mapping.html"

    def format_value(self, value: Any) -> MappingRows:
        if isinstance(value, dict):
            # Our field order, whatever order the database kept the keys in.
            order = {name: index for index, name in enumerate(CANONICAL_FIELDS)}
            items = sorted(value.items(), key=lambda item: order.get(item[0], len(order)))
            rows = [(str(field), "" if param is None else str(param)) for field, param in items]
        elif isinstance(value, list):
            rows = list(value)
        else:
            rows = []
        return rows + [("", "")] * max(0, MAPPING_ROWS - len(rows))

    def get_context(self, name: str, value: Any, attrs: dict | None) -> dict[str, Any]:
        context = super().get_context(name, value, attrs)
        context["widget"]["rows"] = [
            {"index": index, "field": field, "param": param, "known": field in CANONICAL_FIELDS}
            for index, (field, param) in enumerate(context["widget"]["value"])
        ]
        context["widget"]["choices"] = list(CANONICAL_FIELDS)
        return context

    def value_from_datadict(self, data, files, name: str) -> MappingRows:
        try:
            total = min(int(data.get(f"{name}-TOTAL", MAPPING_ROWS)), 100)
        except (TypeError, ValueError):
            total = MAPPING_ROWS
        return [
            (data.get(f"{name}-{index}-field", "").strip(), data.get(f"{name}-{index}-param", "").strip())
            for index in range(total)
        ]

    def value_omitted_from_data(self, data, files, name: str) -> bool:
        return f"{name}-TOTAL" not in data


class ParameterMappingField(forms.Field):
    """Rows of (our field, partner parameter) -> {our_field: partner_param}; errors name the row."""

    widget = ParameterMappingWidget

    def prepare_value(self, value: Any) -> Any:
        return value

    def to_python(self, value: Any) -> MappingRows:
        if isinstance(value, dict):
            return list(value.items())
        return list(value or [])

    def clean(self, value: Any) -> dict[str, str]:
        rows = self.to_python(value)
        errors: list[str] = []
        mapping: dict[str, str] = {}
        field_rows: dict[str, int] = {}
        param_rows: dict[str, int] = {}
        for number, (field, param) in enumerate(rows, start=1):
            if not field and not param:
                continue
            if not field:
                errors.append(f"Row {number}: choose which of our fields '{param}' fills.")
                continue
            if field not in CANONICAL_FIELDS:
                errors.append(f"Row {number}: '{field}' is not one of our fields.")
                continue
            if not param:
                errors.append(f"Row {number} ({field}): enter the partner's parameter name.")
                continue
            if field in field_rows:
                errors.append(f"Row {number}: '{field}' is already mapped in row {field_rows[field]}.")
                continue
            if param in param_rows:
                first = param_rows[param]
                errors.append(f"Row {number} ({field}): parameter '{param}' is already used in row {first}.")
                continue
            field_rows[field] = number
            param_rows[param] = number
            mapping[field] = param
        if errors:
            raise ValidationError(errors)
        return mapping

    def has_changed(self, initial: Any, data: Any) -> bool:
        try:
            return dict(initial or {}) != self.clean(data)
        except ValidationError:
            return True


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
            "database_url": "Empty uses the PARTNER_DATABASE_URL template. A password is shown masked: keep the "
            "mask to keep the stored password, or type the whole URL to change it."
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.database_moved = False
        self.stored_database_url = self.instance.database_url if self.instance.pk else ""

    def clean_status_mapping(self) -> dict[str, str]:
        return self.cleaned_data.get("status_mapping") or {}

    def clean_status_transitions(self) -> list[list[str]]:
        return self.cleaned_data.get("status_transitions") or []

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
        self.database_moved = not self.instance.pk or any(
            cleaned.get(name) != getattr(self.instance, name) for name in ("database_name", "database_url")
        )
        if not self.errors and self.database_moved and cleaned.get("database_name"):
            self._check_database(cleaned)
        return cleaned

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
    """A pasted postback: a query string (or whole URL) or a JSON body."""

    payload = forms.CharField(
        label="Postback",
        widget=forms.Textarea(attrs={"rows": 6, "cols": 100, "spellcheck": "false"}),
        help_text="Paste a query string (conversion_id=1&aff_sub=abc), a whole postback URL, or a JSON object body.",
        max_length=65536,
    )
