"""The web page end to end: real headless Chromium driving the real API, an RQ worker and redis-server.

One stack serves the whole module (starting uvicorn and a worker costs seconds each): it has an API
token and a small upload limit, so every test also goes through the token field, and an oversized
upload is cheap to make. Screenshots land in test-artifacts/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import httpx
import pytest
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from serving_helpers import make_clip, make_flat_clip, register_tiny_model

from clipmorph.settings import REPO_ROOT, get_settings

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = REPO_ROOT / "test-artifacts"
TOKEN = "web-test-token"
TRAINER_TOKEN = "web-trainer-token"
TRAINED_STYLE = "zz-trained"  # after STYLE in the (sorted) list, which keeps STYLE preselected for the other tests
TRAIN_SECONDS = 240
STYLE = "tinyweb"
MAX_UPLOAD_BYTES = 2_000_000
CLIP_FPS = 12
CLIP_FRAMES = 18  # 1.5 s
CLIP_SIZE = (96, 64)
STARTUP_SECONDS = 90
# A quality block as `make quality --record` writes it: what the style cards put in words.
QUALITY = {"640x360": {"ours": {"content": 2.5, "style": 0.3, "artefact": 0.0}, "warping_max": {"ours_stab": 1.2}}}
JOB_SECONDS = 180
# Images over SYNC_PIXELS are queued as jobs and stylized by the worker in tiles of TILE_PIXELS. The clip's
# frames (96x64) and the still-image preview (80x60) stay under both, so only the large-image tests see them.
SYNC_PIXELS = 100 * 100
TILE_PIXELS = 128 * 128
LARGE_IMAGE = (320, 240)  # 12 tiles of 128 px with their overlap


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.3)
    pytest.fail(f"server did not answer at {url}:\n{log.read_text()[-3000:]}")


@dataclass
class Stack:
    url: str
    clip: Path
    logs: Path


@pytest.fixture(scope="module")
def stack(redis_url, assets, tmp_path_factory) -> Iterator[Stack]:
    """`clipmorph serve` and `clipmorph worker` as separate processes, sharing a temp registry and jobs dir."""
    tmp = tmp_path_factory.mktemp("web-stack")
    # A data dir of the stack's own: a painting uploaded for training lands in its styles folder, not the mirror.
    data = tmp / "data"
    (data / "styles").mkdir(parents=True)
    for painting in (assets / "styles").iterdir():
        (data / "styles" / painting.name).symlink_to(painting)
    for name in ("photos", "videos", "weights"):
        (data / name).symlink_to(assets / name, target_is_directory=True)
    # Training jobs of a few steps on tiny crops (tests/test_styles.py times one): the page is under test.
    tiny_training = {"size": "32", "batch_size": "1", "style_size": "64", "frame_side": "0", "val_every": "2",
                     "val_images": "1", "workers": "0"}  # fmt: skip
    env = {
        "CLIPMORPH_VAR_DIR": str(tmp / "var"),
        "CLIPMORPH_DATA_DIR": str(data),
        "CLIPMORPH_TRAINER_TOKENS": json.dumps({"trainer": TRAINER_TOKEN}),
        "CLIPMORPH_TRAIN_QUEUE_NAME": f"web-train-{os.getpid()}",
        "CLIPMORPH_TRAIN_JOB_OVERRIDES": json.dumps(tiny_training),
        "CLIPMORPH_RUNS_DIR": str(tmp / "runs"),
        "CLIPMORPH_ASSETS_DIR": str(assets),
        # No built-in models: the page's only (so preselected) style is the tiny one these tests register.
        "CLIPMORPH_BUILTIN_MODELS_DIR": str(tmp / "no-builtin-models"),
        "CLIPMORPH_PREVIEW_PHOTO": str(assets / "photos" / "pytorch_examples" / "amber.jpg"),
        "CLIPMORPH_REDIS_URL": redis_url,
        "CLIPMORPH_QUEUE_NAME": f"web-{os.getpid()}",
        "CLIPMORPH_API_TOKEN": TOKEN,
        "CLIPMORPH_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "CLIPMORPH_MAX_SYNC_IMAGE_PIXELS": str(SYNC_PIXELS),
        "CLIPMORPH_TILE_PIXELS": str(TILE_PIXELS),
        "CLIPMORPH_API_HOST": "127.0.0.1",
        "CLIPMORPH_API_PORT": str(_free_port()),
        "WANDB_MODE": "disabled",
    }
    child_env = {k: v for k, v in os.environ.items() if k != "CLIPMORPH_MLFLOW_TRACKING_URI"}
    child_env.update(env, PYTHONUNBUFFERED="1")
    cli = str(Path(sys.executable).parent / "clipmorph")
    procs = []
    try:
        # The API, a stylizing worker, and a training worker as a GPU machine would run one.
        for name, command in (("serve", ["serve"]), ("worker", ["worker"]), ("train", ["worker", "--queues", "train"])):
            log = (tmp / f"{name}.log").open("w")
            procs.append(
                subprocess.Popen([cli, *command], cwd=REPO_ROOT, env=child_env, stdout=log, stderr=subprocess.STDOUT)
            )
        # Registered while they start: the registry lock keeps them from creating the fresh store twice.
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            mp.delenv("CLIPMORPH_MLFLOW_TRACKING_URI", raising=False)
            get_settings.cache_clear()
            register_tiny_model(get_settings(), STYLE, painting="starrynight", quality=QUALITY)
        get_settings.cache_clear()
        url = f"http://127.0.0.1:{env['CLIPMORPH_API_PORT']}/"
        _wait_http(url, procs[0], tmp / "serve.log")
        clip = make_clip(tmp / "clip.mp4", frames=CLIP_FRAMES, size=CLIP_SIZE, fps=CLIP_FPS, audio=False)
        yield Stack(url=url, clip=clip, logs=tmp)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def browser(tmp_path) -> Iterator[WebDriver]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("headless Chromium is not installed (apt-get install -y chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # with both paths given, Selenium Manager never tries to download one
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1100,1400",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _screenshot(driver: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"web-{name}.png"
    # The whole page, not only the window: size the window to the document first.
    height = driver.execute_script("return document.documentElement.scrollHeight")
    width = driver.execute_script("return window.innerWidth")
    driver.set_window_size(max(width, 360), min(max(height + 140, 600), 4000))
    driver.save_screenshot(str(path))
    return path


def _wait(driver: WebDriver, condition, timeout: float = 30, message: str = ""):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)
    except TimeoutException:
        _screenshot(driver, "timeout")
        error = driver.find_element(By.ID, "error").text
        status = driver.find_element(By.ID, "status-text").text
        pytest.fail(f"{message} (error box: {error!r}, status: {status!r}; see test-artifacts/web-timeout.png)")


def _open(driver: WebDriver, stack: Stack, token: str | None = TOKEN) -> None:
    driver.get(stack.url)
    if token is not None:
        # Without a token the styles request gets 401 and the page opens the token panel by itself.
        field = driver.find_element(By.ID, "token")
        _wait(driver, lambda d: field.is_displayed(), 30, "the page did not open the token panel")
        field.send_keys(token)
        field.send_keys(Keys.ENTER)
    _wait(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, f'input[name="style"][value="{STYLE}"]'),
        message="the registered style never appeared",
    )


def _choose_file(driver: WebDriver, path: Path) -> None:
    driver.find_element(By.ID, "file").send_keys(str(path))


def _script_errors(driver: WebDriver) -> list[str]:
    """Uncaught exceptions and console errors of the page's own scripts (failed requests are expected)."""
    return [e["message"] for e in driver.get_log("browser") if e["source"] == "javascript" and e["level"] == "SEVERE"]


