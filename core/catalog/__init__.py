"""The catalog: an index of snapshots, jobs, verifications and restores."""
