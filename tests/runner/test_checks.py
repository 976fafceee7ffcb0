"""validate(): every setting of a composed config is checked before anything is loaded, and a bad one
stops the run with an error naming the key, the value and what is valid. Most tests compose a config
and validate it in-process (no model, no data); one runs the CLI for the exit code and message format."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from loretta.experiment.checks import ConfigError, validate

from .helpers import CONFIGS, REPO, cli, compose


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    """The presets' task.data_dir (../shared/data) is relative to the repository, as a run reads it."""
    monkeypatch.chdir(REPO)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def train_defaults() -> list[tuple[str, object]]:
    """(key, value) of every train setting the train/*.yaml files give a value."""
    return [(key, value) for name in options("train")
            for key, value in OmegaConf.to_container(OmegaConf.load(CONFIGS / "train" / f"{name}.yaml")).items()
            if key != "defaults"]


def flags() -> list[str]:
    """Every boolean setting of config.yaml (top level) and train/*.yaml, as a dotted key."""
    top = OmegaConf.to_container(OmegaConf.load(CONFIGS / "config.yaml"), resolve=False)
    found = {key for key, value in top.items() if isinstance(value, bool)}
    found |= {f"train.{key}" for key, value in train_defaults() if isinstance(value, bool)}
    return sorted(found)


def train_integers() -> list[str]:
    """Every train setting some train/*.yaml sets to an integer (counts, sizes, steps, lengths)."""
    return sorted({key for key, value in train_defaults() if isinstance(value, int) and not isinstance(value, bool)})


def refused(overrides: list[str]) -> str:
    """The message validate() refuses a composed config with."""
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides))
    return str(err.value)


# -- what the repository sets is valid -----------------------------------------------------------


@pytest.mark.parametrize("group,choice", [(g, c) for g in ("model", "task", "method", "train") for c in options(g)])
def test_every_group_choice_validates(group, choice):
    # bf16: valid for every model, and the LLaMA / OPT configs load their weights in bfloat16
    validate(compose([f"{group}={choice}", "train.precision=bf16"]))


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_preset_validates(experiment):
    validate(compose([f"experiment={experiment}"]))


def test_null_lr_still_means_the_methods_default():
    cfg = compose(["train.lr=null"])
    validate(cfg)
    assert cfg.train.lr is None


# -- 1. booleans ---------------------------------------------------------------------------------


def test_the_flags_found_in_the_configs():
    """The flag tests below cover what the files hold; this pins that they found the known ones."""
    assert {"resume", "train.save_adapter", "train.keep_checkpoint", "train.eval_at_start",
            "train.gradient_checkpointing", "train.progress_bar"} <= set(flags())


@pytest.mark.parametrize("key", flags())
@pytest.mark.parametrize("value", ["maybe", "no"])
def test_flags_must_be_booleans(key, value):
    message = refused([f"{key}={value}"])
    assert f"{key}='{value}'" in message and "true or false" in message, message


def test_overwrite_must_be_a_boolean():
    """`++`: adds the key before configs/config.yaml has it, sets it once it does."""
    assert "overwrite='maybe'" in refused(["++overwrite=maybe"])
    validate(compose(["++overwrite=true"]))


# -- 2, 3. numbers: types and ranges -------------------------------------------------------------


def test_the_integers_found_in_the_configs():
    assert {"batch_size", "eval_batch_size", "grad_accum", "max_length", "num_train", "epochs", "max_steps",
            "eval_every", "warmup_steps", "max_new_tokens", "log_every", "num_workers",
            "early_stopping_patience"} <= set(train_integers())


@pytest.mark.parametrize("key", train_integers())
def test_train_integers_refuse_fractions(key):
    message = refused([f"train.{key}=2.5"])
    assert f"train.{key}=2.5" in message and "integer" in message, message


