"""Distributed training: 2 ranks on CPU (torchrun, gloo) train the weights one process trains.

Each 2-rank run is the real command line `make train NPROC=2` runs, on a tiny configuration. The
temporal loss is on (two forward passes through DDP per step) with its shift, but without its noise,
which each rank draws for its own slice of the batch.

The preset is `rt`, which has no normalisation, so every weight changes what the network computes:
- `rt_bn`: PyTorch has no SyncBatchNorm on CPU, so CPU ranks normalise over their own half of the
  batch and the weights differ by design (docs/training.md);
- `fast` (instance norm): a conv bias in front of an instance norm gets a zero gradient in exact
  arithmetic, and Adam turns its float rounding noise into full +-lr steps, so those biases differ by
  up to 0.07 between any two summation orders while the outputs agree.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clipmorph.model.artifact import load_model
from clipmorph.model.network import Stylizer
from clipmorph.training.train import Checkpoint, Ranks, TrainConfig, train

# The two ranks' float32 gradients are summed in another order than one process's. Measured after 4 Adam
# steps at lr 1e-2: |w_2 - w_1| / |w_1| = 1.5e-6 (with `fast`: 1.9e-2, see above), largest weight
# difference 4.9e-5 (Adam's step is about lr whatever the gradient's size, so an element whose gradient
# nearly cancels can move differently), outputs within 1.2e-7. Ranks that trained apart, or on other
# photos, would be off by 1e-2 or more.
RELATIVE_TOLERANCE = 1e-4
OUTPUT_TOLERANCE = 1e-5


@pytest.fixture
def photos(tmp_path, assets):
    root, val = tmp_path / "photos", tmp_path / "val"
    root.mkdir()
    val.mkdir()
    for p in sorted((assets / "photos" / "coco128_train2017").glob("*.jpg"))[:4]:
        shutil.copy(p, root / p.name)
    shutil.copy(sorted((assets / "photos" / "coco128_val2017").glob("*.jpg"))[0], val / "v.jpg")
    return root, val


def options(photos, run_dir: Path, **overrides) -> dict[str, str]:
    """`--set` options of a tiny run: global batch 4 (2 per rank), 48-px crops, 4 steps."""
    root, val = photos
    base = dict(
        iters=4,
        batch_size=4,
        size=48,
        frame_side=96,
        style_size=96,
        preset="rt",
        lr=1e-2,
        noise_amplitude=0.0,
        temporal_shift=8,
        checkpoint_every=2,
        val_every=4,
        val_images=1,
        workers=0,
        train_dirs=str(root),
        val_dir=str(val),
        run_dir=str(run_dir),
        register=False,
        evaluate=False,
    )
    return {k: str(v) for k, v in (base | overrides).items()}


def train_one_process(opts: dict[str, str]):
    return train(TrainConfig.from_overrides({"style": "kandinsky", **opts}))


def torchrun_train(opts: dict[str, str], nproc: int = 2) -> str:
    """`torchrun --standalone --nproc_per_node=2 clipmorph train ...`, as `make train NPROC=2` runs it."""
    cli = Path(sys.executable).parent / "clipmorph"
    sets = [arg for k, v in opts.items() for arg in ("--set", f"{k}={v}")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    # A session of its own, so that a failing or timed-out test also ends the ranks torchrun started.
    proc = subprocess.Popen(
        [*cmd, str(cli), "train", "kandinsky", *sets],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None or proc.returncode != 0:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, output[-4000:]
    return output


def assert_same_training(expected: Stylizer, actual: Stylizer) -> None:
    """Weights within RELATIVE_TOLERANCE of their norm, outputs on random pictures within OUTPUT_TOLERANCE."""
    a, b = expected.state_dict(), actual.state_dict()
    assert a.keys() == b.keys()
    apart = torch.cat([(a[k] - b[k]).flatten() for k in a])
    weights = torch.cat([a[k].flatten() for k in a])
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outputs = (expected(x) - actual(x)).abs().max().item()
    relative = (apart.norm() / weights.norm()).item()
    print(f"|w_2 - w_1| / |w_1| = {relative:.2e}, largest weight difference {apart.abs().max():.2e}, "
          f"outputs {outputs:.2e}")  # fmt: skip
    assert relative < RELATIVE_TOLERANCE and outputs < OUTPUT_TOLERANCE


def test_two_ranks_train_the_weights_of_one_process_with_the_same_global_batch(settings, photos, tmp_path):
    single = train_one_process(options(photos, tmp_path / "one"))
    output = torchrun_train(options(photos, tmp_path / "two"))

    assert "ranks: 2, global batch 4 (2 per rank)" in output
    one, _ = load_model(single.model_dir)
    two, info = load_model(tmp_path / "two" / "model")
    assert info.train["ranks"] == 2 and info.train["steps"] == 4
    assert_same_training(one, two)
    # Rank 0 logs the global batch's losses, which equal the one process's.
    assert info.train["final_losses"]["loss"] == pytest.approx(single.losses["loss"], rel=1e-4)
    assert (tmp_path / "two" / "val_000004.png").exists() and not (tmp_path / "two" / "checkpoint.pt").exists()


def test_a_one_process_checkpoint_resumes_on_two_ranks(settings, photos, tmp_path, monkeypatch):
    reference = train_one_process(options(photos, tmp_path / "reference"))

    original = Checkpoint.save

    def save_then_crash(self, model, optimizer, step, cfg, elapsed):
        original(self, model, optimizer, step, cfg, elapsed)
        if step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_one_process(options(photos, tmp_path / "run"))
    monkeypatch.setattr(Checkpoint, "save", original)

    output = torchrun_train(options(photos, tmp_path / "run"))
    assert "resuming" in output and "from step 2" in output
    resumed, info = load_model(tmp_path / "run" / "model")
    assert info.train["resumed_from"] == 2 and info.train["ranks"] == 2
    expected, _ = load_model(reference.model_dir)
    assert_same_training(expected, resumed)


def test_the_global_batch_must_split_evenly():
    ranks = Ranks(torch.device("cpu"), rank=1, world_size=2)
    assert ranks.local_batch(4) == 2
    with pytest.raises(ValueError, match="batch_size 3 does not split evenly across 2 ranks"):
        ranks.local_batch(3)
