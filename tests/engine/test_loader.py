"""bot.engine.loader: loads from several threads at once take turns and all come out whole."""

import threading

import torch

from bot.engine.loader import load_base_pipeline
from bot.models.registry import Registry


def test_concurrent_loads_give_complete_models(models_dir):
    """A worker abandoned after a timeout may still be loading when its replacement starts."""
    registry = Registry(models_dir, rescan_seconds=0)
    registry.scan()
    spec = registry.get("demo")
    reference = load_base_pipeline(spec, torch.float32, allow_download=False).unet.state_dict()
    results, errors = [], []

    def load() -> None:
        try:
            for _ in range(2):
                results.append(load_base_pipeline(spec, torch.float32, allow_download=False).unet.state_dict())
        except Exception as error:  # collected: a failure in a thread must fail the test
            errors.append(error)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == 6
    for state in results:
        assert not any(t.is_meta for t in state.values())
        assert all(torch.equal(state[name], reference[name]) for name in reference)