def _requests(stack: Stack, method: str, route: str, status: int) -> float:
    """How many requests the API has answered so, from its Prometheus metrics (0 when none yet)."""
    line = re.search(
        rf'^clipmorph_http_requests_total\{{method="{method}",route="{re.escape(route)}",status="{status}"\}} (\S+)$',
        httpx.get(f"{stack.url}metrics").text,
        re.MULTILINE,
    )
    return float(line.group(1)) if line else 0.0


def _error_text(driver: WebDriver, timeout: float = 60) -> str:
    _wait(driver, lambda d: d.find_element(By.ID, "error").is_displayed(), timeout, "no error message was shown")
    return driver.find_element(By.ID, "error").text


def test_video_upload_plays_the_stylized_result(stack: Stack, browser: WebDriver) -> None:
    _open(browser, stack)
    _choose_file(browser, stack.clip)
    assert "clip.mp4" in browser.find_element(By.ID, "file-name").text
    browser.find_element(By.ID, "max-side").clear()
    browser.find_element(By.ID, "max-side").send_keys("64")
    whole_results = _requests(stack, "GET", "/jobs/{job_id}/result", 200)  # large-image tests fetch theirs whole
    browser.find_element(By.ID, "submit").click()

    _wait(browser, lambda d: d.find_element(By.ID, "result").is_displayed(), JOB_SECONDS, "no result appeared")
    _wait(
        browser,
        lambda d: d.execute_script("return document.getElementById('result-video').readyState") >= 1,
        30,
        "the result video never loaded its metadata",
    )
    assert browser.find_element(By.ID, "error").is_displayed() is False
    duration = browser.execute_script("return document.getElementById('result-video').duration")
    assert duration == pytest.approx(CLIP_FRAMES / CLIP_FPS, abs=1 / CLIP_FPS)
    size = browser.execute_script(
        "const v = document.getElementById('result-video'); return [v.videoWidth, v.videoHeight]"
    )
    assert size == list(CLIP_SIZE)
    assert browser.find_element(By.ID, "upload-bar").get_attribute("value") == "100"
    progress = browser.find_element(By.ID, "job-text").text
    assert f"frame {CLIP_FRAMES} of {CLIP_FRAMES}" in progress
    assert "frames/s" in progress
    assert browser.find_element(By.ID, "status-text").text == "Done."
    assert browser.find_element(By.ID, "result-meta").text == f"Style {STYLE} v1"
    # The players stream the result from the server (a signed link: <video> sends no bearer header).
    source = browser.execute_script("return document.getElementById('result-video').currentSrc")
    assert source.startswith(f"{stack.url}v1/jobs/") and "/result?expires=" in source and "&signature=" in source
    link = browser.find_element(By.ID, "download")
    assert link.get_attribute("href") == source
    assert link.get_attribute("download") == f"clip-{STYLE}.mp4"
    # The comparison shows the local original under the stylized clip; the slider moves the divider.
    original = browser.execute_script("return document.getElementById('compare-original').src")
    assert original.startswith("blob:")
    slider = browser.find_element(By.ID, "compare-slider")
    browser.execute_script("arguments[0].value = 20; arguments[0].dispatchEvent(new Event('input'))", slider)
    assert browser.find_element(By.ID, "compare-top").value_of_css_property("clip-path") == "inset(0px 0px 0px 20%)"
    browser.find_element(By.ID, "compare-play").click()
    _wait(
        browser,
        lambda d: d.execute_script(
            "return ['compare-original', 'compare-styled'].every(id => document.getElementById(id).currentTime > 0)"
        ),
        30,
        "the comparison did not play both clips",
    )
    assert _script_errors(browser) == []
    # Chromium asked for byte ranges, and the server answered them (206) instead of sending the file whole.
    assert _requests(stack, "GET", "/jobs/{job_id}/result", 206) >= 1
    assert _requests(stack, "GET", "/jobs/{job_id}/result", 200) == whole_results  # never fetched whole
    _screenshot(browser, "video-result")


