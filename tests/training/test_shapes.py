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
        "a small black triangle on the left on a white background"
    assert shapes.caption(Spec("orange", "square", "purple", None, "middle")) == \
        "an orange square in the middle on a purple background"
    # The first vocabulary's word order and words, and a sloppy article, are still read.
    assert shapes.parse_caption("a red circle on a blue background, in the center") == \
        Spec("red", "circle", "blue", None, "middle")
    assert shapes.parse_caption("a large white square on a orange background, at the top") == \
        Spec("white", "square", "orange", "large", "top")
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
    with pytest.raises(ValueError, match="not a shapes caption"):  # two positions
        shapes.parse_caption("a red circle at the top on a blue background, on the left")
    with pytest.raises(ValueError, match="not a shapes caption"):
        shapes.parse_caption("a red circle somewhere on a blue background")


def test_training_specs_never_show_a_held_out_pair():
    specs = shapes.sample_specs(5000, seed=0, modifier_prob=0.6)
    pairs = {(s.colour, s.background) for s in specs}
    assert pairs.isdisjoint(shapes.HELD_OUT_PAIRS)
    assert len(pairs) == 8 * 7 - len(shapes.HELD_OUT_PAIRS)  # every other pair is there
    # Each held-out pair's colours still appear in training, in both roles.
    for colour, background in shapes.HELD_OUT_PAIRS:
        assert any(s.colour == colour for s in specs) and any(s.background == background for s in specs)
        assert any(s.background == colour for s in specs) and any(s.colour == background for s in specs)


def test_render_size_jitter_and_determinism():
    spec = Spec("green", "square", "purple")
    a = shapes.render(spec, 32, random.Random(1))
    b = shapes.render(spec, 32, random.Random(1))
    c = shapes.render(spec, 32, random.Random(2))
    assert a.size == (32, 32) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert shapes.render(spec, 64, random.Random(1)).size == (64, 64)


def test_random_colour_shapes_for_the_autoencoder():
    images = shapes.render_any_colours(40, seed=4, size=32, modifier_prob=0.6)
    assert len(images) == 40 and all(im.size == (32, 32) for im in images)
    assert np.array_equal(np.asarray(images[3]), np.asarray(shapes.render_any_colours(40, 4, 32, 0.6)[3]))
    corners = [tuple(int(v) for v in np.asarray(im)[0, 0]) for im in images]
    assert len(set(corners)) > 30 and not set(corners) <= set(PALETTE.values())  # any colour, not the palette
    for im in images:
        pixels = np.asarray(im).reshape(-1, 3).astype(int)
        background = pixels[0]
        far = np.abs(pixels - background).sum(axis=1).max()
        assert far >= 100  # a shape stands out from its background


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
    # Sizes and positions too (small shapes are where the kind verdict gets rough), at both sizes.
    specs = shapes.sample_specs(300, seed=5, modifier_prob=1.0)
    for side in (32, 64):
        score = shapes.score([shapes.judge(shapes.render(s, side, rng), s) for s in specs])
        assert score["colours_ok"] >= 0.95 and score["shape_kind_ok"] >= 0.95
        assert score["size_ok"] >= 0.98 and score["position_ok"] >= 0.98
        assert score["n_size_ok"] == score["n_position_ok"] == 300


