"""The fleet: agents beside each database, and the job queue in the PostgreSQL catalog they take work from."""
