"""A trained model on disk: everything needed to run it, nothing that unpickles code.

    <dir>/model.safetensors   weights
    <dir>/config.json         {"net": NetConfig, "style": {...}, "train": {...}, "format": 1}

The same folder is what MLflow stores as the registered model's artifact.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from clipmorph.model.network import NetConfig, Stylizer

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT_VERSION = 1


@dataclass
class ModelInfo:
    net: NetConfig
    style: dict = field(default_factory=dict)  # name, images: [{name, sha256, weight}]
    train: dict = field(default_factory=dict)  # training parameters and results
    recommended: dict = field(default_factory=dict)  # inference defaults, e.g. norm smoothing

    def to_json(self) -> dict:
        return {
            "format": FORMAT_VERSION,
            "net": self.net.to_dict(),
            "style": self.style,
            "train": self.train,
            "recommended": self.recommended,
        }


def save_model(model: Stylizer, info: ModelInfo, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS))
    (directory / CONFIG).write_text(json.dumps(info.to_json(), indent=2, sort_keys=True))
    return directory


def read_info(directory: Path) -> ModelInfo:
    path = Path(directory) / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not a clipmorph model (no {CONFIG})")
    raw = json.loads(path.read_text())
    if raw.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported model format {raw.get('format')!r}")
    return ModelInfo(
        net=NetConfig.from_dict(raw["net"]),
        style=raw.get("style", {}),
        train=raw.get("train", {}),
        recommended=raw.get("recommended", {}),
    )


def load_model(directory: Path | str, device: str | torch.device = "cpu") -> tuple[Stylizer, ModelInfo]:
    directory = Path(directory)
    info = read_info(directory)
    model = Stylizer(info.net)
    model.load_state_dict(load_file(str(directory / WEIGHTS)))
    # The frame size the model was trained for; inference scales frames to it (see inference.network_size).
    model.frame_side = info.recommended.get("frame_side")
    return model.to(device).eval(), info


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
