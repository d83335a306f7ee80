"""The benchmark's floor: a Django view that only INSERTs one row into a partner table.

Mounted at /bench/insert only when BENCH_MINIMAL_VIEW is set (bench/postback_bench.py
sets it); production never routes to it, and the image does not contain bench/.
"""

from django.db import connections
from django.http import HttpRequest, JsonResponse

from partners.selectors import partner_get_by_endpoint

INSERT = (
    "INSERT INTO partner_conversions (partner_id, conversion_id, is_processed, is_duplicate, raw_data, "
    "request_headers, request_digests, received_at, created_at, updated_at) "
    "VALUES (0, %s, true, false, '{}', '{}', '[]', now(), now(), now())"
)


def minimal_insert(request: HttpRequest) -> JsonResponse:
    # Same partner lookup (cached) and database as a real postback, nothing else.
    partner = partner_get_by_endpoint(request.GET.get("endpoint", "rector/event"))
    with connections[partner.database_alias].cursor() as cursor:
        cursor.execute(INSERT, [request.GET.get("conversion_id", "")])
    return JsonResponse({"status": "success"})
