"""The `imagebot` command, end to end.

A few runs go through the real console script in a subprocess (what a user types); the rest call
`bot.cli.main()` in-process, because every subprocess that generates pays the torch/diffusers
import again. Bad input must exit 2 with one line on stderr and no traceback, a machine failure 1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from bot.cli import main
from bot.outputs import read_png_parameters
from tests.helpers.models import SMALL_DIT_TOML, add_pipeline_variant
from tests.helpers.ports import free_port

IMAGEBOT = Path(sys.executable).with_name("imagebot")
REPO = Path(__file__).resolve().parents[1]
DEMO_DEFAULTS = "64x64, 3 steps, cfg 7, dpm++"
DEAD_PORT = free_port()
NO_SERVER = f"no server answered at http://127.0.0.1:{DEAD_PORT}; loading the model here"


def write_config(folder: Path, models: Path, extra: str = "") -> Path:
    """config.toml on `models`; its [web] port is one nothing listens on, so `imagine` finds no
    server there and loads the model itself (tests/test_cli_remote.py goes through a server)."""
    path = folder / "config.toml"
    # One torch thread, set by the engine itself: a run in this process and one in a fresh process
    # then do the same arithmetic, whatever thread counts earlier tests left behind.
    path.write_text(f"[storage]\nmodels_dir = '{models}'\n\n[web]\nport = {DEAD_PORT}\n\n"
                    f"[engine]\nthreads = 1\n\n[limits]\nmin_side = 32\n{extra}", encoding="utf-8")
    return path


def cli_env() -> dict[str, str]:
    """The environment of the real command: this checkout's code first (the console script may
    belong to an install of another one), no config named, no hub."""
    env = {k: v for k, v in os.environ.items() if k != "IMAGEBOT_CONFIG"}
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def run_cli(args: list[str], cwd: Path, module: bool = False) -> subprocess.CompletedProcess:
    """The real command in a subprocess: the installed console script, or `python -m bot.cli`."""
    command = [sys.executable, "-m", "bot.cli"] if module or not IMAGEBOT.exists() else [str(IMAGEBOT)]
    return subprocess.run(command + args, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=300)


def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    """`bot.cli.main()` in this process; argparse errors exit with SystemExit."""
    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *expected: str) -> None:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("imagebot: "), err
    for text in expected:
        assert text in lines[0], lines[0]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture
def work(tmp_path, models_dir, monkeypatch) -> SimpleNamespace:
    """A working folder holding config.toml (models: the fixture store with 'demo'); it is the cwd."""
    folder = tmp_path / "work"
    folder.mkdir()
    write_config(folder, models_dir)
    monkeypatch.chdir(folder)
    monkeypatch.delenv("IMAGEBOT_CONFIG", raising=False)
    # main() sets these for the ML libraries with setdefault; keep them from leaking into other tests.
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "error")
    monkeypatch.setenv("DIFFUSERS_VERBOSITY", "error")
    return SimpleNamespace(cwd=folder, models=models_dir)


def test_main_module_runs_the_cli():
    source = (Path(__file__).resolve().parents[1] / "bot" / "cli.py").read_text(encoding="utf-8")
    assert 'if __name__ == "__main__":' in source


# --- imagine: images and their parameters --------------------------------------------------


def test_imagine_prints_the_png_paths_and_embeds_the_parameters(work, capsys):
    out = work.cwd / "out"
    result = run_cli(["imagine", "a red fox --seed 7 --n 2", "-o", str(out)], work.cwd)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [NO_SERVER]  # which path it took, and nothing else

    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout  # two images and a grid, nothing else
    paths = [Path(line) for line in lines]
    assert all(p.parent == out and p.is_file() for p in paths)
    stem = paths[0].name[: -len("-0.png")]
    assert "-7-" in stem
    assert [p.name for p in paths] == [f"{stem}-0.png", f"{stem}-1.png", f"{stem}-grid.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*(p.name for p in paths), f"{stem}.json"])

    for path, seed in zip(paths[:2], (7, 8)):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (64, 64)
            image.verify()
        params = read_png_parameters(path)
        assert (params.prompt, params.seed, params.steps, params.model) == ("a red fox", seed, 3, "demo")
        assert (params.width, params.height, params.sampler, params.guidance) == (64, 64, "dpm++", 7.0)
        assert params.negative_prompt == "" and params.model_hash
        with Image.open(path) as image:
            a1111 = image.text["parameters"]  # the AUTOMATIC1111 infotext other tools read
        assert a1111.startswith("a red fox\n")
        for text in (f"Seed: {seed}", "Steps: 3", "Size: 64x64", "Model: demo", "CFG scale: 7"):
            assert text in a1111, a1111
    with Image.open(paths[2]) as grid:
        assert grid.format == "PNG" and grid.size[0] >= 128
    assert read_png_parameters(paths[2]).seed == 7
    manifest = json.loads((out / f"{stem}.json").read_text(encoding="utf-8"))
    assert [image["parameters"]["seed"] for image in manifest["images"]] == [7, 8]

    # The same command again (here in-process) gives the same pixels.
    again = work.cwd / "again"
    code, stdout, err = run_main(["imagine", "a red fox --seed 7 --n 2", "-o", str(again)], capsys)
    assert code == 0, err
    second = [Path(line) for line in stdout.splitlines()]
    assert len(second) == 3
    for first, other in zip(paths, second):
        assert np.array_equal(pixels(first), pixels(other)), (first, other)
    assert read_png_parameters(second[1]).seed == 8


def test_explicit_flags_reach_the_png_metadata(work, capsys):
    out = work.cwd / "out"
    code, stdout, err = run_main(["imagine", "a lighthouse", "--seed", "5", "--steps", "2", "--size", "64x48",
                                  "--negative", "blurry", "--scheduler", "euler", "--cfg", "5.5",
                                  "-o", str(out)], capsys)
    assert code == 0, err
    [line] = stdout.splitlines()  # one image: no grid
    path = Path(line)
    with Image.open(path) as image:
        assert image.size == (64, 48)
        a1111 = image.text["parameters"]
    params = read_png_parameters(path)
    assert params.prompt == "a lighthouse"
    assert params.negative_prompt == "blurry"
    assert (params.seed, params.steps, params.width, params.height) == (5, 2, 64, 48)
    assert params.sampler == "euler" and params.guidance == 5.5 and params.model == "demo"
    assert "Negative prompt: blurry" in a1111
    for text in ("Seed: 5", "Steps: 2", "Size: 64x48", "Sampler: Euler", "CFG scale: 5.5"):
        assert text in a1111, a1111


def test_a_flux_model_writes_what_forge_writes_and_refuses_a_negative_prompt(work, capsys, tiny_dit_dir):
    add_pipeline_variant(work.models, "flux", tiny_dit_dir("flux1-dev"), SMALL_DIT_TOML)
    code, stdout, err = run_main(["imagine", "a red fox --seed 3", "--model", "flux", "-o", str(work.cwd / "out")],
                                 capsys)
    assert code == 0, err
    [line] = stdout.splitlines()
    with Image.open(line) as image:
        assert image.size == (64, 64)
        a1111 = image.text["parameters"]
    # FLUX.1 dev's guidance is distilled into the model: Forge writes it apart from the CFG scale.
    assert "Sampler: Euler, CFG scale: 1, Distilled CFG Scale: 3.5, Seed: 3" in a1111, a1111
    params = read_png_parameters(Path(line))
    assert (params.guidance, params.distilled_guidance, params.model) == (1.0, 3.5, "flux")

    code, out, err = run_main(["imagine", "a red fox", "--model", "flux", "--negative", "x"], capsys)
    assert code == 2 and out == ""
    assert_one_line_error(err, "'flux' is a FLUX.1 [dev] model, which has no negative prompt")
    code, out, _ = run_main(["models", "show", "flux"], capsys)
    assert code == 0 and "family:      FLUX.1 [dev]\n" in out


# --- imagine: bad input --------------------------------------------------------------------


BAD_INPUT = {
    # id: (argv after "imagine", exact first line or substrings)
    "steps_500": (["a fox", "--steps", "500"], ["imagebot: steps must be 1-50, got 500."]),
    "inline_steps_500": (["a fox --steps 500"], ["imagebot: steps must be 1-50, got 500."]),
    "unknown_inline_flag": (["a fox --colour red"], ["Unknown option --colour.", "Allowed: --ar"]),
    "size_and_ar": (["a fox", "--size", "64x48", "--ar", "16:9"], ["--ar", "not allowed with", "--size"]),
    "inline_size_and_ar": (["a fox --size 64x48", "--ar", "16:9"], ["Give either --size or --ar, not both."]),
    "unknown_model": (["a fox", "--model", "nothere"], ["There is no model 'nothere'. Available: demo."]),
    "model_path": (["a fox", "--model", "../../etc"], ["'../../etc' is not a model name"]),
    "missing_prompt": ([], ["required", "prompt"]),
    "blank_prompt": (["   "], ["The prompt is empty"]),
    "only_flags": (["--seed 5"], ["The prompt is empty"]),
    "seed_not_a_number": (["a fox", "--seed", "abc"], ["seed must be a whole number, got 'abc'."]),
    "too_many_images": (["a fox --n 9"], ["count must be 1-4, got 9."]),
    "too_small": (["a fox", "--size", "16x16"], ["Width and height must be 32-1024 pixels, got 16x16."]),
    "unknown_scheduler": (["a fox", "--scheduler", "fastest"], ["Unknown scheduler 'fastest'", "euler_a"]),
    "flag_twice": (["a fox --seed 1", "--seed", "2"], ["--seed was given twice"]),
    "unknown_cli_option": (["a fox", "--colour", "red"], ["unrecognized arguments: --colour red"]),
    "refiner_out_of_range": (["a fox", "--refiner", "1"], ["0 (no refiner) up to 0.99"]),
    "refiner_without_one": (["a fox", "--refiner", "0.7"], ["Model 'demo' has no refiner"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_exits_2_with_one_line(work, capsys, case):
    args, expected = BAD_INPUT[case]
    code, out, err = run_main(["imagine", *args], capsys)
    assert code == 2
    assert out == ""
    assert_one_line_error(err, *expected)


def test_a_refiner_or_inpainting_model_asked_to_draw_exits_2_saying_what_it_is(work, capsys, tiny_sdxl_refiner_dir,
                                                                             tiny_inpaint_dir):
    add_pipeline_variant(work.models, "refiner", tiny_sdxl_refiner_dir)
    add_pipeline_variant(work.models, "inpaint", tiny_inpaint_dir)
    code, out, err = run_main(["imagine", "a fox", "--model", "refiner"], capsys)
    assert code == 2 and out == ""
    assert_one_line_error(err, "'refiner' is a refiner", 'refiner = "refiner"')
    code, out, err = run_main(["imagine", "a fox", "--model", "inpaint"], capsys)
    assert code == 2 and out == ""
    assert_one_line_error(err, "'inpaint' is an inpainting model", "demo")
    code, out, _ = run_main(["models", "show", "refiner"], capsys)
    assert code == 0 and "role:        refiner (does not draw from a prompt alone)" in out


def test_models_show_names_the_refiner_and_where_it_takes_over(work, capsys, tiny_sdxl_dir, tiny_sdxl_refiner_dir):
    add_pipeline_variant(work.models, "refiner", tiny_sdxl_refiner_dir)
    add_pipeline_variant(work.models, "demo-refined", tiny_sdxl_dir,
                         'kind = "pipeline"\nrefiner = "refiner"\nrefiner_switch = 0.7\n')
    code, out, _ = run_main(["models", "show", "demo-refined"], capsys)
    assert code == 0 and "refiner:     refiner, switch 0.7" in out and "role:" not in out


def test_missing_init_image_exits_2(work, capsys):
    missing = work.cwd / "nope.png"
    code, out, err = run_main(["imagine", "a fox", "--init-image", str(missing)], capsys)
    assert code == 2 and out == ""
    assert_one_line_error(err, f"The start image {missing} does not exist.")


@pytest.mark.parametrize("args, expected", [
    (["imagine", "a fox", "--steps", "500"], "imagebot: steps must be 1-50, got 500."),
    (["imagine", "a fox", "--size", "64x48", "--ar", "16:9"], "not allowed with argument --size"),
])
def test_bad_input_in_a_real_process(work, args, expected):
    result = run_cli(args, work.cwd)
    assert result.returncode == 2
    assert result.stdout == ""
    assert_one_line_error(result.stderr, expected)


def test_broken_variant_says_why_before_loading(work, capsys):
    (work.models / "broken").mkdir()
    (work.models / "broken" / "variant.toml").write_text('file = "gone.safetensors"\n', encoding="utf-8")
    code, out, err = run_main(["imagine", "a fox", "--model", "broken"], capsys)
    assert code == 2 and out == ""
    assert_one_line_error(err, "Model 'broken' cannot be used right now", "file = 'gone.safetensors' does not exist")


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize("extra, expected", [
    ("min_sidee = 16\n", ["unknown key limits.min_sidee", "allowed:"]),
    ("\n[limit]\nmax_steps = 10\n", ["unknown section [limit]"]),
    ("max_steps = 'ten'\n", ["limits.max_steps must be a whole number"]),
    ("max_steps = \n", ["not valid TOML"]),
])
def test_bad_config_file_exits_2_naming_the_problem(work, capsys, extra, expected):
    write_config(work.cwd, work.models, extra)
    for args in (["imagine", "a fox"], ["models", "list"]):
        code, out, err = run_main(args, capsys)
        assert code == 2 and out == ""
        assert_one_line_error(err, *expected)


def test_config_option_pointing_to_a_missing_file(work, capsys, monkeypatch):
    missing = work.cwd / "nowhere.toml"
    code, out, err = run_main(["--config", str(missing), "imagine", "a fox"], capsys)
    assert code == 2 and out == ""
    assert_one_line_error(err, f"config file {missing} does not exist")

    monkeypatch.setenv("IMAGEBOT_CONFIG", str(missing))
    code, out, err = run_main(["models", "list"], capsys)
    assert code == 2
    assert_one_line_error(err, f"config file {missing} does not exist")


def test_config_option_picks_that_file(work, capsys, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    config = write_config(other, work.models, "max_steps = 2\n")
    code, out, err = run_main(["--config", str(config), "imagine", "a fox", "--steps", "3"], capsys)
    assert code == 2
    assert_one_line_error(err, "steps must be 1-2, got 3.")


def test_empty_model_store_says_where_to_put_a_model(work, capsys, tmp_path):
    empty = tmp_path / "empty-models"
    empty.mkdir()
    write_config(work.cwd, empty)
    code, out, err = run_main(["imagine", "a red fox"], capsys)
    assert code == 2 and out == ""
    assert_one_line_error(err, f"Put a model in {empty}/demo/", "variant.toml", "model_index.json")

    code, out, err = run_main(["models", "list"], capsys)
    assert code == 0 and err == ""
    assert out == f"No models in {empty}. See docs/models.md.\n"


@pytest.mark.parametrize("override", ['scheduler = "bogus"', "width = 100"])
def test_bad_variant_override_in_config_is_a_config_error(work, capsys, override):
    write_config(work.cwd, work.models, f"\n[variants.demo]\n{override}\n")
    code, out, err = run_main(["imagine", "a fox", "-o", str(work.cwd / "out")], capsys)
    assert code == 2, err
    assert_one_line_error(err, "variants.demo", override.split()[0])


# --- a model that will not load ------------------------------------------------------------


def test_corrupt_weights_exit_1_with_one_line(work, tiny_pipeline_dir):
    folder = add_pipeline_variant(work.models, "bad", tiny_pipeline_dir)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"this is not a safetensors file" * 100)
    result = run_cli(["imagine", "a fox --model bad", "-o", str(work.cwd / "out")], work.cwd)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    notice, error = result.stderr.split("\n", 1)
    assert notice == NO_SERVER
    assert_one_line_error(error, "model 'bad' could not be loaded")
    assert not (work.cwd / "out").exists() or not any((work.cwd / "out").iterdir())


# --- models list / show --------------------------------------------------------------------


@pytest.fixture
def busy_store(work) -> SimpleNamespace:
    """demo, a LoRA on it, a broken variant and one disabled in config.toml."""
    style = work.models / "style"
    style.mkdir()
    (style / "pytorch_lora_weights.safetensors").write_bytes(b"weights")  # not loaded by list/show
    (style / "variant.toml").write_text('base = "demo"\nscale = 0.7\ndescription = "ink style"\n', encoding="utf-8")
    broken = work.models / "broken"
    broken.mkdir()
    (broken / "variant.toml").write_text('kind = "checkpoint"\n', encoding="utf-8")
    shutil.copytree(work.models / "demo", work.models / "off")
    write_config(work.cwd, work.models, "\n[variants.off]\nenabled = false\n")
    return work


def test_models_list(busy_store):
    result = run_cli(["models", "list"], busy_store.cwd)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    lines = out.splitlines()
    assert re.fullmatch(r"NAME\s+KIND\s+FAMILY\s+BASE\s+STATUS\s+DEFAULTS", lines[0])
    rows = {
        "broken": r"broken\s+\?\s+-\s+-\s+broken\s+-",
        "demo": r"demo \*\s+pipeline\s+sd1\s+-\s+ready\s+" + re.escape(DEMO_DEFAULTS),
        "off": r"off\s+pipeline\s+sd1\s+-\s+disabled\s+" + re.escape(DEMO_DEFAULTS),
        "style": r"style\s+lora\s+sd1\s+demo\s+ready\s+" + re.escape(DEMO_DEFAULTS),
    }
    assert len(lines) == 1 + len(rows) + 2
    for line, (name, pattern) in zip(lines[1:5], sorted(rows.items())):
        assert re.fullmatch(pattern, line), (name, line)
    # Columns line up under the header.
    status_column = lines[0].index("STATUS")
    assert all(line[status_column:].split()[0] in ("ready", "broken", "disabled") for line in lines[1:5])
    assert lines[5] == "broken: kind must be one of pipeline, single_file, lora, hub, upscaler, got 'checkpoint'"
    assert lines[6] == "* = default model"


def test_models_show(busy_store, capsys):
    code, out, err = run_main(["models", "show", "demo"], capsys)
    assert code == 0 and err == ""
    assert out.splitlines() == [
        "name:        demo (default)",
        "status:      ready",
        "kind:        pipeline",
        "family:      Stable Diffusion 1.x",
        f"folder:      {busy_store.models / 'demo'}",
        f"defaults:    {DEMO_DEFAULTS}",
    ]

    code, out, err = run_main(["models", "show", "style"], capsys)
    assert code == 0
    assert "name:        style\n" in out and "kind:        lora\n" in out
    assert "description: ink style\n" in out and "base:        demo\n" in out and "scale:       0.7\n" in out
    assert "family:      Stable Diffusion 1.x\n" in out

    code, out, err = run_main(["models", "show", "broken"], capsys)
    assert code == 0
    assert out.splitlines() == ["name:        broken", "status:      broken",
                                "error:       kind must be one of pipeline, single_file, lora, hub, upscaler, got 'checkpoint'"]

    code, out, err = run_main(["models", "show", "off"], capsys)
    assert code == 0 and "status:      disabled\n" in out


def test_models_show_unknown_name_exits_2(busy_store):
    result = run_cli(["models", "show", "nothere"], busy_store.cwd, module=True)  # also: python -m bot.cli
    assert result.returncode == 2
    assert result.stdout == ""
    assert_one_line_error(result.stderr, "There is no model 'nothere'.", "demo")


def test_models_without_subcommand_is_a_usage_error(work, capsys):
    code, out, err = run_main(["models"], capsys)
    assert code == 2
    assert_one_line_error(err, "required")


def test_doctor_says_what_serve_would_run_on(work, capsys, monkeypatch, tiny_pipeline_dir):
    (work.models / "broken").mkdir()
    (work.models / "broken" / "variant.toml").write_text('kind = "pipeline"\n', encoding="utf-8")
    monkeypatch.setenv("DISCORD_TOKEN", "a-token-for-the-check-only")
    monkeypatch.delenv("TELEGRAM_TOKEN", raising=False)
    code, out, err = run_main(["doctor"], capsys)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("torch 2.") and "device: cpu" in out and "number format: float32" in out
    assert "attention: PyTorch SDPA" in out and re.search(r"memory: [\d.]+ GiB free of [\d.]+ GiB", out)
    assert f"models in {work.models}: demo; default 'demo'" in out
    assert "model broken: cannot be used: " in out and "model_index.json" in out
    assert f"web: would listen on http://127.0.0.1:{DEAD_PORT}" in out
    assert "discord: would start (DISCORD_TOKEN set)" in out and "telegram: off (TELEGRAM_TOKEN not set)" in out
    assert "a-token-for-the-check-only" not in out
