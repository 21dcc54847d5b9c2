"""training.manifest: manifest formats, validation with real image files, folders -> manifest, and
the `imagebot data` commands."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import data_cli, manifest
from training.manifest import ManifestError, Record, convert, from_folders, read_manifest, validate, write_manifest

FORMATS = (".json", ".jsonl", ".csv", ".txt")
VIETNAMESE = "Cô gái mặc áo dài trắng đứng bên hồ Hoàn Kiếm, Hà Nội"


def picture(seed: int, size: int = 256) -> Image.Image:
    """A smooth random colour field: distinct seeds give clearly different pictures."""
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((6, 6, 3)) * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)


def save(path: Path, image: Image.Image, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def run_cli(argv, capsys):
    """Run `imagebot data ...` with only this module's commands (crawl/caption are other modules)."""
    parser = data_cli._Parser(prog="imagebot data")
    manifest.add_commands(parser.add_subparsers(dest="data_command", required=True, parser_class=data_cli._Parser))
    args = parser.parse_args(argv)
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def dataset(tmp_path):
    """The reference's layout: a folder per category of Bing-crawled images, plus a JSON manifest."""
    root = tmp_path / "data"
    save(root / "Vietnam ao dai" / "Image_0_1.jpg", picture(1), quality=90)
    save(root / "Vietnam ao dai" / "Image_0_2.jpg", picture(2), quality=90)
    save(root / "Vietnam food" / "Image_6_146.png", picture(3))
    rows = [
        {"link": "Vietnam ao dai/Image_0_1.jpg", "caption": VIETNAMESE, "source": "bing"},
        {"link": "Vietnam ao dai/Image_0_2.jpg", "caption": "a woman in ao dai, smiling"},
        {"link": "Vietnam food/Image_6_146.png", "caption": "phở bò"},
    ]
    path = root / "logs-train.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


# --- formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", FORMATS)
def test_every_format_round_trips_exactly(tmp_path, suffix):
    (tmp_path / "imgs").mkdir()
    records = [
        Record("imgs/a.jpg", VIETNAMESE, path=tmp_path / "imgs" / "a.jpg"),
        Record("imgs/b.jpg", 'she said "xin chào", then left', path=tmp_path / "imgs" / "b.jpg"),
        Record("imgs/c d.png", "Phố cổ | Hội An; đèn lồng", path=tmp_path / "imgs" / "c d.png"),
    ]
    if suffix != ".txt":  # TXT holds neither line breaks nor extra columns
        records[1].caption = 'line one, "quoted"\nline two\r\nline three'
        records[0].extra = {"category": "Vietnam people", "width": 512}
    path = tmp_path / f"m{suffix}"
    write_manifest(records, path)
    again = read_manifest(path)
    assert [(r.link, r.caption, r.path) for r in again] == [(r.link, r.caption, r.path) for r in records]
    if suffix in (".json", ".jsonl"):
        assert again[0].extra == {"category": "Vietnam people", "width": 512}
    if suffix == ".csv":
        assert again[0].extra == {"category": "Vietnam people", "width": "512"}  # CSV cells are text
        assert again[1].extra == {}  # an empty cell: the column is absent for that record
    # Written again, the file is byte for byte the same.
    write_manifest(again, tmp_path / f"again{suffix}")
    assert (tmp_path / f"again{suffix}").read_bytes() == path.read_bytes()
    assert VIETNAMESE.encode() in path.read_bytes()  # readable UTF-8, not \u escapes


def test_convert_chain_through_all_formats_keeps_everything_txt_can_hold(dataset, tmp_path):
    original = read_manifest(dataset)
    current = dataset
    for suffix in (".csv", ".jsonl", ".txt", ".json"):
        target = tmp_path / "out" / f"step{suffix}"
        convert(current, target)
        current = target
    final = read_manifest(current)
    assert [(r.path, r.caption) for r in final] == [(r.path, r.caption) for r in original]
    assert all(r.path.is_file() for r in final)


