"""Optical flow, occlusion mask and the warping error on synthetic clips with known motion."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from clipmorph.video import flow

H, W = 72, 96
SHIFT = (3, 2)  # (dx, dy): each frame shows the scene moved 3 px left and 2 px up


def smooth_texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Sums of random low-frequency sinusoids: textured everywhere, no aliasing, so DIS can track it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        for _ in range(6):
            (fx, fy), phase = rng.uniform(0.03, 0.12, 2), rng.uniform(0, 2 * np.pi)
            img[..., c] += np.sin(fx * x + fy * y + phase)
    img -= img.min()
    return img / img.max()


def translating_clip(frames: int = 4) -> list[np.ndarray]:
    """A camera panning over a large texture by whole pixels per frame."""
    dx, dy = SHIFT
    scene = smooth_texture(H + dy * frames + 8, W + dx * frames + 8)
    return [scene[4 + dy * t : 4 + dy * t + H, 4 + dx * t : 4 + dx * t + W].copy() for t in range(frames)]


def exact_flow() -> np.ndarray:
    """Frame t's pixel (x, y) is at (x - dx, y - dy) in frame t+1."""
    f = np.empty((H, W, 2), np.float32)
    f[..., 0], f[..., 1] = -SHIFT[0], -SHIFT[1]
    return f


def test_static_video_has_no_warping_error():
    still = smooth_texture(H, W)
    assert flow.warping_error([still] * 4, [still] * 4) == pytest.approx(0.0, abs=1e-8)


def test_independent_noise_frames_have_a_large_warping_error():
    rng = np.random.default_rng(1)
    noise = [rng.random((H, W, 3), dtype=np.float32) for _ in range(4)]
    clip = translating_clip()
    # Two independent uniform images differ by 1/6 in mean square; the mask only removes pixels.
    assert flow.warping_error(noise, noise) > 0.05
    assert flow.warping_error(clip, noise) > 0.05


def test_dis_recovers_a_whole_pixel_translation():
    a, b = translating_clip(2)
    f = flow.flow(a, b)
    visible = flow.visible_mask(f, flow.flow(b, a))
    assert visible.mean() > 0.8
    assert np.median(np.abs(f[visible] - exact_flow()[visible])) < 0.25


def test_warping_with_the_exact_flow_lines_frames_up():
    a, b = translating_clip(2)
    dx, dy = SHIFT
    # Away from the entering border, warp(b, exact) is a shifted copy of b: a exactly.
    np.testing.assert_allclose(flow.warp(b, exact_flow())[dy:, dx:], a[dy:, dx:], atol=1e-6)


def test_visible_mask_drops_pixels_that_leave_the_frame():
    fwd = exact_flow()
    bwd = -fwd
    mask = flow.visible_mask(fwd, bwd)
    dx, dy = SHIFT
    assert not mask[:, :dx].any() and not mask[:dy, :].any()
    assert mask[dy:, dx:].all()


def test_translation_is_not_counted_as_flicker():
    clip = translating_clip()
    assert flow.warping_error(clip, clip) < 1e-4
    # An output that is any per-pixel function of the input moves with it: still no error.
    recoloured = [1.0 - frame[..., ::-1] for frame in clip]
    assert flow.warping_error(clip, recoloured) < 1e-4


def test_flicker_on_a_moving_clip_is_measured():
    clip = translating_clip()
    flicker = [np.clip(frame + (0.1 if t % 2 else -0.1), 0, 1) for t, frame in enumerate(clip)]
    assert flow.warping_error(clip, flicker) > 100 * flow.warping_error(clip, clip)


def test_warping_error_needs_matching_frame_lists():
    clip = translating_clip(3)
    with pytest.raises(ValueError):
        flow.warping_error(clip, clip[:2])
    with pytest.raises(ValueError):
        flow.warping_error(clip[:1], clip[:1])


def test_several_renderings_share_one_flow_computation():
    clip = translating_clip()
    rng = np.random.default_rng(2)
    noisy = [np.clip(f + rng.normal(0, 0.05, f.shape).astype(np.float32), 0, 1) for f in clip]
    together = flow.warping_errors(clip, [clip, noisy])
    assert together == pytest.approx([flow.warping_error(clip, clip), flow.warping_error(clip, noisy)])
    assert flow.pair_warping_error(clip[0], clip[1], noisy[0], noisy[1]) > together[0]


