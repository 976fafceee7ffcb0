"""scripts/evidence_tables.py: learning-rate choice, seeds, ablation baselines, the paper beside."""

from __future__ import annotations

import json
import subprocess
import sys

from .helpers import ENV, REPO


def record(root, experiment, task, method, seed, lr, acc, params, variant="", init=None, model="minilm", minutes=2.0,
           sizes=(300, 100), dev_curve=()):
    folder = root / experiment / task / model / f"{method}{variant}" / f"seed{seed}"
    folder.mkdir(parents=True)
    method_cfg = {"name": method} if init is None else {"name": method, "init_method": init}
    (folder / "results.json").write_text(json.dumps({
        "task": task, "model": model, "method": method, "seed": seed, "status": "completed", "variant": variant,
        "experiment": experiment, "metrics": {"accuracy": acc}, "primary_metric": "accuracy", "lr": lr,
        "trainable_params": params, "train_time_s": 60 * minutes, "config": {"method": method_cfg},
        "num_train_examples": sizes[0], "num_eval_examples": sizes[1],
        "history": [{"step": step, "epoch": step / 63, "accuracy": value, "loss": 0.6} for step, value in dev_curve]}))


def test_evidence_tables(tmp_path):
    runs = tmp_path / "runs"
    g = "evidence_glue"
    record(runs, g, "sst2", "lora", 0, 1e-3, 0.78, 74_498)
    record(runs, g, "sst2", "lora", 0, 3e-3, 0.80, 74_498, "_lr3e-3")
    record(runs, g, "sst2", "lora", 1, 3e-3, 0.82, 74_498, "_lr3e-3")
    record(runs, g, "sst2", "lora", 1, 1e-3, 0.95, 74_498)  # seed 1 does not choose the lr
    record(runs, g, "rte", "lora", 0, 3e-3, 0.60, 74_498, "_lr3e-3")
    record(runs, g, "mrpc", "lora", 0, 3e-3, 0.70, 74_498, "_lr3e-3")
    record(runs, g, "rte", "lora", 0, 1e-3, 0.99, 74_498)  # not the chosen lr: left out of the comparison
    record(runs, g, "sst2", "loretta_adp", 0, 1e-3, 0.66, 33_454, init="identity")  # not the default init
    record(runs, "evidence_ablation", "sst2", "loretta_adp", 0, 3e-3, 0.75, 33_454, "_init-noise_reduction_lr3e-3",
           init="noise_reduction")
    record(runs, g, "sst2", "loretta_adp", 1, 3e-3, 0.77, 33_454, "_lr3e-3", init="noise_reduction")
    record(runs, "evidence_ablation", "sst2", "loretta_adp", 0, 3e-3, 0.70, 30_000, "_lr3e-3_shape-4-4-4-6",
           init="noise_reduction")
    record(runs, "evidence_decoder", "copa", "loretta_adp", 0, 3e-3, 0.64, 80_000, "_lr3e-3",
           init="noise_reduction", model="smollm2", minutes=9.0)
    record(runs, "evidence_decoder", "copa", "ft", 0, 0.0, 0.55, 134_515_008, "_zero-shot", model="smollm2")
    # recorded as the README now says (`train.max_steps=0`, lr left at its default): the lr is no setting
    # of a run that never steps, so it joins the lr-0 seed above in one zero-shot row
    record(runs, "evidence_decoder", "copa", "ft", 1, 1e-3, 0.57, 134_515_008, "_zero-shot", model="smollm2")
    record(runs, "evidence_decoder", "cb", "lora", 0, 3e-3, 0.5, 460_800, "_lr3e-3", model="smollm2", sizes=(64, 56))
    out = tmp_path / "evidence.md"
    proc = subprocess.run([sys.executable, "scripts/evidence_tables.py", "--results", str(runs), "--out", str(out)],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    md = out.read_text()
    grid = md.split("### SST-2 learning-rate grid")[1].split("###")[0]
    assert "| lora | — | 74,498 | 86.5 ± 12.0 (2) | **81.0 ± 1.4 (2)** | 2.0 |" in grid
    assert "| loretta_adp | identity | 33,454 | 66.0 | — |" in grid
    assert "| loretta_adp | noise_reduction | 33,454 | — | **76.0 ± 1.4 (2)** |" in grid
    comparison = md.split("### Encoder comparison")[1].split("###")[0]
    assert "| lora | 0.003 | 74,498 | 1.00× | 81.0 ± 1.4 (2) | 60.0 | 70.0 | 70.3 | 2.0 / 2.0 / 2.0 | 0.3M |" in comparison
    assert "| loretta_adp | 0.003 | 33,454 | 0.45× | 76.0 ± 1.4 (2) | — | — | — |" in comparison
    ablation = md.split("### LoRETTA ablations")[1].split("###")[0]
    assert "| loretta_adp | noise_reduction | 0.003 | shape-4-4-4-6 | 30,000 | 70.0 | 75.0 |" in ablation
    decoder = md.split("### Decoder comparison")[1]
    assert "| copa | 300 / 100 | loretta_adp | 0.003 | 80,000 | 64.0 | 9.0 | 0.88M | 87 |" in decoder
    assert "### A larger encoder" not in md  # MiniLM only
    assert decoder.index("| copa | 300 / 100 | zero-shot | 0 | 0 | 56.0 ± 1.4 (2) |") < decoder.index("| copa | 300 / 100 | loretta_adp")
    assert decoder.count("zero-shot") == 1
    assert "| cb | 64 / 56 | lora | 0.003 | 460,800 | 50.0 | 2.0 | 4.19M | 67.86 |" in decoder


def test_evidence_tables_longer_training_shows_each_evaluation_beside_the_short_runs(tmp_path):
    runs = tmp_path / "runs"
    record(runs, "evidence_glue", "sst2", "lora", 0, 3e-3, 0.80, 74_498, "_lr3e-3")  # chooses lora's lr
    record(runs, "evidence_glue", "rte", "lora", 0, 3e-3, 0.55, 74_498, "_lr3e-3")
    record(runs, "evidence_glue", "rte", "lora", 1, 3e-3, 0.57, 74_498, "_lr3e-3")
    record(runs, "evidence_longer", "rte", "lora", 0, 3e-3, 0.64, 74_498, "_lr3e-3", minutes=27.0,
           dev_curve=[(63, 0.51), (126, 0.60), (189, 0.64)])
    record(runs, "evidence_longer", "rte", "loretta_adp", 0, 3e-3, 0.58, 33_454, "_lr3e-3",
           dev_curve=[(63, 0.50), (126, 0.53), (189, 0.58)])
    proc = subprocess.run([sys.executable, "scripts/evidence_tables.py", "--results", str(runs)],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    longer = proc.stdout.split("### Longer training")[1].split("###")[0]
    assert "| task | method | lr | trainable params | step 63 | step 126 | step 189 | best (reported) |" in longer
    assert "| rte | lora | 0.003 | 74,498 | 51.0 | 60.0 | 64.0 | 64.0 | 56.0 ± 1.4 (2) | 27.0 |" in longer
    assert "| rte | loretta_adp | 0.003 | 33,454 | 50.0 | 53.0 | 58.0 | 58.0 | — | 2.0 |" in longer
    # the longer runs stay out of the comparison at the short budget
    comparison = proc.stdout.split("### Encoder comparison")[1].split("###")[0]
    assert "| lora | 0.003 | 74,498 | 1.00× | 80.0 | 56.0 ± 1.4 (2) |" in comparison


def test_evidence_tables_without_records(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/evidence_tables.py", "--results", str(tmp_path)],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "no completed results.json" in proc.stderr


def test_evidence_tables_update_the_readme_between_its_markers(tmp_path):
    runs = tmp_path / "runs"
    record(runs, "evidence_glue", "sst2", "lora", 0, 3e-3, 0.80, 74_498, "_lr3e-3")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- evidence-tables:start -->\nold table\n<!-- evidence-tables:end -->\nafter\n")
    args = [sys.executable, "scripts/evidence_tables.py", "--results", str(runs), "--readme", str(readme)]
    proc = subprocess.run(args, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = readme.read_text()
    assert text.startswith("intro\n<!-- evidence-tables:start -->\n### SST-2 learning-rate grid")
    assert "old table" not in text and "| lora | — | 74,498 |" in text
    assert text.endswith("\n<!-- evidence-tables:end -->\nafter\n")
    readme.write_text("no markers here\n")
    proc = subprocess.run(args, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "expected one <!-- evidence-tables:start -->" in proc.stderr
    assert readme.read_text() == "no markers here\n"  # untouched


def test_evidence_tables_decoder_lr_grid_shows_seed_zero_of_tasks_with_a_grid(tmp_path):
    runs = tmp_path / "runs"
    d = "evidence_decoder"
    for method, params, scores in [("lora", 460_800, {1e-3: 0.40, 3e-3: 0.50, 1e-2: 0.30}),
                                   ("loretta_rep", 92_886, {1e-3: 0.45, 3e-3: 0.44})]:
        for lr, value in scores.items():
            record(runs, d, "squad", method, 0, lr, value, params, f"_lr{lr:g}", model="smollm2", minutes=8.0)
    record(runs, d, "squad", "lora", 1, 3e-3, 0.99, 460_800, "_lr0.003", model="smollm2")  # seed 1: not in the grid
    record(runs, d, "squad", "ia3", 0, 1e-2, 0.49, 57_600, "_lr0.01", model="smollm2")
    record(runs, d, "squad", "ft", 0, 0.0, 0.15, 134_515_008, "_zero-shot", model="smollm2")
    # copa: only one method at several lrs, so no grid
    record(runs, d, "copa", "loretta_rep", 0, 3e-3, 0.61, 92_886, "_lr0.003", model="smollm2")
    record(runs, d, "copa", "loretta_rep", 0, 1e-2, 0.60, 92_886, "_lr0.01", model="smollm2")
    record(runs, d, "copa", "lora", 0, 3e-3, 0.62, 460_800, "_lr0.003", model="smollm2")
    proc = subprocess.run([sys.executable, "scripts/evidence_tables.py", "--results", str(runs)],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    grid = proc.stdout.split("### Decoder learning-rate grid")[1]
    assert "| task | method | trainable params | lr 0.001 | lr 0.003 | lr 0.01 | minutes per run |" in grid
    assert "| squad | lora | 460,800 | 40.0 | **50.0** | 30.0 | 8.0 |" in grid
    assert "| squad | ia3 | 57,600 | — | — | 49.0 | 2.0 |" in grid
    assert "| squad | loretta_rep | 92,886 | **45.0** | 44.0 | — | 8.0 |" in grid
    assert grid.index("| squad | lora |") < grid.index("| squad | ia3 |") < grid.index("| squad | loretta_rep |")
    assert "zero-shot" not in grid and "| copa |" not in grid


def test_evidence_tables_leave_out_the_decoder_grid_without_one(tmp_path):
    runs = tmp_path / "runs"
    record(runs, "evidence_decoder", "copa", "lora", 0, 3e-3, 0.62, 460_800, "_lr0.003", model="smollm2")
    proc = subprocess.run([sys.executable, "scripts/evidence_tables.py", "--results", str(runs)],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "### Decoder comparison" in proc.stdout and "learning-rate grid (seed 0" not in proc.stdout


def test_evidence_tables_keep_a_larger_encoder_out_of_minilms_tables_and_show_it_beside_them(tmp_path):
    runs = tmp_path / "runs"
    g = "evidence_glue"
    record(runs, g, "sst2", "lora", 0, 3e-3, 0.80, 74_498, "_lr3e-3")
    record(runs, g, "sst2", "lora", 1, 3e-3, 0.82, 74_498, "_lr3e-3")
    record(runs, g, "sst2", "loretta_adp", 0, 3e-3, 0.77, 33_454, "_lr3e-3", init="noise_reduction")
    record(runs, g, "sst2", "lora", 0, 3e-3, 0.90, 296_450, "_lr3e-3", model="mpnet", minutes=20.0)
    record(runs, g, "sst2", "lora", 0, 1e-2, 0.99, 296_450, "_lr1e-2", model="mpnet")  # would win MiniLM's grid
    record(runs, g, "sst2", "loretta_adp", 0, 3e-3, 0.88, 99_194, "_lr3e-3", init="noise_reduction", model="mpnet")
    record(runs, g, "rte", "loretta_adp", 0, 3e-3, 0.60, 99_194, "_lr3e-3", init="noise_reduction", model="mpnet")
    # a changed setting (named in the variant) is its own row, beside MiniLM's ablation of the same setting,
    # and stays out of the method's row and out of MiniLM's grid when MiniLM runs it in evidence_glue
    record(runs, g, "sst2", "loretta_adp", 0, 3e-3, 0.92, 600_000, "_head-dense_lr3e-3", init="noise_reduction",
           model="mpnet")
    record(runs, "evidence_ablation", "sst2", "loretta_adp", 0, 3e-3, 0.79, 150_000, "_head-dense_lr3e-3",
           init="noise_reduction")
    record(runs, g, "sst2", "loretta_adp", 1, 3e-3, 0.99, 150_000, "_head-dense_lr3e-3", init="noise_reduction")
    proc = subprocess.run([sys.executable, "scripts/evidence_tables.py", "--results", str(runs)],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    grid = proc.stdout.split("### SST-2 learning-rate grid")[1].split("###")[0]
    assert "| lora | — | 74,498 | **81.0 ± 1.4 (2)** | 2.0 |" in grid and "296,450" not in grid
    comparison = proc.stdout.split("### Encoder comparison")[1].split("###")[0]
    assert "| lora | 0.003 | 74,498 | 1.00× | 81.0 ± 1.4 (2) |" in comparison and "mpnet" not in comparison
    larger = proc.stdout.split("### A larger encoder")[1]
    assert ("| mpnet | sst2 | lora | 0.003 | 296,450 | 1.00× | 90.0 | 81.0 ± 1.4 (2) | 20.0 | 0.3M | 95.0 |"
            in larger)
    assert "| mpnet | sst2 | lora | 0.01 | 296,450 | 1.00× | 99.0 | — |" in larger
    assert "| mpnet | sst2 | loretta_adp | 0.003 | 99,194 | 0.33× | 88.0 | 77.0 | 2.0 | 0.1M | 95.3 |" in larger
    assert "| mpnet | rte | loretta_adp | 0.003 | 99,194 | — | 60.0 | — |" in larger  # no LoRA run on RTE
    assert larger.index("| sst2 | lora | 0.003") < larger.index("| sst2 | lora | 0.01") < larger.index("| rte |")
    assert ("| mpnet | sst2 | loretta_adp (head-dense) | 0.003 | 600,000 | 2.02× | 92.0 | 89.0 ± 14.1 (2) | 2.0 | — | — |"
            in larger)
    assert "99.0" not in grid and "99.0" not in comparison


def test_a_broken_record_is_skipped_with_its_name_not_a_traceback(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from evidence_tables import load
    finally:
        sys.path.remove(str(REPO / "scripts"))
    runs = tmp_path / "runs"
    record(runs, "evidence_glue", "sst2", "lora", 0, 1e-3, 0.78, 74_498)
    broken = runs / "evidence_glue" / "sst2" / "minilm" / "lora" / "seed1" / "results.json"
    broken.parent.mkdir(parents=True)
    broken.write_text('{"status": "compl')  # a file cut short (a copy interrupted)
    assert [r["seed"] for r in load(runs)] == [0]
    assert f"skipping {broken}" in capsys.readouterr().err


def evidence_tables(*args):
    return subprocess.run([sys.executable, "scripts/evidence_tables.py", *map(str, args)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)


def assert_tables_well_formed(md: str) -> None:
    """Every Markdown table: a header, a separator of as many columns, and at least one row of as many."""
    lines = md.splitlines()
    separators = [i for i, line in enumerate(lines) if line.startswith("|---")]
    for i in separators:
        width = lines[i].count("|") - 1
        assert lines[i - 1].startswith("| ") and lines[i - 1].count(" | ") + 1 == width, (lines[i - 1], lines[i])
        rows = [line for line in lines[i + 1:] if line.startswith("| ")][:1]
        assert rows and all(row.count(" | ") + 1 == width for row in rows), (lines[i - 1], rows)
    assert sum(line.startswith("| ") for line in lines) >= len(separators) * 2


def body(md: str, title: str) -> str:
    """The text under the section whose heading starts with `title`, without the heading."""
    return md.split(f"### {title}")[1].split("###")[0].split("\n", 1)[1].strip()


def test_evidence_tables_without_evidence_runs_say_so_and_write_nothing(tmp_path):
    runs = tmp_path / "runs"
    record(runs, "glue_deberta", "sst2", "lora", 0, 1e-3, 0.95, 296_450, model="deberta-base")  # no evidence run
    proc = evidence_tables("--results", runs)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "no evidence runs" in proc.stderr and str(runs) in proc.stderr and proc.stdout == ""
    readme = tmp_path / "README.md"
    readme.write_text("<!-- evidence-tables:start -->\nold\n<!-- evidence-tables:end -->\n")
    proc = evidence_tables("--results", runs, "--readme", readme)
    assert proc.returncode == 1 and "no evidence runs" in proc.stderr
    assert readme.read_text() == "<!-- evidence-tables:start -->\nold\n<!-- evidence-tables:end -->\n"


def test_evidence_tables_without_some_experiments_say_what_to_run(tmp_path):
    """Decoder runs only: each encoder table is a line naming the config with its commands, not a header
    without rows (the lr grid's, with no lr, had more header columns than separator columns)."""
    runs = tmp_path / "runs"
    record(runs, "evidence_decoder", "copa", "lora", 0, 3e-3, 0.62, 460_800, "_lr0.003", model="smollm2")
    proc = evidence_tables("--results", runs)
    assert proc.returncode == 0, proc.stderr
    assert_tables_well_formed(proc.stdout)
    assert (body(proc.stdout, "SST-2 learning-rate grid")
            == "No runs yet (configs/experiment/evidence_glue_minilm.yaml has the commands).")
    comparison = body(proc.stdout, "Encoder comparison")
    assert comparison.startswith("No method has a seed-0 SST-2 run") and "evidence_glue_minilm.yaml" in comparison
    assert "|" not in comparison
    assert (body(proc.stdout, "LoRETTA ablations")
            == "No runs yet (configs/experiment/evidence_ablation_minilm.yaml has the commands).")
    assert (body(proc.stdout, "Longer training")
            == "No runs yet (configs/experiment/evidence_longer_minilm.yaml has the commands).")
    assert "| copa | 300 / 100 | lora | 0.003 | 460,800 | 62.0 |" in proc.stdout


def test_evidence_tables_partial_records_give_well_formed_tables(tmp_path):
    """An SST-2 grid of seed 1 only (no seed-0 run to choose an lr: no comparison), longer runs without a
    history (no step columns), an ablation without its baseline: each table's header, separator and rows agree."""
    runs = tmp_path / "runs"
    record(runs, "evidence_glue", "sst2", "lora", 1, 3e-3, 0.80, 74_498, "_lr3e-3")
    record(runs, "evidence_longer", "rte", "lora", 0, 3e-3, 0.64, 74_498, "_lr3e-3")
    record(runs, "evidence_ablation", "sst2", "loretta_adp", 0, 3e-3, 0.70, 30_000, "_lr3e-3_shape-4-4-4-6",
           init="noise_reduction")
    proc = evidence_tables("--results", runs)
    assert proc.returncode == 0, proc.stderr
    assert_tables_well_formed(proc.stdout)
    longer = body(proc.stdout, "Longer training")
    assert "| task | method | lr | trainable params | best (reported) |" in longer
    assert "| rte | lora | 0.003 | 74,498 | 64.0 | — | 2.0 |" in longer
    comparison = body(proc.stdout, "Encoder comparison")
    assert comparison.startswith("No method has a seed-0 SST-2 run") and "|" not in comparison
    assert "| loretta_adp | noise_reduction | 0.003 | shape-4-4-4-6 | 30,000 | 70.0 | — |" in proc.stdout


def test_the_committed_runs_give_well_formed_tables():
    proc = evidence_tables()
    assert proc.returncode == 0, proc.stderr
    assert_tables_well_formed(proc.stdout)