@pytest.mark.parametrize("override,words", [
    ("seed=-1", ["seed=-1", "integer in [0, 4294967295]"]),
    (f"seed={2**32}", [f"seed={2**32}", "[0, 4294967295]"]),
    ("seed=1.5", ["seed=1.5", "integer"]),
    ("train.log_every=0", ["train.log_every=0", ">= 1"]),
    ("train.max_new_tokens=0", ["train.max_new_tokens=0", ">= 1"]),
    ("train.num_test=4.5", ["train.num_test=4.5", "integer >= 1"]),
    ("task.split_validation=2.5", ["task.split_validation=2.5", "integer"]),
    ("train.adam_eps=abc", ["train.adam_eps='abc'", "number > 0"]),
    ("train.adam_eps=0", ["train.adam_eps=0", "number > 0"]),
    ("train.adam_betas=abc", ["train.adam_betas='abc'", "two numbers in [0, 1)"]),
    ("train.adam_betas=[0.9,1.0]", ["train.adam_betas=[0.9, 1.0]", "two numbers in [0, 1)"]),
    ("train.adam_betas=[0.9]", ["train.adam_betas=[0.9]", "two numbers"]),
    ("train.weight_decay=abc", ["train.weight_decay='abc'", ">= 0"]),
    ("train.max_grad_norm=nan", ["train.max_grad_norm=nan", ">= 0"]),
    ("train.warmup_ratio=5", ["train.warmup_ratio=5", "[0, 1]"]),
    ("train.warmup_ratio=-0.1", ["train.warmup_ratio=-0.1", "[0, 1]"]),
    ("train.lr=0", ["train.lr=0", "number > 0"]),
    ("train.lr=abc", ["train.lr='abc'", "number > 0"]),
    ("model.dtype=abc", ["model.dtype='abc'", "float32, bfloat16, float16"]),
    ("model.dtype=float64", ["model.dtype='float64'", "float32, bfloat16, float16"]),
])
def test_bad_numbers_and_choices_name_the_valid_ones(override, words):
    message = refused([override])
    assert all(w in message for w in words), message


@pytest.mark.parametrize("override", ["train.warmup_ratio=0", "train.warmup_ratio=1", "train.lr=1",
                                      "train.adam_betas=[0,0.99]", "train.eval_every=0", "train.max_steps=0",
                                      "train.epochs=0", "model.dtype=float16"])
def test_edge_values_that_mean_something_stay_valid(override):
    extra = ["train.max_steps=5"] if override == "train.epochs=0" else []
    extra += ["train.precision=bf16"] if override.startswith("model.dtype") else []
    validate(compose([override, *extra]))


# -- 4. keys added with `+` ----------------------------------------------------------------------


@pytest.mark.parametrize("override,key,a_valid_key", [
    ("+train.lrr=1e-3", "train.lrr", "lr"),
    ("+task.data_dirr=/tmp", "task.data_dirr", "data_dir"),
    ("+model.dtypes=float32", "model.dtypes", "dtype"),
    ("+logger.projet=x", "logger.projet", "project"),
    ("+sed=1", "sed", "seed"),
    ("+output_rot=/tmp/runs", "output_rot", "output_root"),
])
def test_added_unknown_keys_are_refused(override, key, a_valid_key):
    message = refused([override])
    assert key in message and a_valid_key in message, message


@pytest.mark.parametrize("overrides,words", [
    (["+shape=s64_12_64"], ["top-level key shape", "experiment=ablation_shape", "experiment_preset=None"]),
    (["experiment=ablation_rank", "+shape=s64_12_64"], ["shape", "experiment=ablation_shape", "ablation_rank"]),
    (["+grad_accum_per_task={drop:8}"], ["grad_accum_per_task", "table2_llama2_7b / table3_llama2_13b"]),
])
def test_a_presets_own_key_without_the_preset_is_refused(overrides, words):
    """`shape` is read by ablation_shape's interpolations only: without that preset it would be ignored."""
    message = refused(overrides)
    assert all(w in message for w in words), message


def test_every_preset_names_itself():
    """The check above knows the run's preset by `experiment_preset`, which each preset sets to its name."""
    for preset in options("experiment"):
        assert compose([f"experiment={preset}"]).experiment_preset == preset
    assert compose([]).experiment_preset is None


def test_keys_only_some_configs_of_a_group_have_are_valid():
    """model.targets is in mpnet.yaml only; another model may set it too. Top-level keys that only an
    experiment preset sets (ablation_shape's `shape`) pass with that preset, as every preset does."""
    validate(compose(["model=minilm", "+model.targets={lora:[query,value]}"]))
    for preset in sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml")):
        validate(compose([f"experiment={preset}"]))


