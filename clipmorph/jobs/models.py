"""Loaded stylizers, kept across jobs, following the registry's champion alias."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from mlflow import MlflowClient

from clipmorph import registry
from clipmorph.video.inference import LoadedModel, load_stylizer

log = logging.getLogger(__name__)


class ModelCache:
    """Stylizers keyed by (registered name, version).

    Every `get` re-resolves the reference (one registry query), so promoting a
    new champion takes effect on the next job without a restart; the weights are
    loaded only when that resolves to a version not already in memory.
    """

    def __init__(self, device: str = "auto", capacity: int = 4, client: MlflowClient | None = None) -> None:
        self.device = device
        self.capacity = capacity
        self._client = client
        self._models: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
        # One lock for lookups and loads: two threads asking for the same new version load it once.
        self._lock = threading.Lock()

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = registry.configure()
        return self._client

    def get(self, ref: str) -> LoadedModel:
        """The model `ref` (e.g. "kandinsky" = its champion) names now; raises registry.ModelNotFoundError."""
        version = registry.get_version(self.client, ref)
        key = (version.name, str(version.version))
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            log.info("loading %s version %s on %s", *key, self.device)
            loaded = load_stylizer(f"{key[0]}/{key[1]}", device=self.device)
            # An older version of the same model is dead weight once the alias has moved on.
            for stale in [k for k in self._models if k[0] == key[0]]:
                del self._models[stale]
            self._models[key] = loaded
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
            return loaded

    def __len__(self) -> int:
        return len(self._models)
