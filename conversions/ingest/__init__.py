"""The ingest: how one postback becomes a stored conversion, in one direction.

    pipeline.py   postback_ingest(request, endpoint_path): the whole path, read top to bottom
    parse.py      the request -> a Postback (parameters, body errors, client address)
    guards.py     limits.py, access.py, quota.py -> a Refusal, or nothing
    decide.py     pure: a mapped postback and its original -> a Decision
    store.py      a Decision applied with statements.py; announced through hooks.py
    respond.py    the JSON answers
    refusals.py   the Refusal type, and the audit of refused postbacks

The admin's dry run (dry_run.py) and reprocessing (reprocess.py), and the recovery of
conversions from a network's report, use the same parse, decide and store.
"""

from conversions.ingest.pipeline import postback_ingest, postback_record

__all__ = ["postback_ingest", "postback_record"]