def test_reference_txt_forms(tmp_path):
    path = tmp_path / "logs-train.txt"
    path.write_text("link\tcaption\n"
                    "a.jpg\tÁo dài, nón lá\n"
                    "b.jpg | chợ nổi Cái Răng\n"
                    "c.jpg, bánh mì, pate\n"
                    "\n", encoding="utf-8")
    records = read_manifest(path)
    assert [(r.link, r.caption, r.line) for r in records] == [
        ("a.jpg", "Áo dài, nón lá", 2), ("b.jpg", "chợ nổi Cái Răng", 3), ("c.jpg", "bánh mì, pate", 4)]
    assert records[0].path == tmp_path / "a.jpg"


def test_csv_and_json_reference_forms(tmp_path):
    reordered = tmp_path / "reordered.csv"
    reordered.write_text('caption,category,link\n"Hạ Long, bay",Vietnam places,x/1.jpg\n', encoding="utf-8")
    [record] = read_manifest(reordered)
    assert (record.link, record.caption, record.extra) == ("x/1.jpg", "Hạ Long, bay", {"category": "Vietnam places"})
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text('{"version": 1, "data": [{"link": "x/1.jpg", "caption": "Huế"}]}', encoding="utf-8")
    assert [(r.link, r.caption) for r in read_manifest(wrapped)] == [("x/1.jpg", "Huế")]
    headerless = tmp_path / "bare.csv"
    headerless.write_text("\ufeffx/1.jpg,a boat, on the river\n", encoding="utf-8")  # BOM, unquoted comma
    [record] = read_manifest(headerless)
    assert (record.link, record.caption) == ("x/1.jpg", "a boat, on the river")


def test_relative_links_resolve_against_the_manifest_folder(tmp_path):
    image = save(tmp_path / "set" / "Vietnam art" / "Image_2_0.jpg", picture(4))
    outside = save(tmp_path / "elsewhere" / "z.png", picture(5))
    src = tmp_path / "set" / "m.json"
    src.write_text(json.dumps([{"link": "Vietnam art/Image_2_0.jpg", "caption": "a"},
                               {"link": str(outside), "caption": "b"},
                               {"link": "https://example.com/p.jpg", "caption": "c"}]), encoding="utf-8")
    records = read_manifest(src)
    assert [r.path for r in records] == [image, outside, None]

    # Written below the images: links stay relative to the new folder; above them: absolute.
    write_manifest(records, tmp_path / "set" / "Vietnam art" / "inner.json")
    write_manifest(records, tmp_path / "other" / "outer.json")
    inner = json.loads((tmp_path / "set" / "Vietnam art" / "inner.json").read_text(encoding="utf-8"))
    outer = json.loads((tmp_path / "other" / "outer.json").read_text(encoding="utf-8"))
    assert [row["link"] for row in inner] == ["Image_2_0.jpg", outside.as_posix(), "https://example.com/p.jpg"]
    assert [row["link"] for row in outer] == [image.as_posix(), outside.as_posix(), "https://example.com/p.jpg"]
    assert [r.path for r in read_manifest(tmp_path / "other" / "outer.json")] == [image, outside, None]
    write_manifest(records, tmp_path / "top.json")
    assert json.loads((tmp_path / "top.json").read_text())[0]["link"] == "set/Vietnam art/Image_2_0.jpg"


def test_windows_backslash_links_are_found(tmp_path):
    image = save(tmp_path / "Vietnam ao dai" / "Image_0_1.jpg", picture(1))
    path = tmp_path / "m.txt"
    path.write_text("Vietnam ao dai\\Image_0_1.jpg\táo dài\n", encoding="utf-8")
    assert read_manifest(path)[0].path == image


