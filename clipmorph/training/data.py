"""Training images: any folder of photos (Visual Genome's VG_100K*/ included) and style images."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def find_images(roots: Sequence[Path], exclude: Sequence[Path] = ()) -> list[Path]:
    """All image files under `roots` (recursively, symlinks followed), minus those under `exclude`."""
    excluded = [Path(e).resolve() for e in exclude]
    found: set[Path] = set()
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"image folder {root} does not exist; run `make data`")
        for p in root.rglob("*"):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                rp = p.resolve()
                if not any(rp.is_relative_to(e) for e in excluded):
                    found.add(p)
    return sorted(found)


def visual_genome_images(root: Path) -> list[Path]:
    """Images of the real Visual Genome layout: <root>/VG_100K/*.jpg and <root>/VG_100K_2/*.jpg."""
    dirs = [root / "VG_100K", root / "VG_100K_2"]
    present = [d for d in dirs if d.is_dir()]
    if not present:
        raise FileNotFoundError(f"no VG_100K/ or VG_100K_2/ under {root}")
    return find_images(present)


def load_rgb(path: Path) -> Image.Image:
    """Open any image as RGB (greyscale, palette, CMYK, alpha all converted)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(path)
        img.load()
    return img.convert("RGB")


def to_tensor(img: Image.Image) -> torch.Tensor:
    from torchvision.transforms import v2  # torchvision (~1.5 s of imports): not at import time, see cli

    return v2.functional.to_dtype(v2.functional.pil_to_tensor(img), torch.float32, scale=True)


def centre_crops(paths: Sequence[Path], size: int) -> torch.Tensor:
    """(N, 3, size, size): each photo's shorter side scaled to `size`, then its centre, the same on every call.

    The fixed validation pictures: training's validation sheets and the evaluation's training losses.
    """
    from torchvision.transforms import v2

    crop = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])
    return torch.stack([crop(to_tensor(load_rgb(p))) for p in paths])


class PhotoDataset(Dataset):
    """Random crops of photos shown at frame scale; unreadable files are skipped with a warning and counted.

    Each photo is first scaled so that its longer side is about `frame_side` (x0.8 to x1.25), the size at
    which frames reach the network, then a `size` square is cut from it. Objects, edges and flat areas
    therefore have the sizes the network will meet in video. With frame_side=0 the older
    random-resized-crop (25 to 100 % of the photo) is used instead.
    """

    def __init__(self, paths: Sequence[Path], size: int, frame_side: int = 0) -> None:
        if not paths:
            raise ValueError("no training images found")
        self.paths = list(paths)
        self.size = size
        self.frame_side = frame_side
        self.unreadable: set[Path] = set()
        from torchvision.transforms import v2

        if frame_side:
            self.transform = v2.Compose([v2.RandomCrop(size), v2.RandomHorizontalFlip()])
        else:
            self.transform = v2.Compose(
                [v2.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True), v2.RandomHorizontalFlip()]
            )

    def __len__(self) -> int:
        return len(self.paths)

    def _at_frame_scale(self, img: Image.Image) -> Image.Image:
        side = self.frame_side * float(torch.empty(()).uniform_(0.8, 1.25))
        scale = max(side / max(img.size), self.size / min(img.size))
        new = (max(self.size, round(img.width * scale)), max(self.size, round(img.height * scale)))
        return img.resize(new, Image.BICUBIC if scale > 1 else Image.LANCZOS)

    def __getitem__(self, index: int) -> torch.Tensor:
        for offset in range(len(self.paths)):
            path = self.paths[(index + offset) % len(self.paths)]
            if path in self.unreadable:
                continue
            try:
                img = load_rgb(path)
                if self.frame_side:
                    img = self._at_frame_scale(img)
                # Resampling can overshoot [0, 1] by a rounding error; the losses assume that range.
                return self.transform(to_tensor(img)).clamp_(0.0, 1.0)
            except (OSError, UnidentifiedImageError, ValueError) as e:
                self.unreadable.add(path)
                log.warning("skipping unreadable image %s: %s", path, e)
        raise RuntimeError("every training image is unreadable")


@dataclass
class StyleImage:
    path: Path
    weight: float = 1.0


def parse_style_spec(spec: str, style_dirs: Sequence[Path]) -> list[StyleImage]:
    """'kandinsky' | 'a.jpg:0.7,b.jpg:0.3' | 'starrynight:1,kanagawa:1' -> weighted style images.

    A bare name is looked up as <dir>/<name>.(jpg|png|...) in each of `style_dirs` (settings.style_dirs).
    Weights must be positive; they are normalised to sum to 1.
    """
    items: list[StyleImage] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, weight = part.rpartition(":") if ":" in part else (part, "", "1")
        try:
            w = float(weight)
        except ValueError:
            raise ValueError(f"style weight {weight!r} in {spec!r} is not a number") from None
        if w <= 0:
            raise ValueError(f"style weights must be positive, got {w} for {name!r}")
        items.append(StyleImage(resolve_style_path(name, style_dirs), w))
    if not items:
        raise ValueError("empty style specification")
    total = sum(i.weight for i in items)
    return [StyleImage(i.path, i.weight / total) for i in items]


def find_painting(stem: str, style_dirs: Sequence[Path]) -> Path | None:
    """The painting <dir>/<stem>.(jpg|png|...) in the first of `style_dirs` that has one. `stem` must already be
    a safe name (the API checks it against a pattern): it is joined to the folders as it is."""
    for folder in style_dirs:
        for suffix in sorted(IMAGE_SUFFIXES):
            if (candidate := folder / f"{stem}{suffix}").is_file():
                return candidate
    return None


def known_paintings(style_dirs: Sequence[Path]) -> list[str]:
    """The names of every painting in `style_dirs`."""
    return sorted({p.stem for d in style_dirs for p in d.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES})


def resolve_style_path(name: str, style_dirs: Sequence[Path]) -> Path:
    """An image path as it is, or a painting's name looked up in `style_dirs`."""
    p = Path(name)
    if p.suffix.lower() in IMAGE_SUFFIXES and p.exists():
        return p
    if (found := find_painting(name, style_dirs)) is not None:
        return found
    folders = ", ".join(str(d) for d in style_dirs)
    known = ", ".join(known_paintings(style_dirs)) or "none (run make data)"
    raise FileNotFoundError(f"style {name!r} not found in {folders}; known styles: {known}")


def load_style_tensor(path: Path, side: int) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1], scaled so the longer side is `side` pixels.

    The painting is shown at the size of a frame, so that its strokes keep their size relative to the
    picture (a small painting is enlarged rather than left with strokes that look finer than they are).
    """
    img = load_rgb(path)
    scale = side / max(img.size)
    if scale != 1:
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.LANCZOS if scale < 1 else Image.BICUBIC)
    return to_tensor(img).unsqueeze(0)
