"""A job's folder on local disk: <root>/<uuid>/input.<ext>, output.<ext>, half-written files, expiry.

With the default local storage (clipmorph.jobs.storage.LocalStorage) the folders under
<var_dir>/jobs are where jobs are kept, shared by the API (which writes inputs) and every
worker (which writes outputs): on one machine a folder, in docker-compose a volume, across
machines a network filesystem. With a bucket the same layout is the API's staging folder for an
upload and a worker's workspace for one attempt. Folder names are only ever server-made UUIDs and
file names are fixed here, so nothing a client sends becomes part of a path.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Container suffixes we keep from the client's file name (PyAV probes by content, the suffix is cosmetic).
VIDEO_SUFFIXES = frozenset({"mp4", "m4v", "mov", "mkv", "webm", "avi", "mpg", "mpeg", "ts", "flv", "wmv", "3gp"})


@dataclass(frozen=True)
class JobFiles:
    dir: Path

    @classmethod
    def of(cls, jobs_dir: Path, job_id: str | uuid.UUID) -> JobFiles:
        return cls(jobs_dir / str(uuid.UUID(str(job_id))))  # re-parse: only a canonical UUID names a folder

    @property
    def upload(self) -> Path:
        """The upload while it streams in, before it is probed."""
        return self.dir / "upload.part"

    def input(self, suffix: str) -> Path:
        return self.dir / f"input.{suffix}"

    def find_input(self) -> Path:
        found = sorted(self.dir.glob("input.*"))
        if not found:
            raise FileNotFoundError(f"job {self.dir.name} has no input (deleted or expired)")
        return found[0]

    @property
    def output(self) -> Path:
        return self.dir / "output.mp4"

    def partials(self) -> list[Path]:
        """Half-written outputs (clipmorph.video.pipeline's hidden `.output.*.partial.mp4`) and an unfinished upload."""
        if not self.dir.is_dir():
            return []
        return [p for p in self.dir.iterdir() if ".partial" in p.name or p == self.upload]

    def remove_partials(self) -> None:
        """Remove what a failed, killed or timed-out attempt left half-written; the input stays."""
        for path in self.partials():
            path.unlink(missing_ok=True)

    def delete(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def input_suffix(client_filename: str | None) -> str:
    """The server's choice of suffix for an upload: the client's only if it is a known container."""
    suffix = Path(client_filename or "").suffix.lower().lstrip(".")
    return suffix if suffix in VIDEO_SUFFIXES else "bin"


def _newest_mtime(folder: Path) -> float:
    """Latest modification time of the folder or anything in it (inf if it vanished meanwhile)."""
    try:
        return max([folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.iterdir())])
    except FileNotFoundError:
        return float("inf")


def purge_expired(jobs_dir: Path, ttl_seconds: float, keep: set[str] = frozenset(), now: float | None = None) -> int:
    """Delete job folders untouched for `ttl_seconds`, except those in `keep` (running jobs); -> count."""
    if not jobs_dir.is_dir():
        return 0
    cutoff = (now or time.time()) - ttl_seconds
    removed = 0
    for folder in jobs_dir.iterdir():
        if not folder.is_dir() or folder.name in keep:
            continue
        if _newest_mtime(folder) < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    if removed:
        log.info("purged %d expired job folders from %s", removed, jobs_dir)
    return removed
