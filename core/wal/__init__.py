"""Continuous WAL archiving around the repository: the spool, the resident pusher, the read-ahead fetcher.

``spool`` and ``client`` use the standard library only: they are the fast
path of ``backstop wal-push``/``wal-fetch``, which PostgreSQL starts once per
WAL file. ``pusher`` and ``fetcher`` are the detached background processes
(``python -m core.wal.pusher``/``core.wal.fetcher``) that hold the repository
open and work ahead of PostgreSQL.
"""
