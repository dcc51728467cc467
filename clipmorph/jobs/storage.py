"""Where a job's input and result are kept: a local folder (the default) or an S3-compatible bucket.

One setting picks the backend, CLIPMORPH_STORAGE_URL: empty for the local jobs folder
(<var_dir>/jobs/<uuid>/, clipmorph.jobs.files), `s3://bucket/prefix` for a bucket. The bucket's
endpoint, credentials and region are boto3's own: AWS_ENDPOINT_URL (MinIO, moto, ...),
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION.

Both backends keep the same names: <uuid>/input.<ext> and <uuid>/output.<ext>, the UUID made by
the server and the names fixed, so nothing a client sends becomes a path or a key.

Every file is handled on local disk, because the probe (PyAV) needs a seekable file:

- the API streams an upload into a local staging folder (`staging`), probes it there, then
  `store_input` makes it the job's input (local: it already is; S3: uploaded, staging removed);
- a worker gets a local working folder (`workspace`), `fetch_input` puts the input there
  (local: the job's folder itself; S3: downloaded), writes the output there, `store_output`
  publishes it (S3: one PUT or a completed multipart upload, which readers see whole or not at
  all), and `release` removes what the attempt left behind, whatever the outcome.

The S3 backend turns any failure to reach the bucket into StorageUnavailable, whose text is a
fixed sentence: bucket names, keys, endpoints and botocore's messages stay in the log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from clipmorph.jobs.files import JobFiles, purge_expired
from clipmorph.settings import Settings

log = logging.getLogger(__name__)

UNAVAILABLE = "the job storage is unavailable; try again shortly"
# The error codes of an object that is not there (HEAD answers a bare 404).
_MISSING = ("404", "NoSuchKey", "NotFound")
# A long video's stylized pieces, under the job (<uuid>/parts/...), and its segments' workspaces (local folders).
PARTS = "parts"
SEGMENTS = "segments"
# S3's DeleteObjects takes at most this many keys per call.
_DELETE_BATCH = 1000


class StorageUnavailable(RuntimeError):
    """The storage could not be reached or refused a request; the message is safe to show a client."""

    def __init__(self) -> None:
        super().__init__(UNAVAILABLE)


@dataclass(frozen=True)
class Redirect:
    """A result read from elsewhere: a presigned URL the client is sent to (it answers Range itself)."""

    url: str


class JobStorage(ABC):
    """A job's stored input and result, by job id; see the module's docstring for the flow."""

    @property
    @abstractmethod
    def staging_dir(self) -> Path:
        """The local folder uploads stream into (the API's free-disk check is made on its disk)."""

    @abstractmethod
    def staging(self, job_id: str) -> JobFiles:
        """The local folder an upload streams into and is probed in, before `store_input`."""

    @abstractmethod
    def store_input(self, job_id: str, staged: JobFiles) -> None:
        """Make the staged folder's input the job's input."""

    @abstractmethod
    def workspace(self, job_id: str) -> JobFiles:
        """A worker's local folder for one attempt at the job, cleared of what an earlier attempt left."""

    @abstractmethod
    def fetch_input(self, job_id: str, work: JobFiles) -> Path:
        """The job's input as a local file in `work`; FileNotFoundError when it was deleted or expired."""

    @abstractmethod
    def store_output(self, job_id: str, work: JobFiles, name: str, media_type: str) -> None:
        """Publish `work`'s finished file `name` as the job's result."""

    @abstractmethod
    def release(self, work: JobFiles) -> None:
        """Remove what an attempt left in its workspace (half-written files, local copies); always safe."""

    # A long video's segments (clipmorph.video.segments): each is stylized by whichever worker takes it, so its
    # piece goes through the storage (a worker on another machine stitches them).

    @abstractmethod
    def segment_workspace(self, job_id: str, index: int) -> JobFiles:
        """A worker's local folder for one attempt at segment `index`, empty; the caller deletes it when done.

        Its own folder, not the job's: segments of one video run at the same time, and an attempt clears
        what an earlier attempt left in its workspace.
        """

    @abstractmethod
    def store_part(self, job_id: str, work: JobFiles, name: str) -> None:
        """Keep `work`'s finished file `name` as one of the job's pieces (under parts/)."""

    @abstractmethod
    def fetch_part(self, job_id: str, name: str, work: JobFiles) -> Path:
        """The job's piece `name` as a local file (in `work` when it has to be copied); FileNotFoundError if gone."""

    @abstractmethod
    def delete_parts(self, job_id: str) -> None:
        """Delete the job's pieces (once they are stitched)."""

    @abstractmethod
    def result(self, job_id: str, name: str, media_type: str, download_name: str) -> Path | Redirect | None:
        """Where a client reads a job's result: a local file, a Redirect, or None when it is gone."""

    @abstractmethod
    def delete(self, job_id: str) -> None:
        """Delete everything stored for the job (input, result); nothing when there is none."""

    @abstractmethod
    def remove_partials(self, job_id: str) -> None:
        """What a failed or abandoned attempt left half-written on this machine (RQ's failure callback)."""

    @abstractmethod
    def purge_expired(self, ttl_seconds: float, keep: set[str] = frozenset(), now: float | None = None) -> int:
        """Delete jobs untouched for `ttl_seconds`, except those in `keep` (running); -> how many."""

    @abstractmethod
    def ready(self) -> bool:
        """Whether jobs can be stored now (for /readyz); raises or answers False when not."""


class LocalStorage(JobStorage):
    """The jobs folder: <jobs_dir>/<uuid>/ is at once the upload's staging, the worker's workspace and the store."""

    def __init__(self, jobs_dir: Path) -> None:
        self.jobs_dir = jobs_dir

    @property
    def staging_dir(self) -> Path:
        return self.jobs_dir

    def staging(self, job_id: str) -> JobFiles:
        return JobFiles.of(self.jobs_dir, job_id)

    def store_input(self, job_id: str, staged: JobFiles) -> None:
        pass  # the staged input is already in the job's folder

    def workspace(self, job_id: str) -> JobFiles:
        files = JobFiles.of(self.jobs_dir, job_id)
        files.remove_partials()  # left by an earlier attempt whose worker was killed; the input stays
        return files

    def fetch_input(self, job_id: str, work: JobFiles) -> Path:
        return JobFiles.of(self.jobs_dir, job_id).find_input()  # read in place, whichever workspace asks

    def store_output(self, job_id: str, work: JobFiles, name: str, media_type: str) -> None:
        pass  # written in place: the pipeline renames a complete file to its name

    def release(self, work: JobFiles) -> None:
        work.remove_partials()

    def _parts(self, job_id: str) -> Path:
        return JobFiles.of(self.jobs_dir, job_id).dir / PARTS

    def segment_workspace(self, job_id: str, index: int) -> JobFiles:
        work = JobFiles(JobFiles.of(self.jobs_dir, job_id).dir / SEGMENTS / str(int(index)))
        work.delete()
        work.dir.mkdir(parents=True)
        return work

    def store_part(self, job_id: str, work: JobFiles, name: str) -> None:
        parts = self._parts(job_id)
        parts.mkdir(exist_ok=True)
        os.replace(work.dir / name, parts / name)  # the same disk: a rename, whole or not at all

    def fetch_part(self, job_id: str, name: str, work: JobFiles) -> Path:
        path = self._parts(job_id) / name
        if not path.is_file():
            raise FileNotFoundError(f"job {job_id} has no piece {name}")
        return path

    def delete_parts(self, job_id: str) -> None:
        shutil.rmtree(self._parts(job_id), ignore_errors=True)
        shutil.rmtree(JobFiles.of(self.jobs_dir, job_id).dir / SEGMENTS, ignore_errors=True)

    def result(self, job_id: str, name: str, media_type: str, download_name: str) -> Path | Redirect | None:
        path = JobFiles.of(self.jobs_dir, job_id).dir / name
        return path if path.exists() else None

    def delete(self, job_id: str) -> None:
        JobFiles.of(self.jobs_dir, job_id).delete()

    def remove_partials(self, job_id: str) -> None:
        JobFiles.of(self.jobs_dir, job_id).remove_partials()

    def purge_expired(self, ttl_seconds: float, keep: set[str] = frozenset(), now: float | None = None) -> int:
        return purge_expired(self.jobs_dir, ttl_seconds, keep, now)

    def ready(self) -> bool:
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        return os.access(self.jobs_dir, os.W_OK)


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or "some/prefix/", always ending with "/" when not empty

    @classmethod
    def parse(cls, url: str) -> S3Location:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise ValueError("CLIPMORPH_STORAGE_URL must be empty (local jobs folder) or s3://bucket[/prefix]")
        prefix = parts.path.strip("/")
        return cls(parts.netloc, f"{prefix}/" if prefix else "")


def _client_config() -> Any:
    from botocore.config import Config

    # A custom endpoint (MinIO, moto, ...) is a host name with no per-bucket subdomains: path-style keys.
    custom = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return Config(
        # Bounded: the API must answer 503 within seconds when the bucket is unreachable, not hang.
        connect_timeout=3,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
        s3={"addressing_style": "path" if custom else "auto"},
        # Signature V4 everywhere, presigned links included (botocore may presign with V2, which newer AWS
        # regions refuse); a V4 link carries its own expiry (X-Amz-Expires).
        signature_version="s3v4",
    )


class S3Storage(JobStorage):
    """An S3-compatible bucket; uploads are staged in <var_dir>/staging, workers work in <var_dir>/scratch."""

    def __init__(self, location: S3Location, var_dir: Path, link_seconds: int, public_endpoint: str | None = None):
        import boto3  # only this backend needs it, and importing it takes a moment

        self.location = location
        self.local_dir = var_dir
        self.link_seconds = link_seconds
        # Endpoint, credentials and region from boto3's environment variables and config files.
        session = boto3.session.Session()
        self.client = session.client("s3", config=_client_config())
        # Presigned URLs are computed locally (no request) and sign the host: they must name the host the
        # client reaches, which behind docker-compose is not the one the API reaches.
        self.signer = (
            session.client("s3", endpoint_url=public_endpoint, config=_client_config())
            if public_endpoint
            else self.client
        )

    # Keys and local folders --------------------------------------------------------------

    def _job_prefix(self, job_id: str) -> str:
        return f"{self.location.prefix}{uuid.UUID(str(job_id))}/"  # re-parse: only a canonical UUID names a key

    @property
    def staging_dir(self) -> Path:
        return self.local_dir / "staging"

    @property
    def scratch_dir(self) -> Path:
        return self.local_dir / "scratch"

    @contextlib.contextmanager
    def _calls(self, what: str) -> Iterator[None]:
        """botocore's failures as StorageUnavailable; what they said goes to the log only."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (Boto3Error, BotoCoreError, ClientError) as e:  # Boto3Error: upload_file's S3UploadFailedError
            log.warning("job storage: %s failed: %s", what, e)
            raise StorageUnavailable() from e

    def _keys(self, prefix: str) -> list[dict[str, Any]]:
        with self._calls("listing"):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.location.bucket, Prefix=prefix)
            return [item for page in pages for item in page.get("Contents", [])]

    def _delete_keys(self, keys: list[str]) -> None:
        with self._calls("deleting"):
            for start in range(0, len(keys), _DELETE_BATCH):
                batch = [{"Key": key} for key in keys[start : start + _DELETE_BATCH]]
                answer = self.client.delete_objects(
                    Bucket=self.location.bucket, Delete={"Objects": batch, "Quiet": True}
                )
                # DeleteObjects answers 200 and lists the keys it could not delete (denied, ...): not deleted.
                if errors := answer.get("Errors"):
                    log.warning("job storage: deleting failed for %d keys, e.g. %s", len(errors), errors[0])
                    raise StorageUnavailable()

    def ready(self) -> bool:
        with self._calls("checking the bucket"):
            self.client.head_bucket(Bucket=self.location.bucket)  # the bucket exists and these credentials reach it
        return True

    # The API's side ----------------------------------------------------------------------

    def staging(self, job_id: str) -> JobFiles:
        return JobFiles.of(self.staging_dir, job_id)

    def store_input(self, job_id: str, staged: JobFiles) -> None:
        source = staged.find_input()
        with self._calls("storing an input"):
            # upload_file: one PUT, or a multipart upload completed only once every part arrived.
            self.client.upload_file(str(source), self.location.bucket, self._job_prefix(job_id) + source.name)
        staged.delete()

    def result(self, job_id: str, name: str, media_type: str, download_name: str) -> Path | Redirect | None:
        from botocore.exceptions import ClientError

        key = self._job_prefix(job_id) + name
        with self._calls("reading a result"):
            try:
                self.client.head_object(Bucket=self.location.bucket, Key=key)
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in _MISSING:
                    return None
                raise
        with self._calls("signing a result link"):
            url = self.signer.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.location.bucket,
                    "Key": key,
                    "ResponseContentType": media_type,
                    "ResponseContentDisposition": f'attachment; filename="{download_name}"',
                },
                ExpiresIn=self.link_seconds,
            )
        return Redirect(url)

    def delete(self, job_id: str) -> None:
        keys = [item["Key"] for item in self._keys(self._job_prefix(job_id))]
        if keys:
            self._delete_keys(keys)

    # The worker's side -------------------------------------------------------------------

    def workspace(self, job_id: str) -> JobFiles:
        work = JobFiles.of(self.scratch_dir, job_id)
        work.delete()  # an earlier attempt's copy on this machine (a killed worker's): start afresh
        work.dir.mkdir(parents=True)
        return work

    def fetch_input(self, job_id: str, work: JobFiles) -> Path:
        prefix = self._job_prefix(job_id)
        inputs = sorted(item["Key"] for item in self._keys(prefix + "input."))
        if not inputs:
            raise FileNotFoundError(f"job {job_id} has no input (deleted or expired)")
        name = inputs[0].removeprefix(prefix)
        target = work.dir / name
        partial = work.dir / f".{name}.partial"  # half a download is never taken for the input
        from botocore.exceptions import ClientError

        with self._calls("fetching an input"):
            try:
                self.client.download_file(self.location.bucket, inputs[0], str(partial))
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in _MISSING:  # deleted since it was listed
                    raise FileNotFoundError(f"job {job_id} has no input (deleted or expired)") from None
                raise
        partial.rename(target)
        return target

    def store_output(self, job_id: str, work: JobFiles, name: str, media_type: str) -> None:
        extra = {"ContentType": media_type, "ContentDisposition": f'attachment; filename="{job_id}{Path(name).suffix}"'}
        with self._calls("storing a result"):
            self.client.upload_file(
                str(work.dir / name), self.location.bucket, self._job_prefix(job_id) + name, ExtraArgs=extra
            )

    def release(self, work: JobFiles) -> None:
        work.delete()  # the local copies: the bucket holds the input and, if it finished, the output

    def segment_workspace(self, job_id: str, index: int) -> JobFiles:
        work = JobFiles(JobFiles.of(self.scratch_dir, job_id).dir / SEGMENTS / str(int(index)))
        work.delete()
        work.dir.mkdir(parents=True)
        return work

    def store_part(self, job_id: str, work: JobFiles, name: str) -> None:
        with self._calls("storing a piece"):
            self.client.upload_file(str(work.dir / name), self.location.bucket, self._part_key(job_id, name))

    def fetch_part(self, job_id: str, name: str, work: JobFiles) -> Path:
        from botocore.exceptions import ClientError

        target = work.dir / name
        partial = work.dir / f".{name}.partial"
        with self._calls("fetching a piece"):
            try:
                self.client.download_file(self.location.bucket, self._part_key(job_id, name), str(partial))
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in _MISSING:
                    raise FileNotFoundError(f"job {job_id} has no piece {name}") from None
                raise
        partial.rename(target)
        return target

    def delete_parts(self, job_id: str) -> None:
        keys = [item["Key"] for item in self._keys(self._job_prefix(job_id) + f"{PARTS}/")]
        if keys:
            self._delete_keys(keys)

    def _part_key(self, job_id: str, name: str) -> str:
        if "/" in name or name.startswith("."):
            raise ValueError(f"not a piece's name: {name!r}")
        return f"{self._job_prefix(job_id)}{PARTS}/{name}"

    def remove_partials(self, job_id: str) -> None:
        # Nothing half-written is ever visible in the bucket (an object appears whole or not at all);
        # only a workspace on this machine can hold a killed attempt's files.
        JobFiles.of(self.scratch_dir, job_id).delete()

    def purge_expired(self, ttl_seconds: float, keep: set[str] = frozenset(), now: float | None = None) -> int:
        cutoff = (now or time.time()) - ttl_seconds
        newest: dict[str, float] = {}
        keys: dict[str, list[str]] = defaultdict(list)
        for item in self._keys(self.location.prefix):
            job_id = item["Key"].removeprefix(self.location.prefix).split("/", 1)[0]
            with contextlib.suppress(ValueError):
                if str(uuid.UUID(job_id)) != job_id:
                    continue  # not a job's key: not ours to delete
                keys[job_id].append(item["Key"])
                newest[job_id] = max(newest.get(job_id, 0.0), item["LastModified"].timestamp())
        expired = [job_id for job_id, at in newest.items() if at < cutoff and job_id not in keep]
        self._delete_keys([key for job_id in expired for key in keys[job_id]])
        if expired:
            log.info("purged %d expired jobs from the bucket", len(expired))
        # A killed API's staged upload, a killed worker's workspace: on this machine's disk.
        for folder in (self.staging_dir, self.scratch_dir):
            purge_expired(folder, ttl_seconds, keep, now)
        return len(expired)


def open_storage(settings: Settings) -> JobStorage:
    """The backend CLIPMORPH_STORAGE_URL names (empty: the local jobs folder)."""
    if not settings.storage_url:
        return LocalStorage(settings.jobs_dir)
    return S3Storage(
        S3Location.parse(settings.storage_url),
        settings.var_dir,
        settings.result_link_seconds,
        settings.storage_public_endpoint,
    )
