"""bot.models.publish: what a registry scanning concurrently can observe while a variant is
published (never half of it), and the TOML that variant.toml is written with."""

import shutil
import threading
from pathlib import Path

import pytest

from bot.models import publish
from bot.models.publish import publish_variant
from bot.models.registry import Registry
from bot.files.toml_writer import to_toml
from tests.helpers.models import add_pipeline_variant


def copy_of(source: Path, fail: bool = False):
    """What publish_variant calls to write the files: a copy of a saved pipeline folder."""

    def write(folder: Path) -> None:
        shutil.copytree(source, folder, dirs_exist_ok=True)
        if fail:
            raise RuntimeError("disk full")

    return write


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
    monkeypatch.setattr(publish, "_checkpoint", lambda step, _: seen.append((step, observe(registry, name))))
    publish_variant(models, name, copy_of(source), {"steps": 3, "width": 32, "height": 32}, "new")
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
        monkeypatch.setattr(publish, "_exchange", lambda a, b: False)
    elif not publish._exchange(store_dir / "demo", store_dir / "demo"):
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
            publish_variant(store_dir, "demo", copy_of(tiny_pipeline_dir), {"steps": 3 + i}, f"new {i}")
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
        publish_variant(store_dir, "demo", copy_of(tiny_pipeline_dir, fail=True), {}, "new")
    with pytest.raises(Exception, match="defaults"):  # refused by the registry's own checks before publishing
        publish_variant(store_dir, "demo", copy_of(tiny_pipeline_dir), {"colour": "red"}, "new")
    with pytest.raises(ValueError, match="invalid model name"):
        publish_variant(store_dir, "../escape", copy_of(tiny_pipeline_dir), {}, "new")
    assert observe(registry, "demo") == before
    assert not [p for p in store_dir.iterdir() if p.name.startswith(".")]


def test_variant_toml_round_trips():
    text = to_toml({"kind": "pipeline", "description": 'quote " and \\ and ünïcode', "n": None,
                          "defaults": {"steps": 20, "guidance": 3.0, "scheduler": "dpm++"}})
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    assert tomllib.loads(text) == {"kind": "pipeline", "description": 'quote " and \\ and ünïcode',
                                   "defaults": {"steps": 20, "guidance": 3.0, "scheduler": "dpm++"}}
