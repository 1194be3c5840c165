"""The catalog: an index of snapshots, jobs, verifications, restores and the security tables.

``base`` defines the interface (the only way in from outside this package);
``sqlite`` and ``sqlite_queries`` are the embedded implementation.
"""
