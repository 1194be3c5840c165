"""PostgreSQL plumbing: locating binaries, private clusters, database fingerprints."""
