import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

REPO = Path(__file__).resolve().parents[1]

from bot.models.variant import SCHEDULERS  # noqa: E402
from bot.outputs import (  # noqa: E402
    A1111_SAMPLER_NAMES,
    ImageParameters,
    SavedImages,
    a1111_parameters,
    make_grid,
    parameters_from_a1111,
    parse_a1111_parameters,
    read_png_parameters,
    save_images,
    save_png,
)
from tests.helpers.infotext import FORGED_SETTINGS, INJECTION, read_back, read_with_sd_parsers  # noqa: E402


def params(**changes) -> ImageParameters:
    base = ImageParameters(
        prompt="a cat",
        negative_prompt="",
        steps=20,
        sampler="dpm++_karras",
        guidance=7.0,
        seed=42,
        width=512,
        height=768,
        model="demo",
        model_hash="abc123",
        strength=0.75,
        version="imagebot 0.1.0",
    )
    return dataclasses.replace(base, **changes)


def image(color=(200, 30, 60), size=(64, 64)) -> Image.Image:
    return Image.new("RGB", size, color)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# Cases the A1111 text must survive, not only our JSON chunk.
ROUND_TRIP_CASES = {
    "all fields": params(),
    "only required fields": params(model_hash=None, strength=None, version=None),
    "vietnamese": params(
        prompt="một người phụ nữ mặc áo dài, đứng bên hồ Hoàn Kiếm",
        negative_prompt="chữ, hình mờ",
        model="mô hình",
        sampler="euler_a",
    ),
    "commas and colons": params(
        prompt="(masterpiece:1.2), cat: orange, Steps: 5, Seed: 9, Size: 1x1",
        negative_prompt="text: any, logo",
        model="my,model: v2",
        model_hash="de:ad,be",
        version="imagebot 0.1.0, dev: x",
        guidance=7.5,
        strength=0.3,
    ),
    "quotes and whitespace in values": params(model='"quoted" model', version=" padded "),
    "quotes in prompts": params(
        prompt='a sign that says "hello, world": red letters, (\\"quoted\\":1.1)',
        negative_prompt='"text", logo: none, \'single\'',
    ),
    "empty prompt": params(prompt="", negative_prompt="ugly"),
    "odd numbers": params(guidance=1.25, seed=2**32 - 1, steps=1, strength=1.0, width=8, height=1024),
    "zero seed": params(seed=0, guidance=0.0, strength=0.0),
}


@pytest.mark.parametrize("p", ROUND_TRIP_CASES.values(), ids=ROUND_TRIP_CASES.keys())
def test_png_round_trip_through_imagebot_chunk(tmp_path, p):
    path = save_png(image(), tmp_path / "out.png", p, extra={"job": "abc", "n": 1})

    assert path == tmp_path / "out.png"
    assert read_png_parameters(path) == p
    with Image.open(path) as im:
        chunks = im.text
        assert im.size == (64, 64)
    assert chunks["parameters"] == a1111_parameters(p)
    stored = json.loads(chunks["imagebot"])
    assert stored == {**dataclasses.asdict(p), "extra": {"job": "abc", "n": 1}}


@pytest.mark.parametrize("p", ROUND_TRIP_CASES.values(), ids=ROUND_TRIP_CASES.keys())
def test_png_round_trip_through_a1111_text_only(tmp_path, p):
    original = save_png(image(), tmp_path / "ours.png", p)
    with Image.open(original) as im:
        text = im.text["parameters"]
        info = PngInfo()
        info.add_text("parameters", text)
        im.save(tmp_path / "a1111.png", pnginfo=info)

    with Image.open(tmp_path / "a1111.png") as im:
        assert set(im.text) == {"parameters"}
    assert read_png_parameters(tmp_path / "a1111.png") == p
    assert parameters_from_a1111(text) == p


@pytest.mark.parametrize("p", ROUND_TRIP_CASES.values(), ids=ROUND_TRIP_CASES.keys())
def test_prompts_round_trip_through_sd_parsers(tmp_path, p):
    info = read_with_sd_parsers(save_png(image(), tmp_path / "out.png", p))
    assert (info.full_prompt, info.full_negative_prompt) == (p.prompt, p.negative_prompt)
    [sampler] = info.samplers
    assert (int(sampler.parameters["steps"]), int(sampler.parameters["seed"])) == (p.steps, p.seed)
    assert float(sampler.parameters["cfg_scale"]) == p.guidance