def test_odd_sized_video_plays_one_pixel_larger_in_yuv420p(stack: Stack, browser: WebDriver, tmp_path: Path) -> None:
    """97x65 cannot be 4:2:0 H.264 (clipmorph/video/writer.py): the result is 98x66 yuv420p, which any player takes."""
    clip = make_clip(
        tmp_path / "odd.mp4", frames=CLIP_FRAMES, size=(97, 65), fps=CLIP_FPS, audio=False, pix_fmt="yuv444p"
    )
    _open(browser, stack)
    _choose_file(browser, clip)
    browser.find_element(By.ID, "max-side").clear()
    browser.find_element(By.ID, "max-side").send_keys("64")
    browser.find_element(By.ID, "submit").click()

    _wait(browser, lambda d: d.find_element(By.ID, "result").is_displayed(), JOB_SECONDS, "no result appeared")
    video = "document.getElementById('result-video')"
    _wait(browser, lambda d: d.execute_script(f"return {video}.readyState") >= 2, 30, "no frame of the result decoded")
    assert browser.execute_script(f"return [{video}.videoWidth, {video}.videoHeight, {video}.error]") == [98, 66, None]
    browser.execute_script(f"{video}.muted = true; {video}.play()")
    _wait(browser, lambda d: d.execute_script(f"return {video}.currentTime") > 0, 30, "the result did not play")
    # What the player got is the portable 4:2:0 (Chromium would also have played 4:4:4).
    result = tmp_path / "result.mp4"
    result.write_bytes(httpx.get(browser.execute_script(f"return {video}.currentSrc"), timeout=30).content)
    with av.open(str(result)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p"
    assert _script_errors(browser) == []


def test_non_video_upload_explains_the_problem(stack: Stack, browser: WebDriver, tmp_path: Path) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is a shopping list, not a video\n" * 20)
    _open(browser, stack)
    _choose_file(browser, fake)
    browser.find_element(By.ID, "submit").click()
    assert "doesn't look like a video" in _error_text(browser)
    _screenshot(browser, "not-a-video")


def test_frames_over_the_size_limit_are_explained(stack: Stack, browser: WebDriver, tmp_path: Path) -> None:
    huge = make_flat_clip(tmp_path / "huge-frames.mp4", (4096, 4096), 2)  # a few KB: only the picture is too big
    _open(browser, stack)
    _choose_file(browser, huge)
    browser.find_element(By.ID, "submit").click()
    text = _error_text(browser)
    assert "too big for this server" in text and "larger than the limit of 3840 pixels a side" in text
    assert "accepts at most" not in text  # not mistaken for the byte limit
    _screenshot(browser, "frames-too-large")


def test_oversized_upload_explains_the_limit(stack: Stack, browser: WebDriver, tmp_path: Path) -> None:
    big = tmp_path / "huge.mp4"
    big.write_bytes(os.urandom(MAX_UPLOAD_BYTES + 500_000))
    _open(browser, stack)
    _choose_file(browser, big)
    browser.find_element(By.ID, "submit").click()
    assert "too large" in _error_text(browser)


def test_missing_and_wrong_token_are_explained(stack: Stack, browser: WebDriver) -> None:
    browser.get(stack.url)
    status = browser.find_element(By.ID, "styles-status")
    _wait(browser, lambda d: "needs an API token" in status.text, 30, "the page did not ask for the token")
    assert browser.find_element(By.ID, "token-panel").get_attribute("open") is not None
    field = browser.find_element(By.ID, "token")
    field.send_keys("not-the-token", Keys.ENTER)
    _wait(browser, lambda d: "didn't accept your API token" in status.text, 30, "a wrong token was not explained")
    assert browser.execute_script("return sessionStorage.getItem('clipmorph.apiToken')") == "not-the-token"
    assert browser.execute_script("return localStorage.length") == 0


def test_style_removed_after_the_page_loaded_is_explained(stack: Stack, browser: WebDriver) -> None:
    _open(browser, stack)
    # As if the style had been deleted from the registry since the list was shown.
    browser.execute_script("document.querySelector('input[name=\"style\"]').value = 'vanished'")
    _choose_file(browser, stack.clip)
    browser.find_element(By.ID, "submit").click()
    assert "style isn't available" in _error_text(browser)


def test_still_image_preview(stack: Stack, browser: WebDriver, assets: Path, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.open(sorted((assets / "photos" / "skimage").glob("*"))[0]).convert("RGB").resize((80, 60)).save(photo)
    _open(browser, stack)
    browser.find_element(By.CSS_SELECTOR, 'input[name="mode"][value="image"]').click()
    _choose_file(browser, photo)  # still images render as soon as a file is chosen
    _wait(
        browser,
        lambda d: (
            d.execute_script("const i = document.getElementById('result-image'); return i.complete && i.naturalWidth")
            > 0
        ),
        60,
        "the stylized image never appeared",
    )
    size = browser.execute_script(
        "const i = document.getElementById('result-image'); return [i.naturalWidth, i.naturalHeight]"
    )
    assert size == [80, 60]
    assert _script_errors(browser) == []
    _screenshot(browser, "image-result")


def _photo(assets: Path, path: Path, size: tuple[int, int]) -> Path:
    Image.open(sorted((assets / "photos" / "skimage").glob("*"))[0]).convert("RGB").resize(size).save(path)
    return path


def test_large_image_is_queued_and_its_result_shown_at_full_size(
    stack: Stack, browser: WebDriver, assets: Path, tmp_path: Path
) -> None:
    """Over CLIPMORPH_MAX_SYNC_IMAGE_PIXELS the API answers 202 and a job: the page follows it like a video's."""
    width, height = LARGE_IMAGE
    assert width * height > SYNC_PIXELS > 80 * 60  # this one is queued; the preview test's is not
    queued_before = _requests(stack, "POST", "/images", 202)
    photo = _photo(assets, tmp_path / "large.png", LARGE_IMAGE)
    _open(browser, stack)
    browser.find_element(By.CSS_SELECTOR, 'input[name="mode"][value="image"]').click()
    _choose_file(browser, photo)  # submitted by itself, as every still image is
    _wait(
        browser,
        lambda d: _image_loaded(d, "#result-image") and d.find_element(By.ID, "result").is_displayed(),
        JOB_SECONDS,
        "the stylized large image never appeared",
    )
    size = browser.execute_script(
        "const i = document.getElementById('result-image'); return [i.naturalWidth, i.naturalHeight]"
    )
    assert size == [width, height]
    assert _requests(stack, "POST", "/images", 202) == queued_before + 1  # it went through the queue
    # The video flow's progress: the upload, then the worker's passes (one per tile, and the statistics pass).
    assert browser.find_element(By.ID, "upload-bar").get_attribute("value") == "100"
    assert f"{width}×{height} pixels, too large to stylize at once" in browser.find_element(By.ID, "upload-text").text
    assert browser.find_element(By.ID, "job-meter").is_displayed()
    steps = re.fullmatch(r"step (\d+) of \1", browser.find_element(By.ID, "job-text").text)
    assert steps and int(steps.group(1)) > 2, browser.find_element(By.ID, "job-text").text
    assert browser.find_element(By.ID, "status-text").text == "Done."
    assert browser.find_element(By.ID, "error").is_displayed() is False
    assert browser.find_element(By.ID, "result-meta").text == f"Style {STYLE} v1"
    # Fetched with the bearer header and shown (and offered for download) from a blob.
    styled = browser.find_element(By.ID, "result-image").get_attribute("src")
    assert styled.startswith("blob:")
    link = browser.find_element(By.ID, "download")
    assert link.get_attribute("href") == styled
    assert link.get_attribute("download") == f"large-{STYLE}.png"
    assert link.is_displayed() and link.text.startswith(f"Download large-{STYLE}.png (")
    assert browser.find_element(By.ID, "compare-styled-image").get_attribute("src") == styled
    assert browser.find_element(By.ID, "compare-original-image").get_attribute("src").startswith("blob:")
    assert not browser.find_element(By.ID, "result-video").is_displayed()
    assert not browser.find_element(By.ID, "cancel").is_displayed()
    assert _script_errors(browser) == []
    _screenshot(browser, "large-image-result")


def test_large_image_the_worker_cannot_read_is_explained(
    stack: Stack, browser: WebDriver, assets: Path, tmp_path: Path
) -> None:
    """A header the API can read, pixels the worker cannot: the job fails, and the page says why."""
    data = _photo(assets, tmp_path / "whole.png", LARGE_IMAGE).read_bytes()
    broken = tmp_path / "broken.png"
    broken.write_bytes(data[: len(data) // 2])
    _open(browser, stack)
    browser.find_element(By.CSS_SELECTOR, 'input[name="mode"][value="image"]').click()
    _choose_file(browser, broken)
    text = _error_text(browser, JOB_SECONDS)
    assert text.startswith("The server couldn't stylize this image: not a readable image"), text
    assert not browser.find_element(By.ID, "result").is_displayed()
    assert not browser.find_element(By.ID, "cancel").is_displayed()
    _screenshot(browser, "large-image-failed")


def _image_loaded(driver: WebDriver, selector: str) -> bool:
    return (
        driver.execute_script(f"const i = document.querySelector('{selector}'); return i.complete && i.naturalWidth")
        > 0
    )


def test_style_card_shows_the_painting_a_sample_and_plain_words(stack: Stack, browser: WebDriver) -> None:
    _open(browser, stack)
    card = f'.style-card:has(input[value="{STYLE}"])'
    for picture in ("style-painting", "style-sample"):
        _wait(
            browser,
            lambda d, p=picture: _image_loaded(d, f"{card} .{p} img"),
            60,
            f"the style card's {picture} never loaded",
        )
        # Fetched with the bearer header, so it is shown from a blob, not from the (protected) URL itself.
        assert browser.find_element(By.CSS_SELECTOR, f"{card} .{picture} img").get_attribute("src").startswith("blob:")
    assert browser.find_element(By.CSS_SELECTOR, f'input[value="{STYLE}"]').is_selected()
    words = {li.get_attribute("data-aspect"): li.text for li in browser.find_elements(By.CSS_SELECTOR, f"{card} li")}
    assert words["strength"].startswith("A bold repaint") and "close to the painting's colours" in words["strength"]
    assert words["steadiness"] == "Very steady: about as calm as the original video."
    assert words["speed"] == "Its speed on a CPU has not been measured yet."
    # The numbers stay folded away until asked for.
    details = browser.find_element(By.CSS_SELECTOR, f"{card} details")
    assert details.get_attribute("open") is None and not details.find_element(By.TAG_NAME, "dl").is_displayed()
    details.find_element(By.TAG_NAME, "summary").click()
    assert "warping ratio\n1.2" in details.find_element(By.TAG_NAME, "dl").text
    _screenshot(browser, "style-card")


def test_drop_zone_takes_a_dropped_file(stack: Stack, browser: WebDriver) -> None:
    _open(browser, stack)
    browser.execute_script(
        """
        const data = new DataTransfer();
        data.items.add(new File(["x"], "dropped.mp4", {type: "video/mp4"}));
        document.getElementById("drop-zone").dispatchEvent(new DragEvent("drop", {dataTransfer: data}));
        """
    )
    assert browser.find_element(By.ID, "file-name").text.startswith("dropped.mp4")


def test_controls_are_labelled_and_the_drop_zone_works_from_the_keyboard(stack: Stack, browser: WebDriver) -> None:
    """Every form control has a label; Enter or Space on the focused drop zone opens the file chooser."""
    _open(browser, stack)
    unlabelled = browser.execute_script(
        """
        return [...document.querySelectorAll("input, select, textarea, button, video")]
          .filter(el => !(el.labels && el.labels.length) && !el.getAttribute("aria-label") && !el.textContent.trim())
          .map(el => el.id || el.name || el.outerHTML.slice(0, 80));
        """
    )
    assert unlabelled == []
    browser.execute_script(
        "window.__opened = 0; document.getElementById('file').addEventListener('click', () => window.__opened++)"
    )
    zone = browser.find_element(By.ID, "drop-zone")
    browser.execute_script("arguments[0].focus()", zone)
    assert browser.switch_to.active_element == zone
    zone.send_keys(Keys.ENTER)
    zone.send_keys(Keys.SPACE)
    assert browser.execute_script("return window.__opened") == 2


def test_phone_width_has_no_horizontal_scroll(stack: Stack, browser: WebDriver) -> None:
    browser.set_window_size(375, 800)
    _open(browser, stack)
    overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    _screenshot(browser, "phone")


def _fill_training(driver: WebDriver, painting: Path, name: str, steps: int = 6) -> None:
    driver.find_element(By.CSS_SELECTOR, "#train-panel summary").click()
    driver.find_element(By.ID, "train-file").send_keys(str(painting))
    driver.find_element(By.ID, "train-name").send_keys(name)
    driver.find_element(By.CSS_SELECTOR, '#train-preset option[value="fast"]').click()
    field = driver.find_element(By.ID, "train-iterations")
    field.clear()
    field.send_keys(str(steps))
    driver.find_element(By.ID, "train-submit").click()


def test_training_with_a_token_that_may_not_train_is_explained(stack: Stack, browser: WebDriver, assets: Path) -> None:
    _open(browser, stack)  # the plain API token: it may stylize, not train
    _fill_training(browser, assets / "styles" / "klee.jpg", "not-allowed")
    _wait(browser, lambda d: d.find_element(By.ID, "train-error").is_displayed(), 30, "no training error shown")
    assert "needs a trainer or admin token" in browser.find_element(By.ID, "train-error").text
    assert _script_errors(browser) == []


def test_training_can_be_cancelled_from_the_page(stack: Stack, browser: WebDriver, assets: Path) -> None:
    _open(browser, stack, token=TRAINER_TOKEN)
    _fill_training(browser, assets / "styles" / "klee.jpg", "cancel-me", steps=3000)
    _wait(browser, lambda d: "step " in d.find_element(By.ID, "train-text").text, TRAIN_SECONDS, "no training steps")
    browser.find_element(By.ID, "train-cancel").click()
    _wait(browser, lambda d: d.find_element(By.ID, "train-error").is_displayed(), 60, "the cancel was not reported")
    assert "training was cancelled" in browser.find_element(By.ID, "train-error").text
    assert not browser.find_element(By.ID, "train-cancel").is_displayed()
    assert not browser.find_elements(By.CSS_SELECTOR, 'input[name="style"][value="cancel-me"]')
    assert _script_errors(browser) == []


def test_training_a_style_shows_steps_a_preview_and_then_the_new_style(
    stack: Stack, browser: WebDriver, assets: Path
) -> None:
    _open(browser, stack, token=TRAINER_TOKEN)  # a trainer token also reads the style list
    _fill_training(browser, assets / "styles" / "klee.jpg", TRAINED_STYLE)
    _wait(browser, lambda d: "step " in d.find_element(By.ID, "train-text").text, TRAIN_SECONDS, "no training steps")
    _wait(browser, lambda d: _image_loaded(d, "#train-preview"), TRAIN_SECONDS, "no validation preview shown")
    assert browser.find_element(By.ID, "train-preview").get_attribute("src").startswith("data:image/jpeg;base64,")
    _wait(
        browser,
        lambda d: "is ready" in d.find_element(By.ID, "train-status").text,
        TRAIN_SECONDS,
        "training never finished (see test-artifacts/web-timeout.png for the train error box)",
    )
    assert browser.find_element(By.ID, "train-text").text.startswith("step 6 of 6")
    assert "Losses: " in browser.find_element(By.ID, "train-losses").text
    assert browser.find_elements(By.CSS_SELECTOR, f'input[name="style"][value="{TRAINED_STYLE}"]')
    assert browser.find_element(By.CSS_SELECTOR, f'input[value="{STYLE}"]').is_selected()  # the choice is kept
    assert _script_errors(browser) == []
    _screenshot(browser, "trained-style")
