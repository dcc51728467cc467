"""Multipart uploads streamed into a file as they arrive, with a byte cap.

FastAPI's UploadFile parses the whole body before the endpoint runs, spooling
files of any size to a temp dir, so a cap could only be checked afterwards.
Here python-multipart's streaming parser feeds the file part straight into the
caller's sink chunk by chunk, counting bytes: an upload over the cap is
refused with 413 as soon as it crosses it (or at once, from Content-Length).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
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
    """507 before reading the body when the upload would leave less than `min_free_bytes` on the disk."""
    declared = request.headers.get("content-length", "")
    incoming = int(declared) if declared.isdigit() else max_file_bytes
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(folder).free - incoming < min_free_bytes:
        raise HTTPException(status.HTTP_507_INSUFFICIENT_STORAGE, "the server is out of disk space; try again later")


async def receive_form(
    request: Request, file_field: str, sink: BinaryIO, max_file_bytes: int, deadline_seconds: float
) -> ReceivedForm:
    """Stream a multipart/form-data body: its `file_field` file into `sink`, its text fields returned.

    A client that takes longer than `deadline_seconds` for the whole body gets 408: a slow upload would
    otherwise hold a connection and a partial file for as long as it likes.
    """
    try:
        with anyio.fail_after(deadline_seconds):
            return await _receive(request, file_field, sink, max_file_bytes)
    except TimeoutError:
        raise HTTPException(
            status.HTTP_408_REQUEST_TIMEOUT, f"the upload took longer than {deadline_seconds:g} s"
        ) from None


async def _receive(request: Request, file_field: str, sink: BinaryIO, max_file_bytes: int) -> ReceivedForm:
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