def test_a_multi_line_prompt_is_written_on_one_line(tmp_path):
    p = params(prompt="a castle on a hill,\nat dusk\n\n(volumetric light:1.2)", negative_prompt="blurry,\nwatermark",
               sampler="unipc")
    path = save_png(image(), tmp_path / "out.png", p)
    assert read_png_parameters(path) == p  # our JSON keeps it as it was
    text = a1111_parameters(p)
    assert text.splitlines()[:2] == ["a castle on a hill, at dusk  (volumetric light:1.2)",
                                     "Negative prompt: blurry, watermark"]
    on_one_line = dataclasses.replace(p, prompt="a castle on a hill, at dusk  (volumetric light:1.2)",
                                      negative_prompt="blurry, watermark")
    assert parameters_from_a1111(text) == on_one_line


# A prompt that, written as it is, forges the lines of the text: requests refuse it now
# (tests/core/test_request.py), but a job stored by an older version may hold one.
# Everything str.splitlines splits on.
LINE_BREAKS = ["\n", "\r\n", "\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("negative", ["", "blurry, text"])
def test_a_stored_prompt_cannot_forge_the_negative_prompt_or_the_settings(tmp_path, negative):
    p = params(prompt=INJECTION, negative_prompt=negative)
    path = save_png(image(), tmp_path / "out.png", p)
    # The label reads as text with a small "n" (the CLIP tokenizer lowercases anyway).
    written = "a red circle negative prompt: injected Steps: 1, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 32x32"

    with Image.open(path) as im:
        text = im.text["parameters"]
    assert len(text.splitlines()) == (3 if negative else 2)
    assert parameters_from_a1111(text) == dataclasses.replace(p, prompt=written)
    info = read_with_sd_parsers(path)
    assert (info.full_prompt, info.full_negative_prompt) == (written, negative)
    assert (info.samplers[0].parameters["steps"], info.samplers[0].parameters["seed"]) == ("20", "42")
    assert read_png_parameters(path) == p  # our JSON keeps what the job held


@pytest.mark.parametrize("br", LINE_BREAKS)
def test_no_line_break_in_a_stored_prompt_starts_a_line(tmp_path, br):
    forged = FORGED_SETTINGS
    p = params(prompt=f"a red{br}circle{br}{forged}", negative_prompt=f"blurry{br}{forged}")
    read = read_back(save_png(image(), tmp_path / "out.png", p))
    assert (read.prompt, read.negative_prompt) == (f"a red circle {forged}", f"blurry {forged}")
    assert (read.steps, read.seed, read.width, read.height) == (20, 42, 512, 768)


def test_a1111_text_matches_the_webui_format():
    assert a1111_parameters(params()) == (
        "a cat\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, "
        "Size: 512x768, Model hash: abc123, Model: demo, Denoising strength: 0.75, "
        "Version: imagebot 0.1.0"
    )
    text = a1111_parameters(
        params(
            negative_prompt="blurry",
            sampler="euler_a",
            guidance=7.5,
            model="my,model",
            model_hash=None,
            strength=None,
            version=None,
        )
    )
    assert text == (
        "a cat\n"
        "Negative prompt: blurry\n"
        'Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 512x768, Model: "my,model"'
    )


def test_unknown_sampler_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="'dpm_sde'"):
        save_png(image(), tmp_path / "x.png", params(sampler="dpm_sde"))
    assert list(tmp_path.iterdir()) == []


def test_every_scheduler_a_request_may_name_can_be_written():
    assert set(SCHEDULERS) <= set(A1111_SAMPLER_NAMES)


@pytest.mark.parametrize("short", A1111_SAMPLER_NAMES)
def test_every_sampler_round_trips(short):
    p = params(sampler=short)
    text = a1111_parameters(p)
    name, schedule = A1111_SAMPLER_NAMES[short]
    assert f"Sampler: {name}," in text
    assert ("Schedule type: Karras" in text) == (short == "dpm++_karras")
    assert parameters_from_a1111(text).sampler == short


