"""Build Storage objects from target configs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import assert_never

from core.config import LocalTargetConfig, S3TargetConfig, TargetConfig
from core.storage.base import Storage
from core.storage.local import LocalStorage


def make_storage(cfg: TargetConfig) -> Storage:
    """The Storage for one configured target."""
    if isinstance(cfg, LocalTargetConfig):
        return LocalStorage(cfg)
    if isinstance(cfg, S3TargetConfig):
        # Imported here so local-only runs never pay for the S3 module.
        from core.storage.s3 import S3Storage

        return S3Storage(cfg)
    assert_never(cfg)


def make_storages(cfgs: Iterable[TargetConfig]) -> list[Storage]:
    """Storages for several targets, in config order."""
    return [make_storage(cfg) for cfg in cfgs]
