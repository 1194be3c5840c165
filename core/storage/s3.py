"""A repository in an S3 (or S3-compatible) bucket.

boto3 is imported lazily: it costs a few hundred milliseconds and the WAL
archiving path must start fast, so nothing touches it until the first request.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import re
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from core.config import S3TargetConfig
from core.errors import ObjectDamaged, ObjectFrozen, ObjectNotFound, StorageError, TargetUnreachable
from core.storage.base import ObjectInfo, Storage
from core.storage.immutability import Kept, is_write_once, refused, retain_until
from core.storage.throttle import Limits

# boto3 clients are generated at runtime; stubs (mypy-boto3-s3) are not a dependency.
S3Client = Any

log = logging.getLogger(__name__)
# Operator-facing warnings; the CLI prints records of backstop.* loggers as one line each.
operator_log = logging.getLogger("backstop.storage")

# Targets already warned about in this process: one line each, not one per client or request.
_tls_off_warned: set[str] = set()
_tls_off_lock = threading.Lock()

T = TypeVar("T")

# Parts uploaded at once per large object; more rarely helps and costs memory.
_PART_CONCURRENCY = 4
# Room for parallel part uploads from several concurrent puts.
_MAX_CONNECTIONS = 4 * _PART_CONCURRENCY

_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404"}
_DENIED_CODES = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "InvalidClientTokenId",
    "AccountProblem",
}
_REGION_CODES = {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException", "301"}


def _silence_insecure_request_warnings(endpoint_url: str | None) -> None:
    """Hide urllib3's per-request InsecureRequestWarning for the endpoint's hosts.

    The operator chose verify_tls: false; one warning per target (logged by the
    caller) says so, instead of a multi-line block for every request.
    """
    from urllib3.exceptions import InsecureRequestWarning

    host = urlsplit(endpoint_url).hostname if endpoint_url else None
    # Virtual-hosted addressing prepends the bucket to the host; AWS itself has many hosts.
    host_re = rf"(?:[^']*\.)?{re.escape(host)}" if host else r"[^']*\.amazonaws\.com(?:\.cn)?"
    warnings.filterwarnings(
        "ignore",
        message=rf"Unverified HTTPS request is being made to host '{host_re}'",
        category=InsecureRequestWarning,
    )


def _one_line(text: str, limit: int = 200) -> str:
    """First line of a server-supplied message, bounded, for error text."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


