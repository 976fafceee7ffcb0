"""The path to the paper's tables: every run the table presets and the paper-interface scripts launch
composes to the paper's setting (model, task, method, learning rate, protocol, rank, batch), and the
scripts refuse what they cannot run with a message naming the bad value."""

from __future__ import annotations

import itertools
import re
import subprocess

import pytest
from omegaconf import OmegaConf

from .helpers import ENV, REPO, compose

TABLE_PRESETS = ["table1_deberta", "table1_roberta", "table2_llama2_7b", "table3_llama2_13b", "table3_llama2_70b",
                 "ablation_rank", "ablation_shape", "ablation_head_norm"]
LLAMA_PRESETS = {"table2_llama2_7b": "llama2-7b", "table3_llama2_13b": "llama2-13b", "table3_llama2_70b": "llama2-70b"}
# the paper's tables: which tasks and methods each preset sweeps (paper_results.md; P-Tuning has no method
# here, and prefix tuning does not reach DeBERTa v1's attention)
PAPER_SWEEPS = {
    "table1_deberta": ("deberta-base", "mnli,sst2,mrpc,cola,qnli,qqp,rte,stsb",
                       "ft,adapters_r8,lora,lora_r4,prompt,bitfit,loretta_adp,loretta_rep"),
    "table1_roberta": ("roberta-base", "mnli,sst2,mrpc,cola,qnli,qqp,rte,stsb", "bitfit,lora,loretta_adp,loretta_rep"),
    "table2_llama2_7b": ("llama2-7b", "cb,boolq,wsc,copa,record,squad,drop",
                         "ft,adapters,lora,prefix,ia3,loretta_rep,loretta_adp"),
    "table3_llama2_13b": ("llama2-13b", "copa,record,squad,drop", "adapters,lora,ia3,loretta_rep,loretta_adp"),
    "table3_llama2_70b": ("llama2-70b", "squad,drop", "adapters,lora,ia3,loretta_rep,loretta_adp"),
}


def sweep_params(experiment: str) -> dict[str, list[str]]:
    """The preset's hydra.sweeper.params, each as its list of values."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from .helpers import CONFIGS

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    return {key: str(value).split(",") for key, value in cfg.hydra.sweeper.params.items()}


def every_job(experiment: str) -> list[list[str]]:
    """The overrides of every job `python -m loretta.run -m experiment=<experiment>` launches."""
    params = sweep_params(experiment)
    return [[f"experiment={experiment}", *(f"{k}={v}" for k, v in zip(params, values))]
            for values in itertools.product(*params.values())]


def covering_jobs(experiment: str) -> list[list[str]]:
    """Jobs of the sweep in which every value of every swept key occurs at least once (the other keys at
    their first value): each task, method and setting composed in the preset, at a fraction of the cost
    of every combination (a composition takes ~0.15 s)."""
    params = sweep_params(experiment)
    first = {k: v[0] for k, v in params.items()}
    chosen = []
    for key, values in params.items():
        for value in values:
            job = [f"experiment={experiment}", *(f"{k}={value if k == key else first[k]}" for k in params)]
            if job not in chosen:
                chosen.append(job)
    return chosen


_COMPOSED: dict[tuple[str, ...], object] = {}


def composed(overrides: list[str]):
    """The job's config, resolved (cached: several tests look at the same jobs)."""
    key = tuple(overrides)
    if key not in _COMPOSED:
        cfg = compose(list(overrides))
        OmegaConf.resolve(cfg)
        _COMPOSED[key] = cfg
    return _COMPOSED[key]


def jobs(experiment: str):
    for overrides in covering_jobs(experiment):
        yield overrides, composed(overrides)


def settings(cfg) -> dict:
    from loretta.experiment.checks import learning_rate

    t = cfg.train
    return {"model": cfg.model_tag, "task": cfg.task.name, "method": cfg.method.name, "variant": cfg.variant,
            "output_dir": cfg.output_dir, "lr": learning_rate(cfg), "protocol": t.protocol, "epochs": t.epochs,
            "batch_size": t.batch_size, "grad_accum": t.grad_accum, "precision": t.precision,
            "max_length": t.max_length, "num_train": t.num_train, "num_dev": t.num_dev, "num_test": t.num_test,
            "select_by": t.select_by, "eval_split": t.eval_split, "eval_every": t.eval_every,
            "warmup_steps": t.warmup_steps, "gradient_checkpointing": t.gradient_checkpointing,
            "method_settings": OmegaConf.to_container(cfg.method, resolve=True)}


