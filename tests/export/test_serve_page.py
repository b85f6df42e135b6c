"""The try-it page of toon-serve in headless Chromium: upload a photo, see the result, drop
another, download the result.

Chromium is driven by chromedriver over the W3C WebDriver protocol with a few lines of
``urllib`` (no Python browser package). Needs Debian's ``chromium`` and ``chromium-driver``
(``apt-get install chromium chromium-driver``); skipped with that reason when they are absent,
except where ``TOON_REQUIRE_BROWSER`` is set (CI sets it): there a missing browser fails.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.serve_helpers import SIZE, Server, serve_model, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,900",
]

NO_BROWSER = "headless Chromium not installed (apt-get install chromium chromium-driver)"


@pytest.fixture(scope="module", autouse=True)
def _browser_installed():
    """Skip without Chromium, except where ``TOON_REQUIRE_BROWSER`` is set (CI): there the
    page test must run, so a missing browser fails it."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        if os.environ.get("TOON_REQUIRE_BROWSER"):
            pytest.fail(f"{NO_BROWSER}; TOON_REQUIRE_BROWSER is set, so the page test must run")
        pytest.skip(NO_BROWSER)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriver:
    """A minimal W3C WebDriver client for one Chromium session."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.downloads = workdir / "downloads"
        self.downloads.mkdir(parents=True)
        profile = workdir / "profile"
        profile.mkdir()
        self._log = open(workdir / "chromedriver.log", "wb")  # closed in quit()
        self.proc = subprocess.Popen(
            [CHROMEDRIVER, f"--port={self.port}"], stdout=self._log, stderr=subprocess.STDOUT
        )
        self.base = f"http://127.0.0.1:{self.port}"
        try:
            wait_until(self._started, "chromedriver did not start", interval=0.1)
        except BaseException:
            self.quit()
            raise
        options = {
            "binary": CHROMIUM,
            "args": [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"],
            "prefs": {
                "download.default_directory": str(self.downloads),
                "download.prompt_for_download": False,
            },
        }
        caps = {"browserName": "chrome", "goog:chromeOptions": options}
        try:
            self.session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})
        except Exception:
            self.quit()
            raise
        self.sid = self.session["sessionId"]

    def _started(self) -> bool:
        """Whether chromedriver answers ready (raises when its process has died)."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"chromedriver exited with {self.proc.returncode}")
        try:
            return bool(self._call("GET", "/status")["ready"])
        except (OSError, urllib.error.URLError):
            return False

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read())["value"]
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"WebDriver {method} {path}: {e.read().decode()[:500]}") from None

    def cmd(self, method: str, path: str, body: dict | None = None) -> Any:
        return self._call(method, f"/session/{self.sid}{path}", body)

    def get(self, url: str) -> None:
        self.cmd("POST", "/url", {"url": url})

    def find(self, css: str) -> str:
        element = self.cmd("POST", "/element", {"using": "css selector", "value": css})
        return next(iter(element.values()))

    def js(self, script: str, *args: Any) -> Any:
        return self.cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

    def wait_js(self, script: str, what: str) -> Any:
        """Poll ``script`` until it returns something truthy, and return that."""
        return wait_until(lambda: self.js(script), what, interval=0.1)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.cmd("GET", "/screenshot")))

    def quit(self) -> None:
        if getattr(self, "sid", None):
            try:
                self.cmd("DELETE", "")
            except Exception:  # the browser is gone already
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(serve_model(tmp_path_factory), tmp_path_factory.mktemp("page_server"))
    yield srv
    srv.stop()


@pytest.fixture()
def browser(tmp_path):
    driver = WebDriver(tmp_path)
    yield driver
    driver.screenshot(tmp_path / "last.png")  # kept in pytest's tmp dir for a look
    driver.quit()


STATE = (
    "const r = document.getElementById('result');"
    "return ['done', 'error'].includes(r.dataset.state) &&"
    " [r.dataset.state, r.naturalWidth, r.naturalHeight,"
    "  document.getElementById('status').textContent];"
)


def _photo(folder: Path) -> Path:
    """``skimage.data.astronaut()`` (NASA, public domain) at 256 x 256, as a JPEG."""
    from skimage.data import astronaut

    path = folder / "astronaut.jpg"
    Image.fromarray(astronaut()).resize((256, 256), Image.Resampling.LANCZOS).save(path, quality=92)
    return path


def test_upload_a_photo_and_see_the_result(server, browser, tmp_path):
    photo = _photo(tmp_path)
    browser.get(server.url + "/")
    assert browser.js("return document.title").startswith("toon-distill")
    browser.cmd("POST", f"/element/{browser.find('#file')}/value", {"text": str(photo)})
    state = browser.wait_js(STATE, "the page never showed a result")
    assert state[0] == "done", state
    assert state[1:3] == [256, 256]  # the whole photo comes back, face pasted in
    assert "1 face" in state[3]
    assert browser.js("return document.getElementById('original').naturalWidth") == 256
    link = browser.js(
        "const a = document.getElementById('download'); return [a.hidden, a.download, a.href]"
    )
    assert link[0] is False and link[1] == "astronaut_toon.png" and link[2].startswith("blob:")

    # Download it: the file is the PNG the page shows.
    browser.cmd("POST", f"/element/{browser.find('#download')}/click", {})
    target = browser.downloads / "astronaut_toon.png"
    # Chromium writes to NAME.crdownload and renames it when complete: the name means done.
    wait_until(target.exists, f"no download; found {list(browser.downloads.iterdir())}")
    with Image.open(target) as img:
        assert img.format == "PNG" and img.size == (256, 256)

    # Drop a photo on the drop zone with face crops chosen: the crop strip comes back.
    browser.js("document.querySelector('input[value=crop]').checked = true;")
    browser.js(
        "const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));"
        "const file = new File([bytes], 'dropped.jpg', {type: 'image/jpeg'});"
        "const dt = new DataTransfer(); dt.items.add(file);"
        "document.getElementById('drop').dispatchEvent("
        "  new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));",
        base64.b64encode(photo.read_bytes()).decode(),
    )
    state = browser.wait_js(
        "const r = document.getElementById('result');"
        f"return r.dataset.state === 'done' && r.naturalWidth === {SIZE} ?"
        " [r.naturalWidth, r.naturalHeight] : null;",
        "the dropped photo's crops never showed",
    )
    assert state == [SIZE, SIZE]
    assert browser.js("return document.getElementById('download').download") == "dropped_toon.png"


def test_the_page_shows_server_errors(server, browser, tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (120, 90), (40, 50, 60)).save(blank)
    browser.get(server.url + "/")
    browser.cmd("POST", f"/element/{browser.find('#file')}/value", {"text": str(blank)})
    state = browser.wait_js(STATE, "the page never showed the error")
    assert state[0] == "error" and "no face" in state[3] and "422" in state[3]
