"""The manifest's tasks: what a row does with its trained model. Each task owns its parameter
columns (kinds, defaults, checks), the config it trains with and the outputs it makes; the
manifest, the worker and the jobs look a task up here and never compare task names.

    train     nothing more (the default; a row without a `task` value)
    sr        super-resolution by `sr_factor` (required, above 1; singan.apps.sr): trains on the
              image at full size with alpha 100 and min_size 18; writes sr/sr_xF.png and
              sr/bicubic_xF.png
    animate   GIFs of random walks around the image (optional `frames`, `fps`;
              singan.apps.animation): trains with noise padding and min_size 20; writes
              animate/start_scale_S/beta_B.gif

A task's outputs go to the image's folder through singan.data.outputs (the `singan` command writes
the same files) and to its MLflow run. Adding a task: a `Task` subclass and one line in TASKS.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from singan.apps.animation import FPS, FRAMES, animation_config
from singan.apps.sr import sr_config, sr_steps
from singan.base import Pyramid
from singan.data import outputs
from singan.errors import InputError
from singan.settings import Config

Kind = Literal["int", "float"]


@dataclass(frozen=True)
class Param:
    """A task's parameter: a manifest column of its name, null on other tasks' rows."""

    name: str
    kind: Kind
    default: float | None = None  # None: every row of the task must give it
    check: Callable[[float], str | None] = lambda value: None  # why a value is bad, or None
    needed: str = ""  # how a missing required value is asked for ("an sr_factor (such as 2)")

    def typed(self, value: float) -> float:
        return float(value) if self.kind == "float" else int(value)


class Task:
    """A plain training; the base of the others."""

    name: str = "train"
    params: tuple[Param, ...] = ()

    def identity(self, params: Mapping[str, float]) -> dict:
        """What the task adds to a training's identity, its _SUCCESS and its run's params."""
        return {"task": self.name, **params}

    def training_config(self, config: Config, params: Mapping[str, float], height: int,
                        width: int) -> Config:
        """The config the row trains with, for its image of `height` x `width`."""
        return config

    def write_outputs(self, model: Pyramid, folder: outputs.Folder,
                      params: Mapping[str, float]) -> list[str]:
        """Write the task's files into the image's folder; their names."""
        return []


class Train(Task):
    def identity(self, params: Mapping[str, float]) -> dict:
        return {}  # a plain training's records stay as they were before tasks existed


def _above_one(factor: float) -> str | None:
    if not math.isfinite(factor) or factor <= 1:
        return f"sr_factor must be a number above 1, got {factor:g}"
    try:
        sr_steps(factor)
    except InputError as error:
        return f"sr_factor: {error}"
    return None


class SuperResolution(Task):
    name = "sr"
    params = (Param("sr_factor", "float", check=_above_one,
                    needed="an sr_factor (such as 2, 4 or 8)"),)

    def training_config(self, config: Config, params: Mapping[str, float], height: int,
                        width: int) -> Config:
        return sr_config(height, width, params["sr_factor"], base=config)

    def write_outputs(self, model: Pyramid, folder: outputs.Folder,
                      params: Mapping[str, float]) -> list[str]:
        factor = params["sr_factor"]
        outputs.write_super_resolution(model, factor, folder)
        return [f"sr/sr_x{factor:g}.png", f"sr/bicubic_x{factor:g}.png"]


class Animation(Task):
    name = "animate"
    params = (
        Param("frames", "int", FRAMES,
              lambda n: None if n >= 1 else f"frames must be at least 1, got {n}"),
        Param("fps", "float", FPS, lambda fps: None if math.isfinite(fps) and fps > 0
              else f"fps must be a number above 0, got {fps:g}"),
    )

    def training_config(self, config: Config, params: Mapping[str, float], height: int,
                        width: int) -> Config:
        return animation_config(config)

    def write_outputs(self, model: Pyramid, folder: outputs.Folder,
                      params: Mapping[str, float]) -> list[str]:
        return outputs.write_animations(model, folder, frames=int(params["frames"]),
                                        fps=params["fps"])


TASKS: dict[str, Task] = {task.name: task for task in (Train(), SuperResolution(), Animation())}
DEFAULT = "train"  # a row without a task value
# Every task parameter's column and kind, and the task it belongs to.
PARAM_KINDS: dict[str, Kind] = {p.name: p.kind for task in TASKS.values() for p in task.params}
_OWNER = {p.name: task.name for task in TASKS.values() for p in task.params}


def task_named(name: str) -> Task:
    """The task called `name` (InputError naming the choices otherwise)."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise InputError(f"task must be one of {', '.join(TASKS)}, got {name!r}") from None


def row_task(row: Mapping) -> tuple[str, dict[str, float], list[str]]:
    """The task of a manifest row (a mapping of its columns), its parameters (defaults filled
    in, typed: an sr_factor of 4 and of 4.0 are the same row), and the problems with them (an
    unknown task, a parameter of another task, a missing or bad value); no problems: a good row."""
    name = row.get("task")
    name = DEFAULT if name is None else name
    try:
        task = task_named(name)
    except InputError as error:
        return name, {}, [str(error)]
    problems = []
    for column, owner in _OWNER.items():
        if row.get(column) is not None and owner != task.name:
            problems.append(f"{column} is a parameter of task {owner!r}, but the row's task is "
                            f"{task.name!r}")
    params = {}
    for param in task.params:
        value = row.get(param.name)
        if value is None and param.default is None:
            problems.append(f"task {task.name!r} needs {param.needed or param.name}")
            continue
        value = param.typed(param.default if value is None else value)
        problem = param.check(value)
        if problem:
            problems.append(problem)
        params[param.name] = value
    return task.name, params, problems


def counts(names: Iterable[str]) -> str:
    """'2 train, 1 sr' for task names, in TASKS order."""
    tally = Counter(names)
    return ", ".join(f"{tally[name]} {name}" for name in TASKS if tally[name])


def any_besides_training(names: Iterable[str]) -> bool:
    """Whether some of `names` do more than a plain training (worth a word in a summary)."""
    return any(name != DEFAULT for name in names)


def note(name: str) -> str:
    """' [sr]' after an image of another task than a plain training, else nothing."""
    return "" if name == DEFAULT else f" [{name}]"
