"""Every path, URL and limit clipmorph uses, in one place.

Values come from `CLIPMORPH_*` environment variables (or a `.env` file) and
fall back to embedded defaults that make a fresh clone work with no servers:
a local SQLite MLflow registry, a local Redis, W&B offline.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLIPMORPH_", env_file=".env", extra="ignore")

    # Where things live on disk. Relative paths are resolved against the repo root.
    data_dir: Path = Field(REPO_ROOT / "data", description="Linked or downloaded datasets, styles, weights.")
    assets_dir: Path = Field(
        REPO_ROOT.parent / "shared" / "assets",
        description="Offline mirror of everything `make data` would otherwise download.",
    )
    var_dir: Path = Field(REPO_ROOT / "var", description="Runtime state: registry, jobs, logs, pids.")
    runs_dir: Path = Field(REPO_ROOT / "runs", description="Training checkpoints and validation renders.")
    builtin_models_dir: Path = Field(REPO_ROOT / "models", description="Models shipped with the repo.")
    style_manifest: Path = Field(REPO_ROOT / "training_data" / "styles.json")

    # Services.
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Where jobs' inputs and results are kept (clipmorph/jobs/storage.py): empty for the local folder
    # <var_dir>/jobs, or s3://bucket[/prefix] for any S3-compatible bucket, whose endpoint, credentials and
    # region come from boto3's own variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    # AWS_DEFAULT_REGION).
    storage_url: str = Field("", description="Job storage: empty (local jobs folder) or s3://bucket[/prefix].")
    storage_public_endpoint: str | None = Field(
        None,
        description="The bucket's endpoint as clients reach it, for the presigned result links (when it is not "
        "AWS_ENDPOINT_URL, e.g. behind docker-compose).",
    )
    queue_name: str = "clipmorph"
    # Training jobs (POST /v1/styles) have a queue of their own: only workers started with
    # `clipmorph worker --queues train` take them, so a CPU-only stylizing worker never picks up an hour of training.
    train_queue_name: str = "train"
    mlflow_tracking_uri: str | None = Field(None, description="Defaults to sqlite:///<var_dir>/mlflow.db when unset.")
    mlflow_artifact_root: Path | None = Field(None, description="Defaults to <var_dir>/mlartifacts.")
    mlflow_experiment: str = "clipmorph"
    wandb_mode: str = "offline"
    wandb_project: str = "clipmorph"

    # Downloads (used only when the offline mirror is absent).
    vgg19_url: str = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
    visual_genome_urls: list[str] = [
        "https://cs.stanford.edu/people/rak248/VG_100K_2/images.zip",
        "https://cs.stanford.edu/people/rak248/VG_100K_2/images2.zip",
    ]

    # Serving.
    api_token: SecretStr | None = None
    # Who may move a champion over the API: {"alice": "<token>", ...} (CLIPMORPH_ADMIN_TOKENS as JSON).
    # Distinct from api_token, which only uploads and reads; the promotion's actor is the token's name.
    admin_tokens: dict[str, SecretStr] = Field(default_factory=dict)
    # Who may train new styles over the API (POST /v1/styles) and nothing more: {"bob": "<token>", ...}
    # (CLIPMORPH_TRAINER_TOKENS as JSON). Admin tokens may train too; trainer tokens may not promote.
    trainer_tokens: dict[str, SecretStr] = Field(default_factory=dict)
    max_upload_bytes: int = 512 * 1024 * 1024
    # The whole upload body must arrive within this (512 MiB at ~1 MB/s takes ~9 min); past it, 408.
    upload_deadline_seconds: float = 900.0
    # An upload is refused (507) unless the jobs disk keeps this much free after it (the upload's declared
    # size, or max_upload_bytes when undeclared): results and other jobs need room too.
    min_free_disk_bytes: int = 2 * 1024 * 1024 * 1024
    # Upload bodies one client (peer address) may be sending at once, per API process; past it, 429. 0: no limit.
    max_uploads_per_client: int = 4
    max_image_upload_bytes: int = 32 * 1024 * 1024
    job_ttl_seconds: int = 24 * 3600
    # How long a job's signed stream_url stays valid: long enough to watch a result, short enough to be
    # useless when it leaks (every status poll hands out a fresh one).
    result_link_seconds: int = 3600
    # RQ job timeouts scale with frames x pixels: a 4K frame costs ~36 times a 640x360 one. The slowest
    # preset (johnson) needed ~4 s per megapixel-frame on the 2-core CPU (README, Speed); 10 leaves room
    # for a loaded machine.
    job_seconds_per_megapixel_frame: float = 10.0
    job_min_frame_pixels: int = Field(
        320 * 240, description="Each frame counts as at least this many pixels in the timeout (per-frame overhead)."
    )
    job_min_timeout_seconds: int = 300
    job_retries: int = Field(
        1, description="Re-runs of a job whose worker died or hit a transient error; bad input is never re-run."
    )
    # Long videos in segments (clipmorph/video/segments.py): one RQ job per segment, so that several workers
    # share one video, then a job that joins them (a remux, no re-encode).
    segment_seconds: float = Field(
        20.0,
        description="A video longer than this is cut at keyframes into segments of about this length, each "
        "stylized by whichever worker takes it; 0: never split.",
    )
    # Warping error across a cut on bikes (tests/test_segments.py, near-lossless): 0 frames 6x the unsegmented
    # output's on the same pairs, 8 frames 1.6x, 16 frames 1.02-1.07x, 24 no better.
    segment_warmup_frames: int = Field(
        16,
        description="Frames each segment stylizes before its first and drops, so that the flow stabiliser and "
        "the norm smoothing carry across the cut.",
    )
    redis_timeout_seconds: float = Field(5.0, description="The API's Redis connect/read timeout.")
    worker_redis_patience_seconds: float = Field(
        120.0, description="How long a worker retries Redis (restarting, unreachable) before it gives up."
    )
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_url: str | None = Field(None, description="Where clients reach the API; defaults to http://api_host:api_port.")
    worker_heartbeat_seconds: int = Field(10, description="How often a busy worker tells Redis it is alive.")
    worker_heartbeat_grace_seconds: int = Field(30, description="Silence after which a running job is abandoned.")
    worker_maintenance_seconds: int = Field(60, description="How often workers requeue abandoned jobs, purge files.")
    preview_photo: Path | None = Field(None, description="Photo model previews are rendered on.")

    # Video / image limits (README, "Limits"): checked at upload where the probe can tell, and on every
    # decoded frame by the worker (a stream can change resolution mid-file).
    max_video_side: int = Field(3840, description="Largest width or height of a video frame (4K UHD).")
    max_frame_pixels: int = Field(3840 * 2160, description="Most pixels in one video frame (4K UHD).")
    max_video_seconds: float = Field(20 * 60, description="Longest video, from its timestamps.")
    max_video_frames: int = Field(20 * 60 * 60, description="Most frames in a video (20 minutes at 60 fps).")
    # Memory grows with batch x frame area: frames are batched up to this many network pixels (4 frames of
    # 1280x720, what the pipeline benchmarks ran); a frame over it on its own is stylized in tiles of tile_pixels.
    batch_pixels: int = Field(4 * 1280 * 720, description="Most network-input pixels in one inference batch.")
    max_image_pixels: int = 60_000_000
    max_sync_image_pixels: int = Field(
        2048 * 2048,
        description="POST /v1/images answers with the image up to this many pixels; past it, 202 and a job that a "
        "worker stylizes (in tiles, at the image's full size) instead of the API process.",
    )
    tile_pixels: int = 1024 * 1024
    # On a 2-core CPU the encoder competes with the network: "medium" held the pipeline to 83% of
    # network-alone frames/s at 640x360, "veryfast" to 87% (benchmarks/bench_pipeline.py).
    x264_preset: str = Field("veryfast", description="libx264 speed/size trade-off for stylized videos.")
    # H.264 cannot signal a 1-pixel crop of a 4:2:0 picture (clipmorph/video/writer.py), so an odd-sized video
    # either grows by one replicated edge pixel and plays everywhere, or keeps its size as 4:4:4 that many
    # players and hardware decoders refuse.
    odd_video_size: Literal["pad", "exact"] = Field(
        "pad",
        description="Odd-sized videos: pad (yuv420p, one replicated edge column/row added to reach even size) "
        "or exact (yuv444p at the exact size; many players refuse it).",
    )
    champion_alias: str = "champion"
    # "auto": on the CPU, the model's ahead-of-time build when this machine has one (`clipmorph compile`,
    # the fastest in `make bench` here); else torch on CUDA and on a CPU with native bf16 (bf16 + channels_last),
    # else onnxruntime for the models it can run (no instance norm), else torch (docs/performance.md).
    # "compiled": that build, made first if missing (~30 s per model, once).
    # "int8": onnxruntime with int8 convolutions, about 1.4x "onnx" here, for a few % more flicker, so opt-in.
    runtime: Literal["auto", "torch", "onnx", "int8", "compiled"] = Field(
        "auto", description="Inference runtime: auto, torch, onnx, int8, compiled."
    )
    # Frame sizes (WIDTHxHEIGHT, as the network sees them) that `clipmorph compile` also builds a package of
    # their own for: 1.2-2.2x the any-size build's frames/s, the same pictures (clipmorph.model.compiled).
    # 640x360 is every 16:9 video at the shipped models' 640-px frame side; each size adds ~25 s per model.
    compile_sizes: list[str] = Field(
        ["640x360"], description="Frame sizes `clipmorph compile` builds for besides any size (e.g. 640x360)."
    )
    # bf16 autocast for torch networks on a CPU with native bf16 (clipmorph.video.inference.cpu_bf16): 1.8-2.4x
    # fp32 at 640x360 here, PSNR 53 dB against it. Off gives bit-for-bit fp32 results.
    cpu_bf16: bool = Field(True, description="Run torch networks in bf16 on CPUs that support it natively.")
    # torch.compile (inductor) of torch networks without instance norm: 2.0x the frames/s of eager bf16 +
    # channels_last on this CPU at 640x360 and 1280x720, but each new input shape first compiles for ~10 s
    # (about a minute with a cold cache). Pays for workers and long videos, not for a short CLI run.
    torch_compile: bool = Field(
        False, description="Compile torch networks (torch.compile): ~2x faster after ~10 s per frame size."
    )

    # Training over the API (POST /v1/styles): bounds on what a client may ask for, and the job's time budget.
    train_max_iters: int = Field(3000, description="Most training iterations a POST /v1/styles may ask for.")
    train_min_painting_side: int = Field(256, description="Shortest side a painting uploaded for training may have.")
    train_max_blend: int = Field(3, description="Most existing paintings a new style may be blended with.")
    train_job_overrides: dict[str, str] = Field(
        default_factory=dict,
        description="TrainConfig options every training job uses, as `clipmorph train --set` takes them "
        '(CLIPMORPH_TRAIN_JOB_OVERRIDES as JSON, e.g. {"batch_size": "8"} on a large GPU).',
    )
    # The shipped recipe takes ~1.3 s an iteration on the 2-core CPU (docs/training.md); 4 leaves room for a
    # loaded machine. The evaluation and gate after training get a fixed allowance on top.
    train_seconds_per_iteration: float = 4.0
    train_eval_seconds: int = 1800

    # Evaluation (clipmorph evaluate) and the promotion gate (clipmorph promote).
    eval_photos: str = Field("coco128_val2017", description="Validation photo folder under photos_dir.")
    eval_video: str = Field("bikes.mp4", description="Validation clip under videos_dir.")
    gate_style_tolerance: float = Field(
        0.05, description="A candidate's style_distance may exceed the champion's by this fraction."
    )
    gate_content_tolerance: float = Field(
        0.10, description="A candidate's content_distance may exceed the champion's by this fraction."
    )
    gate_fps_tolerance: float = Field(0.15, description="A candidate's frames/s may be this fraction lower.")
    gate_warping_tolerance: float = Field(0.0, description="A candidate's warping_ratio may exceed by this fraction.")

    @property
    def jobs_dir(self) -> Path:
        return self.var_dir / "jobs"

    @property
    def logs_dir(self) -> Path:
        return self.var_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.var_dir / "run"

    @property
    def api_base_url(self) -> str:
        return (self.api_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")

    @property
    def preview_photo_path(self) -> Path:
        return self.preview_photo or self.photos_dir / "pytorch_examples" / "amber.jpg"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{(self.var_dir / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        return (self.mlflow_artifact_root or self.var_dir / "mlartifacts").resolve()

    @property
    def vgg_weights_path(self) -> Path:
        """The first VGG-19 weights file present in the data dir (offline normalised net first)."""
        weights = self.data_dir / "weights"
        for name in ("vgg19_normalised_to_relu3_1.pth", "vgg19-dcbb9e9d.pth"):
            if (weights / name).exists():
                return weights / name
        return weights / "vgg19_normalised_to_relu3_1.pth"

    @property
    def styles_dir(self) -> Path:
        """Paintings that come with the data (`make data`: a link to the offline mirror, or downloads)."""
        return self.data_dir / "styles"

    @property
    def uploaded_styles_dir(self) -> Path:
        """Paintings uploaded over REST (POST /v1/styles): runtime state, kept out of the data folder, which
        may be a link to a shared read-only mirror."""
        return self.var_dir / "styles"

    @property
    def style_dirs(self) -> tuple[Path, ...]:
        """Where a style name is looked up, in this order."""
        return (self.styles_dir, self.uploaded_styles_dir)

    @property
    def photos_dir(self) -> Path:
        return self.data_dir / "photos"

    @property
    def videos_dir(self) -> Path:
        return self.data_dir / "videos"


@lru_cache
def get_settings() -> Settings:
    return Settings()