def test_bad_manifests_say_what_is_wrong(tmp_path):
    cases = {
        "m.yaml": ("link: a", r"unknown manifest type '\.yaml'; use \.json, \.jsonl, \.csv or \.txt"),
        "broken.json": ('[\n {"link": "a.jpg", "caption": "x"}\n {"link": "b.jpg"}\n]', r"line 3 column 2: malformed JSON"),
        "broken.jsonl": ('{"link": "a.jpg", "caption": "x"}\n{"link": \n', r"line 2 column \d+: malformed JSON"),
        "nocaption.json": ('[{"link": "a.jpg"}]', r"item 1: every entry needs 'link' and 'caption'"),
        "noheader.csv": ("path,text\na.jpg,x\n", r"header naming the link and caption columns"),
        "wide.csv": ("link,caption\na.jpg,a boat, on the river\n", r"line 2: 3 fields, the header has 2; put captions"),
        "multiline.csv": ('link,caption\na.jpg,"two\nlines"\nb.jpg,"x"\nc.jpg,d,e\n', r"line 5: 3 fields"),
        "nosep.txt": ("a.jpg\tok\nb.jpg\n", r"line 2: no caption; write link<TAB>caption"),
        "emptylink.jsonl": ('{"link": " ", "caption": "x"}\n', r"line 1: empty link"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        with pytest.raises(ManifestError, match=message):
            read_manifest(tmp_path / name)
    with pytest.raises(ManifestError, match="no such file"):
        read_manifest(tmp_path / "absent.json")
    with pytest.raises(ManifestError, match="TXT cannot hold"):
        write_manifest([Record("a.jpg", "two\nlines", path=tmp_path / "a.jpg")], tmp_path / "out.txt")
    assert not (tmp_path / "out.txt").exists()


def test_training_pairs_for_train_scratch(dataset, tmp_path):
    from training.manifest import training_pairs

    pairs = training_pairs(dataset)
    assert pairs == [(r.path, r.caption) for r in read_manifest(dataset)]
    assert pairs[0] == (dataset.parent / "Vietnam ao dai" / "Image_0_1.jpg", VIETNAMESE)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(ValueError, match="no images listed"):
        training_pairs(empty)


# --- atomic writes ---------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", FORMATS)
def test_failed_write_leaves_the_old_file(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"m{suffix}"
    write_manifest([Record("a.jpg", "old", path=tmp_path / "a.jpg")], path)
    before = path.read_bytes()
    new = [Record(f"{i}.jpg", "new " * 1000, path=tmp_path / f"{i}.jpg") for i in range(50)]

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(manifest.os, "fsync", disk_full)  # after the data went out, before the rename
    with pytest.raises(OSError, match="No space"):
        write_manifest(new, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp file left behind


def test_write_failing_on_a_record_mid_way_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.json"
    write_manifest([Record("a.jpg", "old", path=tmp_path / "a.jpg")], path)
    before = path.read_bytes()
    records = [Record("a.jpg", "x", path=tmp_path / "a.jpg"),
               Record("b.jpg", "y", {"width": object()}, path=tmp_path / "b.jpg")]  # not JSON
    with pytest.raises(TypeError):
        write_manifest(records, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


# --- validation ------------------------------------------------------------------------------


def test_validation_finds_each_problem_kind(tmp_path):
    root = tmp_path / "set"
    save(root / "Vietnam people" / "good.jpg", picture(10), quality=92)
    save(root / "Vietnam people" / "other.png", picture(11))
    save(root / "Vietnam people" / "tiny.png", picture(12, size=40))
    truncated = save(root / "Vietnam food" / "truncated.jpg", picture(13), quality=95)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    (root / "Vietnam food" / "notanimage.jpg").write_text("<html>403 Forbidden</html>")
    # The same picture downscaled and re-encoded at a low JPEG quality: a near-duplicate.
    save(root / "Vietnam food" / "copy.jpg", picture(10).resize((150, 150), Image.Resampling.LANCZOS), quality=50)
    rows = [
        ("Vietnam people/good.jpg", "áo dài"),          # 1
        ("Vietnam people/other.png", "nón lá"),          # 2
        ("Vietnam people/tiny.png", "small"),            # 3
        ("Vietnam food/truncated.jpg", "phở"),           # 4
        ("Vietnam food/notanimage.jpg", "bún chả"),      # 5
        ("Vietnam food/copy.jpg", "áo dài again"),       # 6
        ("Vietnam food/missing.jpg", "gone"),            # 7
        ("Vietnam people/other.png", "nón lá again"),    # 8
        ("https://example.com/x.jpg", "remote"),         # 9
    ]
    path = root / "m.txt"
    path.write_text("".join(f"{link}\t{caption}\n" for link, caption in rows)
                    + "Vietnam people/good.jpg | \n", encoding="utf-8")  # 10: repeated, and no caption
    report = validate(read_manifest(path))
    found = [(p.where, p.kind) for p in report.problems]
    assert found == [
        ("line 3", "tiny"), ("line 4", "unreadable"), ("line 5", "unreadable"), ("line 6", "duplicate_image"),
        ("line 7", "missing"), ("line 8", "duplicate_link"), ("line 9", "remote"),
        ("line 10", "empty_caption"), ("line 10", "duplicate_link"),
    ]
    by_where = {p.where + p.kind: p for p in report.problems}
    assert "40x40, under 64 px" in by_where["line 3tiny"].message
    assert "near-duplicate of line 1 (Vietnam people/good.jpg" in by_where["line 6duplicate_image"].message
    assert "remove one" in by_where["line 6duplicate_image"].message
    assert by_where["line 7missing"].link == "Vietnam food/missing.jpg"
    assert "fix the link or remove the record" in by_where["line 7missing"].message
    assert "same image as line 2" in by_where["line 8duplicate_link"].message
    assert "download" in by_where["line 9remote"].message
    assert report.bad_indexes == {2, 3, 4, 5, 6, 7, 8, 9}  # lines 1 and 2 are the clean ones

    assert [(c.category, c.images, c.example) for c in report.categories] == [
        ("(none)", 1, "x.jpg"), ("Vietnam food", 4, "truncated.jpg"), ("Vietnam people", 5, "good.jpg")]


def test_thresholds_are_configurable(tmp_path):
    save(tmp_path / "a" / "small.png", picture(1, size=48))
    save(tmp_path / "a" / "big.png", picture(1, size=300))
    records = [Record("a/small.png", "x", path=tmp_path / "a" / "small.png"),
               Record("a/big.png", "y", path=tmp_path / "a" / "big.png", index=1)]
    assert [p.kind for p in validate(records).problems] == ["tiny"]
    assert [p.kind for p in validate(records, min_side=32).problems] == ["duplicate_image"]
    with pytest.raises(ManifestError, match="between 0 and 32"):
        validate(records, dup_distance=40)


def test_distinct_images_are_not_duplicates(tmp_path):
    records = []
    for seed in range(40):
        image = save(tmp_path / "c" / f"{seed}.jpg", picture(100 + seed, size=96), quality=85)
        records.append(Record(f"c/{seed}.jpg", f"picture {seed}", path=image, index=seed))
    # A mirrored picture is a different training image.
    mirrored = save(tmp_path / "c" / "mirror.png", picture(100).transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    records.append(Record("c/mirror.png", "mirrored", path=mirrored, index=40))
    assert validate(records).problems == []


def test_near_duplicates_matches_brute_force():
    rng = np.random.default_rng(0)
    base = [int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2)) for _ in range(60)]
    hashes = base + [h ^ (1 << int(rng.integers(0, 64))) ^ (1 << int(rng.integers(0, 64))) for h in base[:20]]
    for distance in (0, 2, 6, 20):
        expected = []
        for i, h in enumerate(hashes):
            match = next((j for j in range(i) if bin(h ^ hashes[j]).count("1") <= distance), None)
            if match is not None:
                expected.append((i, match))
        assert manifest.near_duplicates(hashes, distance) == expected, distance


# --- folders -> manifest ---------------------------------------------------------------------


def test_from_folders_captions_and_order(tmp_path):
    root = tmp_path / "dataset"
    for name in ("Image_0_10.jpg", "Image_0_2.JPG", "Image_0_1.jpeg"):
        save(root / "Vietnam ao dai" / name, picture(1), format="JPEG")
    save(root / "Vietnam ao dai" / "nested" / "Image_0_3.webp", picture(2))
    save(root / "Vietnam food" / "bun.PNG", picture(3))
    (root / "Vietnam ao dai" / "Image_0_2.txt").write_text("Thiếu nữ áo dài, Huế\n", encoding="utf-8")
    (root / "Vietnam food" / "bun.PNG.txt").write_text("bún bò Huế", encoding="utf-8")
    (root / "Vietnam ao dai" / "Image_0_10.txt").write_text("  \n", encoding="utf-8")  # blank: template
    (root / "Vietnam ao dai" / "notes.md").write_text("not an image")
    save(root / ".cache" / "x.jpg", picture(4))
    save(root / "loose.jpg", picture(5))

    records = from_folders(root)
    assert [(r.link, r.caption, r.category) for r in records] == [
        ("Vietnam ao dai/Image_0_1.jpeg", "a photo of Vietnam ao dai", "Vietnam ao dai"),
        ("Vietnam ao dai/Image_0_2.JPG", "Thiếu nữ áo dài, Huế", "Vietnam ao dai"),
        ("Vietnam ao dai/Image_0_10.jpg", "a photo of Vietnam ao dai", "Vietnam ao dai"),
        ("Vietnam ao dai/nested/Image_0_3.webp", "a photo of Vietnam ao dai", "Vietnam ao dai"),
        ("Vietnam food/bun.PNG", "bún bò Huế", "Vietnam food"),
    ]
    assert [r.link for r in from_folders(root)] == [r.link for r in records]
    assert from_folders(root, template="ảnh về {category}")[0].caption == "ảnh về Vietnam ao dai"
    assert manifest.loose_images(root) == [root / "loose.jpg"]
    with pytest.raises(ManifestError, match=r"may contain \{category\}"):
        from_folders(root, template="a photo of {cat}")


# --- imagebot data ... -----------------------------------------------------------------------


def test_cli_from_folders_stats_convert(tmp_path, capsys):
    root = tmp_path / "dataset"
    save(root / "Vietnam ao dai" / "Image_0_1.jpg", picture(1))
    save(root / "Vietnam ao dai" / "Image_0_2.jpg", picture(2))
    save(root / "Vietnam food" / "Image_6_146.jpg", picture(3))
    out = root / "logs-train.json"

    save(root / "stray.png", picture(4))
    code, stdout, stderr = run_cli(["from-folders", str(root), "-o", str(out), "--template", "ảnh {category}"], capsys)
    assert code == 0 and f"wrote 3 records to {out}" in stdout
    assert "skipped 1 image(s) directly in" in stderr and "stray.png" in stderr
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert rows[0] == {"link": "Vietnam ao dai/Image_0_1.jpg", "caption": "ảnh Vietnam ao dai",
                       "category": "Vietnam ao dai"}

    code, stdout, _ = run_cli(["stats", str(out)], capsys)
    assert code == 0
    lines = stdout.splitlines()
    assert lines[0] == "| Category       | Images | Example file    |"
    assert lines[1] == "|:---------------|-------:|:----------------|"
    assert lines[2:] == ["| Vietnam ao dai |      2 | Image_0_1.jpg   |",
                         "| Vietnam food   |      1 | Image_6_146.jpg |",
                         "| Total          |      3 |                 |"]

    code, stdout, stderr = run_cli(["convert", str(out), str(tmp_path / "logs-train.txt")], capsys)
    assert code == 0 and "dropped columns: category" in stderr
    assert (tmp_path / "logs-train.txt").read_text(encoding="utf-8").splitlines()[0] == \
        "dataset/Vietnam ao dai/Image_0_1.jpg\tảnh Vietnam ao dai"


def test_cli_validate_reports_and_fixes(dataset, tmp_path, capsys):
    code, stdout, _ = run_cli(["validate", str(dataset)], capsys)
    assert code == 0 and "3 records: no problems" in stdout and "Vietnam food" in stdout

    rows = json.loads(dataset.read_text(encoding="utf-8"))
    rows += [{"link": "Vietnam food/gone.jpg", "caption": "x"}, {"link": "Vietnam ao dai/Image_0_2.jpg", "caption": ""}]
    dataset.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    clean = tmp_path / "clean.csv"
    code, stdout, _ = run_cli(["validate", str(dataset), "--fix-out", str(clean)], capsys)
    assert code == 1
    assert f"{dataset} item 4 (Vietnam food/gone.jpg): file not found" in stdout
    assert f"{dataset} item 5 (Vietnam ao dai/Image_0_2.jpg): empty caption" in stdout
    assert "5 records: 3 problem(s) in 2 record(s)" in stdout
    assert f"wrote 3 of 5 records to {clean}" in stdout
    assert [r.caption for r in read_manifest(clean)] == [VIETNAMESE, "a woman in ao dai, smiling", "phở bò"]
    code, _, _ = run_cli(["validate", str(clean)], capsys)
    assert code == 0

    code, stdout, _ = run_cli(["validate", str(dataset), "--json", "--min-side", "300"], capsys)
    report = json.loads(stdout)
    assert code == 1 and report["records"] == 5
    assert [p["kind"] for p in report["problems"]] == ["tiny", "tiny", "tiny", "missing", "empty_caption", "duplicate_link"]
    assert report["categories"][0] == {"category": "Vietnam ao dai", "images": 3, "example": "Image_0_1.jpg"}


def test_cli_bad_input_is_one_line_and_exit_2(dataset, tmp_path, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text('[\n{"link": "a.jpg", "caption": "x"},\n]\n')
    flat = tmp_path / "flat"
    save(flat / "Image_0_1.jpg", picture(1))  # images belong in ROOT/<category>/
    cases = [
        (["convert", str(dataset), str(tmp_path / "out.xlsx")], "use .json, .jsonl, .csv or .txt"),
        (["validate", str(tmp_path / "absent.csv")], "absent.csv: no such file"),
        (["stats", str(broken)], "broken.json line 3 column 1: malformed JSON"),
        (["validate", str(dataset), "--dup-distance", "64"], "between 0 and 32"),
        (["from-folders", str(tmp_path / "nothing"), "-o", str(tmp_path / "m.json")], "no such folder"),
        (["from-folders", str(flat), "-o", str(tmp_path / "m.json")], "no images in category folders (expected ROOT/<category>/<image> with .jpg, .jpeg, .png, .webp); 1 image(s) directly in"),
    ]
    for argv, message in cases:
        code, stdout, stderr = run_cli(argv, capsys)
        assert code == 2, argv
        assert stderr.startswith(f"imagebot data {argv[0]}: ") and message in stderr, stderr
        assert stderr.count("\n") == 1 and stdout == ""
    assert not (tmp_path / "out.xlsx").exists()


def test_through_the_imagebot_command(dataset, tmp_path, capsys):
    """`imagebot data ...` reaches these commands through bot.cli and training.data_cli."""
    from bot import cli

    assert cli.main(["data", "stats", str(dataset)]) == 0
    assert "| Vietnam ao dai |      2 |" in capsys.readouterr().out
    assert data_cli.main(["convert", str(dataset), str(tmp_path / "m.csv")]) == 0
    assert read_manifest(tmp_path / "m.csv")[0].extra == {"source": "bing"}
    assert os.path.exists(tmp_path / "m.csv")