def test_judge_reads_size_and_position_and_not_what_is_wrong():
    """A shape drawn at another size or place than the prompt says is judged wrong on that alone."""
    rng = random.Random(3)
    asked = Spec("red", "square", "blue", "small", "left")
    for drawn, wrong in [(Spec("red", "square", "blue", "large", "left"), "size_ok"),
                         (Spec("red", "square", "blue", "small", "right"), "position_ok"),
                         (Spec("red", "square", "blue", "small", "top"), "position_ok"),
                         (Spec("red", "square", "blue", None, "left"), "size_ok"),
                         (Spec("red", "square", "blue", "small", "middle"), "position_ok")]:
        verdict = shapes.judge(shapes.render(drawn, 64, rng), asked)
        assert verdict["background_ok"] and verdict["shape_colour_ok"] and verdict["shape_kind_ok"], verdict
        others = {"size_ok", "position_ok"} - {wrong}
        assert not verdict[wrong] and all(verdict[k] for k in others), (drawn, verdict)
    # A large shape pushed to the edge still reads as placed there, not in the middle.
    for position in ("left", "right", "top", "bottom"):
        spec = Spec("white", "circle", "black", "large", position)
        assert shapes.judge(shapes.render(spec, 64, rng), spec)["position_ok"]
    # Unasked attributes are not judged.
    verdict = shapes.judge(shapes.render(Spec("red", "circle", "blue"), 64, rng), Spec("red", "circle", "blue"))
    assert "size_ok" not in verdict and "position_ok" not in verdict and verdict["position"] == "middle"


def test_score_counts_each_attribute_over_the_prompts_that_name_it():
    verdicts = [
        {"background_ok": True, "shape_colour_ok": True, "shape_kind_ok": True, "size_ok": False, "held_out_pair": True},
        {"background_ok": True, "shape_colour_ok": False, "shape_kind_ok": False, "position_ok": True,
         "held_out_pair": False},
        {"background_ok": False, "shape_colour_ok": True, "shape_kind_ok": True, "size_ok": True,
         "position_ok": False, "held_out_pair": True},
    ]
    score = shapes.score(verdicts)
    assert score["background_ok"] == score["shape_colour_ok"] == score["shape_kind_ok"] == 2 / 3
    assert score["colours_ok"] == 1 / 3
    assert (score["size_ok"], score["n_size_ok"]) == (0.5, 2)
    assert (score["position_ok"], score["n_position_ok"]) == (0.5, 2)
    assert (score["held_out_colours_ok"], score["n_held_out_colours_ok"]) == (0.5, 2)
    assert shapes.score([]) == {}


def test_judge_tells_soft_squares_from_circles():
    """A decoder softens corners: a blurred square is still a square, a blurred circle a circle."""
    from PIL import ImageFilter

    rng = random.Random(4)
    for shape in SHAPES:
        for size in (None, "small", "large"):
            spec = Spec("white", shape, "blue", size)
            soft = shapes.render(spec, 64, rng).filter(ImageFilter.GaussianBlur(1.5))
            assert shapes.judge(soft, spec)["shape_kind"] == shape, (spec, shapes.judge(soft, spec))


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
    trained = [p for p in prompts if (p.spec.colour, p.spec.background) not in shapes.HELD_OUT_PAIRS]
    assert len({(p.spec.colour, p.spec.shape) for p in trained}) == 8 * 3
    assert all(p.prompt == shapes.caption(p.spec) for p in prompts)
    assert all(p.seed >= shapes.HELD_OUT_SEED_BASE for p in prompts)
    assert len({p.seed for p in prompts}) == 48
    assert prompts == shapes.held_out_prompts(48, seed=0)
    assert {p.seed for p in shapes.held_out_prompts(48, seed=1)}.isdisjoint({p.seed for p in prompts})
    # Every fourth prompt asks for a held-out colour pair, all of them in turn; most name a size or place.
    held_out = [p for p in prompts if (p.spec.colour, p.spec.background) in shapes.HELD_OUT_PAIRS]
    assert len(held_out) == 12 and {(p.spec.colour, p.spec.background) for p in held_out} == shapes.HELD_OUT_PAIRS
    assert 0.5 < sum(p.spec.size is not None for p in prompts) / 48 < 0.85
    assert 0.7 < sum(p.spec.position is not None for p in prompts) / 48 < 0.95
    plain = shapes.held_out_prompts(10, seed=0, modifiers=False)
    assert all(p.spec.size is None and p.spec.position is None for p in plain)


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
