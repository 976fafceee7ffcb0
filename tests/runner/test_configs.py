"""The config groups: every task has a config, every method's keys are hyper-parameters its builder
takes, the presets compose, output folders carry no timestamps, and bad input names the valid choices."""

from __future__ import annotations

import re

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from .helpers import CONFIGS, compose, run

PAPER_MODELS = {"deberta-base", "roberta-base", "roberta-large", "opt-1.3b", "opt-2.7b", "opt-6.7b", "llama2-7b",
                "llama2-13b", "llama2-70b", "minilm", "mpnet", "smollm2"}
PAPER_METHODS = {"loretta_adp", "loretta_rep", "lora", "adapters", "prefix", "ia3", "prompt", "bitfit", "ft"}


def options(group: str) -> set[str]:
    return {p.stem for p in (CONFIGS / group).glob("*.yaml")}


def test_groups_hold_the_contract():
    from tasks import task_names

    assert PAPER_MODELS <= options("model") and {"tiny-bert", "tiny-llama"} <= options("model")
    assert PAPER_METHODS <= options("method")
    assert set(task_names()) <= options("task"), set(task_names()) - options("task")
    assert {"glue", "mezo"} <= options("train")
    assert {"table1_deberta", "table2_llama2_7b", "table3_llama2_13b", "ablation_rank", "default"} <= options("experiment")


@pytest.mark.parametrize("task", sorted(options("task")))
def test_task_configs_name_known_tasks(task):
    from tasks import get_task

    cfg = compose([f"task={task}"])
    assert get_task(cfg.task.name).name == cfg.task.name == task


@pytest.mark.parametrize("method", sorted(options("method")))
def test_method_keys_are_builder_hyper_parameters(method):
    from loretta.experiment import methods

    cfg = compose([f"method={method}"])
    builder = methods.METHODS[cfg.method.builder]
    keys = set(cfg.method) - set(methods.RESERVED)
    accepted = methods._accepted(builder)
    assert accepted is not None and keys <= set(accepted), keys - set(accepted or [])
    assert set(cfg.method.default_lr) == {"glue", "mezo"}


@pytest.mark.parametrize("experiment", sorted(options("experiment")))
def test_experiments_compose(experiment):
    cfg = compose([f"experiment={experiment}"])
    assert cfg.output_dir.endswith(f"/{cfg.method.name}{cfg.variant}/seed0")
    assert not re.search(r"\d{4}-\d{2}-\d{2}|\d{2}-\d{2}-\d{2}", cfg.output_dir)  # no dates / times


def test_output_dir_and_overrides():
    cfg = compose(["model=tiny-bert", "task=rte", "method=loretta_rep", "seed=7", "method.tensor_rank=8",
                   "train.max_steps=3", "train.epochs=2", "train.batch_size=4", "train.grad_accum=2", "train.lr=1e-3",
                   "train.eval_every=5", "train.precision=bf16", "logger.wandb=offline", "task.data_dir=/data"])
    assert cfg.output_dir == "runs/rte/tiny-bert/loretta_rep/seed7"
    assert cfg.method.tensor_rank == 8 and cfg.train.grad_accum == 2 and cfg.train.precision == "bf16"
    assert compose(["output_dir=/somewhere/else"]).output_dir == "/somewhere/else"


def test_quantized_runs_are_filed_apart():
    assert compose(["model=minilm", "model.quantization=4bit"]).output_dir == "runs/sst2/minilm-4bit/lora/seed0"
    assert compose(["model=minilm", "model.quantization=8bit"]).model_tag == "minilm-8bit"
    assert compose(["model=minilm"]).model_tag == "minilm"


def test_full_fine_tuning_of_a_quantized_model_is_refused(tmp_path):
    from loretta.experiment import ConfigError

    with pytest.raises(ConfigError, match="method=ft trains every weight.*model.quantization=4bit"):
        run(["model=minilm", "model.quantization=4bit", "method=ft"], tmp_path)


def test_slurm_launcher_config_composes():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert "submitit" in cfg.hydra.launcher._target_.lower() and "Slurm" in cfg.hydra.launcher._target_
    assert cfg.hydra.launcher.gpus_per_node == 1


@pytest.mark.parametrize("group,bad", [("model", "gpt5"), ("task", "imagenet"), ("method", "magic")])
def test_unknown_choice_lists_the_valid_ones(group, bad):
    with pytest.raises(MissingConfigException) as err:
        compose([f"{group}={bad}"])
    message = str(err.value)
    assert bad in message and {"model": "tiny-bert", "task": "sst2", "method": "loretta_adp"}[group] in message


def test_unknown_key_is_refused():
    with pytest.raises(ConfigCompositionException, match="lrr"):
        compose(["train.lrr=0.1"])


@pytest.mark.parametrize("override,words", [
    ("train.precision=fp8", ["fp8", "fp32", "bf16", "fp16"]),
    ("logger.wandb=maybe", ["maybe", "on", "offline", "off"]),
    ("train.select_by=luck", ["luck", "metric", "loss"]),
    ("train.batch_size=0", ["train.batch_size", "0"]),
    ("task.data_dir=/no/such/folder", ["/no/such/folder", "not a directory"]),
    ("model.dtype=bfloat16", ["model.dtype=bfloat16", "train.precision=bf16"]),
    ("task.split_validation=0", ["task.split_validation", "0"]),
    ("train.max_steps=-2", ["train.max_steps=-2", "0: no training"]),
    ("model.quantization=3bit", ["model.quantization='3bit'", "4bit", "8bit"]),
    ("model.quantization=4bit", ["model.quantization=4bit", "source=tiny", "model.quantization=null"]),
])
def test_bad_values_name_the_choices(override, words, tmp_path):
    from loretta.experiment import ConfigError

    with pytest.raises(ConfigError) as err:
        run(["model=tiny-bert", "task=sst2", override], tmp_path)
    assert all(w in str(err.value) for w in words), str(err.value)
    assert not list(tmp_path.rglob("results.json"))


def test_bad_method_hyper_parameter(tmp_path, kinds):
    from loretta.experiment import ConfigError

    with pytest.raises(ConfigError, match="tensor_rank"):
        run(["model=tiny-bert", "task=sst2", "method=loretta_adp", "method.tensor_rank=0",
             f"task.data_dir={kinds['classification'][1]}"], tmp_path)


def test_task_without_encoder_form(tmp_path, kinds):
    from loretta.experiment import ConfigError

    task, data_dir, extra = kinds["generation"]
    with pytest.raises(ConfigError, match="decoder"):
        run(["model=tiny-bert", f"task={task}", f"task.data_dir={data_dir}", *extra], tmp_path)


def test_boolq_trains_on_a_carved_part_of_its_validation_split(tmp_path, shared_data):
    """../shared/data has no BoolQ train split: task.split_validation holds out part of validation."""
    record = run(["model=tiny-llama", "task=boolq", f"task.data_dir={shared_data}", "train.protocol=mezo",
                  "task.split_validation=3000"], tmp_path)
    assert record["status"] == "completed" and record["config"]["task"]["split_validation"] == 3000
    assert record["num_train_examples"] == 8 and record["num_eval_examples"] == 8