class S3Storage(Storage):
    """Objects are keys ``prefix + name`` in one bucket."""

    def __init__(self, config: S3TargetConfig) -> None:
        self.config = config
        self.name = config.name
        prefix = config.prefix.lstrip("/")
        # "backups" and "backups/" both mean the folder backups/.
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self._client: S3Client | None = None
        self._client_lock = threading.Lock()
        self._bucket_checked = False
        self._parts: ThreadPoolExecutor | None = None
        # Bandwidth limits shared by every call of this target (core/storage/throttle.py).
        self.limits = Limits.of(config)
        self.parallel_uploads = config.parallel_uploads

    def describe(self) -> str:
        where = self.config.endpoint_url or (f"AWS {self.config.region}" if self.config.region else "AWS")
        text = f"s3 {where} bucket {self.config.bucket}"
        return f"{text} prefix {self.prefix}" if self.prefix else text

    # -- client --------------------------------------------------------------

    def _get_client(self) -> S3Client:
        """The boto3 client, created on first use (thread-safe)."""
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> S3Client:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ProfileNotFound

        cfg = self.config
        verify: bool | str = cfg.verify_tls if isinstance(cfg.verify_tls, bool) else str(cfg.verify_tls)
        if isinstance(cfg.verify_tls, Path) and not cfg.verify_tls.is_file():
            raise StorageError(
                self.name, f"CA bundle {cfg.verify_tls} (verify_tls) does not exist; fix the path in the config"
            )
        if cfg.verify_tls is False and self._uses_tls():
            _silence_insecure_request_warnings(cfg.endpoint_url)
            with _tls_off_lock:
                first = self.name not in _tls_off_warned
                _tls_off_warned.add(self.name)
            if first:
                operator_log.warning(
                    "target '%s': TLS certificate verification is off (verify_tls: false); "
                    "anyone on the network path can read and alter the traffic",
                    self.name,
                )
        botocfg = Config(
            region_name=cfg.region,
            retries={"mode": "standard", "max_attempts": cfg.max_attempts},
            connect_timeout=cfg.connect_timeout_s,
            read_timeout=cfg.read_timeout_s,
            # Room for parallel part uploads from several concurrent puts.
            max_pool_connections=_MAX_CONNECTIONS,
        )
        try:
            session = boto3.Session(profile_name=cfg.profile)
            return session.client("s3", endpoint_url=cfg.endpoint_url, verify=verify, config=botocfg)
        except ProfileNotFound:
            raise StorageError(
                self.name,
                f"AWS profile {cfg.profile!r} is not defined; add it to ~/.aws/config or fix 'profile'",
            ) from None
        except (BotoCoreError, ValueError) as exc:
            raise StorageError(self.name, f"cannot set up the S3 client: {_one_line(str(exc))}") from None

    def _uses_tls(self) -> bool:
        """True unless the endpoint is plain HTTP (then verify_tls does not apply)."""
        url = self.config.endpoint_url
        return url is None or urlsplit(url).scheme.lower() != "http"

    # -- error mapping -------------------------------------------------------

    def _map_error(self, exc: Exception, action: str, name: str | None) -> StorageError:
        """Translate a boto3/botocore exception into our hierarchy (no secrets)."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError,
            CredentialRetrievalError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
            SSLError,
        )

        where = self.describe()
        if isinstance(exc, StorageError):
            return exc
        if isinstance(exc, SSLError):
            return StorageError(
                self.name,
                f"TLS handshake with {where} failed; check verify_tls (CA bundle) and the endpoint's certificate",
            )
        if isinstance(exc, (ConnectionError, HTTPClientError)):
            return TargetUnreachable(
                self.name,
                f"cannot connect to {where} ({type(exc).__name__}); "
                "check that the server is running and endpoint_url is right",
            )
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)):
            return StorageError(
                self.name,
                "no usable AWS credentials; set them up in the standard AWS credential chain "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, profile or instance role)",
            )
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "unknown"))
            if code in _NOT_FOUND_CODES and name is not None:
                return ObjectNotFound(self.name, name)
            if code == "NoSuchBucket" or (code in _NOT_FOUND_CODES and name is None):
                return StorageError(
                    self.name,
                    f"bucket {self.config.bucket} does not exist at {where}; "
                    "create it (backstop init does) or fix 'bucket' in the config",
                )
            if code in _DENIED_CODES:
                return StorageError(
                    self.name,
                    f"credentials were refused by {where} ({code}) during {action}; "
                    "check the AWS credential chain (environment, ~/.aws, profile) and the bucket policy",
                )
            if code == "InvalidObjectState" and name is not None:
                return ObjectFrozen(self.name, f"{name} is in an archive storage class and must be thawed before "
                                               "it is read; see `backstop archive thaw`")
            if code in _REGION_CODES:
                return StorageError(
                    self.name, f"bucket {self.config.bucket} is in another region ({code}); set 'region' in the config"
                )
            what = f" of {name}" if name else ""
            if code == "InvalidRequest" and self.config.object_lock is not None and action == "upload":
                return StorageError(self.name, f"{where} refused a write with Object Lock retention{what}; the "
                                               "bucket must have Object Lock enabled: run `backstop init` to check it")
            message = _one_line(str(err.get("Message") or ""))
            return StorageError(
                self.name, f"S3 error {code} during {action}{what}" + (f": {message}" if message else "")
            )
        if isinstance(exc, BotoCoreError):
            return StorageError(self.name, f"S3 {action} failed: {_one_line(str(exc))}")
        return StorageError(self.name, f"S3 {action} failed: {type(exc).__name__}: {_one_line(str(exc))}")

    async def _run(self, action: str, name: str | None, fn: Callable[[S3Client], T],
                   pool: ThreadPoolExecutor | None = None) -> T:
        """Run a blocking boto3 call in a thread (of ``pool``, else the loop's default ones), mapping its errors."""

        def call() -> T:
            from botocore.exceptions import BotoCoreError, ClientError

            try:
                return fn(self._get_client())
            except (BotoCoreError, ClientError, OSError) as exc:
                raise self._map_error(exc, action, name) from None

        if pool is not None:
            return await asyncio.get_running_loop().run_in_executor(pool, call)
        return await asyncio.to_thread(call)

    def _part_pool(self) -> ThreadPoolExecutor:
        """This target's threads for multipart parts, one per pooled connection."""
        # Several packs' parts go at once without taking the event loop's few default threads from other targets.
        with self._client_lock:
            if self._parts is None:
                self._parts = ThreadPoolExecutor(max_workers=_MAX_CONNECTIONS, thread_name_prefix=f"s3-{self.name}")
            return self._parts

    def _key(self, name: str) -> str:
        if not name or name.startswith("/"):
            raise StorageError(self.name, f"invalid object name {name!r} (a bug in Backstop; please report it)")
        return self.prefix + name

    # -- blocking implementations -----------------------------------------

    async def _multipart_put(self, name: str, key: str, data: bytes) -> None:
        """Upload in parts, each paced by the upload limit; abort on any failure so no partial object appears."""
        bucket = self.config.bucket
        chunk = self.config.multipart_chunk_mib * 1024 * 1024
        upload_id: str = await self._run(
            "upload", name, lambda c: c.create_multipart_upload(Bucket=bucket, Key=key, **self._retention(name))[
                "UploadId"])
        slots = asyncio.Semaphore(_PART_CONCURRENCY)

        def send(client: S3Client, number: int, body: bytes) -> dict[str, Any]:
            resp = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)
            part = {"PartNumber": number, "ETag": resp["ETag"]}
            # With flexible checksums on, complete() must repeat each part's checksum.
            part.update({k: v for k, v in resp.items() if k.startswith("Checksum") and k != "ChecksumType"})
            return part

        async def upload(number: int) -> dict[str, Any]:
            body = data[(number - 1) * chunk : number * chunk]
            async with slots:
                # Paced part by part: a large pack never goes out as one burst.
                return await self.limits.paced_upload(len(body), lambda: self._run(
                    "upload", name, lambda c: send(c, number, body), self._part_pool()))

        count = -(-len(data) // chunk)
        try:
            # Every part ends before the abort below, so none can land after it.
            results = await asyncio.gather(*(upload(n) for n in range(1, count + 1)), return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    raise r
            parts = [r for r in results if isinstance(r, dict)]
            await self._run("upload", name, lambda c: c.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}))
        except BaseException:
            await asyncio.shield(self._abort_multipart(key, upload_id))
            raise

    async def _abort_multipart(self, key: str, upload_id: str) -> None:
        def abort() -> None:
            try:
                self._get_client().abort_multipart_upload(Bucket=self.config.bucket, Key=key, UploadId=upload_id)
            except Exception as abort_exc:  # noqa: BLE001 - best effort; the original error matters
                log.warning("target %s: could not abort multipart upload of %s: %s", self.name, key, abort_exc)

        await asyncio.to_thread(abort)

    def _get(self, client: S3Client, name: str, offset: int, length: int | None) -> bytes:
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {"Bucket": self.config.bucket, "Key": self._key(name)}
        if length is not None:
            kwargs["Range"] = f"bytes={offset}-{offset + length - 1}"
        try:
            resp = client.get_object(**kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "InvalidRange":
                raise
            resp = None
        data = b"" if resp is None else resp["Body"].read()
        if length is not None and len(data) != length:
            raise ObjectDamaged(
                self.name,
                f"object {name} is shorter than expected: wanted {length} bytes at offset {offset}, "
                f"got {len(data)}; the object is truncated or the caller's index is wrong; verify the repository",
            )
        return data

    def _check_bucket(self, client: S3Client) -> None:
        """Raise if the bucket is missing (HEAD on a key cannot tell us)."""
        from botocore.exceptions import ClientError

        if not self._bucket_checked:
            try:
                client.head_bucket(Bucket=self.config.bucket)
            except ClientError as exc:
                raise self._map_error(exc, "bucket check", None) from None
            self._bucket_checked = True

    def _exists(self, client: S3Client, name: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            client.head_object(Bucket=self.config.bucket, Key=self._key(name))
            return True
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) not in _NOT_FOUND_CODES:
                raise
        self._check_bucket(client)
        return False

    def _list(self, client: S3Client, prefix: str) -> list[ObjectInfo]:
        paginator = client.get_paginator("list_objects_v2")
        found: list[ObjectInfo] = []
        cut = len(self.prefix)
        for page in paginator.paginate(Bucket=self.config.bucket, Prefix=self.prefix + prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                # Some S3-compatible servers list "folder/" markers; they are not objects.
                if key.endswith("/"):
                    continue
                modified = obj.get("LastModified")
                found.append(ObjectInfo(name=key[cut:], size=int(obj["Size"]),
                                        mtime=modified.timestamp() if modified is not None else None,
                                        storage_class=obj.get("StorageClass") or "STANDARD"))
        found.sort(key=lambda o: o.name)
        return found

    def _delete(self, client: S3Client, name: str) -> None:
        from botocore.exceptions import ClientError

        try:
            client.delete_object(Bucket=self.config.bucket, Key=self._key(name))
        except ClientError as exc:
            # S3 itself answers 204 for a missing key; some compatible servers say 404.
            if exc.response.get("Error", {}).get("Code") != "NoSuchKey":
                raise

    # -- object lock (FORMAT.md 23) ------------------------------------------

    def _retention(self, name: str) -> dict[str, Any]:
        """put_object/create_multipart_upload arguments setting retention on a write-once object."""
        lock = self.config.object_lock
        if lock is None or not is_write_once(name):
            return {}
        return {"ObjectLockMode": lock.mode.upper(), "ObjectLockRetainUntilDate": retain_until(lock)}

    def _versions(self, client: S3Client, key: str) -> list[str]:
        """Every version id and delete marker id of exactly ``key`` (a lock-enabled bucket is versioned)."""
        ids: list[str] = []
        paginator = client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=self.config.bucket, Prefix=key):
            for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                if entry.get("Key") == key and entry.get("VersionId"):
                    ids.append(str(entry["VersionId"]))
        return ids

    def _locked_until(self, client: S3Client, name: str) -> tuple[float | None, list[str]]:
        """The latest retention end still ahead among ``name``'s versions, and every version id."""
        import time

        from botocore.exceptions import ClientError

        key = self._key(name)
        ids = self._versions(client, key)
        now = time.time()
        latest: float | None = None
        for vid in ids:
            try:
                head = client.head_object(Bucket=self.config.bucket, Key=key, VersionId=vid)
            except ClientError as exc:
                # A delete marker answers 405 (or 404) to HEAD: it carries no retention.
                if str(exc.response.get("Error", {}).get("Code")) in _NOT_FOUND_CODES | {"405", "MethodNotAllowed"}:
                    continue
                raise
            until = head.get("ObjectLockRetainUntilDate")
            if until is not None and head.get("ObjectLockMode") and until.timestamp() > now:
                latest = max(latest or 0.0, until.timestamp())
        return latest, ids

    def _delete_versions(self, client: S3Client, name: str) -> None:
        """Delete every version of ``name`` for good, or raise DeletionRefused without deleting any."""
        # A plain DELETE in a versioned bucket would only add a delete marker: the object would vanish
        # from listings while its bytes (and the lock) stay, which is pretending.
        until, ids = self._locked_until(client, name)
        if until is not None:
            raise refused(Kept(self.name, name, until))
        key = self._key(name)
        for vid in ids:
            client.delete_object(Bucket=self.config.bucket, Key=key, VersionId=vid)

    def _check_object_lock(self, client: S3Client, missing_ok: bool) -> None:
        """Raise unless the bucket has Object Lock enabled and no default retention rule."""
        from botocore.exceptions import ClientError

        bucket = self.config.bucket
        create = (f"create a new bucket with Object Lock enabled (it cannot be turned on later), or name a bucket "
                  f"that does not exist yet and `backstop init` creates it so; or remove object_lock from target "
                  f"'{self.name}'")
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if missing_ok and str(exc.response.get("Error", {}).get("Code")) in _NOT_FOUND_CODES | {"NoSuchBucket"}:
                return  # prepare() creates it with Object Lock enabled, then checks again
            raise
        try:
            conf = client.get_object_lock_configuration(Bucket=bucket).get("ObjectLockConfiguration", {})
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code in {"ObjectLockConfigurationNotFoundError", "404", "NoSuchObjectLockConfiguration"}:
                raise StorageError(self.name, f"bucket {bucket} has no Object Lock (object_lock is set); "
                                              f"{create}") from None
            if code in {"NotImplemented", "501", "MethodNotAllowed", "405", "InvalidRequest"}:
                raise StorageError(self.name, f"{self.describe()} cannot lock objects ({code}); use a server "
                                              "that supports S3 Object Lock, or remove object_lock from the "
                                              "target") from None
            raise
        if conf.get("ObjectLockEnabled") != "Enabled":
            raise StorageError(self.name, f"bucket {bucket} has no Object Lock (object_lock is set); {create}")
        if conf.get("Rule", {}).get("DefaultRetention"):
            raise StorageError(self.name, f"bucket {bucket} has a default retention rule, which would lock "
                                          "Backstop's lock and prune objects too; remove the rule (Backstop sets "
                                          "retention per object from object_lock)")

    def _cleanup_leftovers(self, client: S3Client, older_than: float) -> list[str]:
        from botocore.exceptions import ClientError

        bucket = self.config.bucket
        removed: list[str] = []
        cut = len(self.prefix)
        paginator = client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=bucket, Prefix=self.prefix):
            for upload in page.get("Uploads", []):
                key, upload_id, initiated = upload["Key"], upload["UploadId"], upload.get("Initiated")
                if not key.startswith(self.prefix):
                    continue  # a server that ignores Prefix must not cost another repository its upload
                # Without a start time the upload's age is unknown: it may be running.
                if initiated is None or initiated.timestamp() >= older_than:
                    continue
                try:
                    client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
                        continue  # completed or aborted meanwhile
                    raise
                started = initiated.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
                removed.append(f"aborted unfinished multipart upload of {key[cut:]} (started {started})")
        removed.sort()
        return removed

    def _ensure_bucket(self, client: S3Client) -> None:
        from botocore.exceptions import ClientError

        try:
            client.head_bucket(Bucket=self.config.bucket)
            return
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) not in _NOT_FOUND_CODES | {"NoSuchBucket"}:
                raise
        kwargs: dict[str, Any] = {"Bucket": self.config.bucket}
        if self.config.object_lock is not None:
            # Object Lock can only be enabled when a bucket is created (it also turns versioning on).
            kwargs["ObjectLockEnabledForBucket"] = True
        region = self.config.region or client.meta.region_name
        # us-east-1 is the one region that rejects an explicit LocationConstraint.
        if region and region != "us-east-1" and not self.config.endpoint_url:
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            client.create_bucket(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "BucketAlreadyOwnedByYou":
                return
            if code == "BucketAlreadyExists":
                raise StorageError(
                    self.name,
                    f"bucket name {self.config.bucket} is taken by another account; choose another 'bucket'",
                ) from None
            raise
        self._bucket_checked = True

    # -- Storage API ---------------------------------------------------------

    async def put(self, name: str, data: bytes) -> None:
        key = self._key(name)
        if len(data) > self.config.multipart_chunk_mib * 1024 * 1024:
            await self._multipart_put(name, key, data)
            return
        await self.limits.paced_upload(len(data), lambda: self._run(
            "upload", name, lambda c: c.put_object(Bucket=self.config.bucket, Key=key, Body=data,
                                                   **self._retention(name))))

    async def get(self, name: str) -> bytes:
        return await self.limits.paced_get(lambda: self._run("download", name, lambda c: self._get(c, name, 0, None)))

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise StorageError(self.name, f"invalid range {offset}+{length} for {name} (a bug in Backstop)")
        if length == 0:
            # "bytes=x-(x-1)" is not a valid Range; still report a missing object.
            if not await self.exists(name):
                raise ObjectNotFound(self.name, name)
            return b""
        return await self.limits.paced_download(length, lambda: self._run(
            "ranged download", name, lambda c: self._get(c, name, offset, length)))

    async def exists(self, name: str) -> bool:
        return await self._run("existence check", name, lambda c: self._exists(c, name))

    async def list(self, prefix: str) -> list[ObjectInfo]:
        return await self._run("listing", None, lambda c: self._list(c, prefix))

    async def delete(self, name: str) -> None:
        if self.config.object_lock is not None:
            await self._run("delete", name, lambda c: self._delete_versions(c, name))
            return
        await self._run("delete", name, lambda c: self._delete(c, name))

    async def locked_until(self, name: str) -> float | None:
        if self.config.object_lock is None:
            return None
        return await self._run("retention check", name, lambda c: self._locked_until(c, name)[0])

    async def check_capabilities(self) -> None:
        if self.config.object_lock is not None:
            await self._run("object lock check", None, lambda c: self._check_object_lock(c, missing_ok=True))

    async def cleanup_leftovers(self, older_than: float) -> builtins.list[str]:
        return await self._run("leftover cleanup", None, lambda c: self._cleanup_leftovers(c, older_than))

    # -- storage classes (FORMAT.md 12.6) ----------------------------------

    # Objects here have an S3 storage class (core/repository/tiers.py looks for this).
    storage_classes = True

    async def set_storage_class(self, name: str, storage_class: str, etag: str | None = None) -> None:
        """Change the object's storage class by copying it onto itself (server side; only if still ``etag``)."""
        key = self._key(name)
        kwargs: dict[str, Any] = {"Bucket": self.config.bucket, "Key": key, "StorageClass": storage_class,
                                  "CopySource": {"Bucket": self.config.bucket, "Key": key},
                                  # SeaweedFS 4.x refuses an in-place copy that changes only the class under
                                  # the default COPY directive; REPLACE works on it and on AWS (we set no metadata).
                                  "MetadataDirective": "REPLACE"}
        if etag:
            kwargs["CopySourceIfMatch"] = etag
        await self._run("storage class change", name, lambda c: c.copy_object(**kwargs))

    async def object_class(self, name: str) -> tuple[str, str | None, str | None]:
        """The object's storage class, its ``Restore`` header (a thaw's state) and its ETag."""
        def head(c: S3Client) -> tuple[str, str | None, str | None]:
            h = c.head_object(Bucket=self.config.bucket, Key=self._key(name))
            return h.get("StorageClass") or "STANDARD", h.get("Restore"), h.get("ETag")
        return await self._run("class check", name, head)

    async def thaw(self, name: str, days: int, tier: str) -> str:
        """Ask for a temporary readable copy of an archived object (restore_object); 'started', 'running' or 'ready'."""
        from botocore.exceptions import ClientError

        def call(c: S3Client) -> str:
            try:
                c.restore_object(Bucket=self.config.bucket, Key=self._key(name),
                                 RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": tier}})
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code == "RestoreAlreadyInProgress":
                    return "running"
                if code == "ObjectAlreadyInActiveTierError":
                    return "ready"
                raise
            return "started"
        return await self._run("thaw (restore_object)", name, call)

    async def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (used by `backstop init`)."""
        await self._run("bucket creation", None, self._ensure_bucket)

    async def prepare(self) -> None:
        await self.ensure_bucket()
        # A server may accept ObjectLockEnabledForBucket and ignore it: check what it says now.
        await self.check_capabilities()

    async def close(self) -> None:
        parts, self._parts = self._parts, None
        if parts is not None:
            parts.shutdown(wait=False)
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)
