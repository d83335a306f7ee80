"""Helpers the tests (and the benchmarks) run beside the service: a fake publisher, a real PgBouncer."""
