"""training.evaluate: the side-by-side comparison grid, its labels, the report, shapes accuracy, CLIP scores."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from bot.cli import main as imagebot
from bot.engine.single_file import CLIP_TOKENIZER_DIR
from tests.helpers.models import add_pipeline_variant
from training import evaluate as ev


@pytest.fixture
def two_variants(models_dir, tmp_path) -> Path:
    """The tiny 'demo' plus 'other': the same architecture with different random weights."""
    from tests.helpers.tiny import save_tiny_pipeline

    other = save_tiny_pipeline(tmp_path / "other-src", seed=7)
    add_pipeline_variant(models_dir, "other", other, 'kind = "pipeline"\n[defaults]\nsteps = 2\n')
    return models_dir


def _prompt_file(tmp_path: Path, *prompts: str) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("# a comment line, skipped\n\n" + "\n".join(prompts) + "\n", encoding="utf-8")
    return path


def test_grid_holds_every_image_under_the_right_labels(two_variants, tmp_path):
    prompts = _prompt_file(tmp_path, "a red circle on a blue background", "một chiếc áo dài đỏ")
    out = tmp_path / "eval"
    code = ev.main(["--variants", "demo,other", "--prompts", str(prompts), "--seeds", "3,4",
                    "--models-dir", str(two_variants), "--out", str(out), "--size", "32x32", "--cell", "64"])
    assert code == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    layout = report["grid"]
    assert [(c["variant"], c["seed"]) for c in layout["columns"]] == [("demo", 3), ("demo", 4), ("other", 3),
                                                                        ("other", 4)]
    assert layout["rows"] == ["a red circle on a blue background", "một chiếc áo dài đỏ"]
    assert report["variants"]["demo"]["steps"] == 3 and report["variants"]["other"]["steps"] == 2  # own defaults
    assert len(report["images"]) == 8

    grid = Image.open(out / layout["file"]).convert("RGB")
    cell, left0, top0 = layout["cell"], layout["label_width"], layout["header_height"]
    assert grid.size == (left0 + 4 * cell, top0 + 2 * cell)
    by_place = {(r["variant"], r["seed"], r["prompt"]): r for r in report["images"]}
    for column, entry in enumerate(layout["columns"]):
        for row, prompt in enumerate(layout["rows"]):
            record = by_place[(entry["variant"], entry["seed"], prompt)]
            expected = Image.open(out / record["file"]).convert("RGB").resize((cell, cell), Image.NEAREST)
            box = (left0 + column * cell, top0 + row * cell, left0 + (column + 1) * cell, top0 + (row + 1) * cell)
            assert np.array_equal(np.asarray(grid.crop(box)), np.asarray(expected)), (column, row)

    # The header above each column says which variant and seed it is: drawing the expected
    # labels on a blank header reproduces the grid's header exactly.
    header = Image.new("RGB", (grid.width, top0), "white")
    draw = ImageDraw.Draw(header)
    font = ev._font(max(10, cell // 10))
    line = getattr(font, "size", 11) + 2
    for column, entry in enumerate(layout["columns"]):
        x = left0 + column * cell + 4
        draw.text((x, 4), entry["variant"], fill="black", font=font)
        draw.text((x, 4 + line + 2), f"seed {entry['seed']}", fill=(90, 90, 90), font=font)
    assert np.array_equal(np.asarray(grid.crop((0, 0, grid.width, top0))), np.asarray(header))
    # Row labels are drawn in the label column, next to their row.
    for row in range(2):
        strip = np.asarray(grid.crop((0, top0 + row * cell, left0, top0 + (row + 1) * cell)).convert("L"))
        assert (strip < 128).sum() > 20

    # Different seeds and different weights give different images (the grid compares something).
    files = {(r["variant"], r["seed"], r["row"]): np.asarray(Image.open(out / r["file"])) for r in report["images"]}
    assert not np.array_equal(files[("demo", 3, 0)], files[("demo", 4, 0)])
    assert not np.array_equal(files[("demo", 3, 0)], files[("other", 3, 0)])

    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "| demo | 32x32 | 3 |" in markdown and "| other | 32x32 | 2 |" in markdown
    assert "2. một chiếc áo dài đỏ" in markdown


def test_same_seed_gives_the_same_image_as_imagine(two_variants, tmp_path):
    """The evaluation runs variants exactly as the bot does: the same seed draws the same picture."""
    prompts = _prompt_file(tmp_path, "a blue square on a red background")
    out = tmp_path / "eval"
    assert ev.main(["--variants", "demo", "--prompts", str(prompts), "--seeds", "11", "--models-dir",
                    str(two_variants), "--out", str(out), "--size", "32x32"]) == 0
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\nmodels_dir = "{two_variants}"\nstate_dir = "{tmp_path / "state"}"\n'
                      '[limits]\nmin_side = 32\n[engine]\ndevice = "cpu"\n', encoding="utf-8")
    assert imagebot(["--config", str(config), "imagine", "a blue square on a red background --seed 11 --size 32x32",
                     "-o", str(tmp_path / "imagined")]) == 0
    [imagined] = list((tmp_path / "imagined").glob("*.png"))
    assert np.array_equal(np.asarray(Image.open(imagined).convert("RGB")),
                          np.asarray(Image.open(out / "images" / "demo" / "000-11.png").convert("RGB")))


def test_shapes_mode_judges_held_out_prompts(models_dir, tmp_path):
    out = tmp_path / "eval"
    code = imagebot(["train", "evaluate", "--variants", "demo", "--shapes", "4", "--models-dir", str(models_dir),
                     "--out", str(out), "--size", "32x32"])
    assert code == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    records = report["images"]
    assert len(records) == 4
    from training.shapes import HELD_OUT_SEED_BASE, held_out_prompts

    expected = held_out_prompts(4, seed=1)
    assert [r["prompt"] for r in records] == [p.prompt for p in expected]
    assert [r["seed"] for r in records] == [p.seed for p in expected]
    assert all(r["seed"] > HELD_OUT_SEED_BASE for r in records)  # never a training seed
    assert {"background_ok", "shape_colour_ok", "shape_kind_ok"} <= set(records[0]["judged"])
    # The scores are the share of the per-image verdicts that are right.
    backgrounds = [r["judged"]["background_ok"] for r in records]
    assert report["scores"]["demo"]["background_ok"] == sum(backgrounds) / 4
    # One seed per row: one grid column per variant.
    assert report["grid"]["columns"] == [{"variant": "demo", "seed": None}]
    assert "background" in (out / "report.md").read_text(encoding="utf-8")


def test_shapes_mode_reports_each_attribute_and_what_a_second_variant_changed(two_variants, tmp_path):
    out = tmp_path / "eval"
    assert ev.main(["--variants", "demo,other", "--shapes", "8", "--models-dir", str(two_variants), "--out", str(out),
                    "--size", "32x32"]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    records = report["images"]
    by_row = {(r["variant"], r["row"]): r for r in records}
    # The second variant's shape kind, compared prompt by prompt with the first one's.
    kind = lambda judged: "heart" if judged["heart"] else judged["shape_kind"]  # noqa: E731
    changed = [kind(by_row[("demo", i)]["judged"]) != kind(by_row[("other", i)]["judged"]) for i in range(8)]
    assert report["scores"]["other"]["shape_kind_changed"] == round(sum(changed) / 8, 4)
    assert "shape_kind_changed" not in report["scores"]["demo"]
    # Size and position are scored over the prompts that name them, held-out pairs on their own line.
    demo = report["scores"]["demo"]
    named = [r for r in records if r["variant"] == "demo" and "position_ok" in r["judged"]]
    assert demo["n_position_ok"] == len(named) > 0
    assert demo["position_ok"] == round(sum(r["judged"]["position_ok"] for r in named) / len(named), 4)
    assert demo["n_held_out_colours_ok"] == 2  # prompts 4 and 8
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "| size | position |" in text and "kind changed vs demo" in text
    assert "Held-out colour pairs (demo)" in text


def test_shapes_mode_without_size_and_place_words(models_dir, tmp_path):
    out = tmp_path / "eval"
    assert ev.main(["--variants", "demo", "--shapes", "6", "--modifiers", "false", "--models-dir", str(models_dir),
                    "--out", str(out), "--size", "32x32"]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    from training.shapes import held_out_prompts

    assert [r["prompt"] for r in report["images"]] == [p.prompt for p in held_out_prompts(6, seed=1, modifiers=False)]
    assert not any("size_ok" in r["judged"] or "position_ok" in r["judged"] for r in report["images"])
    assert "n_size_ok" not in report["scores"]["demo"] and "| position |" not in (out / "report.md").read_text()


def test_concept_mode_judges_the_fine_tuned_shape(models_dir, tmp_path):
    out = tmp_path / "eval"
    assert ev.main(["--variants", "demo", "--shapes", "3", "--concept", "zwx heart", "--models-dir", str(models_dir),
                    "--out", str(out), "--size", "32x32"]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [r["prompt"].split()[2:4] for r in report["images"]] == [["zwx", "heart"]] * 3
    from training.concept import is_heart

    verdicts = [is_heart(Image.open(out / r["file"])) for r in report["images"]]
    assert [r["judged"]["concept_ok"] for r in report["images"]] == verdicts
    assert report["scores"]["demo"]["concept_ok"] == sum(verdicts) / 3
    assert "zwx heart" in (out / "report.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("extra, message", [
    (["--concept", "zwx star"], "--concept must be a token and a shape, the shape one of heart"),
    (["--concept", "heart"], "--concept must be a token and a shape"),
])
def test_concept_mode_refuses_what_it_cannot_judge(models_dir, tmp_path, capsys, extra, message):
    assert ev.main(["--variants", "demo", "--shapes", "2", *extra, "--models-dir", str(models_dir),
                    "--out", str(tmp_path / "eval")]) == 2
    assert message in capsys.readouterr().err


def test_concept_judge_tells_hearts_from_the_base_shapes():
    import random

    from training import concept, shapes

    rng = random.Random(0)
    for size in (32, 64):
        hearts = [concept.is_heart(concept.render(c, "heart", b, size, rng)) for c, b in concept.concept_specs(100)]
        assert sum(hearts) >= 95  # a small jittered heart at 32 px can lose its notch
        assert not any(concept.is_heart(shapes.render(s, size, rng))
                       for s in shapes.sample_specs(120, seed=2, modifier_prob=0.6))
        assert not any(concept.is_heart(concept.render(c, "star", b, size, rng)) for c, b in concept.concept_specs(20))


def _tiny_clip(folder: Path) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER_DIR)))
    processor.save_pretrained(folder)
    return folder


def test_clip_scores_with_a_local_model(models_dir, tmp_path):
    clip = _tiny_clip(tmp_path / "clip")
    prompts = _prompt_file(tmp_path, "a red circle", "a green square")
    out = tmp_path / "eval"
    assert ev.main(["--variants", "demo", "--prompts", str(prompts), "--models-dir", str(models_dir),
                    "--out", str(out), "--size", "32x32", "--clip", str(clip)]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    clip_scores = [r["clip_score"] for r in report["images"]]
    assert all(0.0 <= s <= 100.0 for s in clip_scores)
    assert report["scores"]["demo"]["clip_score"] == round(sum(clip_scores) / 2, 2)
    assert "CLIP score" in (out / "report.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("extra, message", [
    (["--variants", "nope", "--prompts", "PROMPTS"], "there is no model 'nope'"),
    (["--variants", "demo", "--prompts", "missing.txt"], "prompt file missing.txt does not exist"),
    (["--variants", "demo", "--prompts", "EMPTY"], "has no prompts"),
    (["--variants", "demo", "--prompts", "PROMPTS", "--seeds", "one"], "--seeds takes a comma-separated list"),
    (["--variants", "demo", "--prompts", "PROMPTS", "--size", "30x30"], "multiples of 8"),
    (["--variants", "demo", "--shapes", "0"], "--shapes must be at least 1"),
    (["--variants", "demo", "--prompts", "PROMPTS", "--clip", "no-such-folder"], "Download a CLIP model"),
])
def test_bad_input_says_what_is_allowed(models_dir, tmp_path, capsys, extra, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prompts = _prompt_file(tmp_path, "a red circle")
    (tmp_path / "empty.txt").write_text("# nothing\n\n", encoding="utf-8")
    argv = [{"PROMPTS": str(prompts), "EMPTY": "empty.txt"}.get(a, a) for a in extra]
    code = ev.main([*argv, "--models-dir", str(models_dir), "--out", str(tmp_path / "out"), "--size", "32x32"]
                   if "--size" not in argv else [*argv, "--models-dir", str(models_dir), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_reference_prompt_files_ship_with_the_project():
    data = Path(__file__).resolve().parents[2] / "data" / "prompts"
    reference = ev.read_prompts(data / "reference-comparison.txt")
    assert len(reference) == 6 and reference[0] == "an Asian woman smiling"
    assert "Ha Long Bay" in reference[2]
    assert len(ev.read_prompts(data / "vietnam-categories.txt")) == 12
