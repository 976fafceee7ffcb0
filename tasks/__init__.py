"""Benchmarks of the LoRETTA paper: GLUE for encoders, the MeZO protocol (SuperGLUE, SQuAD, DROP) for
decoders, plus `movie_snippets` for offline runs. Knows nothing about PEFT methods.

    from tasks import get_task, load_splits
    spec = get_task("SST2")
    splits = load_splits(spec, protocol="mezo", data_dir="../shared/data", seed=0)
    prompt = spec.prompt(splits["train"][0])        # decoder (MeZO) prompt
    text, pair = spec.encoder_inputs(splits["train"][0])
    scores = spec.compute_metrics(predictions, splits["test"])

Modules: spec (types), registry (lookup), glue / superglue / squad / drop / movies (one entry per
task), prompts (MeZO templates), metrics, sampling (protocols), loading (disk and Hub), readers
(strict file parsing), fetch (downloads the movie snippets).
"""

from .loading import load_split, load_splits
from .readers import DataFormatError
from .registry import UnknownTaskError, get_task, register, task_names
from .spec import Example, Prompted, TaskSpec

__all__ = ["get_task", "task_names", "register", "TaskSpec", "Example", "Prompted", "load_splits", "load_split",
           "UnknownTaskError", "DataFormatError"]
