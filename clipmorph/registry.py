"""The MLflow model registry: register trained models, resolve references to local folders.

A model reference is one of:
    path/to/model-dir            a folder with config.json + model.safetensors
    kandinsky                    -> models:/clipmorph-kandinsky@champion
    kandinsky@challenger         -> models:/clipmorph-kandinsky@challenger
    kandinsky/3                  -> models:/clipmorph-kandinsky/3
    models:/clipmorph-kandinsky@champion, models:/clipmorph-kandinsky/3
Model versions point at the run artifact folder holding the safetensors model;
nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from clipmorph.artifact import CONFIG, read_info
from clipmorph.settings import Settings, get_settings

MODEL_PREFIX = "clipmorph-"
ARTIFACT_PATH = "model"
_REF = re.compile(r"^(?:models:/)?(?P<name>[A-Za-z0-9_.-]+?)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))?$")


class ModelNotFoundError(LookupError):
    pass


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    name: str | None = None  # registered model name, None for a plain folder
    version: str | None = None

    @property
    def uri(self) -> str | None:
        return f"models:/{self.name}/{self.version}" if self.name else None


def registered_name(style: str) -> str:
    return style if style.startswith(MODEL_PREFIX) else f"{MODEL_PREFIX}{style}"


def style_of(name: str) -> str:
    return name.removeprefix(MODEL_PREFIX)


def configure(settings: Settings | None = None) -> MlflowClient:
    """Point MLflow at the configured tracking/registry store and make sure the experiment exists."""
    settings = settings or get_settings()
    if settings.tracking_uri.startswith("sqlite:///"):
        Path(settings.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    if client.get_experiment_by_name(settings.mlflow_experiment) is None:
        location = None
        if "://" not in settings.tracking_uri or settings.tracking_uri.startswith("sqlite:"):
            settings.artifact_root.mkdir(parents=True, exist_ok=True)
            location = settings.artifact_root.as_uri()
        with contextlib.suppress(MlflowException):  # created concurrently by another process
            client.create_experiment(settings.mlflow_experiment, artifact_location=location)
    mlflow.set_experiment(settings.mlflow_experiment)
    return client


def register_model_dir(client: MlflowClient, model_dir: Path, style: str, run_id: str) -> ModelVersion:
    """Upload `model_dir` as the run's `model` artifact and register it as a new version."""
    client.log_artifacts(run_id, str(model_dir), ARTIFACT_PATH)
    name = registered_name(style)
    try:
        client.create_registered_model(name, description=f"clipmorph stylizer for style '{style}'")
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/{ARTIFACT_PATH}"
    return client.create_model_version(name, source=source, run_id=run_id)


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """-> (registered name, alias, version); alias defaults to the champion."""
    m = _REF.match(ref)
    if not m:
        raise ModelNotFoundError(f"{ref!r} is neither a model folder nor a model reference like kandinsky@champion")
    alias, version = m["alias"], m["version"]
    if alias is None and version is None:
        alias = get_settings().champion_alias
    return registered_name(m["name"]), alias, version


def get_version(client: MlflowClient, ref: str) -> ModelVersion:
    name, alias, version = parse_ref(ref)
    try:
        if version is not None:
            return client.get_model_version(name, version)
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        known = ", ".join(style_of(m.name) for m in client.search_registered_models()) or "none"
        raise ModelNotFoundError(
            f"no model version for {ref!r} ({name} {'@' + alias if alias else 'v' + str(version)}); "
            f"registered styles: {known}"
        ) from None


def resolve(ref: str | Path, client: MlflowClient | None = None) -> ResolvedModel:
    """A local folder for `ref`, downloading the version's artifact into a cache when needed."""
    p = Path(ref)
    if (p / CONFIG).exists():
        return ResolvedModel(p)
    client = client or configure()
    mv = get_version(client, str(ref))
    cache = get_settings().var_dir / "model-cache" / mv.name / str(mv.version)
    if not (cache / CONFIG).exists():
        tmp = cache.with_name(cache.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(tmp), tracking_uri=client.tracking_uri)
        downloaded = tmp / ARTIFACT_PATH if (tmp / ARTIFACT_PATH / CONFIG).exists() else tmp
        read_info(downloaded)  # fail here, not in a worker, if the artifact is not a model
        shutil.rmtree(cache, ignore_errors=True)
        downloaded.rename(cache)
        shutil.rmtree(tmp, ignore_errors=True)
    return ResolvedModel(cache, mv.name, str(mv.version))


def builtin_model_dirs(settings: Settings | None = None) -> dict[str, Path]:
    """Models shipped in the repo: <builtin_models_dir>/<style>/{config.json,model.safetensors}."""
    root = (settings or get_settings()).builtin_models_dir
    return {p.parent.name: p.parent for p in sorted(root.glob(f"*/{CONFIG}"))}


def register_builtins(client: MlflowClient | None = None, only_if_missing: bool = True) -> list[ModelVersion]:
    """Register each built-in model whose registered model has no versions yet; make it champion.

    The metrics recorded when the model was trained and evaluated (config.json's
    `train.final_losses` and `metrics`) are logged on its run, so the promotion
    gate has numbers to compare later versions with.
    """
    client = client or configure()
    registered = []
    for style, folder in builtin_model_dirs().items():
        name = registered_name(style)
        if only_if_missing and client.search_model_versions(f"name='{name}'"):
            continue
        info = read_info(folder)
        with mlflow.start_run(run_name=f"builtin-{style}", tags={"clipmorph.builtin": "true"}) as run:
            mlflow.log_params({k: str(v) for k, v in info.train.items() if not isinstance(v, dict)})
            metrics = info.train.get("metrics", {})
            if metrics:
                mlflow.log_metrics(metrics)
        mv = register_model_dir(client, folder, style, run.info.run_id)
        client.set_registered_model_alias(name, get_settings().champion_alias, mv.version)
        registered.append(mv)
    return registered
