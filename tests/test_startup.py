"""Start-up of `clipmorph stylize`: MLflow is imported only when the registry must be asked.

Importing MLflow and opening its store took 2-4 s of a 12 s run (docs/performance.md, Start-up).
Each check runs in a fresh interpreter, where `sys.modules` shows what was imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from serving_helpers import register_tiny_model

from clipmorph import registry
from clipmorph.model.artifact import ModelInfo, save_model
from clipmorph.model.network import PRESETS, build
from clipmorph.settings import REPO_ROOT

# Resolves argv[1] the way `clipmorph stylize --model` does, after importing what stylize imports.
CHILD = """
import json, sys
import clipmorph.cli, clipmorph.video.pipeline
from clipmorph.video.inference import load_stylizer
loaded = load_stylizer(sys.argv[1], device="cpu", runtime="torch")
print(json.dumps([loaded.name, loaded.version, "mlflow" in sys.modules]))
"""


def stylize_start_up(ref: str) -> tuple[str | None, str | None, bool]:
    """-> (registered name, version, whether MLflow was imported) in a fresh process (settings from the env)."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, ref], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    name, version, imported = json.loads(done.stdout.strip().splitlines()[-1])
    return name, version, imported


def date_registry(settings, seconds_from_now: float) -> None:
    """Set the registry database's mtime: well past SETTLE_SECONDS ago, as if its last write were a while
    back (settled), or in the future, as if written just now however slow this machine is (unsettled)."""
    when = time.time() + seconds_from_now
    os.utime(settings.var_dir / "mlflow.db", (when, when))


def settle(settings) -> None:
    date_registry(settings, -10 * registry.SETTLE_SECONDS)


def test_a_model_folder_starts_without_mlflow(settings, tmp_path):
    folder = save_model(build("fast"), ModelInfo(net=PRESETS["fast"]), tmp_path / "tiny")
    assert stylize_start_up(str(folder)) == (None, None, False)


def test_a_registered_name_is_remembered_until_the_registry_changes(settings):
    name = registry.registered_name("tiny")
    v1 = register_tiny_model(settings, "tiny")
    date_registry(settings, 3600)  # a database written this very moment is not trusted to have settled
    assert registry.resolve("tiny").version == v1
    assert registry._remembered("tiny", settings) is None

    settle(settings)
    assert registry.resolve("tiny").version == v1  # asks MLflow once more, and remembers
    assert stylize_start_up("tiny") == (name, v1, False)
    assert stylize_start_up("tiny@champion") == (name, v1, False)  # the same reference, spelt out

    v2 = register_tiny_model(settings, "tiny")  # a new champion: the database changed
    assert v2 != v1
    assert stylize_start_up("tiny") == (name, v2, True)


def test_a_remembered_name_whose_cached_folder_is_gone_asks_the_registry(settings):
    v1 = register_tiny_model(settings, "tiny")
    settle(settings)
    first = registry.resolve("tiny")
    assert registry._remembered("tiny", settings) == first
    for item in first.path.iterdir():
        item.unlink()
    assert registry._remembered("tiny", settings) is None
    again = registry.resolve("tiny")
    assert (again.version, again.path) == (v1, first.path) and (again.path / "config.json").exists()


def test_an_mlflow_server_is_always_asked(settings, monkeypatch):
    monkeypatch.setenv("CLIPMORPH_MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    from clipmorph.settings import get_settings

    get_settings.cache_clear()
    assert registry._store_stamp(get_settings()) is None


def test_the_cli_keeps_freed_tensor_memory_instead_of_faulting_it_in_again():
    """A 64 MB buffer freed and allocated again: without the tuning glibc unmaps it and the kernel faults its
    pages in anew (at least 32 with 2 MB transparent huge pages, 16k with 4 KiB ones; 545 here); with it the
    second allocation reuses the heap and faults nothing in."""
    probe = (
        "import resource, sys\n"
        "import numpy as np\n"
        "if sys.argv[1] == 'tuned':\n"
        "    from clipmorph.allocator import keep_freed_memory\n"
        "    assert keep_freed_memory()\n"
        "np.ones(64 << 20, np.uint8)\n"  # allocated, touched, freed
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "np.ones(64 << 20, np.uint8)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    run = [sys.executable, "-c", probe]
    faults = {
        mode: int(subprocess.run([*run, mode], capture_output=True, text=True, check=True).stdout)
        for mode in ("default", "tuned")
    }
    assert faults["default"] >= 32, faults
    assert faults["tuned"] * 10 < faults["default"], faults
