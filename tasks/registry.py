"""The one registry of tasks: look a task up by name, case-insensitively, with the paper's spellings
(`SST2`, `SST-2`, `Copa`, `MultiRC`, `STS-B`, `MNLI-m` ...): names match after lower-casing and
dropping everything but letters and digits. Adding a task is adding one `TaskSpec` to `_BUILTIN`
(or calling `register`).
"""

from __future__ import annotations

import re

from .spec import TaskSpec


class UnknownTaskError(KeyError, ValueError):
    """No task has that name; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


_TASKS: dict[str, TaskSpec] = {}
_KEYS: dict[str, str] = {}  # normalised name or alias -> canonical name


def normalize(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def register(spec: TaskSpec, replace: bool = False) -> TaskSpec:
    keys = {normalize(k) for k in (spec.name, *spec.aliases)}
    if not replace:
        taken = {k: _KEYS[k] for k in keys if k in _KEYS and _KEYS[k] != spec.name}
        if taken or spec.name in _TASKS:
            raise ValueError(f"task {spec.name!r}: name or alias already registered ({taken or spec.name})")
    _TASKS[spec.name] = spec
    for k in keys:
        _KEYS[k] = spec.name
    return spec


def task_names() -> list[str]:
    """Canonical names of all registered tasks, sorted."""
    return sorted(_TASKS)


def get_task(name: str | TaskSpec) -> TaskSpec:
    if isinstance(name, TaskSpec):
        return name
    key = normalize(name)
    if key not in _KEYS:
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}")
    return _TASKS[_KEYS[key]]


def _register_builtin() -> None:
    from . import drop, glue, movies, squad, superglue

    for spec in (*glue.TASKS, *superglue.TASKS, squad.SQUAD, drop.DROP, movies.MOVIE_SNIPPETS):
        register(spec)


_register_builtin()
