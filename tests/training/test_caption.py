"""training.caption with a tiny random-weight BLIP model (tests/helpers/blip.py, seed 0), never downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from bot.engine.captioner import Captioner
from tests.helpers.blip import WORDS, save_tiny_blip
from training import data_cli
from training.caption import caption_records
from training.manifest import Record, read_manifest, write_manifest


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory) -> Path:
    """A BLIP captioning model a few kilobytes big, saved as a model folder would be downloaded."""
    return save_tiny_blip(tmp_path_factory.mktemp("blip"))


@pytest.fixture(scope="module")
def expected_caption(tiny_blip) -> str:
    """What the tiny model says of an image (the same for every image: its weights are random)."""
    [caption] = Captioner.load(tiny_blip, "cpu", 8).caption([Image.new("RGB", (40, 40), "red")])
    return caption


def make_dataset(root: Path) -> Path:
    """root/<category>/Image_k_n.png and a manifest.json with one caption written, two empty."""
    for k, (category, colour) in enumerate((("Vietnam food", "red"), ("Vietnam ao dai", "white"))):
        (root / category).mkdir(parents=True)
        for n in range(2 - k):
            Image.new("RGB", (48 + 8 * n, 40), colour).save(root / category / f"Image_{k}_{n}.png")
    records = [Record("Vietnam food/Image_0_0.png", "", {"category": "Vietnam food"}, path=root / "Vietnam food/Image_0_0.png"),
               Record("Vietnam food/Image_0_1.png", "pho in a bowl", {"category": "Vietnam food"},
                      path=root / "Vietnam food/Image_0_1.png"),
               Record("Vietnam ao dai/Image_1_0.png", "", {"source": "http://x.test/1.png"},
                      path=root / "Vietnam ao dai/Image_1_0.png")]
    write_manifest(records, root / "manifest.json")
    return root / "manifest.json"


def test_tiny_model_captions_are_words_and_deterministic(tiny_blip, expected_caption):
    assert expected_caption and set(expected_caption.split()) <= set(WORDS)
    captioner = Captioner.load(tiny_blip, "cpu", 8)  # a second load: same weights, same text
    images = [Image.new("RGB", (40, 40), "red"), Image.new("RGB", (64, 32), "blue"),
              Image.linear_gradient("L").convert("RGB")]
    assert captioner.caption(images) == [expected_caption] * 3  # batched as alone
    assert len(Captioner.load(tiny_blip, "cpu", 2).caption(images[:1])[0].split()) <= 2


def test_fills_empty_captions_only(tmp_path, tiny_blip, expected_caption, capsys):
    manifest = make_dataset(tmp_path / "data")
    code = data_cli.main(["caption", str(manifest), "--model", str(tiny_blip), "--device", "cpu",
                          "--max-new-tokens", "8", "--template", "{category}, {caption}", "--batch-size", "1"])
    assert code == 0
    records = read_manifest(manifest)
    assert [r.caption for r in records] == [f"Vietnam food, {expected_caption}", "pho in a bowl",
                                            f"Vietnam ao dai, {expected_caption}"]
    # Other columns and the order stay as they were.
    assert [r.link for r in records] == ["Vietnam food/Image_0_0.png", "Vietnam food/Image_0_1.png",
                                         "Vietnam ao dai/Image_1_0.png"]
    assert records[2].extra == {"source": "http://x.test/1.png"}
    captured = capsys.readouterr()
    assert "2 captioned, 1 kept, 0 unreadable" in captured.out
    assert "captioned 2/2" in captured.err


def test_overwrite_to_another_file(tmp_path, tiny_blip, expected_caption):
    manifest = make_dataset(tmp_path / "data")
    out = tmp_path / "elsewhere" / "captions.csv"
    code = data_cli.main(["caption", str(manifest), "--model", str(tiny_blip), "--device", "cpu",
                          "--max-new-tokens", "8", "--overwrite", "-o", str(out)])
    assert code == 0
    records = read_manifest(out)
    assert [r.caption for r in records] == [expected_caption] * 3
    assert all(r.path.is_file() for r in records)  # links rewritten for the new folder
    assert read_manifest(manifest)[0].caption == ""  # the input manifest is untouched


def test_folder_mode_adds_new_images_on_a_rerun(tmp_path, tiny_blip, expected_caption):
    root = tmp_path / "photos"
    (root / "boats").mkdir(parents=True)
    Image.new("RGB", (40, 40), "blue").save(root / "boats" / "one.jpg")
    Image.new("RGB", (40, 40), "green").save(root / "boats" / "two.png")
    (root / "boats" / "two.txt").write_text("a green boat\n", encoding="utf-8")  # a sidecar caption
    argv = ["caption", "--folder", str(root), "--model", str(tiny_blip), "--device", "cpu", "--max-new-tokens", "8",
            "--template", "{file}: {caption}"]
    assert data_cli.main(argv) == 0
    records = read_manifest(root / "manifest.json")
    assert [(r.link, r.caption) for r in records] == [("boats/one.jpg", f"one: {expected_caption}"),
                                                      ("boats/two.png", "a green boat")]

    records[0].caption = "a blue boat"  # edited by hand
    write_manifest(records, root / "manifest.json")
    Image.new("RGB", (40, 40), "yellow").save(root / "boats" / "three.png")
    assert data_cli.main(argv) == 0
    assert [(r.link, r.caption) for r in read_manifest(root / "manifest.json")] == [
        ("boats/one.jpg", "a blue boat"), ("boats/two.png", "a green boat"),
        ("boats/three.png", f"three: {expected_caption}")]


def test_unreadable_image_is_reported_and_the_rest_captioned(tmp_path, tiny_blip, expected_caption, capsys):
    manifest = make_dataset(tmp_path / "data")
    (tmp_path / "data" / "Vietnam food" / "Image_0_0.png").write_bytes(b"not a png")
    code = data_cli.main(["caption", str(manifest), "--model", str(tiny_blip), "--device", "cpu",
                          "--max-new-tokens", "8"])
    assert code == 1
    assert [r.caption for r in read_manifest(manifest)] == ["", "pho in a bowl", expected_caption]
    assert "1 captioned, 1 kept, 1 unreadable" in capsys.readouterr().out


def test_missing_model_says_how_to_get_one(tmp_path, capsys):
    manifest = make_dataset(tmp_path / "data")
    before = manifest.read_bytes()
    code = data_cli.main(["caption", str(manifest), "--model", str(tmp_path / "no-such-model")])
    assert code == 2
    err = capsys.readouterr().err
    assert "no captioning model in" in err and "no-such-model" in err
    assert "huggingface-cli download Salesforce/blip-image-captioning-base" in err and "--model" in err
    assert manifest.read_bytes() == before


@pytest.mark.parametrize("extra, message", [
    (["--template", "{place}"], "allowed fields: {caption}, {category}, {file}"),
    (["--template", "{category}"], "has no {caption}"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["-o", "out.xlsx"], "must end in .json, .jsonl, .csv, .txt"),
    (["--device", "tpu9"], "unknown device 'tpu9'"),
])
def test_bad_input(tmp_path, tiny_blip, capsys, extra, message):
    manifest = make_dataset(tmp_path / "data")
    assert data_cli.main(["caption", str(manifest), "--model", str(tiny_blip), *extra]) == 2
    assert message in capsys.readouterr().err


def test_needs_exactly_one_source(tmp_path, tiny_blip, capsys):
    manifest = make_dataset(tmp_path / "data")
    assert data_cli.main(["caption", "--model", str(tiny_blip)]) == 2
    assert data_cli.main(["caption", str(manifest), "--folder", str(tmp_path), "--model", str(tiny_blip)]) == 2
    assert capsys.readouterr().err.count("give either a MANIFEST or --folder DIR") == 2
    assert data_cli.main(["caption", str(tmp_path / "none.json"), "--model", str(tiny_blip)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_batches_and_progress(tmp_path):
    class Recording:
        def __init__(self):
            self.batches = []

        def caption(self, images):
            self.batches.append([image.size for image in images])
            return [f"{image.width} wide" for image in images]

    records = []
    for n in range(5):
        path = tmp_path / f"{n}.png"
        Image.new("RGB", (10 + n, 10)).save(path)
        records.append(Record(path.name, "", path=path))
    records.append(Record("https://x.test/a.png", ""))  # a URL: not a file to caption
    progress = []
    captioner = Recording()
    stats = caption_records(records, captioner, batch_size=2, after_batch=lambda done, total: progress.append((done, total)))
    assert [len(batch) for batch in captioner.batches] == [2, 2, 1]
    assert progress == [(2, 5), (4, 5), (5, 5)]
    assert [r.caption for r in records] == ["10 wide", "11 wide", "12 wide", "13 wide", "14 wide", ""]
    assert (stats.captioned, stats.kept, stats.unreadable, stats.remote) == (5, 0, 0, 1)
