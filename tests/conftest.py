"""Shared fixtures: real PostgreSQL clusters and real S3 servers."""

pytest_plugins = ["tests.fixtures.pg", "tests.fixtures.s3"]