# Written out the way A1111 v1.9.4 saves a hires-fix txt2img with a LoRA.
A1111_V19 = (
    "masterpiece, best quality, 1girl, solo, <lora:foo:0.8>, (detailed face:1.2), cherry blossoms\n"
    "Negative prompt: (worst quality:1.4), lowres, bad anatomy, EasyNegative\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3052817463, "
    "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, "
    'Hires upscale: 2, Hires steps: 15, Hires upscaler: Latent, Lora hashes: "foo: abc123def456", '
    'TI hashes: "EasyNegative: c74b4e810b03, bad-hands-5: aa7651be154c", Version: v1.9.4'
)

# An older (v1.6) text: multi-line prompts, schedule folded into the sampler
# name, no Schedule type, an escaped quote inside a quoted value.
A1111_V16 = (
    "an astronaut riding a horse on mars,\n"
    "highly detailed, 8k\n"
    "Negative prompt: blurry,\n"
    "watermark, text\n"
    "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 42, Size: 1024x1024, "
    'Model hash: 31e35c80fc, Model: "sdxl \\"base\\", v1.0", Clip skip: 2, '
    "ENSD: 31337, Version: v1.6.0"
)


def test_parse_hand_written_a1111_v19_text():
    raw = parse_a1111_parameters(A1111_V19)

    assert raw["prompt"].startswith("masterpiece, best quality")
    assert raw["prompt"].endswith("cherry blossoms")
    assert raw["negative_prompt"] == "(worst quality:1.4), lowres, bad anatomy, EasyNegative"
    assert raw["Steps"] == "28"
    assert raw["Sampler"] == "DPM++ 2M"
    assert raw["Schedule type"] == "Karras"
    assert raw["CFG scale"] == "6.5"
    assert raw["Size"] == "512x768"
    assert raw["Hires upscale"] == "2"
    assert raw["Hires upscaler"] == "Latent"
    assert raw["Lora hashes"] == "foo: abc123def456"
    assert raw["TI hashes"] == "EasyNegative: c74b4e810b03, bad-hands-5: aa7651be154c"
    assert raw["Version"] == "v1.9.4"

    p = parameters_from_a1111(A1111_V19)
    assert p == ImageParameters(
        prompt=raw["prompt"],
        negative_prompt=raw["negative_prompt"],
        steps=28,
        sampler="dpm++_karras",
        guidance=6.5,
        seed=3052817463,
        width=512,
        height=768,
        model="v1-5-pruned-emaonly",
        model_hash="6ce0161689",
        strength=0.45,
        version="v1.9.4",
        lora_hashes="foo: abc123def456",
    )


def test_parse_hand_written_a1111_v16_text():
    raw = parse_a1111_parameters(A1111_V16)

    assert raw["prompt"] == "an astronaut riding a horse on mars,\nhighly detailed, 8k"
    assert raw["negative_prompt"] == "blurry,\nwatermark, text"
    assert raw["Model"] == 'sdxl "base", v1.0'
    assert raw["Clip skip"] == "2"
    assert "Schedule type" not in raw

    p = parameters_from_a1111(A1111_V16)
    assert (p.sampler, p.width, p.height, p.guidance, p.strength) == ("dpm++_karras", 1024, 1024, 7.0, None)


def test_parse_text_without_negative_prompt_and_with_crlf():
    text = (
        "a cat\r\nsitting on a mat\r\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model hash: abcdef1234, Model: anything"
    )
    raw = parse_a1111_parameters(text)
    assert raw["prompt"] == "a cat\nsitting on a mat"
    assert raw["negative_prompt"] == ""
    assert raw["Model"] == "anything"
    p = parameters_from_a1111(text)
    assert (p.sampler, p.model_hash, p.version) == ("euler_a", "abcdef1234", None)


def test_parse_text_without_settings_line():
    raw = parse_a1111_parameters("just a prompt, style: anime\nNegative prompt: ugly")
    assert raw == {"prompt": "just a prompt, style: anime", "negative_prompt": "ugly"}
    with pytest.raises(ValueError, match="'Steps', 'Sampler', 'CFG scale', 'Seed', 'Size'"):
        parameters_from_a1111("just a prompt, style: anime\nNegative prompt: ugly")
    with pytest.raises(ValueError, match="lack the settings 'Seed'$"):
        parameters_from_a1111("x\nSteps: 20, Sampler: Euler, CFG scale: 7, Size: 64x64")