def test_motion_tracker_matches_estimate_motion_and_recovers_the_shift():
    from clipmorph.video.stabilize import MotionTracker, estimate_motion

    clip = [(f * 255).astype(np.uint8) for f in translating_clip(3)]
    track = MotionTracker()
    motions = [track(f) for f in clip]
    assert motions[0] is None
    for prev, cur, m in zip(clip[:-1], clip[1:], motions[1:], strict=True):
        ref = estimate_motion(prev, cur)
        np.testing.assert_allclose(m.flow, ref.flow, atol=1e-4)
        np.testing.assert_allclose(m.visible, ref.visible, atol=1e-5)
        # Frame t's pixel sits SHIFT further along in frame t-1 (flow points back to t-1).
        inner = m.visible > 0.99
        assert inner.mean() > 0.6
        assert np.median(np.abs(m.flow[inner] - np.float32(SHIFT))) < 0.3
    # A new frame size restarts the tracking.
    assert track(clip[0][:48, :64]) is None


def test_flow_stabilizer_carries_the_previous_output_along_the_motion():
    from clipmorph.video.stabilize import FlowStabilizer, MotionTracker

    clip = [(f * 255).astype(np.uint8) for f in translating_clip(2)]
    track, stab = MotionTracker(), FlowStabilizer(blend=0.8)
    first = stab(clip[0], track(clip[0]))
    np.testing.assert_array_equal(first, clip[0])  # nothing to blend with yet
    # Flicker as a network makes it: fine texture that differs from frame to frame.
    noise = np.random.default_rng(0).integers(-40, 41, clip[1].shape)
    flicker = np.clip(clip[1].astype(np.int16) + noise, 0, 255).astype(np.uint8)
    second = stab(flicker, track(clip[1]))
    dx, dy = SHIFT
    inner = (slice(dy + 4, -4), slice(dx + 4, -4))
    # The stabilised frame is pulled most of the way back from the flickered one towards the moved first frame.
    err_raw = np.abs(flicker[inner].astype(np.float32) - clip[1][inner]).mean()
    err_stab = np.abs(second[inner].astype(np.float32) - clip[1][inner]).mean()
    assert err_stab < 0.35 * err_raw


def test_flow_stabilizer_follows_a_fade_without_lag():
    from clipmorph.video.stabilize import FlowStabilizer, MotionTracker

    still = (smooth_texture(96, 128) * 200 + 20).astype(np.float32)
    lag = {}
    for detail_sigma in (0.0, 16.0):  # 0: the whole previous picture is carried (the earlier stabiliser)
        track, stab = MotionTracker(), FlowStabilizer(detail_sigma=detail_sigma)
        for t in range(12):
            frame = np.clip(still * (1 - 0.03 * t), 0, 255).astype(np.uint8)  # darker by ~3 % a frame
            out = stab(frame, track(frame))
        lag[detail_sigma] = float(out.astype(np.float32).mean() - frame.astype(np.float32).mean())
    assert lag[0.0] > 3  # carrying whole pictures lags behind the fade
    assert abs(lag[16.0]) < 0.5  # coarse light comes from the current frame


def test_flow_stabilizer_holds_harder_where_the_input_did_not_change():
    from clipmorph.video.stabilize import FlowStabilizer, MotionTracker

    still = (smooth_texture(96, 128) * 255).astype(np.uint8)
    rng = np.random.default_rng(1)
    errors = {}
    for hold in (0.8, 0.95):  # 0.8: the same weight as on moving pixels
        track, stab = MotionTracker(), FlowStabilizer(blend=0.8, hold=hold)
        outs = []
        for _ in range(10):
            motion = track(still)
            # The network's answer to an unchanged input still flickers (amplified sensor and codec noise).
            stylized = np.clip(still.astype(np.int16) + rng.integers(-30, 31, still.shape), 0, 255).astype(np.uint8)
            outs.append(stab(stylized, motion).astype(np.float32))
        assert motion.still.mean() > 0.95  # the tracker saw nothing change
        errors[hold] = float(np.mean([np.abs(b - a).mean() for a, b in itertools.pairwise(outs[4:])]))
    assert errors[0.95] < 0.6 * errors[0.8]
