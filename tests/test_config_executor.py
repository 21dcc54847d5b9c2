"""[engine] devices and the [executor] section: checked with messages that say what is allowed."""

import pytest

from bot.config import ConfigError, config_from_dict


def test_defaults_are_one_local_device():
    config = config_from_dict({})
    assert config.engine.devices == () and config.executor.kind == "local"


def test_devices_and_a_ray_executor_load():
    config = config_from_dict({"engine": {"devices": ["cuda:0", "cuda:1"]},
                               "executor": {"kind": "ray", "address": "head:6379", "replicas_min": 1, "replicas_max": 8,
                                            "gpus_per_replica": 1, "max_models_per_replica": 3}})
    assert config.engine.devices == ("cuda:0", "cuda:1")
    assert config.executor.replicas_max == 8 and config.executor.gpus_per_replica == 1.0


@pytest.mark.parametrize("section, message", [
    ({"engine": {"devices": ["gpu0"]}}, "'gpu0' is not a device; use \"cuda:0\""),
    ({"engine": {"devices": ["cuda:0", "cuda:0"]}}, "lists a GPU twice"),
    ({"executor": {"kind": "slurm"}}, "executor.kind must be one of 'local', 'ray'"),
    ({"executor": {"replicas_min": 3, "replicas_max": 2}}, "need 0 <= min <= max"),
    ({"executor": {"replicas_max": 0}}, "max >= 1"),
    ({"executor": {"max_models_per_replica": 0}}, "max_models_per_replica must be at least 1"),
    ({"executor": {"address": " "}}, 'executor.address must be "local", "auto"'),
    ({"executor": {"gpus": 1}}, "unknown key executor.gpus (allowed: kind, address"),
])
def test_bad_settings_say_what_is_allowed(section, message):
    with pytest.raises(ConfigError) as error:
        config_from_dict(section)
    assert message in str(error.value)


def test_the_replicas_models_folder_is_relative_to_the_config_file(tmp_path):
    config = config_from_dict({"executor": {"models_dir": "shared/models"}}, base_dir=tmp_path)
    assert config.executor.models_dir == str(tmp_path / "shared/models")


async def test_a_ray_executor_without_ray_installed_stops_start_up_with_what_to_install(tmp_path, monkeypatch):
    import sys

    from bot.stack import StartupError, open_stack
    from tests.helpers.service import service_config

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the [ray] extra were not installed
    monkeypatch.setitem(sys.modules, "ray.serve", None)
    config = service_config(tmp_path / "state", tmp_path / "models", executor={"kind": "ray"})
    with pytest.raises(StartupError, match=r'needs Ray Serve: pip install -e "\.\[ray\]"'):
        await open_stack(config)
