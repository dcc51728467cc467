"""The MLflow model registry: register trained models, resolve references to local folders.

A model reference is one of:
    path/to/model-dir            a folder with config.json + model.safetensors
    kandinsky                    -> models:/clipmorph-kandinsky@champion
    kandinsky@challenger         -> models:/clipmorph-kandinsky@challenger
    kandinsky/3                  -> models:/clipmorph-kandinsky/3
    models:/clipmorph-kandinsky@champion, models:/clipmorph-kandinsky/3
Model versions point at the run artifact folder holding the safetensors model;
nothing is ever unpickled.

The built-in models (models/<style>/) register themselves as version 1 and champion the first
time anything needs them (register_builtins: API and worker start-up, `make up`, a lookup of a
built-in style), under a file lock so that processes starting together register each one once.

MLflow is imported only where a function needs it: importing MLflow and opening its SQLAlchemy
store takes 2-4 s, most of a short `clipmorph stylize`. A registered name that was resolved before,
against a registry database that has not been written since, is answered from the model cache
without MLflow (see `resolve`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

from clipmorph.model.artifact import CONFIG, read_info
from clipmorph.settings import Settings, get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

MODEL_PREFIX = "clipmorph-"
ARTIFACT_PATH = "model"
log = logging.getLogger(__name__)
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


def registry_lock(settings: Settings | None = None) -> FileLock:
    """A lock shared by every process using this registry (API, workers, CLI on one machine or volume).

    Next to the database for SQLite, else in the var dir (which docker-compose shares between containers).
    """
    settings = settings or get_settings()
    if settings.tracking_uri.startswith("sqlite:///"):
        path = Path(settings.tracking_uri.removeprefix("sqlite:///") + ".lock")
    else:
        path = settings.var_dir / "registry.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path)


def configure(settings: Settings | None = None) -> MlflowClient:
    """Point MLflow at the configured tracking/registry store and make sure the experiment exists."""
    import mlflow
    from mlflow import MlflowClient

    settings = settings or get_settings()
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    # MLflow creates a missing SQLite schema when a client first opens each store; two processes doing
    # it at once fail on "table already exists", so both stores are opened under the lock.
    with registry_lock(settings):
        client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
        client.search_registered_models(max_results=1)
        _ensure_experiment(client, settings)
    mlflow.set_experiment(settings.mlflow_experiment)
    return client


def _ensure_experiment(client: MlflowClient, settings: Settings) -> None:
    from mlflow.exceptions import MlflowException

    if client.get_experiment_by_name(settings.mlflow_experiment) is None:
        location = None
        if "://" not in settings.tracking_uri or settings.tracking_uri.startswith("sqlite:"):
            settings.artifact_root.mkdir(parents=True, exist_ok=True)
            location = settings.artifact_root.as_uri()
        with contextlib.suppress(MlflowException):  # created concurrently by another process
            client.create_experiment(settings.mlflow_experiment, artifact_location=location)


def register_model_dir(client: MlflowClient, model_dir: Path, style: str, run_id: str) -> ModelVersion:
    """Upload `model_dir` as the run's `model` artifact and register it as a new version."""
    from mlflow.exceptions import MlflowException

    client.log_artifacts(run_id, str(model_dir), ARTIFACT_PATH)
    _log_onnx(client, model_dir, run_id)
    name = registered_name(style)
    try:
        client.create_registered_model(name, description=f"clipmorph stylizer for style '{style}'")
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/{ARTIFACT_PATH}"
    return client.create_model_version(name, source=source, run_id=run_id)


def _log_onnx(client: MlflowClient, model_dir: Path, run_id: str) -> None:
    """Store the ONNX export beside the weights, so an onnxruntime worker need not export it again.

    Written to a temporary folder: model_dir may be a shipped, read-only model folder.
    """
    from clipmorph.model import export  # torch: only where a model is registered

    if (model_dir / export.ONNX_FILE).exists() or not export.exportable(read_info(model_dir)):
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = export.export_onnx(model_dir, Path(tmp) / export.ONNX_FILE)
        client.log_artifact(run_id, str(path), ARTIFACT_PATH)


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """-> (registered name, alias, version); alias defaults to the champion."""
    m = _REF.match(ref)
    if not m:
        raise ModelNotFoundError(f"{ref!r} is neither a model folder nor a model reference like kandinsky@champion")
    alias, version = m["alias"], m["version"]
    if alias is None and version is None:
        alias = get_settings().champion_alias
    return registered_name(m["name"]), alias, version