# -- method hyper-parameters (methods.apply) ----------------------------------------------------


def test_method_type_errors_name_the_hyper_parameter_and_value():
    from torch import nn

    from loretta.experiment import methods

    model = nn.Sequential()
    model.add_module("lin", nn.Linear(4, 4))
    target = methods.Target(family="decoder", model_type="custom", targets={"lora": ["lin"]})
    with pytest.raises(ConfigError) as err:
        methods.apply(model, {"name": "lora", "r": "abc"}, target)
    assert "method 'lora'" in str(err.value) and "method.r='abc'" in str(err.value), str(err.value)


@pytest.mark.parametrize("name,hyper,words", [
    ("prompt", {"num_virtual_tokens": 0}, ["method.num_virtual_tokens=0", "integer >= 1"]),
    ("prefix", {"num_virtual_tokens": -1}, ["method.num_virtual_tokens=-1", "integer >= 1"]),
    ("prefix", {"num_virtual_tokens": 2.5}, ["method.num_virtual_tokens=2.5", "integer >= 1"]),
    ("prefix", {"init_std": -0.1}, ["method.init_std=-0.1", ">= 0"]),
])
@pytest.mark.parametrize("family", ["encoder", "decoder"])
def test_prompt_learning_sizes_are_checked(name, hyper, words, family):
    """PEFT takes 0 virtual tokens without a word: the run would train the classification head alone."""
    from torch import nn

    from loretta.experiment import methods

    target = methods.Target(family=family, model_type="custom", num_labels=2)
    with pytest.raises(ConfigError) as err:
        methods.apply(nn.Linear(4, 2), {"name": name, **hyper}, target)
    assert all(w in str(err.value) for w in words), str(err.value)


# -- the pairing of model and task, and the task's data -----------------------------------------


@pytest.mark.parametrize("family,task,objective,words", [
    ("encoder", "sst2", "lm", ["task.objective='lm'", "decoder and seq2seq models only", "task.objective=auto"]),
    ("encoder", "rte", "candidates", ["task.objective='candidates'", "decoder and seq2seq models only"]),
    ("decoder", "squad", "candidates", ["task.objective='candidates'", "'squad'", "no candidates", "lm"]),
    ("seq2seq", "drop", "candidates", ["task.objective='candidates'", "'drop'", "no candidates"]),
])
def test_an_objective_that_cannot_apply_is_refused(family, task, objective, words):
    from tasks import get_task

    from loretta.experiment import data

    with pytest.raises(ConfigError) as err:
        data.recipe_for(family, get_task(task), objective)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_the_objectives_that_apply_choose_the_recipe():
    from tasks import get_task

    from loretta.experiment import data

    assert data.recipe_for("decoder", get_task("sst2"), "lm").name == "lm_candidates"
    assert data.recipe_for("decoder", get_task("copa"), "candidates").name == "candidates"
    assert data.recipe_for("decoder", get_task("squad"), "lm").name == "lm_generate"
    assert data.recipe_for("encoder", get_task("sst2"), "auto").name == "encoder"


@pytest.mark.parametrize("overrides,words", [
    (["task=boolq", "task.split_validation=5000"], ["boolq: split_validation must be an integer in 1..", "got 5000"]),
    (["task=wic"], ["task 'wic', split 'validation': expected", "looked for"]),
])
def test_data_that_does_not_fit_the_settings_is_a_config_error(shared_data, overrides, words):
    """Not a ValueError / FileNotFoundError traceback: the run stops as for a bad setting (exit status 2)."""
    from tasks import get_task

    from loretta.experiment import loop

    cfg = compose(["model=tiny-llama", "train=quick", f"task.data_dir={shared_data}", *overrides])
    with pytest.raises(ConfigError) as err:
        loop.load_task_splits(cfg, get_task(cfg.task.name))
    assert all(w in str(err.value) for w in words), str(err.value)


# -- the CLI: the message and exit code, and nothing left behind --------------------------------


def test_cli_prints_the_error_and_exits_2(tmp_path):
    proc = cli(["model=tiny-bert", "task=sst2", "train.log_every=0", f"output_root={tmp_path}"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "loretta-run: error: train.log_every=0 must be an integer >= 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())
