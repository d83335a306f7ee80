"""Reconciliation: a network's own report of conversions against what we received.

sources.py reads a report (a CSV upload, or a network's API such as InvolveAsia's) as a
stream of rows; services.py compares them with the partner's originals by
conversion_id, stores the run and its rows in the partner's database, and recovers what
the report has: the missing conversions recorded, its statuses and amounts applied,
both through the same decision and lifecycle rules as a postback (conversions.ingest).
Report sources are configuration (in `default`); runs and their rows live in the
partner's database.
"""
