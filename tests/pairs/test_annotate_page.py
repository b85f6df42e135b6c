"""The ``toon-pairs annotate`` page in headless Chromium: real clicks on the drawn face's eyes
and mouth corners, undo, the preview, saving, and ``align`` accepting what the page wrote.

Drives Chromium with the W3C WebDriver client of the toon-serve page test (skipped the same way
when ``chromium`` and ``chromium-driver`` are not installed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from pairs.cli import main
from tests.conftest import REPO
from tests.export.test_serve_page import CHROMEDRIVER, CHROMIUM, WebDriver
from tests.pairs.annotate_fixture import POINTS, dot_centres, expected_dots, make_inputs

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="headless Chromium not installed (apt-get install chromium chromium-driver)",
)

S = 128
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


@pytest.fixture
def served(tmp_path):
    """``toon-pairs annotate REPORT --port 0`` in a subprocess; yields (url, report)."""
    folder = make_inputs(tmp_path / "in")
    assert (
        main(["align", str(folder), str(tmp_path / "game.zip"), "--size", str(S), "--quiet"]) == 1
    )
    report = tmp_path / "game.report.json"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = open(tmp_path / "annotate.log", "w+")  # closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "pairs.cli", "annotate", str(report), "--port", "0"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = None
    deadline = time.monotonic() + 60
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        for word in (tmp_path / "annotate.log").read_text().split():
            if word.startswith("http://127.0.0.1:"):
                url = word
        time.sleep(0.1)
    try:
        assert url, (tmp_path / "annotate.log").read_text()
        yield url, report
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture()
def browser(tmp_path):
    driver = WebDriver(tmp_path / "browser")
    yield driver
    driver.screenshot(tmp_path / "last.png")  # kept in pytest's tmp dir for a look
    driver.quit()


def wait_js(browser: WebDriver, script: str, what: str, timeout: float = 60.0):
    """Poll ``script`` until it returns something truthy and return that; ``timeout`` only
    turns a hang into a failure naming ``what``."""
    deadline = time.monotonic() + timeout
    while not (value := browser.js(script)):
        assert time.monotonic() < deadline, f"{what} (not so after {timeout:g} s)"
        time.sleep(0.05)
    return value


def click_image(browser: WebDriver, x: float, y: float) -> list[float]:
    """Click the canvas where image pixel (x, y) is shown; returns the image position (pixel
    index) of the viewport point actually clicked (WebDriver clicks whole CSS pixels)."""
    rect, width, height = browser.js(
        "const c = document.getElementById('canvas'); const r = c.getBoundingClientRect();"
        "return [[r.left, r.top, r.width, r.height], c.width, c.height];"
    )
    left, top, w, h = rect
    cx = round(left + (x + 0.5) * w / width)
    cy = round(top + (y + 0.5) * h / height)
    browser.cmd(
        "POST",
        "/actions",
        {
            "actions": [
                {
                    "type": "pointer",
                    "id": "mouse",
                    "parameters": {"pointerType": "mouse"},
                    "actions": [
                        {
                            "type": "pointerMove",
                            "duration": 0,
                            "origin": "viewport",
                            "x": cx,
                            "y": cy,
                        },
                        {"type": "pointerDown", "button": 0},
                        {"type": "pointerUp", "button": 0},
                    ],
                }
            ]
        },
    )
    return [(cx - left) * width / w - 0.5, (cy - top) * height / h - 0.5]


def test_click_undo_preview_save_and_align_accepts_it(served, browser, tmp_path):
    url, report = served
    browser.get(url)
    assert browser.js("return document.title").startswith("toon-pairs annotate")
    ready = wait_js(
        browser,
        "const c = document.getElementById('canvas');"
        "return document.body.dataset.ready === '1' && c.dataset.state === 'ready' &&"
        " [c.width, c.height, c.dataset.index];",
        "the page shows the first image",
    )
    assert ready == [400, 300, "0"]
    step = "return document.getElementById('prompt').dataset.step"

    # A wrong first click, then undo (the button), then the four points in order.
    click_image(browser, 40, 40)
    assert wait_js(browser, step + " === '1'", "one point after a click")
    browser.cmd("POST", f"/element/{browser.find('#undo')}/click", {})
    assert wait_js(browser, step + " === '0'", "no point after undo")
    clicked = [click_image(browser, x, y) for x, y in POINTS]
    assert wait_js(browser, step + " === '4'", "four points after four clicks")
    assert not browser.js("return document.getElementById('save').disabled")

    preview = wait_js(
        browser,
        "const p = document.getElementById('preview');"
        "return p.dataset.state === 'done' && [p.naturalWidth, p.naturalHeight];",
        "the preview is shown",
    )
    assert preview == [S, S]

    browser.cmd("POST", f"/element/{browser.find('#save')}/click", {})
    status = wait_js(
        browser,
        "const s = document.getElementById('status');"
        "return s.dataset.state === 'saved' && s.textContent;",
        "the page says it saved",
    )
    assert status and "drawn.png" in status
    # It moves on to the next image that has no landmarks.
    assert wait_js(
        browser,
        "const c = document.getElementById('canvas');"
        "return c.dataset.state === 'ready' && c.dataset.index === '1';",
        "the page moves on to the next image",
    )
    assert browser.js("return document.querySelector('#list li').classList.contains('saved')")

    lm = tmp_path / "game.landmarks.json"
    saved = json.loads(lm.read_text())
    assert list(saved) == ["drawn.png"]
    names = ["eye_left", "eye_right", "mouth_left", "mouth_right"]
    got = [saved["drawn.png"][n] for n in names]
    # The page's pixel convention: what was clicked, to the rounding of the saved numbers.
    assert np.allclose(got, clicked, atol=0.01), (got, clicked)
    # And within a pixel of the points aimed at.
    assert np.allclose(got, POINTS, atol=1.0), (got, POINTS)

    # align reads the file the page wrote; the crop puts the eyes where the recipe says.
    out = tmp_path / "game.zip"
    args = ["align", str(tmp_path / "in"), str(out), "--size", str(S), "--quiet"]
    assert main([*args, "--landmarks", str(lm)]) == 0
    by = {f["file"]: f for f in json.loads(report.read_text())["files"]}
    assert by["drawn.png"]["faces"][0]["source"] == "manual"
    with zipfile.ZipFile(out) as zf:
        crop = np.asarray(Image.open(zf.open(by["drawn.png"]["outputs"][0])))
    dots, want = dot_centres(crop), expected_dots(S)
    for name in ("red", "blue"):
        assert np.allclose(dots[name], want[name], atol=1.0), (name, dots, want)


def test_the_page_shows_a_refused_point_set(served, browser):
    url, _report = served
    browser.get(url)
    assert wait_js(
        browser,
        "return document.getElementById('canvas').dataset.state === 'ready'",
        "the page shows the first image",
    )
    for x, y in [(10, 10), (10.4, 10), (10, 10.4), (10.4, 10.4)]:  # a face under 4 px
        click_image(browser, x, y)
    status = wait_js(
        browser,
        "const s = document.getElementById('status');"
        "return s.dataset.state === 'error' && s.textContent;",
        "the page shows the refusal",
    )
    assert status and "drawn.png" in status and "px" in status
    assert browser.js("return document.getElementById('preview').dataset.state") == "error"