def _lookup(client: MlflowClient, name: str, alias: str | None, version: str | None) -> ModelVersion:
    if version is not None:
        return client.get_model_version(name, version)
    return client.get_model_version_by_alias(name, alias)


def get_version(client: MlflowClient, ref: str) -> ModelVersion:
    """The version `ref` names; a built-in style on a fresh registry is registered first (its first use)."""
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_ref(ref)
    with contextlib.suppress(MlflowException):
        return _lookup(client, name, alias, version)
    if style_of(name) in builtin_model_dirs():
        register_builtins(client)  # a no-op unless the registry lacks a built-in (or another process added it)
        with contextlib.suppress(MlflowException):
            return _lookup(client, name, alias, version)
    known = ", ".join(style_of(m.name) for m in client.search_registered_models()) or "none"
    raise ModelNotFoundError(
        f"no model version for {ref!r} ({name} {'@' + alias if alias else 'v' + str(version)}); "
        f"registered styles: {known}"
    )


def resolve(ref: str | Path, client: MlflowClient | None = None) -> ResolvedModel:
    """A local folder for `ref`, downloading the version's artifact into a cache when needed.

    Without a client, a name resolved before comes back from the model cache, without MLflow, as long
    as the registry database is the same file, unchanged since (`_store_stamp`): promoting, registering
    or deleting a version writes to it, so a new champion is looked up in MLflow as before.
    """
    p = Path(ref)
    if (p / CONFIG).exists():
        return ResolvedModel(p)
    settings = get_settings()
    if client is None and (remembered := _remembered(str(ref), settings)):
        return remembered
    stamp = None
    if client is None:
        client = configure(settings)
        stamp = _store_stamp(settings)  # after configure(), which may create the store or the experiment
    mv = get_version(client, str(ref))
    cache = settings.var_dir / "model-cache" / mv.name / str(mv.version)
    if not (cache / CONFIG).exists():
        import mlflow.artifacts

        tmp = cache.with_name(cache.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(tmp), tracking_uri=client.tracking_uri)
        downloaded = tmp / ARTIFACT_PATH if (tmp / ARTIFACT_PATH / CONFIG).exists() else tmp
        read_info(downloaded)  # fail here, not in a worker, if the artifact is not a model
        shutil.rmtree(cache, ignore_errors=True)
        downloaded.rename(cache)
        shutil.rmtree(tmp, ignore_errors=True)
    resolved = ResolvedModel(cache, mv.name, str(mv.version))
    # Remembered only if nothing wrote to the registry during the lookup (a built-in registered on first
    # use, a promotion by another process): the answer then belongs to exactly this state of the database.
    if stamp is not None and stamp == _store_stamp(settings) and _settled(stamp):
        _remember(str(ref), resolved, stamp, settings)
    return resolved


# A database written this recently is not remembered: a second write within the same file-timestamp
# tick (a few ms on ext4, up to 2 s on some shared volumes) could leave (size, mtime) as they were.
SETTLE_SECONDS = 2.0


def _store_stamp(settings: Settings) -> list[list[int] | None] | None:
    """(inode, size, mtime, ctime) of a local SQLite registry's database and of its write-ahead log, if any.

    Every write to the registry changes them; reads do not (and a copy that keeps the mtime, e.g. a
    restored backup, still gets a new ctime). None for any other store (an MLflow server), which is
    always asked.
    """
    if not settings.tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(settings.tracking_uri.removeprefix("sqlite:///"))
    stamp: list[list[int] | None] = []
    for path in (db, db.with_name(db.name + "-wal")):
        try:
            st = path.stat()
        except OSError:
            stamp.append(None)
        else:
            stamp.append([st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns])
    return stamp if stamp[0] is not None else None


def _settled(stamp: list[list[int] | None]) -> bool:
    newest = max(entry[2] for entry in stamp if entry is not None) / 1e9
    return time.time() - newest > SETTLE_SECONDS


