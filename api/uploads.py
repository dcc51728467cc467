"""Multipart uploads streamed into a file as they arrive, with a byte cap.

FastAPI's UploadFile parses the whole body before the endpoint runs, spooling
files of any size to a temp dir, so a cap could only be checked afterwards.
Here python-multipart's streaming parser feeds the file part straight into the
caller's sink chunk by chunk, counting bytes: an upload over the cap is
refused with 413 as soon as it crosses it (or at once, from Content-Length).

What one upload may hold is bounded: the whole body must arrive within a deadline (408),
one client may have at most `max_uploads_per_client` bodies arriving at once (429), and
the free-disk check counts the bytes that uploads still arriving have announced (507).
These are per API process: the local stack and docker-compose run one.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import BinaryIO

import anyio
from fastapi import HTTPException, Request, status
from pydantic import BaseModel
from python_multipart.multipart import MultipartParser, parse_options_header

MAX_FIELD_BYTES = 4096
MAX_PARTS = 32
# Room for the form fields and multipart boundaries around the file in Content-Length.
FORM_OVERHEAD_BYTES = MAX_PARTS * (MAX_FIELD_BYTES + 512)
# What a client refused for having too many uploads in progress is told to wait (an upload slot frees
# as soon as any of its uploads has arrived).
BUSY_RETRY_SECONDS = 1


class UploadGate:
    """The upload bodies an API process is receiving: how many per client, and the bytes still to come."""

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client  # 0: no limit
        self.active: Counter[str] = Counter()
        self._remaining: dict[int, int] = {}  # upload -> bytes it announced and has not written yet
        self._ids = count()

    @property
    def reserved(self) -> int:
        """Disk the uploads in progress will still take (their Content-Length, less what they have written)."""
        return sum(self._remaining.values())

    @contextmanager
    def hold(self, client: str, incoming: int) -> Iterator[int]:
        """A slot for one upload from `client` (429 when it has `per_client` already); -> the upload's key."""
        if self.per_client and self.active[client] >= self.per_client:
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                f"too many uploads in progress from this client (at most {self.per_client} at a time); "
                "try again when one has arrived",
                headers={"Retry-After": str(BUSY_RETRY_SECONDS)},
            )
        key = next(self._ids)
        self.active[client] += 1
        self._remaining[key] = incoming
        try:
            yield key
        finally:
            self.active[client] -= 1
            if self.active[client] <= 0:
                del self.active[client]
            del self._remaining[key]

    def wrote(self, key: int, size: int) -> None:
        self._remaining[key] = max(0, self._remaining[key] - size)


def upload_gate(request: Request) -> UploadGate | None:
    """The app's gate, made on first use from its settings (None outside an app, as in unit tests)."""
    app = request.scope.get("app")
    services = getattr(getattr(app, "state", None), "services", None)
    if services is None:
        return None
    gate = getattr(app.state, "upload_gate", None)
    if gate is None:
        gate = app.state.upload_gate = UploadGate(services.settings.max_uploads_per_client)
    return gate


def client_key(request: Request) -> str:
    """Who an upload is from, for the per-client limit: the peer address (behind a proxy, run uvicorn
    with --proxy-headers and --forwarded-allow-ips so that this is the client's, not the proxy's)."""
    return request.client.host if request.client else "unknown"


def _incoming(request: Request, max_file_bytes: int) -> int:
    """The bytes an upload will bring: its Content-Length, or the cap when it declares none."""
    declared = request.headers.get("content-length", "")
    return min(int(declared), max_file_bytes + FORM_OVERHEAD_BYTES) if declared.isdigit() else max_file_bytes


@dataclass
class ReceivedForm:
    fields: dict[str, str]
    filename: str | None  # as the client named it; use only to pick among known suffixes
    size: int  # bytes of the file part; -1 when the form had no such part

    @property
    def has_file(self) -> bool:
        return self.size >= 0


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    is_file: bool = False
    data: bytearray = field(default_factory=bytearray)


