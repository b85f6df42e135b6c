"""``toon-teacher blend-search`` (``teacher.blend_search``): every level in both directions, KID
against a hand computation, the recommendation rule, one-line errors and the written outputs.

Parents are two tiny 16 px generators with different random weights (levels 0, 4, 8, 16). The
style and identity nets are small fixed conv nets scripted with ``torch.jit.script`` here; the
game set is a folder of PNGs rendered by the fine-tuned parent from other seeds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from teacher.blend_search import (
    DIRECTIONS,
    LevelScore,
    SearchConfig,
    dataset_features,
    direction_blends,
    recommend,
    render_uint8,
    same_parent,
    search,
    search_levels,
    seed_ws,
    torchscript_features,
)
from teacher.cli import build_parser, main
from teacher.io import save_network
from tests.conftest import randomize_, tiny_generator

# direction -> level -> which parent every block bK of a 16 px generator comes from (by hand).
EXPECTED = {
    "structure-from-base": {
        0: {4: "toon", 8: "toon", 16: "toon"},
        4: {4: "base", 8: "toon", 16: "toon"},
        8: {4: "base", 8: "base", 16: "toon"},
        16: {4: "base", 8: "base", 16: "base"},
    },
    "structure-from-toon": {
        0: {4: "base", 8: "base", 16: "base"},
        4: {4: "toon", 8: "base", 16: "base"},
        8: {4: "toon", 8: "toon", 16: "base"},
        16: {4: "toon", 8: "toon", 16: "toon"},
    },
}


pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


def parents():
    base = randomize_(tiny_generator(), seed=1)
    toon = randomize_(tiny_generator(), seed=2)
    with torch.no_grad():
        base.mapping.w_avg.normal_()
        toon.mapping.w_avg.normal_()
    return base, toon


def feature_net(out_features: int, seed: int) -> torch.jit.ScriptModule:
    """A fixed small conv net: [N, 3, H, W] -> [N, out_features]."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, out_features, 3, padding=1),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    ).eval()
    return torch.jit.script(net)


def game_folder(path, toon, seeds):
    path.mkdir()
    images = render_uint8(toon, seed_ws(toon, seeds, 0.7), 8)
    for i, img in enumerate(images.permute(0, 2, 3, 1).numpy()):
        Image.fromarray(img).save(path / f"game{i:03d}.png")
    return path


