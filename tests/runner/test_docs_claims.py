"""The docs' commands and lists stay true: every `python -m loretta.run` / `loretta-run` command in a code
block of README.md, configs/README.md and tasks/README.md composes, at every point of its sweep, into a
config the runner accepts (checks.validate, the learning rate), and configs/README.md's table of choices
names exactly the options of each config group."""

from __future__ import annotations

import itertools
import re
import shlex

import pytest
import yaml
from omegaconf import OmegaConf, open_dict

from .helpers import CONFIGS, REPO, compose

DOCS = ("README.md", "configs/README.md", "tasks/README.md")
GROUPS = ("model", "task", "method", "train", "experiment")


def code_lines(text: str) -> list[str]:
    """Lines of fenced code blocks and of 4-space indented blocks, a line ending in `\\` joined to the next."""
    lines, fenced, continued = [], False, False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced or line.startswith("    "):
            line = line.strip()
            if continued:
                lines[-1] = lines[-1][:-1] + " " + line
            else:
                lines.append(line)
            continued = line.endswith("\\")
    return lines


def doc_commands() -> list[tuple[str, list[str]]]:
    """(doc, Hydra overrides) of each runner command in the docs' code."""
    found = []
    for doc in DOCS:
        for line in code_lines((REPO / doc).read_text()):
            if "loretta.run" not in line and "loretta-run" not in line:
                continue
            words = shlex.split(line, comments=True)
            starts = [i for i, w in enumerate(words) if w in ("loretta.run", "loretta-run")]
            if not starts or "--help" in words:
                continue
            args = [w for w in words[starts[0] + 1:] if w not in ("-m", "--multirun", "--cfg", "job")]
            found.append((doc, args))
    return found


def sweep_points(args: list[str]) -> list[list[str]]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices = []
    for override in OverridesParser.create().parse_overrides(args):
        if override.is_sweep_override():
            choices.append([f"{override.get_key_element()}={v}" for v in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(point) for point in itertools.product(*choices)]


COMMANDS = doc_commands()


def test_the_docs_have_commands():
    assert len(COMMANDS) >= 25 and {doc for doc, _ in COMMANDS} >= {"README.md", "configs/README.md"}


@pytest.mark.parametrize("doc,args", COMMANDS, ids=[" ".join(args)[:90] for _, args in COMMANDS])
def test_doc_command_is_accepted(doc, args, monkeypatch):
    from loretta.experiment import checks

    monkeypatch.chdir(REPO)  # task.data_dir=../shared/data is read against the repository, as the docs run it
    for point in sweep_points(args):
        cfg = compose(point)
        with open_dict(cfg):
            cfg.pop("hydra", None)
        OmegaConf.to_container(cfg, resolve=True)
        checks.validate(cfg)
        assert checks.learning_rate(cfg) > 0, (doc, point)


def test_configs_readme_lists_every_choice_of_every_group():
    text = (REPO / "configs" / "README.md").read_text()
    for group in GROUPS:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{group}/` |"))
        choices = row.split("|")[2]
        named = {word for span in re.findall(r"`([^`]*)`", choices) for word in span.split()}
        options = {p.stem for p in (CONFIGS / group).glob("*.yaml")}
        assert options <= named, (group, sorted(options - named))
        assert {w for w in named if re.fullmatch(r"[a-z0-9_.-]+", w) and w != "make"} - {"run"} <= options, \
            (group, sorted(named - options))


def test_environment_yml_pins_what_requirements_txt_pins():
    """environment.yml's header says it carries requirements.txt's pins: the same packages, the same versions."""
    requirements = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    dependencies = yaml.safe_load((REPO / "environment.yml").read_text())["dependencies"]
    conda_pins = next(d["pip"] for d in dependencies if isinstance(d, dict) and "pip" in d)
    assert conda_pins == [*requirements, "-e ."]
