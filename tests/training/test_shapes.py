"""training.shapes: captions, rendering, the pixel judge, held-out prompts, manifests on disk."""

import itertools
import json
import random

import numpy as np
import pytest
from PIL import Image

from training import shapes
from training.shapes import COLOURS, PALETTE, SHAPES, Spec


def test_palette_is_well_separated():
    assert len(COLOURS) == 8 and len(set(PALETTE.values())) == 8
    closest = min(np.linalg.norm(np.subtract(PALETTE[a], PALETTE[b])) for a, b in itertools.combinations(COLOURS, 2))
    assert closest > 90
    for name, rgb in PALETTE.items():
        assert shapes.nearest_colour(rgb) == name


def test_captions_round_trip():
    assert shapes.caption(Spec("red", "circle", "blue")) == "a red circle on a blue background"
    assert shapes.caption(Spec("black", "triangle", "white", "small", "left")) == \
        "a small black triangle on a white background, on the left"
    specs = shapes.sample_specs(500, seed=3, modifier_prob=0.5)
    assert any(s.size for s in specs) and any(s.position for s in specs) and any(not s.size for s in specs)
    for spec in specs:
        assert spec.colour != spec.background
        assert shapes.parse_caption(shapes.caption(spec)) == spec
    assert shapes.sample_specs(20, seed=3) == shapes.sample_specs(20, seed=3)
    assert all(s.size is None and s.position is None for s in shapes.sample_specs(50, seed=1))


def test_bad_specs_and_captions_are_refused():
    with pytest.raises(ValueError, match="differ"):
        Spec("red", "circle", "red")
    with pytest.raises(ValueError):
        Spec("pink", "circle", "red")
    with pytest.raises(ValueError):
        Spec("red", "hexagon", "blue")
    with pytest.raises(ValueError, match="not a shapes caption"):
        shapes.parse_caption("a photo of a cat")


def test_render_size_jitter_and_determinism():
    spec = Spec("green", "square", "purple")
    a = shapes.render(spec, 32, random.Random(1))
    b = shapes.render(spec, 32, random.Random(1))
    c = shapes.render(spec, 32, random.Random(2))
    assert a.size == (32, 32) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert shapes.render(spec, 64, random.Random(1)).size == (64, 64)


def test_judge_reads_rendered_images():
    """Every colour pair and shape, a few jitters each: colours always right, shapes >= 95%."""
    rng = random.Random(0)
    verdicts = []
    for colour, background in itertools.permutations(COLOURS, 2):
        for shape in SHAPES:
            for _ in range(2):
                spec = Spec(colour, shape, background)
                verdicts.append(shapes.judge(shapes.render(spec, 32, rng), spec))
    assert len(verdicts) == 56 * 3 * 2
    score = shapes.score(verdicts)
    assert score["background_ok"] == 1.0 and score["shape_colour_ok"] == 1.0
    assert score["shape_kind_ok"] >= 0.95
    # Sizes and positions too (small shapes are where the kind verdict gets rough).
    specs = shapes.sample_specs(300, seed=5, modifier_prob=1.0)
    score = shapes.score([shapes.judge(shapes.render(s, 32, rng), s) for s in specs])
    assert score["colours_ok"] >= 0.95 and score["shape_kind_ok"] >= 0.95


def test_judge_on_a_blank_image_and_without_spec():
    blank = Image.new("RGB", (32, 32), PALETTE["white"])
    verdict = shapes.judge(blank, Spec("red", "circle", "white"))
    assert verdict["background_ok"] and not verdict["shape_colour_ok"] and verdict["shape_kind"] is None
    plain = shapes.judge(shapes.render(Spec("yellow", "triangle", "black"), 32, random.Random(0)))
    assert (plain["background"], plain["shape_colour"], plain["shape_kind"]) == ("black", "yellow", "triangle")
    assert "background_ok" not in plain


def test_held_out_prompts_are_balanced_and_seeded_apart():
    prompts = shapes.held_out_prompts(48, seed=0)
    assert len(prompts) == 48
    combos = {(p.spec.colour, p.spec.shape) for p in prompts}
    assert len(combos) == 8 * 3
    assert all(p.prompt == shapes.caption(p.spec) for p in prompts)
    assert all(p.seed >= shapes.HELD_OUT_SEED_BASE for p in prompts)
    assert len({p.seed for p in prompts}) == 48
    assert prompts == shapes.held_out_prompts(48, seed=0)
    assert {p.seed for p in shapes.held_out_prompts(48, seed=1)}.isdisjoint({p.seed for p in prompts})


def test_write_dataset_manifest(tmp_path):
    from training.manifest import training_pairs

    manifest = shapes.write_dataset(tmp_path / "shapes", 6, seed=2, modifier_prob=0.5)
    rows = json.loads(manifest.read_text(encoding="utf-8"))
    assert len(rows) == 6 and all(set(row) == {"link", "caption"} for row in rows)
    for row in rows:
        assert not row["link"].startswith("/")
        image = Image.open(manifest.parent / row["link"])
        assert image.size == (32, 32)
        spec = shapes.parse_caption(row["caption"])
        verdict = shapes.judge(image, spec)
        assert verdict["background_ok"] and verdict["shape_colour_ok"]
    pairs = training_pairs(manifest)
    assert [caption for _, caption in pairs] == [row["caption"] for row in rows]
    assert all(path.is_file() for path, _ in pairs)

    # The same data as csv (with and without a header), jsonl and txt.
    links = [(row["link"], row["caption"]) for row in rows]
    folder = manifest.parent
    (folder / "m.csv").write_text("link,caption\n" + "".join(f'{l},"{c}"\n' for l, c in links), encoding="utf-8")
    (folder / "bare.csv").write_text("".join(f'{l},"{c}"\n' for l, c in links), encoding="utf-8")
    (folder / "m.jsonl").write_text("".join(json.dumps({"link": l, "caption": c}) + "\n" for l, c in links))
    (folder / "m.txt").write_text("".join(f"{l}\t{c}\n" for l, c in links), encoding="utf-8")
    for name in ("m.csv", "bare.csv", "m.jsonl", "m.txt"):
        assert training_pairs(folder / name) == pairs, name


def test_manifest_errors(tmp_path):
    from training.manifest import training_pairs

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"path": "x.png"}]))
    with pytest.raises(ValueError, match="link"):
        training_pairs(bad)
    url = tmp_path / "url.json"
    url.write_text(json.dumps([{"link": "https://example.com/a.jpg", "caption": "a"}]))
    with pytest.raises(ValueError, match="download"):
        training_pairs(url)