class _FormCollector:
    """python-multipart callbacks: text fields kept (small), the one file part's bytes handed out per chunk."""

    def __init__(self, file_field: str, max_file_bytes: int) -> None:
        self.file_field = file_field
        self.max_file_bytes = max_file_bytes
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.file_size = -1
        self.pending = bytearray()  # file bytes parsed but not yet written
        self.parts = 0
        self.complete = False
        self._part = _Part()
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._header_name.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise _bad(f"too many form parts (at most {MAX_PARTS})")
        self._part = _Part()
        self._headers = {}

    def _header_end(self) -> None:
        self._headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._part.name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if filename is None:
            return
        if self._part.name != self.file_field:
            raise _bad(f"unexpected file field {self._part.name!r}; send the file as {self.file_field!r}")
        if self.file_size >= 0:
            raise _bad(f"send exactly one {self.file_field!r} file")
        self._part.is_file = True
        self.filename = filename.decode("utf-8", "replace")
        self.file_size = 0

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part.is_file:
            self.file_size += end - start
            if self.file_size > self.max_file_bytes:
                raise _too_large(self.max_file_bytes)
            self.pending.extend(data[start:end])
            return
        self._part.data.extend(data[start:end])
        if len(self._part.data) > MAX_FIELD_BYTES:
            raise _bad(f"form field {self._part.name!r} is longer than {MAX_FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        if not self._part.is_file:
            self.fields[self._part.name] = self._part.data.decode("utf-8", "replace")

    def _end(self) -> None:
        self.complete = True


def _bad(message: str) -> HTTPException:
    return HTTPException(status.HTTP_400_BAD_REQUEST, message)


def _refuse_epilogue(data: bytes) -> None:
    """The body ends at the closing boundary: anything but line breaks after it is refused, not read on."""
    if data.strip(b"\r\n"):
        raise _bad("data after the end of the multipart body")


def _too_large(limit: int) -> HTTPException:
    return HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"upload larger than the limit of {limit} bytes")


def ensure_disk_space(request: Request, folder: Path, max_file_bytes: int, min_free_bytes: int) -> None:
    """507 before reading the body when the upload would leave less than `min_free_bytes` on the disk.

    Uploads still arriving count with what they have yet to write: twenty 500 MB uploads that start
    together must not each see the same free space. Call it right before `receive_form`, with no
    await in between, so that no other upload starts between the check and the reservation.
    """
    gate = upload_gate(request)
    reserved = gate.reserved if gate else 0
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(folder).free - reserved - _incoming(request, max_file_bytes) < min_free_bytes:
        raise HTTPException(status.HTTP_507_INSUFFICIENT_STORAGE, "the server is out of disk space; try again later")


async def receive_form(
    request: Request, file_field: str, sink: BinaryIO, max_file_bytes: int, deadline_seconds: float
) -> ReceivedForm:
    """Stream a multipart/form-data body: its `file_field` file into `sink`, its text fields returned.

    A client that takes longer than `deadline_seconds` for the whole body gets 408: a slow upload would
    otherwise hold a connection and a partial file for as long as it likes. A client that already has
    the app's `max_uploads_per_client` bodies arriving gets 429 before anything is read.
    The caller deletes what `sink` holds when this raises.
    """
    gate = upload_gate(request) or UploadGate(0)
    try:
        with (
            gate.hold(client_key(request), _incoming(request, max_file_bytes)) as key,
            anyio.fail_after(deadline_seconds),
        ):
            return await _receive(request, file_field, sink, max_file_bytes, lambda size: gate.wrote(key, size))
    except TimeoutError:
        raise HTTPException(
            status.HTTP_408_REQUEST_TIMEOUT, f"the upload took longer than {deadline_seconds:g} s"
        ) from None


async def _receive(
    request: Request, file_field: str, sink: BinaryIO, max_file_bytes: int, wrote: Callable[[int], None]
) -> ReceivedForm:
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "send the upload as multipart/form-data")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_file_bytes + FORM_OVERHEAD_BYTES:
        raise _too_large(max_file_bytes)
    collector = _FormCollector(file_field, max_file_bytes)
    parser = MultipartParser(boundary, collector.callbacks())
    closing = b"--" + boundary + b"--"
    tail = b""  # the end of the previous chunk, in case the closing delimiter is split across chunks
    async for chunk in request.stream():
        if collector.complete:
            _refuse_epilogue(chunk)
            continue
        parser.write(chunk)
        window = tail + chunk
        if collector.complete:
            _refuse_epilogue(window[window.rfind(closing) + len(closing) :])
        tail = window[-len(closing) :]
        if collector.pending:
            data = bytes(collector.pending)
            collector.pending.clear()
            await anyio.to_thread.run_sync(sink.write, data)
            wrote(len(data))
    parser.finalize()
    if not collector.complete:
        raise _bad("the multipart body ended early (upload interrupted?)")
    return ReceivedForm(collector.fields, collector.filename, collector.file_size)


def openapi_multipart(form: type[BaseModel], file_field: str, file_description: str) -> dict:
    """`openapi_extra` documenting a multipart body: the file part plus `form`'s fields (refs inlined)."""
    schema = form.model_json_schema()
    defs = schema.get("$defs", {})
    properties = {
        name: {**defs[prop["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in prop.items() if k != "$ref"}}
        if "$ref" in prop
        else prop
        for name, prop in schema["properties"].items()
    }
    properties[file_field] = {"type": "string", "format": "binary", "description": file_description}
    body = {"type": "object", "required": [file_field, *schema.get("required", [])], "properties": properties}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": body}}}}
