"""The web page in headless Chromium (Debian's ``chromium`` driven by Playwright; no browser download).

CI installs chromium (``apt-get install -y chromium``); where it is absent the tests skip and say so.
"""

import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-device-for-media-stream",  # a synthetic microphone (a beeping tone) for the record button
    "--use-fake-ui-for-media-stream",
]
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium); the browser test needs it")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def evaluation_report(tmp_path_factory) -> Path:
    """The server's evaluation report: not written when the server starts (as in the demo)."""
    return tmp_path_factory.mktemp("evaluation") / "report.md"


def serve(settings, models):
    """uvicorn serving the app on a free loopback port, in a thread of this process (models shared)."""
    import uvicorn

    from birdsearch.service.app import create_app

    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, models), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url
    server.should_exit = True
    thread.join(timeout=30)


def web_settings(tmp_path_factory, tiny_models, index_root, helpers, **extra):
    from birdsearch.service.settings import Settings

    root = helpers.copy_index(index_root, tmp_path_factory.mktemp("web") / "index")
    return Settings(
        index_root=root, checkpoint=str(tiny_models["encoder"]), student=str(tiny_models["student"]),
        cascade="always", device="cpu", reload_interval_s=0, decode_threads=2, **extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def web_server(tmp_path_factory, tiny_models, index_root, loaded_models, helpers, evaluation_report):
    settings = web_settings(
        tmp_path_factory, tiny_models, index_root, helpers, evaluation_report=evaluation_report
    )
    yield from serve(settings, loaded_models)


@pytest.fixture(scope="module")
def gated_server(tmp_path_factory, tiny_models, index_root, loaded_models, helpers):
    """A server whose gate calls every window novel (max_confidence novelty is at least 0)."""
    from birdsearch.model.calibration import Platt, save_calibration
    from birdsearch.model.novelty import OPEN_SET_FILE, OpenSet, save_open_set

    folder = tmp_path_factory.mktemp("gate")
    calibration = save_calibration(folder / "calibration.json", "distilled", Platt((8.0,), -2.0))
    save_open_set(folder / OPEN_SET_FILE, "distilled", OpenSet("max_confidence", -1.0, min_conf=0.2))
    settings = web_settings(tmp_path_factory, tiny_models, index_root, helpers, calibration=str(calibration))
    yield from serve(settings, loaded_models)


@pytest.fixture
def page(browser, web_server):
    context = browser.new_context(permissions=["microphone"], base_url=web_server)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto("/")
    yield page
    context.close()
    assert not errors, errors


def test_audio_unlike_what_the_model_knows_is_not_in_this_gallery(browser, gated_server, helpers):
    context = browser.new_context(base_url=gated_server)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto("/")
    page.set_input_files("#file-input", str(helpers.audio_file("birdnet_soundscape_48k_30s.flac")))
    page.wait_for_selector("#species-list .abstained[data-reason='novel']")
    assert "Not in this gallery" in page.text_content("#species-list .abstained")
    nearest = page.eval_on_selector_all(
        "#species-list .species-card.nearest", "cs => cs.map(c => c.textContent)"
    )
    assert nearest and all("nearest, not detected" in text for text in nearest)
    assert not page.query_selector_all("#species-list .species-card:not(.nearest)")
    labels = page.eval_on_selector_all("#timeline .window.novel", "ws => ws.map(w => w.textContent)")
    assert labels and set(labels) == {"not in this gallery"}
    context.close()


def api_answer(url: str, path: Path, **form) -> dict:
    r = httpx.post(f"{url}/query", files={"audio": (path.name, path.read_bytes())}, data=form, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def images_loaded(page) -> list[bool]:
    return page.eval_on_selector_all(
        "#results img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)"
    )


def test_uploading_a_recording_shows_species_photos_and_spectrogram(page, web_server, helpers):
    path = helpers.audio_file("perch_21100_36_48_16k_10s.flac")
    page.wait_for_function("document.getElementById('server-info').textContent.includes('index v0001')")
    page.set_input_files("#file-input", str(path))
    page.wait_for_selector("#species-list .species-card")
    page.wait_for_function("document.getElementById('spectrogram').dataset.drawn === 'true'")
    expected = api_answer(web_server, path)
    shown = page.eval_on_selector_all(
        "#species-list .species-card", "cards => cards.map(c => c.dataset.species)"
    )
    assert shown == [s["species"] for s in expected["species"]]
    photos = page.eval_on_selector_all("#images .photo", "figs => figs.map(f => Number(f.dataset.imageId))")
    assert photos == [h["id"] for h in expected["images"]]
    page.wait_for_function(
        "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    assert all(images_loaded(page))
    assert "Done in" in page.text_content("#status")
    assert f"{expected['species'][0]['score']:.3f}" in page.text_content("#species-list")
    # the spectrogram is painted, not blank
    colours = page.evaluate(
        """() => { const c = document.getElementById('spectrogram');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   const seen = new Set(); for (let i = 0; i < d.length; i += 4 * 97) seen.add(d[i] + ',' + d[i+1]);
                   return seen.size; }"""
    )
    assert colours > 20


def test_a_long_recording_gets_a_timeline(page, helpers):
    page.click("#controls summary")  # open the options
    page.fill("#opt-hop", "5")
    page.set_input_files("#file-input", str(helpers.audio_file("birdnet_soundscape_48k_30s.flac")))
    page.wait_for_function("document.querySelectorAll('#timeline .window').length === 5")
    starts = page.eval_on_selector_all("#timeline .window", "ws => ws.map(w => Number(w.dataset.start))")
    assert starts == [0, 5, 10, 15, 20]
    assert "5 window(s)" in page.text_content("#facts")


def test_a_bad_recording_shows_the_servers_reason(page, helpers):
    page.set_input_files("#file-input", str(helpers.audio_file("oss_silence_10s_44k1.mp3")))
    page.wait_for_selector("#status.error")
    assert "422" in page.text_content("#status") and "silent" in page.text_content("#status")
    assert page.is_hidden("#results")


def test_recording_from_the_microphone(page):
    page.click("#record-button")
    page.wait_for_function("document.getElementById('record-button').classList.contains('recording')")
    page.wait_for_timeout(1500)
    page.click("#record-button")
    page.wait_for_selector("#species-list .species-card")
    assert "recording-" in page.text_content("#recording-title")
    facts = page.text_content("#facts")
    assert "1 channel(s)" in facts and "WAV" in facts


def test_the_evaluation_shows_once_its_report_is_written(page, evaluation_report):
    page.wait_for_function(
        "document.getElementById('evaluation-status').textContent.includes('still running')"
    )
    evaluation_report.write_text("| method | mAP |\n|---|---:|\n| distilled | 61.3 |\n")
    page.wait_for_function(  # the page asks again every 10 s
        "document.getElementById('evaluation-report').textContent.includes('| distilled | 61.3 |')"
    )
    assert page.text_content("#evaluation-status") == ""
