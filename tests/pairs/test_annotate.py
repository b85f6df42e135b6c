"""``toon-pairs annotate``: the server's answers (called directly and over a real socket), the
merged, atomic landmarks file, and the round trip: points saved by the annotator are accepted
by ``align --landmarks`` and give the crop the FFHQ recipe predicts (tests/pairs/
annotate_fixture.py works it out by hand)."""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pairs.annotate import (
    Annotator,
    default_landmarks_path,
    handle,
    make_server,
    open_target,
)
from pairs.cli import main
from tests.conftest import run_fresh_python
from tests.pairs.annotate_fixture import POINTS, dot_centres, expected_dots, make_inputs

S = 128
LOCAL = {"host": "127.0.0.1:8765"}
JSON = {**LOCAL, "content-type": "application/json"}


@pytest.fixture
def report(tmp_path: Path) -> Path:
    """An align report whose need_landmarks lists drawn.png and nested/blank.png."""
    folder = make_inputs(tmp_path / "in")
    assert (
        main(["align", str(folder), str(tmp_path / "game.zip"), "--size", str(S), "--quiet"]) == 1
    )
    rep = tmp_path / "game.report.json"
    assert json.loads(rep.read_text())["summary"]["need_landmarks"] == [
        "drawn.png",
        "nested/blank.png",
    ]
    return rep


def body(index: int, points: object) -> bytes:
    return json.dumps({"index": index, "points": points}).encode()


def png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_targets_from_a_report_or_a_folder(report, tmp_path):
    t = open_target(report)
    assert t.files == ["drawn.png", "nested/blank.png"] and t.root == tmp_path / "in"
    assert t.align.size == S and t.landmarks == tmp_path / "game.landmarks.json"
    assert open_target(report, size=64).align.size == 64

    f = open_target(tmp_path / "in")
    assert f.files == ["drawn.png", "nested/blank.png"] and f.align.size == 256
    assert f.landmarks == tmp_path / "in.landmarks.json"
    assert default_landmarks_path(tmp_path / "x.json") == tmp_path / "x.landmarks.json"


