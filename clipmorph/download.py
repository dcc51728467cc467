"""Resumable, verifying HTTP downloads (httpx does the HTTP; this only resumes and checks)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
from tqdm import tqdm

from clipmorph.model.artifact import sha256_file


class DownloadError(RuntimeError):
    pass


def download(url: str, dest: Path, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Fetch `url` to `dest`, continuing a previous partial download (`dest.part`) with a Range request.

    The file appears at `dest` only when complete (and, if `sha256` is given, verified).
    """
    dest = Path(dest)
    if dest.exists() and (sha256 is None or sha256_file(dest) == sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    transport = httpx.HTTPTransport(retries=3)
    try:
        with (
            httpx.Client(transport=transport, timeout=timeout, follow_redirects=True) as client,
            client.stream("GET", url, headers=headers) as r,
        ):
            if r.status_code == 416:  # already have every byte
                pass
            elif r.status_code not in (200, 206):
                raise DownloadError(f"GET {url} answered {r.status_code}")
            else:
                if r.status_code == 200:
                    have = 0  # server ignored the Range: start over
                total = int(r.headers.get("content-length", 0)) + have or None
                with (
                    open(part, "ab" if have else "wb") as f,
                    tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=dest.name) as bar,
                ):
                    for chunk in r.iter_bytes(1 << 20):
                        f.write(chunk)
                        bar.update(len(chunk))
                if total is not None and part.stat().st_size != total:
                    raise DownloadError(f"{url}: got {part.stat().st_size} of {total} bytes; run again to resume")
    except httpx.HTTPError as e:
        raise DownloadError(f"could not download {url}: {e}") from e
    if sha256 is not None and (got := sha256_file(part)) != sha256:
        part.unlink()
        raise DownloadError(f"{url}: sha256 {got} does not match the expected {sha256}")
    os.replace(part, dest)
    return dest
