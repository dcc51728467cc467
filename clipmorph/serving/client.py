"""A small client of the clipmorph REST API (httpx), and the demo that uses it like any other client."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from clipmorph import registry
from clipmorph.serving import stack
from clipmorph.settings import Settings

TERMINAL = {"finished", "failed", "cancelled"}


class ApiError(RuntimeError):
    def __init__(self, response: httpx.Response) -> None:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        super().__init__(f"{response.request.method} {response.request.url.path}: {response.status_code} {detail}")
        self.status_code = response.status_code


class Client:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def _checked(self, response: httpx.Response) -> httpx.Response:
        if response.is_error:
            raise ApiError(response)
        return response

    def models(self) -> list[dict[str, Any]]:
        return self._checked(self.http.get("/v1/models")).json()["models"]

    def submit(self, video: Path, style: str, **options: Any) -> dict[str, Any]:
        fields = {"style": style, **{k: str(v) for k, v in options.items() if v is not None}}
        with video.open("rb") as f:
            response = self.http.post("/v1/jobs", data=fields, files={"file": (video.name, f, "video/mp4")})
        return self._checked(response).json()

    def job(self, job_id: str) -> dict[str, Any]:
        return self._checked(self.http.get(f"/v1/jobs/{job_id}")).json()

    def wait(self, job_id: str, poll_seconds: float = 0.5, timeout: float = 3600.0) -> dict[str, Any]:
        """Poll until the job ends, showing its progress in frames; -> its last status."""
        deadline = time.monotonic() + timeout
        with tqdm(desc=f"job {job_id[:8]}", unit="frame", dynamic_ncols=True) as bar:
            while True:
                job = self.job(job_id)
                progress = job.get("progress") or {}
                if progress.get("total"):
                    bar.total = progress["total"]
                bar.update(progress.get("done", 0) - bar.n)
                bar.set_postfix_str(job["status"])
                if job["status"] in TERMINAL:
                    return job
                if time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:.0f} s")
                time.sleep(poll_seconds)

    def download(self, job_id: str, dst: Path) -> Path:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with self.http.stream("GET", f"/v1/jobs/{job_id}/result") as response:
            if response.is_error:
                response.read()
                raise ApiError(response)
            with dst.open("wb") as f:
                for chunk in response.iter_bytes(1 << 20):
                    f.write(chunk)
        return dst


class DemoError(RuntimeError):
    pass


def ensure_models(settings: Settings) -> list[str]:
    """Styles with a champion, registering the built-in models (models/<style>/) the registry lacks."""
    client = registry.configure(settings)
    registered = registry.register_builtins(client, settings)
    if registered:
        print(f"registered {len(registered)} built-in model(s) from {settings.builtin_models_dir}", flush=True)
    found = client.search_registered_models(filter_string=f"name LIKE '{registry.MODEL_PREFIX}%'")
    styles = sorted(registry.style_of(m.name) for m in found if settings.champion_alias in (m.aliases or {}))
    if not styles:
        raise DemoError(
            f"no models: the registry is empty and {settings.builtin_models_dir} holds no built-in model "
            "(<style>/config.json + model.safetensors). Train one first: make train STYLE=kandinsky"
        )
    return styles


def run_demo(settings: Settings, video: Path, style: str, max_side: int | None, out_dir: Path) -> Path:
    """Start the local stack, stylize `video` through the REST API like any client; -> the result's path."""
    if not video.exists():
        raise DemoError(f"{video} not found (run `make data` first)")
    styles = ensure_models(settings)
    if style not in styles:
        print(f"style {style!r} has no model; using {styles[0]!r} (available: {', '.join(styles)})", flush=True)
        style = styles[0]
    stack.up(settings)
    token = settings.api_token.get_secret_value() if settings.api_token else None
    client = Client(settings.api_base_url, token)
    created = client.submit(video, style, max_side=max_side)
    info = created["input"]
    print(
        f"uploaded {video.name} ({info['width']}x{info['height']}, {info['frames']} frames, "
        f"{'with' if info['has_audio'] else 'no'} audio): job {created['id']}",
        flush=True,
    )
    job = client.wait(created["id"])
    if job["status"] != "finished":
        raise DemoError(f"job {created['id']} {job['status']}: {job.get('error') or 'no reason given'}")
    dst = client.download(created["id"], out_dir / f"{video.stem}-{style}.mp4")
    print(f"stylized with {job['model_name']} version {job['model_version']}: {dst}", flush=True)
    return dst
