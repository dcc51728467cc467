"""`make data`: linking the offline mirror, and the real downloads against a local HTTP server."""

import hashlib
import http.server
import io
import json
import threading
import zipfile
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from clipmorph.assets import link_mirror, prepare
from clipmorph.cli import app
from clipmorph.download import DownloadError, download
from clipmorph.settings import get_settings


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves `files` by path, honouring single `bytes=N-` ranges; records the Range headers it saw."""

    files: ClassVar[dict[str, bytes]] = {}
    ranges: ClassVar[list[str]] = []

    def do_GET(self):
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if rng := self.headers.get("Range"):
            self.ranges.append(rng)
            start = int(rng.removeprefix("bytes=").split("-")[0])
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    RangeHandler.files, RangeHandler.ranges = {}, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield RangeHandler, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_verifies_and_resumes(server, tmp_path):
    handler, base = server
    payload = bytes(range(256)) * 4000
    handler.files["/f.bin"] = payload
    digest = hashlib.sha256(payload).hexdigest()

    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(payload[:100_000])  # an interrupted earlier download
    download(f"{base}/f.bin", dest, sha256=digest)
    assert dest.read_bytes() == payload
    assert handler.ranges == ["bytes=100000-"]
    assert not dest.with_name("f.bin.part").exists()


def test_download_rejects_a_wrong_checksum_and_leaves_nothing(server, tmp_path):
    handler, base = server
    handler.files["/f.bin"] = b"hello"
    with pytest.raises(DownloadError, match="sha256"):
        download(f"{base}/f.bin", tmp_path / "f.bin", sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_download_of_a_missing_file_names_the_url(server, tmp_path):
    _, base = server
    with pytest.raises(DownloadError, match=r"/nope.jpg answered 404"):
        download(f"{base}/nope.jpg", tmp_path / "x.jpg")


def _offline_settings(monkeypatch, tmp_path, manifest: dict, vgg_url: str, vg_urls: list[str]):
    (tmp_path / "styles.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("CLIPMORPH_ASSETS_DIR", str(tmp_path / "no-mirror"))
    monkeypatch.setenv("CLIPMORPH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CLIPMORPH_STYLE_MANIFEST", str(tmp_path / "styles.json"))
    monkeypatch.setenv("CLIPMORPH_VGG19_URL", vgg_url)
    monkeypatch.setenv("CLIPMORPH_VISUAL_GENOME_URLS", json.dumps(vg_urls))
    get_settings.cache_clear()
    return get_settings()


def test_without_mirror_prepare_downloads_styles_vgg_and_visual_genome(settings, server, tmp_path, monkeypatch):
    handler, base = server
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("VG_100K/1.jpg", b"jpeg bytes")
    handler.files |= {"/kandinsky.jpg": b"k", "/vgg19-dcbb9e9d.pth": b"w", "/images.zip": zipped.getvalue()}
    s = _offline_settings(
        monkeypatch,
        tmp_path,
        {"_comment": "x", "kandinsky": f"{base}/kandinsky.jpg"},
        f"{base}/vgg19-dcbb9e9d.pth",
        [f"{base}/images.zip"],
    )
    assert "downloaded" in prepare(s)
    assert (s.styles_dir / "kandinsky.jpg").read_bytes() == b"k"
    assert (s.data_dir / "weights" / "vgg19-dcbb9e9d.pth").read_bytes() == b"w"
    assert (s.photos_dir / "visual_genome" / "VG_100K" / "1.jpg").read_bytes() == b"jpeg bytes"


def test_make_data_without_mirror_fails_naming_what_it_tried(settings, server, tmp_path, monkeypatch):
    _, base = server
    _offline_settings(monkeypatch, tmp_path, {"scream": f"{base}/scream.jpg"}, f"{base}/vgg.pth", [f"{base}/vg.zip"])
    result = CliRunner().invoke(app, ["data"])
    assert result.exit_code != 0
    for url in ("/scream.jpg", "/vgg.pth", "/vg.zip"):
        assert url in result.output
    assert "offline mirror" in result.output and "not found" in result.output


def test_link_mirror_makes_symlinks(settings, tmp_path, monkeypatch, assets):
    monkeypatch.setenv("CLIPMORPH_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    linked = link_mirror(get_settings())
    assert {p.name for p in linked} == {"styles", "photos", "videos", "weights"}
    assert (tmp_path / "data" / "styles" / "kandinsky.jpg").exists()
    assert link_mirror(get_settings()) == []  # idempotent


def test_style_manifest_names_the_required_styles():
    manifest = json.loads(get_settings().style_manifest.read_text())
    for name in ("kandinsky", "starrynight", "kanagawa", "scream", "monet"):
        assert manifest[name].startswith("https://")
