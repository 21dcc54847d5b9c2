"""The model store (bot/models/registry.py, bot/models/spec.py): parsing variant folders, validation, hot-loading.

Most tests build fake variant folders (a model_index.json, a unet/config.json, a few bytes
called *.safetensors): the registry only looks at files, never at weights, and never imports
torch. The "real folder" tests use the tiny pipeline, a LoRA from `save_tiny_lora` and a
checkpoint from `export_single_file`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from safetensors.numpy import save_file

from bot.config import config_from_dict
from bot.core.errors import model_refusal
from bot.models import registry as registry_module
from bot.models.errors import ModelUnavailable
from bot.models.registry import Registry, ScanChanges, VariantEntry
from bot.models.variant import VariantDefaults, VariantOverride

REPO_ROOT = Path(__file__).resolve().parents[2]


# --- helpers -------------------------------------------------------------------------------


def write_variant(models: Path, name: str, toml: str | None, files: dict[str, bytes | str] | None = None) -> Path:
    """A variant folder: `files` first, variant.toml last (as a producer would write them)."""
    folder = models / name
    folder.mkdir(parents=True, exist_ok=True)
    for rel, content in (files or {}).items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)
    if toml is not None:
        (folder / "variant.toml").write_text(toml, encoding="utf-8")
    return folder


def fake_pipeline_files(sample_size: int | None = 8) -> dict[str, bytes | str]:
    files: dict[str, bytes | str] = {"model_index.json": json.dumps({"_class_name": "StableDiffusionPipeline"})}
    if sample_size is not None:
        files["unet/config.json"] = json.dumps({"sample_size": sample_size})
    return files


def fake_safetensors(path: Path, keys: list[str]) -> Path:
    """A small but valid .safetensors file whose header holds `keys` (what arch = "auto" peeks at)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The UNet's first convolution says how many channels go in (4; 9 for inpainting).
    save_file({key: np.zeros((1, 4, 1, 1) if key.endswith("input_blocks.0.0.weight") else (2,), dtype=np.float32)
               for key in keys}, str(path))
    return path


def scanned(models: Path, **options) -> Registry:
    registry = Registry(models, **options)
    registry.scan()
    return registry


def only_entry(registry: Registry, name: str) -> VariantEntry:
    entry = registry.entry(name)
    assert entry is not None, f"{name} not in {[e.name for e in registry.entries()]}"
    return entry


@pytest.fixture
def store(tmp_path) -> Path:
    """An empty model store (no torch needed)."""
    models = tmp_path / "models"
    models.mkdir()
    return models


@pytest.fixture
def good_store(store) -> Path:
    """A store with one healthy (fake) pipeline variant called 'good', native 64 px, 3 steps."""
    files = {**fake_pipeline_files(8), "unet/w.safetensors": b"weights"}
    write_variant(store, "good", 'kind = "pipeline"\n[defaults]\nsteps = 3\n', files)
    return store


@pytest.fixture(scope="module")
def tiny_lora_dir(tmp_path_factory, tiny_pipeline_dir) -> Path:
    from tests.helpers.tiny import save_tiny_lora

    return save_tiny_lora(tiny_pipeline_dir, tmp_path_factory.mktemp("lora") / "lora")


# --- no torch ------------------------------------------------------------------------------