def hand_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, written as loops (Binkowski et al. 2018)."""
    m, d = len(x), x.shape[1]

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def states_equal(a, b, prefix="synthesis."):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if k.startswith(prefix))


def test_levels_and_block_sources():
    assert search_levels(16) == [0, 4, 8, 16]
    assert search_levels(256) == [0, 4, 8, 16, 32, 64, 128, 256]
    base, toon = parents()
    nets = {"base": base, "toon": toon}
    for direction, by_level in EXPECTED.items():
        for level, sources in by_level.items():
            for mapping_from in ("base", "toon"):
                G = direction_blends(base, toon, direction, level, 0.0, mapping_from)
                state = G.state_dict()
                for name, tensor in state.items():
                    if name.startswith("mapping."):
                        want = nets[mapping_from].state_dict()[name]
                    else:
                        block = int(name.split(".")[1][1:])
                        want = nets[sources[block]].state_dict()[name]
                    assert torch.equal(tensor, want), (direction, level, name)
    # The endpoints equal the parents exactly, and coincide across directions.
    for direction, (low, high) in DIRECTIONS.items():
        assert states_equal(direction_blends(base, toon, direction, 0, 0.0, "base"), nets[high])
        assert states_equal(direction_blends(base, toon, direction, 16, 0.0, "base"), nets[low])
    assert same_parent(0, 16, 0.0) == "high" and same_parent(16, 16, 0.0) == "low"
    assert same_parent(8, 16, 0.0) is None
    assert same_parent(16, 16, 0.5) is None  # smooth: R = resolution still mixes in high
    assert same_parent(0, 16, 0.5) == "high"


def test_search_scores_every_level_with_kid_and_identity_by_hand(tmp_path):
    base, toon = parents()
    seeds = tuple(range(6))
    style = torchscript_features(feature_net(8, seed=10), torch.device("cpu"), "style")
    identity = torchscript_features(feature_net(4, seed=11), torch.device("cpu"), "identity")
    data = game_folder(tmp_path / "game", toon, range(100, 106))  # 6 images: KID = one MMD^2
    game = dataset_features(data, style, 16, 3, 4)
    cfg = SearchConfig(seeds=seeds, identity_threshold=0.05, max_changed=0.5, grid_seeds=2)
    rows, grids = search(base, toon, game, style, identity, cfg)

    assert [(r.direction, r.level) for r in rows] == [
        (d, level) for d in DIRECTIONS for level in (0, 4, 8, 16)
    ]
    by = {(r.direction, r.level): r for r in rows}
    # Endpoints coincide and are flagged.
    assert by["structure-from-base", 0].same_as == by["structure-from-toon", 16].same_as == "toon"
    assert by["structure-from-base", 16].same_as == by["structure-from-toon", 0].same_as == "base"
    assert by["structure-from-base", 0].kid == by["structure-from-toon", 16].kid
    assert by["structure-from-base", 16].identity_mean == 0.0
    assert by["structure-from-base", 16].style_norm == pytest.approx(1.0)
    assert by["structure-from-base", 0].style_norm == pytest.approx(0.0)

    # One inner level recomputed independently: renders, features, KID, identity distances.
    ws = base.mapping(
        torch.from_numpy(
            np.stack([np.random.RandomState(s).randn(32) for s in seeds]).astype(np.float32)
        ),
        None,
        truncation_psi=0.7,
    )
    G = direction_blends(base, toon, "structure-from-toon", 8, 0.0, "base")
    with torch.no_grad():
        blend = G.synthesis(ws, noise_mode="const", force_fp32=True)
        ref = base.synthesis(ws, noise_mode="const", force_fp32=True)
    q = lambda x: (x * 127.5 + 128).clamp(0, 255).to(torch.uint8)  # noqa: E731
    net_s, net_i = feature_net(8, seed=10), feature_net(4, seed=11)
    with torch.no_grad():
        fs = net_s(q(blend).float() / 127.5 - 1).double().numpy()
        dist = (net_i(q(blend).float() / 127.5 - 1) - net_i(q(ref).float() / 127.5 - 1)).norm(dim=1)
    row = by["structure-from-toon", 8]
    assert row.kid == pytest.approx(hand_mmd2(fs, game), rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(row.distances, dist.double().numpy(), rtol=1e-5, atol=1e-6)
    assert row.share_changed == pytest.approx(float((dist > 0.05).double().mean()))
    # Grids: header + 2 seeds high, one column per level.
    assert grids["structure-from-base"].shape == (16 + 2 * 16, 4 * 16, 3)


def row(direction, level, kid, share, ident=0.1, same=None, max_changed=0.2):
    return LevelScore(
        direction=direction,
        level=level,
        width=0.0,
        low=DIRECTIONS[direction][0],
        high=DIRECTIONS[direction][1],
        same_as=same,
        kid=kid,
        style_norm=None,
        identity_mean=ident,
        identity_norm=None,
        share_changed=share,
        keeps_identity=share <= max_changed,
    )


def test_recommendation_rule_on_a_synthetic_table():
    b, t = "structure-from-base", "structure-from-toon"
    rows = [
        row(b, 0, 0.010, 0.9, same="toon"),  # best style, loses identity
        row(b, 4, 0.020, 0.1),
        row(b, 8, 0.015, 0.3),  # better style than the winner but changes 30% of faces
        row(b, 16, 0.100, 0.0, same="base"),  # the base itself: never recommended
        row(t, 0, 0.100, 0.0, same="base"),
        row(t, 4, 0.020, 0.1, ident=0.05),  # ties b4 on KID, lower identity distance: wins
        row(t, 8, 0.030, 0.2),  # share == max_changed keeps identity
        row(t, 16, 0.010, 0.9, same="toon"),  # duplicate of b0
    ]
    best, alts = recommend(rows, alternatives=3)
    assert (best.direction, best.level) == (t, 4)
    assert [(r.direction, r.level) for r in alts] == [(b, 4), (t, 8)]

    # Nothing keeps identity: no recommendation; the fewest changed faces are shown, the toon
    # endpoint only once and the base never.
    rows = [
        row(b, 0, 0.01, 0.9, same="toon"),
        row(b, 8, 0.02, 0.5),
        row(b, 16, 0.1, 0.0, same="base"),
    ]
    rows += [row(t, 0, 0.1, 0.0, same="base"), row(t, 16, 0.01, 0.9, same="toon")]
    best, alts = recommend(rows, alternatives=5)
    assert best is None
    assert [(r.direction, r.level) for r in alts] == [(b, 8), (b, 0)]


@pytest.fixture
def cli_files(tmp_path):
    base, toon = parents()
    save_network(base, tmp_path / "base.safetensors")
    save_network(toon, tmp_path / "toon.safetensors")
    feature_net(8, seed=10).save(str(tmp_path / "style.pt"))
    feature_net(4, seed=11).save(str(tmp_path / "ident.pt"))
    game_folder(tmp_path / "game", toon, range(100, 110))
    return tmp_path


def cli_args(d, *extra):
    return [
        "blend-search",
        "--base",
        str(d / "base.safetensors"),
        "--toon",
        str(d / "toon.safetensors"),
        "--data",
        str(d / "game"),
        "--seeds",
        "0-7",
        "--device",
        "cpu",
        "--out",
        str(d / "out"),
        *extra,
    ]


def test_cli_writes_report_plot_and_grids(cli_files, capsys):
    d = cli_files
    args = cli_args(
        d,
        "--style-net",
        str(d / "style.pt"),
        "--identity-net",
        str(d / "ident.pt"),
        "--identity-threshold",
        "0.05",
        "--max-changed",
        "1",
        "--json",
    )
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((d / "out" / "report.json").read_text())
    assert printed == report
    assert len(report["rows"]) == 8
    assert report["settings"]["seeds"] == list(range(8))
    # --max-changed 1: every row keeps identity, so the lowest KID that is not the base wins.
    rec = report["recommendation"]
    not_base = [r for r in report["rows"] if r["same_as"] != "base"]
    assert rec["kid"] == min(r["kid"] for r in not_base)
    low, high = ("base", "toon") if rec["direction"] == "structure-from-base" else ("toon", "base")
    assert rec["blend_command"].startswith(
        f"toon-teacher blend --low {d / f'{low}.safetensors'} --high {d / f'{high}.safetensors'} "
        f"--swap-res {rec['level']} --mapping-from {'low' if low == 'base' else 'high'}"
    )
    with Image.open(d / "out" / "plot.png") as im:
        assert im.size == (760, 560)
    for direction in DIRECTIONS:
        with Image.open(d / "out" / f"grid_{direction}.png") as im:
            assert im.size == (4 * 16, 16 + 6 * 16)
    table = (d / "out" / "table.md").read_text()
    assert table.count("| structure-from-") == 8


def test_cli_errors_are_one_line(cli_files, capsys):
    d = cli_files
    ident = ["--identity-net", str(d / "ident.pt"), "--identity-threshold", "0.1"]
    cases = [
        (cli_args(d, "--style-net", str(d / "missing.pt"), *ident), "--style-net"),
        (cli_args(d, *ident), "--inception"),  # no style net at all
        (cli_args(d, "--inception", str(d / "missing.pt"), *ident), "inception-2015-12-05.pt"),
        (
            cli_args(d, "--style-net", str(d / "style.pt"), "--identity-net", str(d / "ident.pt")),
            "--identity-threshold",
        ),
    ]
    missing_data = cli_args(d, "--style-net", str(d / "style.pt"), *ident)
    missing_data[missing_data.index("--data") + 1] = str(d / "nowhere")
    cases.append((missing_data, "--data"))
    for args, needle in cases:
        assert main(args) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err
        assert err.startswith("toon-teacher: error:")
    assert not (d / "out").exists()


def test_blend_help_names_both_directions():
    sub = build_parser()._subparsers._group_actions[0].choices
    text = " ".join(sub["blend"].format_help().split())
    assert "published toonify" in text and "README recipe and the demo" in text
    text = " ".join(sub["blend-search"].format_help().split())
    assert "structure-from-base" in text and "--max-changed" in text and "150 px" in text


def test_dlib_identity_upsamples_small_renders():
    pytest.importorskip("dlib")
    from teacher.blend_search import dlib_features

    try:
        images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
        feats = dlib_features(images)
    except Exception as e:  # face-recognition-models missing: nothing to test here
        pytest.skip(f"dlib models unavailable: {e}")
    assert feats.shape == (2, 128)


def test_photo_mode_scores_delta_images_by_hand_and_widths_add_rows(tmp_path):
    """``--photos --encoder``: a generator is scored on photo + G(w) - base(w) (w: the photo's
    code), the base on the photos themselves; every width of ``widths`` gets its rows, and a
    smooth row's blend command carries ``--smooth``."""
    from teacher.blend_search import blend_command, code_photos
    from teacher.encoder import encoder_for, save_encoder

    base, toon = parents()
    style = torchscript_features(feature_net(8, seed=10), torch.device("cpu"), "style")
    identity = torchscript_features(feature_net(4, seed=11), torch.device("cpu"), "identity")
    data = game_folder(tmp_path / "game", toon, range(100, 106))
    game = dataset_features(data, style, 16, 3, 4)
    torch.manual_seed(3)
    E = encoder_for(base, dict(channel_base=128, channel_max=16, head_channels=4, hidden=32), 500)
    with torch.no_grad():
        E.to_delta.bias.normal_(0, 0.5)
    enc = save_encoder(E, tmp_path / "enc.safetensors", {"file": "base", "sha256": ""})
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    photos = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)  # as many as game images
    for i, p in enumerate(photos):
        Image.fromarray(p).save(folder / f"p{i}.png")
    coded = code_photos(folder, enc, base, 2)
    assert np.array_equal(coded[0].permute(0, 2, 3, 1).numpy(), photos)
    cfg = SearchConfig(identity_threshold=0.05, max_changed=0.5, grid_seeds=2, widths=(0.0, 1.0))
    rows, grids = search(base, toon, game, style, identity, cfg, photos=coded)
    assert [(r.direction, r.width, r.level) for r in rows] == [
        (d, w, level) for d in DIRECTIONS for w in (0.0, 1.0) for level in (0, 4, 8, 16)
    ]
    assert set(grids) == {f"{d}_smooth{w:g}" for d in DIRECTIONS for w in (0, 1)}
    by = {(r.direction, r.width, r.level): r for r in rows}
    assert by["structure-from-base", 0.0, 16].same_as == "base"
    assert by["structure-from-base", 0.0, 16].identity_mean == 0.0

    # A smooth inner row recomputed by hand on the delta images of the photos.
    x = torch.from_numpy(photos).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        ws = E.invert(x, base)
        G = direction_blends(base, toon, "structure-from-toon", 8, 1.0, "base")
        change = G.synthesis(ws, noise_mode="const", force_fp32=True) - base.synthesis(
            ws, noise_mode="const", force_fp32=True
        )
    delta = np.clip(np.floor(photos + change.permute(0, 2, 3, 1).numpy() * 127.5 + 0.5), 0, 255)
    delta = torch.from_numpy(delta.astype(np.uint8)).permute(0, 3, 1, 2)
    raw = torch.from_numpy(photos).permute(0, 3, 1, 2)
    row = by["structure-from-toon", 1.0, 8]
    assert row.kid == pytest.approx(hand_mmd2(style(delta), game), rel=1e-6, abs=1e-9)
    dist = np.linalg.norm(identity(delta) - identity(raw), axis=1)
    np.testing.assert_allclose(row.distances, dist, rtol=1e-5, atol=1e-6)
    # The same row scored on seed renders differs: the photos are what is measured.
    seed_rows, _ = search(base, toon, game, style, identity, cfg)
    other = {(r.direction, r.width, r.level): r for r in seed_rows}["structure-from-toon", 1.0, 8]
    assert abs(other.kid - row.kid) > 1e-6
    assert "--smooth 1 " in blend_command(row, "B", "T", cfg, "o.safetensors")
    assert "--smooth" not in blend_command(by["structure-from-toon", 0.0, 8], "B", "T", cfg, "o")


def test_photo_mode_errors_are_one_line(tmp_path, capsys):
    base, toon = parents()
    save_network(base, tmp_path / "base.safetensors")
    save_network(toon, tmp_path / "toon.safetensors")
    game_folder(tmp_path / "game", toon, range(4))
    net = tmp_path / "net.pt"
    feature_net(4, seed=1).save(str(net))
    common = ["blend-search", "--base", str(tmp_path / "base.safetensors"), "--toon",
              str(tmp_path / "toon.safetensors"), "--data", str(tmp_path / "game"),
              "--style-net", str(net), "--identity-net", str(net), "--identity-threshold", "1",
              "--seeds", "0-3", "--device", "cpu", "--out", str(tmp_path / "out")]  # fmt: skip
    for extra, msg in (
        (["--photos", str(tmp_path / "game")], "needs both --photos DIR"),
        (["--photos", str(tmp_path / "game"), "--encoder", str(tmp_path / "no.safetensors")],
         "no.safetensors: not found"),
        (["--smooth", "0,x"], "--width must be a comma list"),
        (["--smooth", "0,-1"], "--width must be >= 0"),
    ):  # fmt: skip
        assert main(common + extra) != 0
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err  # before any progress line
