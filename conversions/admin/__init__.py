"""The conversions admin, one module per screen; importing them registers them (autodiscover).

- base.py: the admin of models in partner databases, and the filters its lists share
  (reconciliation builds on it; nothing here imports reconciliation or publishers)
- conversions.py, filters.py: the conversions list and a conversion's page
- partner_pages.py: what conversions add to the partner admin (through its extension
  points), with dashboards.py (the dashboards) and dry_run.py (the test postback)
"""

from conversions.admin import conversions, partner_pages  # noqa: F401
