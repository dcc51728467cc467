"""`make data`: link the offline mirror into the data dir, or download the real sources.

Data dir layout (the same either way):
    data/styles/<name>.jpg      style paintings
    data/photos/...             training photos (Visual Genome: data/photos/visual_genome/VG_100K*/)
    data/videos/...             sample clips (mirror only)
    data/weights/<vgg>.pth      VGG-19 weights
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

from clipmorph.download import DownloadError, download
from clipmorph.settings import Settings, get_settings

log = logging.getLogger(__name__)
MIRRORED = ("styles", "photos", "videos", "weights")


def style_manifest(settings: Settings) -> dict[str, str]:
    raw = json.loads(settings.style_manifest.read_text())
    return {k: v for k, v in raw.items() if not k.startswith("_")}


def link_mirror(settings: Settings) -> list[Path]:
    """Symlink each mirrored folder into the data dir (existing real folders are left alone)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    linked = []
    for name in MIRRORED:
        src, dst = settings.assets_dir.resolve() / name, settings.data_dir / name
        if not src.is_dir() or (dst.is_symlink() and dst.resolve() == src):
            continue
        if dst.is_symlink():
            dst.unlink()  # a stale link to an older mirror location
        if not dst.exists():
            dst.symlink_to(src, target_is_directory=True)
            linked.append(dst)
    return linked


def download_all(settings: Settings, with_visual_genome: bool = True) -> list[str]:
    """The real downloads: styles from the manifest, torchvision's VGG-19, Visual Genome. Returns failures."""
    failures: list[str] = []
    for name, url in style_manifest(settings).items():
        suffix = Path(url.split("?")[0]).suffix or ".jpg"
        _try(lambda u=url, n=name, s=suffix: download(u, settings.styles_dir / f"{n}{s}"), url, failures)
    _try(lambda: download(settings.vgg19_url, settings.data_dir / "weights" / Path(settings.vgg19_url).name),
         settings.vgg19_url, failures)  # fmt: skip
    if with_visual_genome:
        for url in settings.visual_genome_urls:
            _try(lambda u=url: fetch_visual_genome_zip(u, settings.photos_dir / "visual_genome"), url, failures)
    return failures


def fetch_visual_genome_zip(url: str, root: Path) -> Path:
    """Download (resumably) and extract one Visual Genome image zip into `root` (VG_100K*/...).

    A zip that fails its CRC check is deleted so the next run fetches it again.
    """
    archive = download(url, root / "_downloads" / Path(url).name)
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise zipfile.BadZipFile(f"corrupt member {bad}")
            zf.extractall(root)
    except zipfile.BadZipFile as e:
        archive.unlink(missing_ok=True)
        raise DownloadError(f"{archive} is corrupt ({e}); deleted, run again to re-download") from e
    return root


def _try(fn, url: str, failures: list[str]) -> None:
    try:
        fn()
    except DownloadError as e:
        log.error("%s", e)
        failures.append(url)


def prepare(settings: Settings | None = None, with_visual_genome: bool = True) -> str:
    """Link the mirror if it exists, download otherwise. Raises DownloadError naming what failed."""
    settings = settings or get_settings()
    if settings.assets_dir.is_dir():
        linked = link_mirror(settings)
        return f"linked offline mirror {settings.assets_dir} into {settings.data_dir} ({len(linked)} new links)"
    log.info("no offline mirror at %s; downloading", settings.assets_dir)
    failures = download_all(settings, with_visual_genome)
    if failures:
        raise DownloadError(
            f"offline mirror {settings.assets_dir} not found and {len(failures)} download(s) failed:\n  "
            + "\n  ".join(failures)
        )
    return f"downloaded styles, VGG-19 weights and Visual Genome into {settings.data_dir}"