@pytest.mark.parametrize(
    "setup, says",
    [
        (lambda p: p / "missing", "not found"),
        (lambda p: (p / "x.json").write_text("[1]") and p / "x.json", "not an align report"),
        (lambda p: (p / "e").mkdir() or p / "e", "no images found"),
    ],
)
def test_bad_targets_are_one_line_errors(tmp_path, capsys, setup, says):
    target = setup(tmp_path)
    assert main(["annotate", str(target), "--port", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("toon-pairs: error: ") and says in err[0]


def test_a_report_with_nothing_to_do_and_a_broken_landmarks_file_are_refused(report, capsys):
    rep = json.loads(report.read_text())
    lm = report.with_name("game.landmarks.json")
    lm.write_text('{"drawn.png": [[1, 2]]}')
    assert main(["annotate", str(report)]) == 1
    assert "4 or 68 finite" in capsys.readouterr().err
    rep["summary"]["need_landmarks"] = []
    report.write_text(json.dumps(rep))
    assert main(["annotate", str(report)]) == 1
    assert "need_landmarks is empty" in capsys.readouterr().err


def test_page_state_and_images(report):
    app = Annotator(open_target(report))
    page = handle(app, "GET", "/", LOCAL)
    assert page.status == 200 and page.content_type.startswith("text/html")
    assert b"static/annotate.js" in page.body
    js = handle(app, "GET", "/static/annotate.js", LOCAL)
    assert js.status == 200 and b"api/preview" in js.body
    assert handle(app, "GET", "/static/../annotate.py", LOCAL).status == 404

    state = json.loads(handle(app, "GET", "/api/state", LOCAL).body)
    assert [i["file"] for i in state["images"]] == ["drawn.png", "nested/blank.png"]
    assert not any(i["saved"] for i in state["images"])
    assert state["order"] == ["eye_left", "eye_right", "mouth_left", "mouth_right"]
    assert state["size"] == S

    img = handle(app, "GET", "/api/image/0", LOCAL)
    assert img.status == 200 and img.content_type == "image/png"
    src = np.asarray(Image.open(report.parent / "in" / "drawn.png"))
    assert np.array_equal(png(img.body), src)
    missing = handle(app, "GET", "/api/image/7", LOCAL)
    assert missing.status == 404 and "no image 7" in json.loads(missing.body)["error"]


def test_requests_the_server_refuses(report):
    app = Annotator(open_target(report))
    for host in ("evil.example:8765", "", "192.168.1.2:8765"):
        assert handle(app, "GET", "/api/state", {"host": host}).status == 403
    assert handle(app, "GET", "/api/state", {"host": "localhost:9"}).status == 200
    assert handle(app, "POST", "/api/save", LOCAL, body(0, POINTS)).status == 415  # no JSON type
    assert handle(app, "PUT", "/api/save", JSON, body(0, POINTS)).status == 405
    assert handle(app, "GET", "/nope", LOCAL).status == 404
    for bad, says in [
        (b"not json", "send {"),
        (body(0, POINTS[:3]), "four finite [x, y] pairs, got shape [3, 2]"),
        (body(0, [[1, 2], [3, "x"], [5, 6], [7, 8]]), "four"),
        (json.dumps({"index": "0", "points": POINTS}).encode(), "index must be an integer"),
        (body(0, [[-5000, -5000], [-4900, -5000], [-4980, -4900], [-4920, -4900]]), "outside"),
    ]:
        ans = handle(app, "POST", "/api/save", JSON, bad)
        assert ans.status == 422, (bad, ans.body)
        assert says in json.loads(ans.body)["error"]
    assert handle(app, "POST", "/api/save", JSON, body(5, POINTS)).status == 404
    assert not app.target.landmarks.exists()  # nothing refused was written


def test_preview_save_merge_and_the_round_trip_through_align(report, tmp_path):
    lm = tmp_path / "game.landmarks.json"
    other = {"eye_left": [1, 2], "eye_right": [9, 2], "mouth_left": [2, 9], "mouth_right": [8, 9]}
    # Earlier entries: one for an image that is gone, one naming drawn.png by its bare name.
    lm.write_text(json.dumps({"gone.png": other, "drawn.png": other}))
    app = Annotator(open_target(report))
    assert json.loads(handle(app, "GET", "/api/state", LOCAL).body)["images"][0]["saved"]

    preview = handle(app, "POST", "/api/preview", JSON, body(0, POINTS))
    assert preview.status == 200 and preview.content_type == "image/png"
    crop = png(preview.body)
    assert crop.shape == (S, S, 3)
    want = expected_dots(S)
    got = dot_centres(crop)
    for name in ("red", "blue"):
        assert np.allclose(got[name], want[name], atol=1.0), (name, got, want)

    clicked = [[150.004, 130.0], *POINTS[1:]]  # saved rounded to 2 decimals
    ans = handle(app, "POST", "/api/save", JSON, body(0, clicked))
    assert ans.status == 200, ans.body
    saved = json.loads(lm.read_text())
    assert list(saved) == ["gone.png", "drawn.png"] and saved["gone.png"] == other
    assert saved["drawn.png"] == dict(zip(app.state()["order"], POINTS, strict=True))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    state = json.loads(handle(app, "GET", "/api/state", LOCAL).body)
    assert state["images"][0]["points"] == POINTS and not state["images"][1]["saved"]

    # align reads the file as written: drawn.png is aligned from the hand points.
    out = tmp_path / "game.zip"
    args = ["align", str(tmp_path / "in"), str(out), "--size", str(S), "--quiet"]
    assert main([*args, "--landmarks", str(lm)]) == 0
    rep = json.loads(report.read_text())
    by = {f["file"]: f for f in rep["files"]}
    assert by["drawn.png"]["status"] == "ok" and by["drawn.png"]["faces"][0]["source"] == "manual"
    assert rep["summary"]["need_landmarks"] == ["nested/blank.png"]
    assert rep["summary"]["landmarks_unmatched"] == ["gone.png"]
    with zipfile.ZipFile(out) as zf:
        aligned = np.asarray(Image.open(zf.open(by["drawn.png"]["outputs"][0])))
    assert np.array_equal(aligned, crop)  # the preview is the crop align makes


def test_the_server_over_a_socket(report):
    server = make_server(Annotator(open_target(report)), 0)
    port = server.server_address[1]
    assert server.server_address[0] == "127.0.0.1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(url + "/api/state", timeout=30) as r:
            assert len(json.load(r)["images"]) == 2
        req = urllib.request.Request(
            url + "/api/save",
            data=body(0, POINTS),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            assert json.load(r)["file"] == "drawn.png"
        big = urllib.request.Request(
            url + "/api/save", data=b"x" * 70000, headers={"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(big, timeout=30)
        assert e.value.code == 413
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(Exception) as e:  # the port is taken while a server holds it
        other = make_server(Annotator(open_target(report)), 0)
        try:
            make_server(Annotator(open_target(report)), other.server_address[1])
        finally:
            other.server_close()
    assert "choose another --port" in str(e.value)


def test_annotate_is_torch_free():
    code = "import sys, pairs.annotate, pairs.cli\nprint('torch' in sys.modules)"
    assert run_fresh_python(code) == "False"