def _remembered_path(ref: str, settings: Settings) -> Path:
    name, alias, version = parse_ref(ref)
    return settings.var_dir / "model-cache" / "refs" / name / (f"alias-{alias}" if alias else f"version-{version}")


def _remembered(ref: str, settings: Settings) -> ResolvedModel | None:
    """What `ref` resolved to last time, if the registry has not been written since; else None."""
    stamp = _store_stamp(settings)
    if stamp is None:
        return None
    try:
        entry = json.loads(_remembered_path(ref, settings).read_text())
    except (OSError, ValueError):
        return None
    if entry.get("tracking_uri") != settings.tracking_uri or entry.get("stamp") != stamp:
        return None
    path = Path(entry["path"])
    return ResolvedModel(path, entry["name"], entry["version"]) if (path / CONFIG).exists() else None


def _remember(ref: str, resolved: ResolvedModel, stamp: list, settings: Settings) -> None:
    target = _remembered_path(ref, settings)
    entry = {"tracking_uri": settings.tracking_uri, "stamp": stamp, "name": resolved.name, "version": resolved.version}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.partial")
    tmp.write_text(json.dumps(entry | {"path": str(resolved.path)}))
    tmp.replace(target)  # a reader sees the old entry or the new one, never half of one


def style_exists(client: MlflowClient, style: str) -> bool:
    """Whether `style` is taken: a registered model with versions, or a built-in (registered on first use)."""
    if style_of(style) in builtin_model_dirs():
        return True
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", style):  # it goes into a filter string below
        raise ValueError(f"not a style name: {style!r}")
    return bool(client.search_model_versions(f"name='{registered_name(style)}'"))


def builtin_model_dirs(settings: Settings | None = None) -> dict[str, Path]:
    """Models shipped in the repo: <builtin_models_dir>/<style>/{config.json,model.safetensors}."""
    root = (settings or get_settings()).builtin_models_dir
    return {p.parent.name: p.parent for p in sorted(root.glob(f"*/{CONFIG}"))}


def _unregistered_builtins(client: MlflowClient, settings: Settings) -> dict[str, Path]:
    """Built-in models whose registered model has no version yet (or does not exist)."""
    return {
        style: folder
        for style, folder in builtin_model_dirs(settings).items()
        if not client.search_model_versions(f"name='{registered_name(style)}'")
    }


def _register_builtin(client: MlflowClient, style: str, folder: Path, settings: Settings) -> ModelVersion:
    """Version 1 and champion of clipmorph-<style>, on a run with its training parameters.

    The evaluation metrics config.json records (`train.metrics`) are logged on the run,
    so the promotion gate has numbers to compare later versions with.
    """
    from mlflow.entities import Metric, Param

    info = read_info(folder)
    _ensure_experiment(client, settings)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    run = client.create_run(experiment.experiment_id, run_name=f"builtin-{style}", tags={"clipmorph.builtin": "true"})
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in info.train.get("metrics", {}).items()],
        params=[Param(k, str(v)) for k, v in info.train.items() if not isinstance(v, dict)],
    )
    mv = register_model_dir(client, folder, style, run_id)
    client.set_terminated(run_id)
    client.set_registered_model_alias(mv.name, settings.champion_alias, mv.version)
    return mv


def register_builtins(client: MlflowClient | None = None, settings: Settings | None = None) -> list[ModelVersion]:
    """Register each built-in model whose registered model has no versions yet, as its champion; -> new versions.

    Idempotent and safe when several processes (API, workers, CLI) start at once: the check is
    repeated under the registry lock, and a model that already has versions is never touched.
    """
    settings = settings or get_settings()
    client = client or configure(settings)
    if not _unregistered_builtins(client, settings):
        return []  # the usual case: no lock needed
    with registry_lock(settings):
        missing = _unregistered_builtins(client, settings)  # another process may have registered them meanwhile
        registered = [_register_builtin(client, style, folder, settings) for style, folder in missing.items()]
    for mv in registered:
        log.info("registered built-in model %s version %s as %s", mv.name, mv.version, settings.champion_alias)
    return registered
