"""Shared fixtures: real PostgreSQL clusters, real S3 servers, Backstop configs."""

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

pytest_plugins = ["tests.fixtures.pg", "tests.fixtures.catalogs", "tests.fixtures.s3", "tests.fixtures.backstop",
                  "tests.fixtures.console"]


@pytest.fixture(scope="session", autouse=True)
def _private_cache_home() -> Iterator[None]:
    """Spool pointers go to a session directory, not into the real ~/.cache of root or the server account."""
    # World-writable with the sticky bit: the server's account (archive_command) remembers its own pointers here too.
    cache = tempfile.mkdtemp(prefix="backstop-test-cache-")
    spools = os.path.join(cache, "backstop", "spools")
    os.makedirs(spools)
    for d in (cache, os.path.dirname(spools), spools):
        os.chmod(d, 0o1777)
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = cache
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old
    shutil.rmtree(cache, ignore_errors=True)
