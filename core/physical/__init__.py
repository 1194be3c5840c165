"""Physical snapshots: pg_basebackup's tar stream parsed while it arrives, each file stored as fixed blocks."""
