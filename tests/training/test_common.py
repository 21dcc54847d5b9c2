"""training.common: the run log trimmed on resume, whatever a script's stages; resumable loop state."""

import json
from dataclasses import dataclass

import torch

from training.common.data import Batches
from training.common.loop import Progress
from training.common.run import Run


@dataclass
class Config:
    output_dir: str
    time_budget: float = 0.0


def rows_of(run: Run) -> list[tuple[str, int]]:
    return [(row["stage"], row["step"]) for row in map(json.loads, run.log_path.read_text().splitlines())]


def test_resume_drops_the_rows_written_after_the_checkpoint(tmp_path):
    config = Config(str(tmp_path / "run"))
    run = Run(config, None, script="training.example", stages=("first", "second"))
    for row in [("first", 1), ("first", 2), ("first", 3), ("second", 1), ("sample", 1), ("second", 2)]:
        run.write({"stage": row[0], "step": row[1]})
    with open(run.log_path, "a", encoding="utf-8") as stream:
        stream.write('{"stage": "second", "st')  # cut short mid-line
    resumed = Run(config, {"stage": "second", "step": 1, "elapsed": 5.0}, script="training.example",
                  stages=("first", "second"))
    # Rows of other kinds (samples) count as the last stage's.
    assert rows_of(resumed) == [("first", 1), ("first", 2), ("first", 3), ("second", 1), ("sample", 1)]
    assert resumed.elapsed() >= 5.0
    assert "python -m training.example" in (tmp_path / "run" / "config.toml").read_text()

    earlier = Run(config, {"stage": "first", "step": 2, "elapsed": 1.0}, script="training.example",
                  stages=("first", "second"))
    assert rows_of(earlier) == [("first", 1), ("first", 2)]
    fresh = Run(config, None, script="training.example")
    assert not fresh.log_path.exists()


def test_a_script_with_one_stage(tmp_path):
    config = Config(str(tmp_path / "run"))
    run = Run(config, None, script="training.example")
    for stage, step in [("class_images", 0), ("train", 1), ("validation", 1), ("train", 2)]:
        run.write({"stage": stage, "step": step})
    resumed = Run(config, {"stage": "train", "step": 1, "elapsed": 0.0}, script="training.example")
    assert rows_of(resumed) == [("class_images", 0), ("train", 1), ("validation", 1)]


def test_progress_resumes_the_same_draws():
    def loop() -> tuple[Progress, Batches]:
        torch.manual_seed(0)  # as a script seeds everything at its start
        parameter = torch.nn.Parameter(torch.zeros(3))
        optimizer = torch.optim.SGD([parameter], lr=0.1)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        generator = torch.Generator().manual_seed(4)
        batches = Batches(5, 2, generator)
        return Progress(optimizer, schedule, generator, {"batches": batches, "none": None}), batches

    def draws(progress: Progress, batches: Batches, count: int) -> list:
        return [(batches.next().tolist(), torch.randn(2, generator=progress.generator).tolist(),
                 torch.rand(1).item()) for _ in range(count)]

    straight, straight_batches = loop()
    expected = draws(straight, straight_batches, 7)

    first, first_batches = loop()
    draws(first, first_batches, 3)
    first.step = 3
    state = first.state_dict()
    assert state["none"] is None and state["step"] == 3
    second, second_batches = loop()
    torch.rand(5)  # whatever ran in between
    second.load_state_dict(state)
    assert second.step == 3
    assert draws(second, second_batches, 4) == expected[3:]