# -- the presets sweep the paper's rows and columns, each job under the paper's protocol -------------------


@pytest.mark.parametrize("experiment", sorted(PAPER_SWEEPS))
def test_table_presets_sweep_the_papers_rows_and_columns(experiment):
    model, tasks, methods = PAPER_SWEEPS[experiment]
    params = sweep_params(experiment)
    assert params == {"task": tasks.split(","), "method": methods.split(",")}
    assert compose([f"experiment={experiment}"]).model.name == model


GLUE = {"protocol": "glue", "epochs": 10, "batch_size": 8, "grad_accum": 1, "max_length": 128, "warmup_steps": 500,
        "num_train": None, "num_dev": None, "num_test": None, "select_by": "metric", "eval_split": "dev",
        "eval_every": 500, "precision": "fp32"}
MEZO = {"protocol": "mezo", "epochs": 3, "num_train": None, "num_dev": None, "num_test": None, "select_by": "loss",
        "eval_split": "test", "eval_every": 200, "warmup_steps": 0, "precision": "bf16"}


@pytest.mark.parametrize("experiment", TABLE_PRESETS)
def test_every_task_method_and_setting_of_the_presets_composes_to_the_protocol(experiment):
    """Each task, method and ablation setting a preset sweeps composes and passes the run's checks, on the
    intended model, at the paper's learning rate (1e-4; full fine-tuning 1e-6 on GLUE, 5e-6 on LLaMA) and
    protocol, into a folder of its own."""
    from loretta.experiment.checks import validate

    expected_model = PAPER_SWEEPS.get(experiment, ("deberta-base",))[0]
    folders = set()
    for overrides, cfg in jobs(experiment):
        validate(cfg)
        s = settings(cfg)
        protocol = MEZO if s["protocol"] == "mezo" else GLUE
        assert {k: s[k] for k in protocol} == protocol, overrides
        swept = dict(o.split("=", 1) for o in overrides[1:])
        assert s["model"] == expected_model and s["method"] == swept.get("method", s["method"]), overrides
        assert s["lr"] == ({"glue": 1e-6, "mezo": 5e-6}[s["protocol"]] if s["method"] == "ft" else 1e-4), overrides
        folders.add(s["output_dir"])
    assert len(folders) == len(covering_jobs(experiment))


# -- LoRETTA_rep's tensor rank on LLaMA-2 ---------------------------------------------------------------


@pytest.mark.parametrize("experiment", sorted(LLAMA_PRESETS))
def test_llama_presets_run_loretta_rep_at_the_papers_rank(experiment):
    """The paper's LLaMA-2-7B LoRETTA_rep count (0.51M = 516,096) is rank 8; its encoders and LoRETTA_adp use 5."""
    ranks = {cfg.method.name: cfg.method.tensor_rank for _, cfg in jobs(experiment) if "tensor_rank" in cfg.method}
    assert ranks == {"loretta_rep": 8, "loretta_adp": 5}
    # the paper-interface script composes the same run (model=llama2-7b ... without a preset)
    assert compose([f"model={LLAMA_PRESETS[experiment]}", "method=loretta_rep", "train=mezo"]).method.tensor_rank == 8
    # an explicit rank still wins
    assert compose([f"experiment={experiment}", "method=loretta_rep", "method.tensor_rank=5"]).method.tensor_rank == 5


def test_encoder_presets_keep_rank_5():
    for experiment in ("table1_deberta", "table1_roberta", "ablation_head_norm", "ablation_shape"):
        assert {cfg.method.tensor_rank for _, cfg in jobs(experiment) if "tensor_rank" in cfg.method} == {5}
    assert {cfg.method.tensor_rank for _, cfg in jobs("ablation_rank")} == {2, 5, 10, 20}