@pytest.mark.parametrize(
    ("sampler", "schedule", "short"),
    [
        ("DPM++ 2M", "Automatic", "dpm++"),
        ("DPM++ 2M", "Uniform", "dpm++"),
        ("Euler", None, "euler"),
        ("PLMS", None, "pndm"),
    ],
)
def test_schedule_types_that_mean_the_plain_sampler(sampler, schedule, short):
    schedule_part = f"Schedule type: {schedule}, " if schedule else ""
    text = f"x\nSteps: 20, Sampler: {sampler}, {schedule_part}CFG scale: 7, Seed: 1, Size: 64x64"
    assert parameters_from_a1111(text).sampler == short


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ("Sampler: DPM++ SDE", "'DPM++ SDE'"),
        ("Sampler: Euler a, Schedule type: Karras", "Euler a (schedule type Karras)"),
        ("Sampler: DPM++ 2M, Schedule type: Exponential", "Exponential"),
    ],
)
def test_unsupported_a1111_samplers_are_named(settings, named):
    text = f"x\nSteps: 20, {settings}, CFG scale: 7, Seed: 1, Size: 64x64"
    with pytest.raises(ValueError, match="unsupported A1111 sampler") as e:
        parameters_from_a1111(text)
    assert named in str(e.value)


def test_bad_a1111_values_are_reported():
    text = "x\nSteps: many, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64"
    with pytest.raises(ValueError, match="'Steps' has a bad value: 'many'"):
        parameters_from_a1111(text)
    text = "x\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64 by 64"
    with pytest.raises(ValueError, match="'Size'"):
        parameters_from_a1111(text)


def test_a1111_text_without_model_reads_as_empty_model():
    text = "x\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, Model hash: abc"
    p = parameters_from_a1111(text)
    assert (p.model, p.model_hash) == ("", "abc")


def test_failed_replace_leaves_nothing_behind(tmp_path, monkeypatch):
    renames = []

    def boom(src, dst):
        renames.append((Path(src), Path(dst)))
        assert Path(src).stat().st_size > 0  # the PNG was complete before the rename
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    target = tmp_path / "new" / "x.png"
    with pytest.raises(OSError, match="disk on fire"):
        save_png(image(), target, params())

    [(src, dst)] = renames
    assert dst == target
    assert src.parent == target.parent and src.name.endswith(".tmp")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = save_png(image((1, 2, 3)), tmp_path / "x.png", params(seed=1))
    before = target.read_bytes()

    def boom(fd):
        raise OSError("fsync failed")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="fsync failed"):
        save_png(image((9, 9, 9)), target, params(seed=2))

    assert target.read_bytes() == before
    assert leftovers(tmp_path) == []
    assert read_png_parameters(target).seed == 1


def test_save_png_creates_folder_and_overwrites(tmp_path):
    target = tmp_path / "a" / "b" / "x.png"
    save_png(image(), target, params(seed=1))
    save_png(image(), target, params(seed=2))
    assert read_png_parameters(target).seed == 2
    assert [p.name for p in target.parent.iterdir()] == ["x.png"]


def test_read_png_without_parameters(tmp_path):
    image().save(tmp_path / "plain.png")
    with pytest.raises(ValueError, match="no generation parameters"):
        read_png_parameters(tmp_path / "plain.png")


def test_read_png_with_corrupt_imagebot_chunk(tmp_path):
    info = PngInfo()
    info.add_text("imagebot", "{not json")
    info.add_text("parameters", a1111_parameters(params()))
    image().save(tmp_path / "bad.png", pnginfo=info)
    with pytest.raises(ValueError, match="unreadable 'imagebot' chunk"):
        read_png_parameters(tmp_path / "bad.png")


def colors(n):
    return [(40 * i + 10, 255 - 40 * i, 7 * i) for i in range(n)]


def test_grid_geometry():
    grid = make_grid([image(c) for c in colors(5)])

    assert grid.size == (192, 128)  # 3 columns x 2 rows of 64x64
    for i, color in enumerate(colors(5)):
        row, col = divmod(i, 3)
        assert grid.getpixel((col * 64 + 32, row * 64 + 32)) == color
    assert grid.getpixel((2 * 64 + 32, 64 + 32)) == (0, 0, 0)  # sixth tile is empty


