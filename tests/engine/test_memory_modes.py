"""GPU memory modes, checked where a CPU can check them: the configuration and the messages."""

import pytest
import torch

from bot.config import ConfigError, EngineConfig, Secrets, config_from_dict
from bot.doctor import report
from bot.engine.devices import EngineSetupError, check_offload
from bot.engine.engine import Engine
from bot.models.registry import Registry


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_cpu_offload_without_cuda_says_what_to_change(models_dir, mode):
    registry = Registry(models_dir, rescan_seconds=0)
    with pytest.raises(EngineSetupError, match=f'cpu_offload = "{mode}" moves weights .* runs on cpu; '
                                               'set engine.cpu_offload = "none"'):
        Engine(registry, EngineConfig(device="cpu", cpu_offload=mode))


def test_sequential_offload_and_compile_do_not_go_together():
    with pytest.raises(EngineSetupError, match="torch.compile cannot follow"):
        check_offload(EngineConfig(cpu_offload="sequential", compile=True), torch.device("cuda"))
    check_offload(EngineConfig(cpu_offload="model", compile=True), torch.device("cuda"))  # fine


def test_cpu_offload_takes_only_its_modes():
    with pytest.raises(ConfigError, match="engine.cpu_offload must be one of 'none', 'model', 'sequential'"):
        config_from_dict({"engine": {"cpu_offload": "disk"}})


def test_doctor_shows_the_offload_problem(tmp_path):
    config = config_from_dict({"engine": {"device": "cpu", "cpu_offload": "model"},
                               "storage": {"state_dir": str(tmp_path), "models_dir": str(tmp_path / "models")}})
    lines = report(config, Secrets())
    assert any("device: cannot be used:" in line and "cpu_offload" in line for line in lines), lines
