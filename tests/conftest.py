"""Shared fixtures: real PostgreSQL clusters, real S3 servers, Backstop configs."""

pytest_plugins = ["tests.fixtures.pg", "tests.fixtures.catalogs", "tests.fixtures.s3", "tests.fixtures.backstop",
                  "tests.fixtures.console"]
