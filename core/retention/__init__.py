"""Retention: which snapshots and which archived WAL a database keeps (pure planning; core/ops/retention.py acts)."""
