"""training.train_scratch and training.store: a tiny end-to-end run, resume, and atomic publishing."""

import json
import shutil
import threading
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from bot.config import EngineConfig, Limits
from bot.core.request import parse_prompt
from bot.core.resolve import resolve
from bot.engine.engine import Engine
from bot.models.registry import Registry
from tests.conftest import add_pipeline_variant
from training import store
from training.train_scratch import (
    TrainingConfig,
    build_text_encoder,
    build_unet,
    build_vae,
    load_toml_config,
    main,
    parse_args,
)

REPO = Path(__file__).resolve().parents[2]
LIMITS = Limits(min_side=16)

# Every stage at a size that takes well under a second a step on a CPU.
TINY = [
    "--num-images", "12", "--seed", "3",
    "--vae-steps", "2", "--vae-batch-size", "4", "--vae-channels", "8,8,8", "--vae-norm-groups", "4",
    "--train-batch-size", "4", "--unet-channels", "16,16", "--unet-layers-per-block", "1",
    "--unet-attention-heads", "2", "--unet-norm-groups", "4", "--text-width", "16", "--text-heads", "2",
    "--lr-warmup-steps", "1", "--learning-rate", "1e-3",
    "--sample-steps", "2", "--sample-every", "0", "--save-every", "1", "--log-every", "1",
    "--eval-prompts", "2", "--eval-guidances", "2.0", "--eval-batch-size", "2", "--threads", "1",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step VAE + 2-step UNet run, published as 'scratch' into a fresh model store."""
    root = tmp_path_factory.mktemp("scratch")
    run = root / "run"
    models = root / "models"
    assert main([*TINY, "--max-steps", "2", "--output-dir", str(run), "--name", "scratch",
                 "--models-dir", str(models)]) == 0
    return run, models


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_run_writes_its_outputs(trained):
    run, _ = trained
    for name in ("config.toml", "checkpoint.pt", "log.jsonl", "eval.json", "vae/config.json",
                 "pipeline/model_index.json", "samples/vae_reconstruction.png", "samples/unet_000002.png"):
        assert (run / name).exists(), name
    rows = read_log(run)
    assert [r["step"] for r in rows if r["stage"] == "vae"] == [1, 2]
    assert [r["step"] for r in rows if r["stage"] == "unet"] == [1, 2]
    assert all(r["loss"] > 0 for r in rows if r["stage"] == "unet")
    vae_config = json.loads((run / "vae" / "config.json").read_text())
    assert vae_config["scaling_factor"] != 0.18215  # measured on the data, not the SD default
    report = json.loads((run / "eval.json").read_text())
    assert report["prompts"] == 2 and set(report["by_guidance"]) == {"2.0"}


def test_config_is_saved_next_to_the_checkpoint(trained):
    run, models = trained
    assert (run / "config.toml").parent == (run / "checkpoint.pt").parent
    saved = load_toml_config(run / "config.toml", TrainingConfig())
    assert (saved.max_steps, saved.name, saved.models_dir, saved.output_dir) == (2, "scratch", str(models), str(run))
    assert (saved.unet_channels, saved.eval_guidances, saved.threads) == ((16, 16), (2.0,), 1)
    assert saved.vae_kl_weight == TrainingConfig.vae_kl_weight  # defaults are written out too
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["stage"] == "unet" and checkpoint["step"] == 2
    assert TrainingConfig(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in checkpoint["config"].items()}) == saved


def test_published_variant_is_ready_and_generates(trained):
    _, models = trained
    registry = Registry(models, rescan_seconds=0)
    registry.scan()
    entry = registry.entry("scratch")
    assert entry is not None and entry.ready, entry
    assert (entry.spec.defaults.width, entry.spec.defaults.height) == (32, 32)
    assert entry.spec.defaults.scheduler == "dpm++" and entry.spec.defaults.steps == 2
    assert not list(models.glob(".*"))  # no staging folder left behind

    engine = Engine(registry, EngineConfig(device="cpu"), allow_download=False)
    request = resolve(parse_prompt("a red circle on a blue background --seed 5"), registry.ready_defaults(),
                      "scratch", LIMITS, unavailable=registry.unavailable())
    [result] = engine.generate([request])
    assert [image.size for image in result.images] == [(32, 32)]


def test_exported_weights_are_float16_safetensors(trained):
    _, models = trained
    files = list((models / "scratch").rglob("*.safetensors"))
    assert {f.parent.name for f in files} == {"unet", "vae", "text_encoder"}
    assert not list((models / "scratch").rglob("*.bin"))
    for file in files:
        with safe_open(str(file), "pt") as weights:
            dtypes = {weights.get_slice(key).get_dtype() for key in weights.keys()}
        assert dtypes <= {"F16", "I64"}, (file, dtypes)
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(models / "scratch" / "tokenizer"))
    assert len(tokenizer) == 49408  # the real CLIP vocabulary
    assert tokenizer("a red circle").input_ids[:2] == [49406, 320]


def test_demo_config_fits_in_25_mb():
    config = load_toml_config(REPO / "training" / "configs" / "demo.toml", TrainingConfig())
    factor = 2 ** (len(config.vae_channels) - 1)
    models = [build_vae(config), build_unet(config, config.image_size // factor), build_text_encoder(config)]
    parameters = sum(p.numel() for m in models for p in m.parameters())
    tokenizer = 3_700_000  # tokenizer.json as transformers 5 writes it (3.6 MB)
    assert parameters * 2 + tokenizer < 25_000_000
    assert config.data == "shapes" and config.image_size == 32 and config.sample_steps == 20
    assert 2.0 <= config.sample_guidance <= 3.5


def test_resume_continues_at_the_saved_step(trained, tmp_path):
    run, _ = trained
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    assert main(["--resume", str(resumed / "checkpoint.pt"), "--max-steps", "3", "--name", "",
                 "--eval-prompts", "0"]) == 0
    checkpoint = torch.load(resumed / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 3
    rows = read_log(resumed)
    assert [r["step"] for r in rows if r["stage"] == "unet"] == [1, 2, 3]
    assert [r["step"] for r in rows if r["stage"] == "vae"] == [1, 2]  # the VAE was not trained again

    # The same as a run that was never interrupted: weights, EMA and optimizer state to the bit.
    straight = tmp_path / "straight"
    assert main([*TINY, "--max-steps", "3", "--output-dir", str(straight), "--eval-prompts", "0"]) == 0
    reference = torch.load(straight / "checkpoint.pt", weights_only=True)
    for part in ("unet", "text_encoder"):
        for key, value in reference["models"][part].items():
            assert torch.equal(value, checkpoint["models"][part][key]), (part, key)
    assert all(torch.equal(a, b) for a, b in zip(reference["ema"]["shadow"], checkpoint["ema"]["shadow"]))
    assert reference["batches"]["pos"] == checkpoint["batches"]["pos"]


def test_time_budget_stops_cleanly_and_still_exports(tmp_path):
    models = tmp_path / "models"
    main([*TINY, "--max-steps", "100000", "--vae-steps", "100000", "--time-budget", "0.05",
          "--eval-prompts", "0", "--output-dir", str(tmp_path / "run"), "--name", "budget",
          "--models-dir", str(models)])
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert checkpoint["stage"] == "unet" and checkpoint["step"] < 100000
    registry = Registry(models)
    registry.scan()
    assert registry.entry("budget").ready


def test_bad_settings_are_refused(trained, tmp_path, capsys):
    run, _ = trained
    with pytest.raises(SystemExit):
        parse_args(["--max-steps", "many"])
    assert "max_steps must be an integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--data", "manifest"])
    assert "--manifest" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--output-dir", str(run)])  # would overwrite a run
    assert "--resume" in capsys.readouterr().err
    config, resume = parse_args(["--unet-channels", "32,64", "--vae", "some/vae", "--time_budget", "3",
                                 "--output-dir", str(tmp_path / "new")])
    assert config.unet_channels == (32, 64) and config.vae_path == "some/vae" and config.time_budget == 3.0
    assert resume is None


# --- training.store.export_variant: what a concurrent registry scan can observe -------------------


class FolderPipe:
    """Stands in for a pipeline: save_pretrained copies a saved pipeline folder."""

    def __init__(self, source: Path, fail: bool = False) -> None:
        self.source, self.fail = source, fail

    def save_pretrained(self, folder, safe_serialization=True):
        shutil.copytree(self.source, folder, dirs_exist_ok=True)
        if self.fail:
            raise RuntimeError("disk full")


def observe(registry: Registry, name: str):
    """What a scan sees of `name`: None (absent), or (ready, description, fingerprint)."""
    registry.scan()
    entry = registry.entry(name)
    if entry is None:
        return None
    return entry.ready, entry.error, entry.spec.description if entry.spec else None, \
        entry.spec.fingerprint if entry.spec else None


@pytest.fixture
def store_dir(tmp_path, tiny_pipeline_dir):
    models = tmp_path / "models"
    models.mkdir()
    add_pipeline_variant(models, "demo", tiny_pipeline_dir, 'kind = "pipeline"\ndescription = "old"\n')
    return models


def _export_observed(monkeypatch, models: Path, name: str, source: Path) -> list:
    registry = Registry(models, rescan_seconds=0)
    seen = []
    monkeypatch.setattr(store, "_checkpoint", lambda step, _: seen.append((step, observe(registry, name))))
    store.export_variant(FolderPipe(source), models, name, {"steps": 3, "width": 32, "height": 32}, "new")
    return seen


def test_new_variant_appears_only_complete(monkeypatch, store_dir, tiny_pipeline_dir):
    seen = _export_observed(monkeypatch, store_dir, "fresh", tiny_pipeline_dir)
    steps = dict(seen)
    assert steps["weights_staged"] is None  # weights written, variant.toml not yet: invisible
    assert steps["variant_staged"] is None  # complete, but still under its hidden staging name
    ready, error, description, _ = steps["published"]
    assert ready and error is None and description == "new"
    assert (store_dir / "fresh" / "variant.toml").is_file()
    assert not [p for p in store_dir.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "rename-aside"])
def test_replacing_a_variant_is_never_seen_half_written(monkeypatch, store_dir, tiny_pipeline_dir, exchange):
    if not exchange:
        monkeypatch.setattr(store, "_exchange", lambda a, b: False)
    elif not store._exchange(store_dir / "demo", store_dir / "demo"):
        pytest.skip("no RENAME_EXCHANGE on this system")
    registry = Registry(store_dir, rescan_seconds=0)
    old = observe(registry, "demo")
    assert old[0] and old[2] == "old"
    seen = _export_observed(monkeypatch, store_dir, "demo", tiny_pipeline_dir)
    new = observe(registry, "demo")
    assert new[0] and new[2] == "new" and new[3] != old[3]
    allowed = {old, new} if exchange else {old, new, None}
    assert all(observation in allowed for _, observation in seen), seen
    steps = dict(seen)
    assert steps["variant_staged"] == old and steps["published"] == new
    assert steps.get("swapped" if exchange else "moved_aside") == (new if exchange else None)
    assert not [p for p in store_dir.iterdir() if p.name.startswith(".")]


def test_scanning_in_a_loop_during_replacement(store_dir, tiny_pipeline_dir):
    registry = Registry(store_dir, rescan_seconds=0)
    old = observe(registry, "demo")
    seen, stop, scanning = [], threading.Event(), threading.Event()

    def scan_forever():
        scanner = Registry(store_dir, rescan_seconds=0)
        while not stop.is_set():
            seen.append(observe(scanner, "demo"))
            scanning.set()

    thread = threading.Thread(target=scan_forever)
    thread.start()
    try:
        assert scanning.wait(10)
        for i in range(3):
            store.export_variant(FolderPipe(tiny_pipeline_dir), store_dir, "demo", {"steps": 3 + i}, f"new {i}")
        count = len(seen)
        while len(seen) == count and thread.is_alive():
            stop.wait(0.01)
    finally:
        stop.set()
        thread.join()
    assert seen[0] == old and seen[-1] == observe(registry, "demo")
    for observation in seen:
        assert observation is not None, "the variant vanished during a replacement"
        ready, error, description, _ = observation
        assert ready and error is None and description in ("old", "new 0", "new 1", "new 2"), observation


def test_failed_export_leaves_the_old_variant(store_dir, tiny_pipeline_dir):
    registry = Registry(store_dir, rescan_seconds=0)
    before = observe(registry, "demo")
    with pytest.raises(RuntimeError, match="disk full"):
        store.export_variant(FolderPipe(tiny_pipeline_dir, fail=True), store_dir, "demo", {}, "new")
    with pytest.raises(Exception, match="defaults"):  # refused by the registry's own checks before publishing
        store.export_variant(FolderPipe(tiny_pipeline_dir), store_dir, "demo", {"colour": "red"}, "new")
    with pytest.raises(ValueError, match="invalid model name"):
        store.export_variant(FolderPipe(tiny_pipeline_dir), store_dir, "../escape", {}, "new")
    assert observe(registry, "demo") == before
    assert not [p for p in store_dir.iterdir() if p.name.startswith(".")]


def test_variant_toml_round_trips():
    text = store.to_toml({"kind": "pipeline", "description": 'quote " and \\ and ünïcode', "n": None,
                          "defaults": {"steps": 20, "guidance": 3.0, "scheduler": "dpm++"}})
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    assert tomllib.loads(text) == {"kind": "pipeline", "description": 'quote " and \\ and ünïcode',
                                   "defaults": {"steps": 20, "guidance": 3.0, "scheduler": "dpm++"}}
