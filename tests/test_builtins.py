"""Built-in models (models/<style>/) register themselves on first use: API and worker start-up, the CLI, lookups.

Registration is idempotent, never touches a model that already has versions, and is safe when
several processes start at once against one fresh registry (a file lock next to the registry).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
from fastapi.testclient import TestClient
from serving_helpers import make_clip, register_tiny_model
from typer.testing import CliRunner

from api.main import create_app
from clipmorph import registry
from clipmorph.cli import app
from clipmorph.settings import REPO_ROOT, get_settings
from worker.runner import run_worker

# Each child imports clipmorph (and opens the registry when told to), says "ready", and starts
# registering when the go file appears, so both reach the registry within milliseconds of each other.
CHILD = """
import json, os, sys, time
from clipmorph import registry
client = registry.configure() if sys.argv[2] == "open-first" else None
print("ready", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.001)
print(json.dumps([mv.name for mv in registry.register_builtins(client)]), flush=True)
"""


def builtin_names(settings) -> set[str]:
    return {registry.registered_name(style) for style in registry.builtin_model_dirs(settings)}


def assert_each_builtin_once_and_champion(settings) -> None:
    client = registry.configure(settings)
    names = builtin_names(settings)
    assert names, f"no built-in models in {settings.builtin_models_dir}"
    for name in names:
        versions = client.search_model_versions(f"name='{name}'")
        assert [str(v.version) for v in versions] == ["1"], name
        aliases = client.get_registered_model(name).aliases
        assert {k: str(v) for k, v in aliases.items()} == {settings.champion_alias: "1"}, name


@pytest.mark.parametrize("store", ["no database yet", "empty database"])
def test_two_processes_starting_at_once_register_each_builtin_once(settings, tmp_path, store):
    if store == "no database yet":
        (settings.var_dir / "mlflow.db").unlink()  # the first `make up`: API and worker create the store too
    # With an existing store, both open it first so that they race on the registration itself.
    mode = "open-first" if store == "empty database" else "open-in-race"
    go = tmp_path / "go"
    logs = [tmp_path / f"child-{i}.log" for i in range(2)]  # files, not pipes: MLflow's logging cannot block them
    children = []
    for log in logs:
        with log.open("w") as stderr:
            argv = [sys.executable, "-c", CHILD, str(go), mode]
            child = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)
            children.append(child)
    for child, log in zip(children, logs, strict=True):
        assert child.stdout.readline().strip() == "ready", log.read_text()
    go.touch()
    registered = []
    for child, log in zip(children, logs, strict=True):
        out, _ = child.communicate(timeout=300)
        assert child.returncode == 0, log.read_text()
        registered += json.loads(out.strip().splitlines()[-1])
    assert sorted(registered) == sorted(builtin_names(settings))  # each one by exactly one of the processes
    assert_each_builtin_once_and_champion(settings)


def test_registration_is_idempotent(settings):
    first = registry.register_builtins(settings=settings)
    assert {mv.name for mv in first} == builtin_names(settings)
    assert registry.register_builtins(settings=settings) == []
    assert_each_builtin_once_and_champion(settings)


def test_a_model_with_versions_is_never_changed(settings):
    # clipmorph-kandinsky already has a version and no champion: no new version, no alias set.
    register_tiny_model(settings, "kandinsky", champion=False)
    registered = registry.register_builtins(settings=settings)
    assert "clipmorph-kandinsky" not in {mv.name for mv in registered}
    client = registry.configure(settings)
    assert [str(v.version) for v in client.search_model_versions("name='clipmorph-kandinsky'")] == ["1"]
    assert client.get_registered_model("clipmorph-kandinsky").aliases == {}
    assert {mv.name for mv in registered} == builtin_names(settings) - {"clipmorph-kandinsky"}


def test_looking_up_a_builtin_style_registers_it_and_an_unknown_one_does_not(settings):
    client = registry.configure(settings)
    with pytest.raises(registry.ModelNotFoundError, match="registered styles: none"):
        registry.get_version(client, "nosuchstyle")
    assert client.search_registered_models() == []
    assert str(registry.get_version(client, "kandinsky").version) == "1"
    assert_each_builtin_once_and_champion(settings)


def test_stylize_cli_with_a_builtin_on_a_fresh_registry(settings, tmp_path, one_torch_thread):
    clip = make_clip(tmp_path / "in.mp4", frames=4, size=(48, 32), audio=False)
    out = tmp_path / "out.mp4"
    args = ["stylize", str(clip), str(out), "--model", "kandinsky", "--max-side", "32", "--stabilize", "none"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0
    assert "4 frames" in result.output
    assert_each_builtin_once_and_champion(settings)


@pytest.fixture
def serving(settings, redis_url, monkeypatch):
    monkeypatch.setenv("CLIPMORPH_REDIS_URL", redis_url)
    monkeypatch.setenv("CLIPMORPH_QUEUE_NAME", f"builtins-{uuid.uuid4().hex[:8]}")
    get_settings.cache_clear()
    return get_settings()


def test_api_start_up_registers_builtins_so_an_upload_works(serving, tmp_path):
    clip = make_clip(tmp_path / "in.mp4", frames=4, size=(48, 32), audio=False)
    with TestClient(create_app(serving)) as client:
        styles = {m["name"] for m in client.get("/v1/models").json()["models"]}
        assert {registry.style_of(n) for n in builtin_names(serving)} <= styles
        with clip.open("rb") as f:
            r = client.post("/v1/jobs", data={"style": "kandinsky"}, files={"file": (clip.name, f, "video/mp4")})
    assert r.status_code == 202, r.text
    assert_each_builtin_once_and_champion(serving)


def test_worker_start_up_registers_builtins(serving):
    run_worker(serving, burst=True)  # an empty queue: it registers, finds no job, and returns
    assert_each_builtin_once_and_champion(serving)


def test_no_builtin_models_means_nothing_to_register(settings, monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPMORPH_BUILTIN_MODELS_DIR", str(tmp_path / "none"))
    get_settings.cache_clear()
    assert registry.register_builtins(settings=get_settings()) == []
    assert registry.configure(get_settings()).search_registered_models() == []