def test_table2_loretta_rep_trains_the_papers_parameter_count():
    """The composed Table 2 LoRETTA_rep config on a full-size LLaMA-2-7B (meta device, no weights): 516,096."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from loretta.experiment import methods

    cfg = compose(["experiment=table2_llama2_7b", "task=copa", "method=loretta_rep"])
    config = AutoConfig.for_model("llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                  num_attention_heads=32, num_key_value_heads=32, vocab_size=32000)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model = methods.apply(model, cfg.method, methods.Target(family="decoder", model_type="llama"))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 516_096


# -- the two routes to Tables 2-3 (the presets and the paper-interface script) agree ---------------------


def dry_run(script: str, *args: str, **variables) -> subprocess.CompletedProcess:
    env = {k: v for k, v in ENV.items() if k not in ("MODEL", "TASK", "MODE", "EPOCH", "BS", "LR", "SEED", "RANK")}
    return subprocess.run(["bash", f"scripts/{script}", *args], cwd=REPO, env={**env, "DRY_RUN": "1", **variables},
                          capture_output=True, text=True, timeout=60)


def script_jobs(script: str, **variables) -> list[list[str]]:
    """The Hydra overrides of every job the script would launch (a comma list expanded, as Hydra does)."""
    proc = dry_run(script, **variables)
    assert proc.returncode == 0, proc.stderr
    out = []
    for line in proc.stdout.strip().splitlines():
        args = [a for a in line.split(" -m loretta.run ")[1].split() if a != "-m"]
        lists = [[f"{a.split('=', 1)[0]}={v}" for v in a.split("=", 1)[1].split(",")] for a in args]
        out += [list(job) for job in itertools.product(*lists)]
    return out


def test_llama_presets_and_the_large_script_launch_the_same_runs():
    """`python -m loretta.run -m experiment=table2_llama2_7b` (and the Table 3 presets) and
    `bash scripts/run_all_large_exp.sh` launch the same runs with the same settings: the paper script's
    per-task batch size and gradient accumulation (CB and SQuAD at batch 1, ReCoRD 1 x 4, DROP 1 x 8)."""
    def key(overrides, model=None):
        found = dict(o.split("=", 1) for o in overrides)
        return found.get("model", model), found["task"], found["method"]

    script = {key(job): job for job in script_jobs("run_all_large_exp.sh")}
    preset = {key(job, model): job for experiment, model in LLAMA_PRESETS.items() for job in every_job(experiment)}
    assert sorted(preset) == sorted(script)
    differ = {}
    for experiment, model in LLAMA_PRESETS.items():
        for job, cfg in jobs(experiment):
            ours, theirs = settings(cfg), settings(composed(script[key(job, model)]))
            if ours != theirs:
                differ[key(job, model)] = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    assert not differ, differ
    batches = {(cfg.task.name, cfg.train.batch_size, cfg.train.grad_accum) for _, cfg in jobs("table2_llama2_7b")}
    assert batches == {("cb", 1, 1), ("boolq", 8, 1), ("wsc", 8, 1), ("copa", 8, 1), ("record", 1, 4),
                       ("squad", 1, 1), ("drop", 1, 8)}


# -- the paper-interface scripts: bad input stops them before anything runs; one failure stops nothing else ---


@pytest.mark.parametrize("script, variables, words", [
    ("run_all_bert_exp.sh", {"MODE": "lora", "RANK": "8"}, ["RANK=8", "'lora'", "loretta_adp, loretta_rep"]),
    ("run_all_bert_exp.sh", {"MODE": "loretta_adp,ft", "RANK": "8"}, ["RANK=8", "'ft'"]),
    ("run_all_bert_exp.sh", {"RANK": "10"}, ["RANK=10", "Table 1", "experiment=ablation_rank"]),
    ("run_all_large_exp.sh", {"MODE": "lora,loretta_rep", "RANK": "8"}, ["RANK=8", "'lora'", "loretta_adp"]),
    ("run_all_large_exp.sh", {"RANK": "8"}, ["RANK=8", "Tables 2 and 3"]),
    ("run_all_bert_exp.sh", {"MODE": "magic"}, ["MODE: 'magic' is not one of:", "loretta_adp", "lora_r4"]),
    ("run_all_bert_exp.sh", {"MODE": "ptune"}, ["MODE=ptune", "P-Tuning", "MODE=prompt"]),
    ("run_all_large_exp.sh", {"MODE": "ptune"}, ["MODE=ptune", "P-Tuning", "MODE=prompt"]),
    ("run_all_bert_exp.sh", {"TASK": "SST2,IMAGENET"}, ["TASK: 'imagenet' is not one of:", "sst2", "stsb"]),
    ("run_all_bert_exp.sh", {"MODEL": "gpt5"}, ["MODEL: 'gpt5' is not one of:", "deberta-base", "roberta-base"]),
    ("run_all_large_exp.sh", {"TASK": "Copa,XYZ"}, ["TASK: 'xyz' is not one of:", "copa", "drop"]),
    ("run_all_large_exp.sh", {"MODE": "loretta_adp,magic"}, ["MODE: 'magic' is not one of:", "loretta_rep"]),
    ("run_all_large_exp.sh", {"MODEL": "meta-llama/Llama-3-8b"}, ["MODEL: 'meta-llama/Llama-3-8b' is not one of:",
                                                                  "llama2-7b"]),
], ids=["bert-rank-lora", "bert-rank-ft", "bert-rank-table", "large-rank-lora", "large-rank-tables", "bert-mode",
        "bert-ptune", "large-ptune", "bert-task", "bert-model", "large-task", "large-mode", "large-model"])
def test_scripts_refuse_bad_input_before_anything_runs(script, variables, words):
    """Nothing is launched (the dry run prints no command): a wrong name in a comma list would otherwise be found
    only after the runs before it (hours on a GPU), and RANK would reach methods without a tensor rank,
    where Hydra stops with "Key 'tensor_rank' is not in struct"."""
    proc = dry_run(script, **variables)
    assert proc.returncode == 2 and proc.stdout == "", (proc.stdout, proc.stderr)
    assert all(w in proc.stderr for w in words), proc.stderr


@pytest.mark.parametrize("script, variables, failing, launched", [
    ("run_all_large_exp.sh", {}, "task=cb", 13),  # the whole of Tables 2 and 3: one sweep per (model, task)
    ("run_all_large_exp.sh", {"TASK": "CB,Copa", "MODE": "lora"}, "task=cb", 2),
    ("run_all_bert_exp.sh", {}, "experiment=table1_deberta", 2),
], ids=["large-tables", "large-tasks", "bert-table"])
def test_a_failing_sweep_stops_no_other(tmp_path, script, variables, failing, launched):
    """As in a Hydra sweep (a failing job does not stop the others), a sweep with a failing run (a model that does
    not fit, a dataset the Hub cannot serve) does not stop the sweeps after it; the script ends with status 1
    naming the failed ones."""
    calls = tmp_path / "calls"
    fake = tmp_path / "python"
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {calls}\ncase " $* " in *" {failing} "*) exit 1 ;; esac\n')
    fake.chmod(0o755)
    env = {k: v for k, v in ENV.items() if k not in ("MODEL", "TASK", "MODE", "EPOCH", "BS", "LR", "SEED", "RANK")}
    proc = subprocess.run(["bash", f"scripts/{script}"], cwd=REPO, env={**env, "PYTHON": str(fake), **variables},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert len(calls.read_text().splitlines()) == launched
    failed = re.findall(r"runs failed in (?:the sweeps of )?(.*) \(above\)", proc.stderr)
    assert failed and ("cb" in failed[0] or "table1_deberta" in failed[0]) and "copa" not in failed[0], proc.stderr


# -- the learning-rate search the GLUE protocol documents ----------------------------------------------------


def test_the_documented_lr_search_files_each_lr_apart_as_one_table_setting():
    """The lr search configs/train/glue.yaml and the Table 1 preset document: each lr its own folder, and
    make_tables.py reads the folders as one setting of one cell (the plain Table 1 cell)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_tables", REPO / "scripts" / "make_tables.py")
    make_tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_tables)
    for doc in ("configs/train/glue.yaml", "configs/experiment/table1_deberta.yaml"):
        [command] = re.findall(r"python -m loretta\.run -m (experiment=table1_deberta .*'variant=\S+')",
                               (REPO / doc).read_text())
        args = [a.strip("'") for a in command.split()]
        params = {a.split("=", 1)[0]: a.split("=", 1)[1].split(",") for a in args}
        folders = set()
        for lr in params["train.lr"]:
            cfg = compose([*(f"{k}={v[0]}" for k, v in params.items() if k != "train.lr"), f"train.lr={lr}"])
            assert cfg.train.lr == float(lr) and make_tables.setting(cfg.variant) == ""
            folders.add(cfg.output_dir)
        assert len(folders) == len(params["train.lr"]) == 4
