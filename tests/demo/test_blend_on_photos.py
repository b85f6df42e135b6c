"""With the shipped fine-tuned teacher, the blend chosen on photos changes faces toward their
game-style truth far more than the blend the seed-render search used to choose.

``demo/assets/toon32.safetensors`` is the demo's fine-tune (2000 game faces, ``--freezeg 8
--freeze-mapping --freezed 0``, 20 kimg; the generator alone). Both searches use only the
judges and, for the photo search, photo-style faces of their own stream (inputs only); the truth
measures the result: each chosen teacher as a model through toon-infer's path (encoder code,
then the photo plus the teacher's change: what delta pairs teach the student).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parents[2] / "demo" / "assets"

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _search(tmp: Path, nets, game: Path, name: str, extra: list[str]) -> list[str]:
    """Run blend-search; return the recommended ``toon-teacher blend`` arguments."""
    from teacher.cli import main as teacher_main

    argv = ["blend-search", "--base", str(ASSETS / "base32.safetensors"), "--toon"]
    argv += [str(ASSETS / "toon32.safetensors"), "--data", str(game), "--style-net"]
    argv += [str(nets.style), "--identity-net", str(nets.identity), "--identity-threshold"]
    argv += [str(nets.identity_threshold), "--trunc", "0.7", "--device", "cpu"]
    assert teacher_main([*argv, *extra, "--out", str(tmp / name)]) == 0
    rec = json.loads((tmp / name / "report.json").read_text())["recommendation"]
    assert rec is not None, name
    words = rec["blend_command"].split()[1:]
    words[words.index("--out") + 1] = str(tmp / f"{name}.safetensors")
    return words


@pytest.mark.slow
def test_the_blend_chosen_on_photos_closes_more_of_the_gap_than_the_old_choice(tmp_path):
    from demo.diagnose import onnx_model
    from demo.finetune_check import teacher_models
    from demo.judges import export_feature_nets, load_judges
    from demo.outcome import measure, oracle_asset, prepare
    from demo.run import SEARCH_PHOTOS_SEED
    from demo.synthetic import write_dataset
    from teacher.cli import main as teacher_main
    from teacher.encoder import load_encoder
    from teacher.io import load_generator

    for name in ("toon32", "encoder32", "judges32", "base32"):
        if not (ASSETS / f"{name}.safetensors").exists():
            pytest.fail(f"demo/assets/{name}.safetensors is missing (demo/README.md)")
    judges = load_judges(ASSETS / "judges32.safetensors")
    nets = export_feature_nets(judges, tmp_path / "judges")
    game = write_dataset(tmp_path / "game", 300, "game", seed=2000, size=32)
    (game / "params.json").unlink()
    photos = write_dataset(tmp_path / "photos", 200, "photo", seed=SEARCH_PHOTOS_SEED, size=32)
    (photos / "params.json").unlink()
    old = _search(tmp_path, nets, game, "seeds", ["--seeds", "0-63"])
    new = _search(
        tmp_path, nets, game, "photos",
        ["--photos", str(photos), "--encoder", str(ASSETS / "encoder32.safetensors"),
         "--smooth", "0,0.5,1"],
    )  # fmt: skip
    assert "--smooth" not in old and "--smooth" in new  # the photo search picks a smooth blend
    base = load_generator(ASSETS / "base32.safetensors").eval()
    E = load_encoder(ASSETS / "encoder32.safetensors").eval()
    models = {"oracle": onnx_model(oracle_asset(32))}
    for name, argv in (("old", old), ("new", new)):
        assert teacher_main(argv) == 0
        blend = load_generator(argv[argv.index("--out") + 1]).eval()
        models[name] = teacher_models(blend, base, E)["delta"]
    rows = measure(models, prepare(24, 32), judges)
    # Measured with toon-infer's default paste (the model's change) and the shipped oracle:
    # old 0.937 of doing nothing (gap 0.14, 20/24), new 0.814 (0.42, 21/24). (With the former
    # replacing paste and the former oracle: old 1.019, gap -0.06; new 0.876, 0.37.)
    assert rows["old"]["gap_closed"] < 0.2, rows["old"]
    assert rows["new"]["gap_closed"] > 0.35, rows["new"]
    assert rows["new"]["gap_closed"] - rows["old"]["gap_closed"] > 0.2, (rows["old"], rows["new"])
    assert rows["new"]["better_than_nothing"] >= 19, rows["new"]