def test_importing_and_scanning_the_registry_does_not_import_torch_or_diffusers(good_store):
    code = (
        "import sys\n"
        "from bot.models.registry import Registry\n"
        f"r = Registry({str(good_store)!r}); r.scan(); assert r.entry('good').ready\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'safetensors.torch') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- each kind from a real folder ---------------------------------------------------------


def test_pipeline_variant_from_the_tiny_pipeline(models_dir, tiny_pipeline_dir):
    registry = scanned(models_dir)
    entry = only_entry(registry, "demo")
    assert entry.ready and entry.error is None and not entry.disabled
    spec = registry.get("demo")
    assert spec.kind == "pipeline"
    assert spec.folder == models_dir / "demo"
    # unet/config.json sample_size 8 -> 64 px; steps from [defaults]; the rest built-in.
    assert spec.defaults == VariantDefaults(width=64, height=64, steps=3)
    assert spec.own_defaults == (("steps", 3),)
    assert registry.ready_defaults() == {"demo": spec.defaults}
    assert registry.unavailable() == {}


def test_single_file_variant_from_an_exported_checkpoint(store, tiny_pipeline_dir):
    from training.to_single_file import export_single_file

    folder = store / "sf"
    export_single_file(tiny_pipeline_dir, folder / "model.safetensors")
    shutil.copytree(tiny_pipeline_dir / "unet", folder / "arch" / "unet")
    (folder / "variant.toml").write_text(
        'file = "model.safetensors"\narch = "sd15"\nconfig = "arch"\ndescription = "tiny export"\n', encoding="utf-8")
    spec = scanned(store).get("sf")
    assert spec.kind == "single_file"  # inferred from `file`
    assert spec.file == (folder / "model.safetensors").resolve()
    assert spec.arch == "sd15"
    assert spec.config_dir == (folder / "arch").resolve()
    assert spec.description == "tiny export"
    assert spec.allow_pickle is False
    assert (spec.defaults.width, spec.defaults.height) == (64, 64)  # from the config folder's unet


def test_lora_variant_from_save_tiny_lora(models_dir, tiny_lora_dir):
    folder = models_dir / "style"
    shutil.copytree(tiny_lora_dir, folder)
    weights = sorted(p.name for p in folder.glob("*.safetensors"))
    assert weights  # save_tiny_lora wrote its weights
    (folder / "variant.toml").write_text('base = "demo"\nscale = 0.5\n', encoding="utf-8")
    registry = scanned(models_dir)
    spec = registry.get("style")
    assert spec.kind == "lora"  # inferred from `base`
    assert spec.base == "demo" and spec.scale == 0.5
    assert spec.file is None  # the folder's weights, found by diffusers
    # A LoRA draws like its base.
    assert spec.defaults == registry.get("demo").defaults
    # ...and with an explicit file.
    (folder / "variant.toml").write_text(f'kind = "lora"\nbase = "demo"\nfile = "{weights[0]}"\n', encoding="utf-8")
    registry.scan()
    assert registry.get("style").file == (folder / weights[0]).resolve()
    assert registry.get("style").scale == 1.0


def test_hub_variant(store):
    write_variant(store, "sd21", 'repo = "stabilityai/stable-diffusion-2-1"\nrevision = "main"\n')
    write_variant(store, "other", 'kind = "hub"\nrepo = "some-one/my_model.v2"\n')
    registry = scanned(store)
    spec = registry.get("sd21")
    assert spec.kind == "hub" and spec.repo == "stabilityai/stable-diffusion-2-1" and spec.revision == "main"
    assert spec.defaults.width == spec.defaults.height == 768
    other = registry.get("other")
    assert other.repo == "some-one/my_model.v2" and other.revision is None
    assert other.defaults.width == 512


@pytest.mark.parametrize("toml, files, kind", [
    ("", fake_pipeline_files(), "pipeline"),
    ('description = "x"\n', fake_pipeline_files(), "pipeline"),
    ('file = "m.safetensors"\n', {"m.safetensors": b"x"}, "single_file"),
    ('base = "good"\n', {"w.safetensors": b"x"}, "lora"),
    ('repo = "owner/name"\n', {}, "hub"),
])
def test_kind_is_inferred_when_left_out(good_store, toml, files, kind):
    write_variant(good_store, "v", toml, files)
    entry = only_entry(scanned(good_store), "v")
    assert entry.error is None and entry.ready
    assert entry.spec.kind == kind


# --- defaults and native sizes -------------------------------------------------------------


def test_all_defaults_are_read(good_store):
    write_variant(good_store, "v", (
        'kind = "pipeline"\n[defaults]\nsteps = 30\nguidance = 6\nwidth = 640\nheight = 384\n'
        'scheduler = "euler_a"\nnegative_prompt = "blurry, text"\n'), fake_pipeline_files(8))
    spec = scanned(good_store).get("v")
    assert spec.defaults == VariantDefaults(width=640, height=384, steps=30, guidance=6.0, scheduler="euler_a",
                                            negative_prompt="blurry, text")
    assert isinstance(spec.defaults.guidance, float)


@pytest.mark.parametrize("sample_size, native", [(8, 64), (64, 512), (96, 768), (128, 1024), (None, 512)])
def test_pipeline_native_size_comes_from_unet_config(store, sample_size, native):
    write_variant(store, "v", 'kind = "pipeline"\n', fake_pipeline_files(sample_size))
    defaults = scanned(store).get("v").defaults
    assert (defaults.width, defaults.height) == (native, native)


def test_own_size_wins_over_native_size(store):
    write_variant(store, "v", 'kind = "pipeline"\n[defaults]\nwidth = 96\n', fake_pipeline_files(96))
    defaults = scanned(store).get("v").defaults
    assert (defaults.width, defaults.height) == (96, 768)


@pytest.mark.parametrize("arch, native", [("sd15", 512), ("sd21", 512), ("sd21-v", 768), ("sdxl", 1024)])
def test_single_file_native_size_from_arch(store, arch, native):
    write_variant(store, "v", f'file = "m.safetensors"\narch = "{arch}"\n', {"m.safetensors": b"junk"})
    spec = scanned(store).get("v")
    assert spec.arch == arch
    assert (spec.defaults.width, spec.defaults.height) == (native, native)


@pytest.mark.parametrize("keys, native", [
    (["conditioner.embedders.1.model.ln_final.weight", "model.diffusion_model.input_blocks.0.0.weight"], 1024),
    (["cond_stage_model.model.ln_final.weight", "model.diffusion_model.input_blocks.0.0.weight"], 768),
    (["cond_stage_model.transformer.text_model.final_layer_norm.weight",
      "model.diffusion_model.input_blocks.0.0.weight"], 512),
])
def test_single_file_auto_arch_peeks_at_the_safetensors_header(store, keys, native):
    fake_safetensors(store / "v" / "model.safetensors", keys)
    write_variant(store, "v", 'file = "model.safetensors"\narch = "auto"\n')
    spec = scanned(store).get("v")
    assert spec.arch == "auto"
    assert (spec.defaults.width, spec.defaults.height) == (native, native)


def test_single_file_auto_arch_with_unreadable_header_falls_back_to_512(store):
    write_variant(store, "v", 'file = "model.safetensors"\n', {"model.safetensors": b"\xff" * 64})
    entry = only_entry(scanned(store), "v")
    assert entry.ready and entry.spec.defaults.width == 512


def test_single_file_config_folder_gives_native_size(store):
    files = {"m.safetensors": b"x", "cfg/unet/config.json": json.dumps({"sample_size": 96})}
    write_variant(store, "v", 'file = "m.safetensors"\narch = "sdxl"\nconfig = "cfg"\n', files)
    spec = scanned(store).get("v")
    assert spec.config_dir == (store / "v" / "cfg").resolve()
    assert spec.defaults.width == 768  # the config folder wins over the arch's size


def test_lora_inherits_base_defaults_except_its_own(good_store):
    write_variant(good_store, "base2", (
        'kind = "pipeline"\n[defaults]\nsteps = 12\nguidance = 4.5\nscheduler = "ddim"\nnegative_prompt = "ugly"\n'),
        fake_pipeline_files(96))
    write_variant(good_store, "style", 'base = "base2"\n[defaults]\nsteps = 20\nscheduler = "euler"\n',
                  {"pytorch_lora_weights.safetensors": b"x"})
    registry = scanned(good_store)
    assert registry.get("style").defaults == VariantDefaults(
        width=768, height=768, steps=20, guidance=4.5, scheduler="euler", negative_prompt="ugly")
    assert registry.ready_defaults()["style"] == registry.get("style").defaults


# --- config.toml overrides -----------------------------------------------------------------


def test_config_overrides_win_over_variant_toml(good_store):
    write_variant(good_store, "other", 'kind = "pipeline"\n[defaults]\nsteps = 7\n', fake_pipeline_files(8))
    config = config_from_dict({"variants": {"good": {"steps": 9, "scheduler": "euler", "negative_prompt": "x"},
                                            "absent": {"steps": 1}}})
    registry = scanned(good_store, overrides=config.variants)
    assert registry.get("good").defaults == VariantDefaults(width=64, height=64, steps=9, scheduler="euler",
                                                            negative_prompt="x")
    assert registry.get("other").defaults.steps == 7  # untouched
    assert registry.entry("absent") is None  # an override alone does not make a variant


def test_enabled_false_disables_a_variant(good_store):
    write_variant(good_store, "other", 'kind = "pipeline"\n', fake_pipeline_files(8))
    registry = scanned(good_store, overrides={"other": VariantOverride(enabled=False)})
    entry = only_entry(registry, "other")
    assert entry.disabled and not entry.ready and entry.error is None
    assert set(registry.ready_defaults()) == {"good"}
    assert registry.unavailable() == {}  # disabled is not broken
    with pytest.raises(ModelUnavailable) as info:
        registry.get("other")
    assert (info.value.problem, info.value.available) == (None, ("good",))
    assert "Available: good." in str(model_refusal(info.value))


def test_disabling_a_broken_variant_hides_it_from_unavailable(good_store):
    write_variant(good_store, "broken", 'kind = "nope"\n')
    registry = scanned(good_store, overrides={"broken": VariantOverride(enabled=False)})
    assert registry.unavailable() == {}
    assert only_entry(registry, "broken").disabled


def test_lora_whose_base_is_disabled_is_not_ready(good_store):
    write_variant(good_store, "style", 'base = "good"\n', {"w.safetensors": b"x"})
    registry = scanned(good_store, overrides={"good": VariantOverride(enabled=False)})
    entry = only_entry(registry, "style")
    assert not entry.ready
    assert "good" in (entry.error or "")
    assert "style" not in registry.ready_defaults()


def test_lora_inherits_config_overrides_of_its_base(good_store):
    write_variant(good_store, "style", 'base = "good"\n', {"w.safetensors": b"x"})
    registry = scanned(good_store, overrides={"good": VariantOverride(steps=9)})
    assert registry.get("good").defaults.steps == 9
    assert registry.get("style").defaults.steps == 9


# --- hot-loading ---------------------------------------------------------------------------


def test_scan_reports_added_changed_and_removed(good_store):
    registry = Registry(good_store)
    assert registry.scan() == ScanChanges(added=frozenset({"good"}))
    assert not registry.scan()  # nothing happened

    # A folder being copied (no variant.toml yet) is invisible...
    folder = write_variant(good_store, "new", None, {"model.safetensors": b"half"})
    assert not registry.scan() and registry.entry("new") is None
    # ...until variant.toml is written last.
    (folder / "variant.toml").write_text('file = "model.safetensors"\n', encoding="utf-8")
    assert registry.scan() == ScanChanges(added=frozenset({"new"}))
    before = registry.get("new").fingerprint

    # Rewritten weights.
    (folder / "model.safetensors").write_bytes(b"the whole checkpoint")
    assert registry.scan() == ScanChanges(changed=frozenset({"new"}))
    assert registry.get("new").fingerprint != before

    # Changed variant.toml.
    (good_store / "good" / "variant.toml").write_text('kind = "pipeline"\n[defaults]\nsteps = 4\n', encoding="utf-8")
    assert registry.scan() == ScanChanges(changed=frozenset({"good"}))
    assert registry.get("good").defaults.steps == 4

    # Removed folder, and a folder whose variant.toml went away.
    shutil.rmtree(folder)
    (good_store / "good" / "variant.toml").unlink()
    assert registry.scan() == ScanChanges(removed=frozenset({"new", "good"}))
    assert registry.entries() == []


def test_rewritten_weights_of_the_same_size_count_as_a_change(good_store):
    registry = scanned(good_store)
    weights = good_store / "good" / "unet" / "w.safetensors"
    weights.write_bytes(b"a" * 100)
    registry.scan()
    weights.write_bytes(b"b" * 100)
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a later write
    assert registry.scan() == ScanChanges(changed=frozenset({"good"}))


def test_broken_then_fixed_is_a_change(good_store):
    registry = scanned(good_store)
    folder = write_variant(good_store, "v", 'kind = "pipline"\n', fake_pipeline_files())
    assert registry.scan() == ScanChanges(added=frozenset({"v"}))
    assert not only_entry(registry, "v").ready
    (folder / "variant.toml").write_text('kind = "pipeline"\n', encoding="utf-8")
    assert registry.scan() == ScanChanges(changed=frozenset({"v"}))
    assert only_entry(registry, "v").ready


def test_hidden_folders_plain_files_and_a_missing_store_are_ignored(good_store, tmp_path):
    write_variant(good_store, ".partial-copy", 'kind = "pipeline"\n', fake_pipeline_files())
    write_variant(good_store, ".git", "")
    (good_store / "README.txt").write_text("notes", encoding="utf-8")
    (good_store / "variant.toml").write_text('kind = "pipeline"\n', encoding="utf-8")
    registry = scanned(good_store)
    assert [e.name for e in registry.entries()] == ["good"]
    missing = Registry(tmp_path / "does-not-exist")
    assert not missing.scan() and missing.entries() == []


def test_scan_if_due_honours_rescan_seconds(good_store, monkeypatch):
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(registry_module, "time", SimpleNamespace(monotonic=lambda: clock.now))
    registry = Registry(good_store, rescan_seconds=5)
    assert registry.scan_if_due() == ScanChanges(added=frozenset({"good"}))  # never scanned: due
    write_variant(good_store, "new", 'kind = "pipeline"\n', fake_pipeline_files())
    clock.now += 4.9
    assert not registry.scan_if_due() and registry.entry("new") is None
    clock.now += 0.1
    assert registry.scan_if_due() == ScanChanges(added=frozenset({"new"}))
    shutil.rmtree(good_store / "new")
    clock.now += 1
    assert not registry.scan_if_due()
    assert registry.scan() == ScanChanges(removed=frozenset({"new"}))  # an explicit scan always runs
    assert not registry.scan_if_due()  # ...and restarts the wait


def test_scan_if_due_with_zero_seconds_always_scans(good_store):
    registry = Registry(good_store, rescan_seconds=0)
    registry.scan_if_due()
    write_variant(good_store, "new", 'kind = "pipeline"\n', fake_pipeline_files())
    assert registry.scan_if_due() == ScanChanges(added=frozenset({"new"}))


# --- broken variants -----------------------------------------------------------------------

PIPE = fake_pipeline_files()
W = {"w.safetensors": b"x"}

BROKEN = {
    # id: (variant.toml, files, [substrings the error must contain])
    "invalid_toml": ('kind = "pipeline\n', PIPE, ["variant.toml is not valid TOML"]),
    "unknown_key": ('kind = "pipeline"\nstepz = 3\n', PIPE, ["unknown key(s) in variant.toml: stepz", "allowed:"]),
    "unknown_default_key": ('kind = "pipeline"\n[defaults]\nsize = 3\n', PIPE,
                            ["unknown key(s) in [defaults]: size", "allowed:"]),
    "wrong_type": ('kind = "pipeline"\ndescription = 3\n', PIPE, ["description has the wrong type: 3"]),
    "wrong_type_kind": ("kind = 1\n", PIPE, ["kind has the wrong type"]),
    "wrong_type_bool_steps": ('kind = "pipeline"\n[defaults]\nsteps = true\n', PIPE, ["steps has the wrong type"]),
    "wrong_type_str_guidance": ('kind = "pipeline"\n[defaults]\nguidance = "7"\n', PIPE, ["guidance has the wrong type"]),
    "wrong_type_scale": ('base = "good"\nscale = "strong"\n', W, ["scale has the wrong type"]),
    "wrong_type_allow_pickle": ('file = "m.ckpt"\nallow_pickle = "yes"\n', {"m.ckpt": b"x"},
                                ["allow_pickle has the wrong type"]),
    "defaults_not_table": ('kind = "pipeline"\ndefaults = 5\n', PIPE, ["[defaults] must be a table"]),
    "unknown_kind": ('kind = "checkpoint"\n', PIPE, ["kind must be one of pipeline, single_file, lora, hub, upscaler",
                                                     "'checkpoint'"]),
    "pipeline_without_model_index": ('kind = "pipeline"\n', {"unet/config.json": "{}"}, ["model_index.json"]),
    "missing_file": ('file = "model.safetensors"\n', {}, ["file = 'model.safetensors' does not exist"]),
    "file_in_other_folder": ('file = "../good/unet/w.safetensors"\n', {},
                             ["file = '../good/unet/w.safetensors' points outside the variant folder"]),
    "absolute_file": ('file = "/etc/passwd"\n', {}, ["file must be a path inside the variant folder",
                                                     "/etc/passwd"]),
    "config_outside": ('file = "m.safetensors"\nconfig = "../../x"\n', {"m.safetensors": b"x"},
                       ["config = '../../x' points outside the variant folder"]),
    "absolute_config": ('file = "m.safetensors"\nconfig = "/tmp"\n', {"m.safetensors": b"x"},
                        ["config must be a path inside the variant folder"]),
    "ckpt_without_allow_pickle": ('file = "model.ckpt"\n', {"model.ckpt": b"x"},
                                  ["model.ckpt", "allow_pickle", ".safetensors"]),
    "not_a_checkpoint": ('file = "model.txt"\n', {"model.txt": b"x"},
                         ["must be a .safetensors checkpoint", "model.txt"]),
    "unknown_arch": ('file = "m.safetensors"\narch = "sd9"\n', {"m.safetensors": b"x"},
                     ["arch must be one of auto, sd15, sd21, sd21-v, sdxl", "'sd9'"]),
    "lora_not_safetensors": ('base = "good"\nfile = "lora.bin"\n', {"lora.bin": b"x"},
                             ["LoRA weights must be .safetensors", "lora.bin"]),
    "lora_without_weights": ('kind = "lora"\nbase = "good"\n', {"lora.pt": b"x"},
                             ["no LoRA weights (.safetensors) in the folder"]),
    "lora_without_base": ('kind = "lora"\n', W, ['needs base = "<name of another variant>"']),
    "lora_bad_base_name": ('base = "../good"\n', W, ["needs base ="]),
    "lora_missing_base": ('base = "nothere"\n', W, ["its base 'nothere' is not in the model store"]),
    "lora_broken_base": ('base = "zz-broken"\n', W, ["its base 'zz-broken' is broken"]),
    "lora_base_is_lora": ('base = "zz-lora"\n', W, ["its base 'zz-lora' is itself a LoRA",
                                                   "use a full model as base"]),
    "lora_scale_out_of_range": ('base = "good"\nscale = 10\n', W, ["scale must be between -4 and 4, got 10"]),
    "hub_parent_repo": ('repo = "../x"\n', {}, ['repo = "owner/name"']),
    "hub_no_owner": ('repo = "a"\n', {}, ['repo = "owner/name"']),
    "hub_three_parts": ('repo = "a/b/c"\n', {}, ['repo = "owner/name"']),
    "hub_dotdot_name": ('repo = "a/.."\n', {}, ['repo = "owner/name"']),
    "hub_empty_repo": ('kind = "hub"\n', {}, ['repo = "owner/name"']),
    "bad_scheduler": ('kind = "pipeline"\n[defaults]\nscheduler = "fast"\n', PIPE,
                      ["defaults.scheduler must be one of", "dpm++", "euler_a"]),
    "width_not_multiple_of_8": ('kind = "pipeline"\n[defaults]\nwidth = 500\n', PIPE,
                                ["defaults.width must be a positive multiple of 8"]),
    "height_zero": ('kind = "pipeline"\n[defaults]\nheight = 0\n', PIPE,
                    ["defaults.height must be a positive multiple of 8"]),
    "steps_zero": ('kind = "pipeline"\n[defaults]\nsteps = 0\n', PIPE, ["defaults.steps must be at least 1"]),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_variant_says_what_to_fix_and_leaves_the_others_alone(good_store, case):
    toml, files, expected = BROKEN[case]
    write_variant(good_store, "zz-broken", 'kind = "wrong"\n')  # for lora_broken_base
    write_variant(good_store, "zz-lora", 'base = "good"\n', W)  # for lora_base_is_lora
    write_variant(good_store, "v", toml, files)
    registry = scanned(good_store)

    entry = only_entry(registry, "v")
    assert not entry.ready
    assert entry.error, entry
    for text in expected:
        assert text in entry.error, entry.error
    assert registry.unavailable()["v"] == entry.error
    assert "v" not in registry.ready_defaults()
    with pytest.raises(ModelUnavailable) as info:
        registry.get("v")
    assert info.value.problem == entry.error
    assert str(model_refusal(info.value)) == f"Model 'v' cannot be used right now: {entry.error}"

    # The others are untouched.
    assert only_entry(registry, "good").ready
    assert registry.get("good").defaults.steps == 3
    assert only_entry(registry, "zz-lora").ready
    assert set(registry.ready_defaults()) == {"good", "zz-lora"}


def test_symlink_inside_the_folder_pointing_outside_is_refused(good_store, tmp_path):
    outside = tmp_path / "elsewhere" / "model.safetensors"
    outside.parent.mkdir()
    outside.write_bytes(b"x")
    folder = write_variant(good_store, "v", None)
    (folder / "model.safetensors").symlink_to(outside)
    (folder / "variant.toml").write_text('file = "model.safetensors"\n', encoding="utf-8")
    lora = write_variant(good_store, "l", None)
    (lora / "w.safetensors").symlink_to(outside)
    (lora / "variant.toml").write_text('base = "good"\nfile = "w.safetensors"\n', encoding="utf-8")
    registry = scanned(good_store)
    for name in ("v", "l"):
        error = only_entry(registry, name).error
        assert error and "points outside the variant folder" in error, error
    assert only_entry(registry, "good").ready


def test_symlink_inside_the_folder_pointing_inside_is_fine(store):
    folder = write_variant(store, "v", None, {"weights/real.safetensors": b"x"})
    (folder / "model.safetensors").symlink_to(Path("weights") / "real.safetensors")
    (folder / "variant.toml").write_text('file = "model.safetensors"\n', encoding="utf-8")
    assert only_entry(scanned(store), "v").ready


def test_ckpt_is_accepted_with_allow_pickle(store):
    write_variant(store, "v", 'file = "model.ckpt"\nallow_pickle = true\narch = "sd15"\n', {"model.ckpt": b"x"})
    spec = scanned(store).get("v")
    assert spec.allow_pickle is True and spec.file.name == "model.ckpt"


@pytest.mark.parametrize("name", ["has space", "x" * 65, "-leading-dash", "ünïcode"])
def test_bad_folder_names_are_listed_as_broken(good_store, name):
    write_variant(good_store, name, 'kind = "pipeline"\n', fake_pipeline_files())
    registry = scanned(good_store)
    entry = only_entry(registry, name)
    assert not entry.ready and entry.spec is None
    assert "folder name is not a valid model name" in entry.error
    assert "64 characters" in entry.error
    assert registry.unavailable() == {name: entry.error}
    assert only_entry(registry, "good").ready


def test_longest_allowed_folder_name(store):
    name = "a" + "b" * 63
    write_variant(store, name, 'kind = "pipeline"\n', fake_pipeline_files())
    assert only_entry(scanned(store), name).ready


def test_unreadable_variant_toml_is_an_error(good_store):
    write_variant(good_store, "v", None, fake_pipeline_files())
    (good_store / "v" / "variant.toml").write_bytes(b'kind = "pipeline"\ndescription = "\xff\xfe"\n')
    registry = scanned(good_store)
    assert "variant.toml" in only_entry(registry, "v").error
    assert only_entry(registry, "good").ready


# Files that make scan() itself raise: one bad folder takes the whole store down.
CRASHING = {
    "nul_byte_in_file": ('file = "a\\u0000b.safetensors"\n', {}),
    "overlong_file_name": ('file = "' + "x" * 300 + '.safetensors"\n', {}),
    "header_json_not_an_object": ('file = "m.safetensors"\n', {"m.safetensors": (3).to_bytes(8, "little") + b"123"}),
    "header_json_list_of_numbers": ('file = "m.safetensors"\n', {"m.safetensors": (3).to_bytes(8, "little") + b"[1]"}),
}


@pytest.mark.parametrize("case", sorted(CRASHING))
def test_odd_files_give_a_broken_entry_instead_of_crashing_the_scan(good_store, case):
    toml, files = CRASHING[case]
    write_variant(good_store, "v", toml, files)
    registry = Registry(good_store)
    registry.scan()
    assert only_entry(registry, "good").ready
    entry = only_entry(registry, "v")
    # Either refused with a message, or (for an odd header) accepted at the fallback size.
    assert entry.error or entry.spec.defaults.width == 512


# --- get / entries / unavailable -----------------------------------------------------------


def test_get_of_an_unknown_name_lists_the_available_models(good_store):
    write_variant(good_store, "alpha", 'kind = "pipeline"\n', fake_pipeline_files())
    write_variant(good_store, "broken", 'kind = "nope"\n')
    registry = scanned(good_store)
    with pytest.raises(ModelUnavailable) as info:
        registry.get("nothere")
    refusal = model_refusal(info.value)
    assert refusal.key == "unknown_model"
    assert str(refusal) == "There is no model 'nothere'. Available: alpha, good."


def test_get_with_nothing_available_says_none(store):
    registry = scanned(store)
    with pytest.raises(ModelUnavailable) as info:
        registry.get("demo")
    assert "Available: none" in str(model_refusal(info.value))


def test_get_of_a_broken_variant_gives_the_reason(good_store):
    write_variant(good_store, "broken", 'file = "gone.safetensors"\n')
    registry = scanned(good_store)
    with pytest.raises(ModelUnavailable) as info:
        registry.get("broken")
    refusal = model_refusal(info.value)
    assert refusal.key == "model_broken"
    assert "Model 'broken' cannot be used right now" in str(refusal)
    assert "file = 'gone.safetensors' does not exist" in str(refusal)


def test_entries_unavailable_and_ready_defaults(good_store):
    write_variant(good_store, "a-broken", 'kind = "nope"\n')
    write_variant(good_store, "style", 'base = "good"\n', W)
    registry = scanned(good_store)
    assert [e.name for e in registry.entries()] == ["a-broken", "good", "style"]
    assert list(registry.unavailable()) == ["a-broken"]
    assert set(registry.ready_defaults()) == {"good", "style"}
    assert registry.entry("nothere") is None


# --- example prompts (the web page offers them) ---------------------------------------------------


def test_examples_are_read_and_checked(store):
    write_variant(store, "shapes", 'examples = ["a red circle", "  a blue square --n 4 "]\n', fake_pipeline_files())
    write_variant(store, "none", 'kind = "pipeline"\n', fake_pipeline_files())
    write_variant(store, "text", 'examples = "a red circle"\n', fake_pipeline_files())
    write_variant(store, "blank", 'examples = ["a red circle", " "]\n', fake_pipeline_files())
    registry = scanned(store)
    assert registry.get("shapes").examples == ("a red circle", "a blue square --n 4")
    assert registry.get("none").examples == ()
    assert "examples has the wrong type" in only_entry(registry, "text").error
    assert "examples must be a list of prompts" in only_entry(registry, "blank").error


@pytest.mark.parametrize("name", ["demo", "demo-finetuned"])
def test_shipped_models_offer_three_or_four_examples(name):
    examples = registry_module.read_variant(REPO_ROOT / "models" / name).examples
    assert 3 <= len(examples) <= 4 and len(set(examples)) == len(examples)


@pytest.mark.parametrize("repo, role", [
    ("stabilityai/stable-diffusion-xl-refiner-1.0", "refiner"),
    ("diffusers/stable-diffusion-xl-1.0-inpainting-0.1", "inpainting"),
    ("stabilityai/stable-diffusion-xl-base-1.0", "text2image"),
])
def test_hub_variant_role_from_its_repo_name(store, repo, role):
    write_variant(store, "v", f'repo = "{repo}"\n')
    assert scanned(store).get("v").defaults.role == role


@pytest.mark.parametrize("channels, role", [(4, "text2image"), (9, "inpainting")])
def test_single_file_role_from_the_unet_input_channels(store, channels, role):
    path = store / "v" / "model.safetensors"
    path.parent.mkdir(parents=True)
    save_file({"model.diffusion_model.input_blocks.0.0.weight": np.zeros((1, channels, 1, 1), dtype=np.float32),
               "cond_stage_model.transformer.text_model.final_layer_norm.weight": np.zeros((2,), dtype=np.float32)},
              str(path))
    write_variant(store, "v", 'file = "model.safetensors"\n')
    assert scanned(store).get("v").defaults.role == role


def test_refiner_settings_belong_to_the_top_level_not_to_defaults(store):
    write_variant(store, "v", 'repo = "a/b"\n[defaults]\nrefiner = "x"\n')
    assert "unknown key(s) in [defaults]: refiner" in scanned(store).unavailable()["v"]
