"""The service's web page (GET /) in headless Chromium, against a real `bentoml serve` with a tiny model."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Page, sync_playwright
from test_pipeline import speech_wav, talking_video
from test_serving import served, tiny_model

# Debian's chromium (scripts/setup.sh installs it as root); Playwright drives it and never fetches its own.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SPEECH_SECONDS = 2.0  # 50 frames at 25 fps: a few chunks of the tiny model's 4, for the progress bar to rise
JOB_SECONDS = 240  # the tiny model on a shared 2-core CPU, and the queue

pytestmark = [
    pytest.mark.pretrained,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium executable (apt-get install chromium)"),
]

# Collects what #status and #progress show as the page changes them, so that a state the page passed
# through between two of the test's looks is still seen.
RECORD = """() => {
  window.seen = [];
  const status = document.querySelector('#status'), bar = document.querySelector('#progress');
  const note = () => window.seen.push([status.textContent, bar.value, bar.max]);
  const observer = new MutationObserver(note);
  observer.observe(status, {childList: true, characterData: true, subtree: true});
  observer.observe(bar, {attributes: true});
}"""

PLAYABLE = """(id) => {
  const video = document.getElementById(id);
  return video.readyState >= 2 && video.duration > 0;
}"""


@pytest.fixture(scope="module")
def service(tmp_path_factory, pretrained_dir) -> Iterator[str]:
    """The service on test_serving's tiny model, up to 3 s of output; yields its URL."""
    tmp = tmp_path_factory.mktemp("web_service")
    settings = {
        "SYNCLIP_MAX_SECONDS": "3",
        "SYNCLIP_REQUEST_LOG": str(tmp / "requests.jsonl"),
        "SYNCLIP_WORK_DIR": str(tmp / "work"),
    }
    with served(tiny_model(tmp), tmp, **settings) as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1000, "height": 760})
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("web_media")
    return talking_video(folder / "face.mp4", frames=20), speech_wav(folder / "speech.wav", SPEECH_SECONDS)


def wait_for_outcome(page: Page) -> None:
    """Until the page shows a result or an error."""
    page.wait_for_selector("#results:not([hidden]), #error:not([hidden])", timeout=JOB_SECONDS * 1000)


def test_the_page_lip_syncs_a_video_and_plays_the_result(service, page, media, tmp_path):
    video, speech = media
    page.goto(service)
    # prefilled from /model_info: the tiny model's defaults, bounded by the service's limits
    page.wait_for_function("() => document.querySelector('#steps').value !== ''")
    assert page.input_value("#steps") == "2"
    assert page.input_value("#guidance") == "1.5"
    assert page.get_attribute("#steps", "max") == "50"
    assert page.is_hidden("#error")

    page.evaluate(RECORD)
    page.set_input_files("#video", video)
    page.set_input_files("#audio", speech)
    with page.expect_response(f"{service}/jobs") as submitted:
        page.click("#submit")
    assert submitted.value.status == 202, submitted.value.text()
    job = submitted.value.json()["job"]
    wait_for_outcome(page)
    assert page.is_hidden("#error"), page.text_content("#error")
    assert page.text_content("#status") == "Done."

    seen = page.evaluate("window.seen")
    total = round(SPEECH_SECONDS * 25)
    bar = page.eval_on_selector("#progress", "bar => [bar.value, bar.max]")
    assert bar == [total, total], seen
    # the bar rose while the job ran: a value between 0 and the total, or at least a "Running" status
    # (the tiny model can finish between two of the page's polls)
    between = [value for _, value, top in seen if top == total and 0 < value < total]
    assert between or any(text.startswith("Running") for text, _, _ in seen), seen

    page.wait_for_function(PLAYABLE, arg="result-video", timeout=30_000)
    page.wait_for_function(PLAYABLE, arg="input-video", timeout=30_000)
    duration = page.eval_on_selector("#result-video", "video => video.duration")
    assert duration == pytest.approx(SPEECH_SECONDS, abs=0.1)

    result = page.eval_on_selector("#result-video", "video => video.src")
    assert result == f"{service}/jobs/{job}/result"
    assert page.eval_on_selector("#download", "link => link.href") == result
    download = page.request.get(result)
    assert download.status == 200
    assert download.headers["content-type"] == "video/mp4"

    assert page.request.get(page.eval_on_selector("a[href='/docs']", "link => link.href")).status == 200

    # written here, not into the repository; docs/images/web-page.png is a copy of it
    page.screenshot(path=tmp_path / "web-page.png", full_page=True)
    print(f"screenshot: {tmp_path / 'web-page.png'}; progress seen: {between}")


def test_the_page_shows_the_services_reason_for_a_bad_file(service, page, media, tmp_path):
    _, speech = media
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video, only text\n")
    page.goto(service)
    page.wait_for_function("() => document.querySelector('#steps').value !== ''")
    page.set_input_files("#video", notes)
    page.set_input_files("#audio", speech)
    page.click("#submit")
    wait_for_outcome(page)
    assert page.is_visible("#error")
    # the same request, sent by hand: the page shows the service's own reason, word for word
    with notes.open("rb") as v, speech.open("rb") as a:
        files = {"video": (notes.name, v, "video/mp4"), "audio": (speech.name, a, "audio/wav")}
        refused = requests.post(f"{service}/jobs", files=files, timeout=60)
    assert refused.status_code == 400, refused.text
    reason = refused.json()["error"]
    assert reason.startswith("video: not a readable media file")
    assert page.text_content("#error") == reason
    assert page.is_hidden("#results")
    assert page.is_enabled("#submit")  # ready for another try


def test_cancel_stops_the_job(service, page, media):
    video, speech = media
    page.goto(service)
    page.wait_for_function("() => document.querySelector('#steps').value !== ''")
    page.set_input_files("#video", video)
    page.set_input_files("#audio", speech)
    with page.expect_response(f"{service}/jobs") as submitted:
        page.click("#submit")
    job = submitted.value.json()["job"]
    # the job is queued or running (the tiny model takes a second or two): cancel it from the page
    with page.expect_response(lambda response: response.request.method == "DELETE") as cancelled:
        page.click("#cancel")
    assert cancelled.value.status == 200, cancelled.value.text()
    page.wait_for_function("() => document.querySelector('#status').textContent === 'Cancelled.'")
    assert page.is_hidden("#cancel")
    assert page.is_enabled("#submit")
    assert page.is_hidden("#error")
    assert page.is_hidden("#results")
    assert requests.get(f"{service}/jobs/{job}", timeout=30).json()["status"] == "cancelled"