def test_grid_gap_columns_and_mixed_sizes():
    grid = make_grid([image(c, (10, 10)) for c in colors(4)], gap=2)
    assert grid.size == (22, 22)
    assert grid.getpixel((10, 5)) == (0, 0, 0)  # gap between the first two tiles
    assert grid.getpixel((12, 5)) == colors(4)[1]

    assert make_grid([image(c) for c in colors(3)], columns=1).size == (64, 192)
    assert make_grid([image(c) for c in colors(2)], columns=5).size == (128, 64)

    grid = make_grid([image(size=(32, 32)), image((0, 0, 255), (100, 50))])
    assert grid.size == (64, 32)
    assert grid.getpixel((48, 16)) == (0, 0, 255)


def test_grid_of_one_is_a_copy():
    original = image()
    grid = make_grid([original], gap=10)
    assert grid is not original
    assert grid.size == original.size
    assert grid.tobytes() == original.tobytes()


def test_grid_rejects_bad_arguments():
    with pytest.raises(ValueError):
        make_grid([])
    with pytest.raises(ValueError):
        make_grid([image(), image()], columns=0)
    with pytest.raises(ValueError):
        make_grid([image(), image()], gap=-1)


def test_save_images_batch(tmp_path):
    batch = [params(seed=s, prompt=f"cat {s}") for s in (11, 12, 13)]
    saved = save_images([image(c) for c in colors(3)], batch, tmp_path / "out", "job-1.a_b")

    out = tmp_path / "out"
    assert isinstance(saved, SavedImages)
    assert saved.images == [out / "job-1.a_b-0.png", out / "job-1.a_b-1.png", out / "job-1.a_b-2.png"]
    assert saved.grid == out / "job-1.a_b-grid.png"
    assert saved.manifest == out / "job-1.a_b.json"
    assert sorted(p.name for p in out.iterdir()) == [
        "job-1.a_b-0.png",
        "job-1.a_b-1.png",
        "job-1.a_b-2.png",
        "job-1.a_b-grid.png",
        "job-1.a_b.json",
    ]
    for path, p in zip(saved.images, batch):
        assert read_png_parameters(path) == p

    with Image.open(saved.grid) as grid:
        assert grid.size == (128, 128)
        grid_json = json.loads(grid.text["imagebot"])
        assert grid.text["parameters"] == a1111_parameters(batch[0])
    assert grid_json["extra"] == {"grid": True, "seeds": [11, 12, 13]}
    assert read_png_parameters(saved.grid) == batch[0]

    manifest = json.loads(saved.manifest.read_text(encoding="utf-8"))
    assert manifest == {
        "stem": "job-1.a_b",
        "images": [
            {"file": f"job-1.a_b-{i}.png", "parameters": dataclasses.asdict(p)} for i, p in enumerate(batch)
        ],
        "grid": "job-1.a_b-grid.png",
    }


def test_save_images_single_image_has_no_grid(tmp_path):
    p = params(prompt="một người phụ nữ mặc áo dài")
    saved = save_images([image()], [p], tmp_path, "solo")

    assert saved.grid is None
    assert sorted(x.name for x in tmp_path.iterdir()) == ["solo-0.png", "solo.json"]
    manifest = json.loads(saved.manifest.read_text(encoding="utf-8"))
    assert manifest["grid"] is None
    assert manifest["images"][0]["parameters"]["prompt"] == "một người phụ nữ mặc áo dài"


@pytest.mark.parametrize(
    "stem",
    ["", ".hidden", "-x", "_x", "../x", "a/b", "a\\b", "x\n", "a b", "ảnh", "a" * 122, None],
)
def test_save_images_rejects_bad_stems(tmp_path, stem):
    with pytest.raises(ValueError, match="stem"):
        save_images([image()], [params()], tmp_path / "out", stem)
    assert not (tmp_path / "out").exists()


def test_save_images_accepts_longest_stem_and_checks_counts(tmp_path):
    assert save_images([image()], [params()], tmp_path, "a" * 121).images[0].name == "a" * 121 + "-0.png"
    with pytest.raises(ValueError, match="2 images but 1"):
        save_images([image(), image()], [params()], tmp_path, "x")
    with pytest.raises(ValueError):
        save_images([], [], tmp_path, "x")


def test_module_does_not_import_torch_or_diffusers():
    code = "import sys, bot.outputs; print(sorted({'torch', 'diffusers'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
