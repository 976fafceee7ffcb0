"""The PEFT tuner logic both LoRETTA methods share.

Before injection (`_prepare_model`) it resolves the family's default targets, checks that they
match, swaps the classification head's hidden x hidden layer for a TT layer, and lists the head
and the layer norms in `modules_to_save` so that PEFT trains, saves, disables and unloads them
like any auxiliary module.
"""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager

from peft.tuners.tuners_utils import BaseTuner, _maybe_include_all_linear_layers, check_target_module_exists
from peft.utils.other import ModulesToSaveWrapper
from torch import nn

from . import tt_batch
from .master_weights import keep_float32_masters, restore_dtypes
from .mixed_batch import BASE, adapter_names_hooks
from .norm_recompute import recompute_in_backward, restore_forward, saves_memory_when_recomputed
from .presets import FAMILY_PRESETS, linear_features, linear_layer_names, name_matches, norm_module_names, preset_for
from .quantized import keep_4bit_training_layout
from .tt_linear import TTLinear
from .tt_shapes import resolve_tt_shape, shape_key
from .tt_stack import StackedTT

# the handle of the forward pre-hook that rebuilds the TT layers together (tt_batch.py), on the model
_REBUILD_HOOK = "_loretta_rebuild_hook"

# module names inside PEFT's ModulesToSaveWrapper: the wrapper, not these, is what modules_to_save names
_WRAPPED = re.compile(r"\.(original_module|modules_to_save)(\.|$)")


def task_name(peft_config) -> str | None:
    """The config's task type as its plain name ('SEQ_CLS'), also when it was set to a TaskType member
    after the config was made (str() of one is 'TaskType.SEQ_CLS')."""
    task = peft_config.task_type
    return getattr(task, "value", task)


def _unwrapped_name(name: str) -> str:
    match = _WRAPPED.search(name)
    return name[: match.start()] if match else name


def _outside_peft_wrappers(name: str) -> bool:
    """Not a module inside a tuner layer (its base layer, adapter dicts) or a modules_to_save wrapper."""
    return _unwrapped_name(name) == name and not re.search(r"\.(base_layer|loretta_\w+)(\.|$)", name)


# PEFT's layer-index rules (peft.tuners.tuners_utils.check_target_module_exists), applied to layer norms
def _layer_index(name: str, layers_pattern) -> int | None:
    if not layers_pattern:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        patterns = [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern
        match = next(filter(None, (re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", name) for p in patterns)), None)
    return int(match["idx"]) if match else None


def _linear_layer_keys(model: nn.Module) -> list[str]:
    """The names PEFT matches targets against: every Linear / Conv1D (or tuner layer around one)."""
    return [_unwrapped_name(n) for n, m in model.named_modules() if linear_features(m) is not None]


def _head_module(head_dense: str) -> str:
    """The module a classification head is trained and saved as: the hidden x hidden layer's parent (BERT's
    pooler), or the layer itself where it has none in the preset (DistilBERT's top-level pre_classifier)."""
    return head_dense.rpartition(".")[0] or head_dense


def _inside(name: str, modules) -> bool:
    """Whether module `name` is one of `modules` (names or dotted suffixes of names) or inside one."""
    parts = name.split(".")
    return any(name_matches(".".join(parts[:end]), modules) for end in range(1, len(parts) + 1))


def _excluded(name: str, exclude_modules) -> bool:
    r"""PEFT's exclude_modules rule for a layer (a regex: a full match of its name; a list: the name or a dotted
    suffix of it), applied to a norm: `exclude_modules=r".*layers\.0\..*"` keeps layer 0's norms frozen with
    its layers."""
    if not exclude_modules:
        return False
    if isinstance(exclude_modules, str):
        return re.fullmatch(exclude_modules, name) is not None
    return name_matches(name, exclude_modules)


def _in_selected_layers(name: str, config) -> bool:
    """A module outside the numbered layers (embedding or final norm) always counts as selected."""
    if config.layers_to_transform is None:
        return True
    index = _layer_index(name, config.layers_pattern)
    selected = config.layers_to_transform
    return index is None or index in ([selected] if isinstance(selected, int) else selected)


def _warn_unused_tt_shapes(tt_shapes, model: nn.Module) -> None:
    """A `tt_shapes` entry for a size that no TT layer of the model has is not used: say so (one
    mapping may serve several models, so this is a warning, not an error)."""
    if not tt_shapes:
        return
    present = {shape_key(m.in_features, m.out_features) for m in model.modules()
               if isinstance(m, (TTLinear, StackedTT))}
    unused = sorted(set(tt_shapes) - present)
    if unused:
        warnings.warn(f"tt_shapes {unused} match no TT layer of this model, so they are not used; its TT layers "
                      f"are {sorted(present)}", stacklevel=4)


class LorettaTunerBase(BaseTuner):
    target_module_mapping: dict = {}
    # what _adaptable_keys finds, for error messages
    _adaptable_kinds = "a linear layer: LoRETTA adapts nn.Linear and transformers Conv1D layers"

    # subclasses: which preset fields give the default targets
    def _default_targets(self, preset, config) -> None:
        raise NotImplementedError

    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        # PeftModel enters this around every forward / generate; without it, adapter_names would be
        # dropped silently and every sample would run the active adapter.
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            yield
            return
        with adapter_names_hooks(self, self.tuner_layer_cls, adapter_names, kwargs.get("num_beams")):
            yield

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args, **kwargs) -> None:
        if adapter_name == BASE:
            raise ValueError(f"the adapter name {BASE!r} is reserved: in a mixed batch (adapter_names=[...]) it "
                             "stands for the base model without adapters; choose another name")
        self._heads_to_install = []  # filled by _prepare_head, once PEFT has made the head's copies
        try:
            super().inject_adapter(model, adapter_name, *args, **kwargs)
            self._install_heads(model, adapter_name)
        finally:
            self._heads_to_install = []
        tt_batch.forget_tuner_layers(model)  # new tuner layers, maybe
        if getattr(model, _REBUILD_HOOK, None) is None:  # one pair of hooks, however many adapters
            setattr(model, _REBUILD_HOOK, (model.register_forward_pre_hook(tt_batch.rebuild_before_forward,
                                                                           with_kwargs=True),
                                           model.register_forward_hook(tt_batch.after_forward, always_call=True)))
        _warn_unused_tt_shapes(self.peft_config[adapter_name].tt_shapes, model)

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        # PeftModel calls this after adding an adapter (and before loading its weights). PEFT upcasts
        # adapter layers' half-precision weights; LoRETTA's own are float32 already, but the modules
        # trained whole (layer norms, classification head, modules_to_save) and, with bias="all", the
        # base model's biases would train in its dtype, where bf16 norm weights never move: they keep
        # float32 masters instead.
        super()._cast_adapter_dtype(adapter_name, autocast_adapter_dtype=autocast_adapter_dtype)
        if not autocast_adapter_dtype:
            return
        for name, module in self.model.named_modules():
            if isinstance(module, ModulesToSaveWrapper) and adapter_name in module.modules_to_save:
                for sub in module.modules_to_save[adapter_name].modules():
                    keep_float32_masters(sub)
            elif (self.peft_config[adapter_name].bias == "all" and _unwrapped_name(name) == name
                  and getattr(module._parameters.get("bias"), "requires_grad", False)):
                keep_float32_masters(module, ["bias"])  # the base model's biases, trained in place

    def _prepare_adapter_config(self, peft_config, model_config):
        # Defaults are resolved in _prepare_model, where the model is at hand for error messages.
        return peft_config

    def _prepare_model(self, peft_config, model: nn.Module) -> None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        preset = preset_for(model_type)
        # a multimodal preset's module (the language model): its adapters and trainable norms stay inside
        scope = [preset.within] if preset is not None and preset.within else None
        self._expand_all_linear(peft_config, model, preset)
        # LoRETTA_rep's stacked expert weights (rep/experts.py): with them, as for PEFT's LoRA, no preset is
        # needed and target_modules=[] adapts them alone
        parameters = getattr(peft_config, "target_parameters", None)
        if peft_config.target_modules is None and preset is None and parameters:
            peft_config.target_modules = []
        if peft_config.target_modules is None:
            if preset is None:
                # what to do first (the model's own layer names), then the model types that have defaults
                raise ValueError(
                    f"{type(self).__name__}: no default target modules for model_type {model_type!r}. Pass "
                    f"target_modules=[...] chosen from this model's linear layers: {linear_layer_names(model)}. "
                    f"The {len(FAMILY_PRESETS)} model types with defaults: {sorted(FAMILY_PRESETS)}"
                )
            keys = [k for k in self._adaptable_keys(model) if scope is None or _inside(k, scope)]
            self._default_targets(preset.present_in(keys), peft_config)
            if scope is not None:
                # the preset's names also name layers outside the scope (a vision tower's q_proj): its own
                # layers by full name, as PEFT's list matching has no "inside"
                peft_config.target_modules = [k for k in keys if name_matches(k, peft_config.target_modules)]
        targeted = []
        if peft_config.target_modules or not parameters:
            targeted = self._check_targets_exist(peft_config, model)
            self._check_targeted(peft_config, targeted)
        keep_4bit_training_layout(model)
        if task_name(peft_config) == "SEQ_CLS" and preset is not None and preset.head_dense:
            self._prepare_head(peft_config, model, preset.head_dense)
        if peft_config.trainable_layer_norms:
            frozen = preset.frozen_norms if preset is not None else ()
            # a norm inside a module trained whole (ModernBERT's head.norm) trains as part of that module's copy
            whole = peft_config.modules_to_save or []
            norms = [n for n in norm_module_names(model)
                     if _in_selected_layers(n, peft_config) and not _excluded(n, peft_config.exclude_modules)
                     and not name_matches(n, frozen) and not _inside(n, whole) and (scope is None or _inside(n, scope))]
            self._add_modules_to_save(peft_config, norms)
            if peft_config.recompute_layer_norms:
                # patched before PEFT copies each norm into its ModulesToSaveWrapper: the copies (the
                # trained ones) inherit it; the frozen originals run their forward unchanged. Another
                # adapter's copies are set up already (their forward may be inside master_weights' cast)
                for name in norms:
                    if ".modules_to_save." in f"{name}.":
                        continue
                    if saves_memory_when_recomputed(model.get_submodule(name)):
                        recompute_in_backward(model.get_submodule(name))
        self._check_nothing_trained_inside(peft_config, model, targeted)
        self._check_no_module_saved_inside_another(peft_config, model)

    @staticmethod
    def _check_no_module_saved_inside_another(peft_config, model: nn.Module) -> None:
        """PEFT copies each modules_to_save module per adapter; one inside another gets a copy of its own, which
        the outer copy's forward never runs: parameters that train nothing (BERT's `pooler.dense` named while
        the head `pooler` is trained whole)."""
        names = peft_config.modules_to_save or []
        if len(names) < 2:
            return
        saved = [n for n, _ in model.named_modules() if n and _outside_peft_wrappers(n) and name_matches(n, names)]
        for outer in saved:
            inner = next((n for n in saved if n.startswith(outer + ".")), None)
            if inner is not None:
                raise ValueError(
                    f"modules_to_save names {inner} and {outer}, which holds it and is trained (and saved) whole, so "
                    f"the copy of {inner} would never run: name one of them (LoRETTA trains the classification head "
                    "and the layer norms itself; the head's hidden x hidden layer as a TT layer, or densely with "
                    "tensorized_head=False)"
                )

    def _adaptable_keys(self, model: nn.Module) -> list[str]:
        """The names of the modules this method can adapt: the linear layers (LoRETTA_adp adds blocks)."""
        return _linear_layer_keys(model)

    def _check_nothing_trained_inside(self, peft_config, model: nn.Module, targeted: list[str]) -> None:
        """Subclasses: check that no module trained whole (a norm, the head) sits inside an adapted block."""

    @staticmethod
    def _expand_all_linear(peft_config, model: nn.Module, preset) -> None:
        """PEFT's target_modules="all-linear": every Linear / Conv1D but the output layer (PEFT's own
        expansion), less the modules trained whole: the classification head (the label projection,
        and the hidden x hidden layer that is tensorized or trained densely) and `modules_to_save`.
        Expanded here rather than by PEFT, which would do it after _prepare_model, so that the checks
        and the head see the real names."""
        targets = peft_config.target_modules
        if not (isinstance(targets, str) and targets.lower() == "all-linear"):
            return
        _maybe_include_all_linear_layers(peft_config, model)
        whole = list(peft_config.modules_to_save or [])
        if task_name(peft_config) in ("SEQ_CLS", "TOKEN_CLS"):
            whole += ["classifier", "score"]  # the label head, which PEFT trains whole for these tasks
        if task_name(peft_config) == "SEQ_CLS" and preset is not None and preset.head_dense:
            whole.append(_head_module(preset.head_dense))
        peft_config.target_modules = sorted(n for n in peft_config.target_modules if not _inside(n, whole))

    def _check_targeted(self, peft_config, targeted: list[str]) -> None:
        """Subclasses: check the config against the layers it will adapt (before the model changes)."""

    def _check_targets_exist(self, peft_config, model: nn.Module) -> list[str]:
        """The linear layers the config's targets (and layer selection) will adapt; an error listing the
        model's linear layers if none."""
        adaptable = self._adaptable_keys(model)
        targeted = [n for n in adaptable if check_target_module_exists(peft_config, n)]
        # PEFT would hand these to the tuner layer, which fails with a TypeError naming only the class
        known = set(adaptable)
        not_linear = [f"{n} ({type(m).__name__})" for n, m in model.named_modules()
                      if n and _outside_peft_wrappers(n) and n not in known and not isinstance(m, TTLinear)
                      and check_target_module_exists(peft_config, n)]
        if not_linear:
            shown = ", ".join(not_linear[:3]) + (f" and {len(not_linear) - 3} more" if len(not_linear) > 3 else "")
            raise ValueError(
                f"target_modules={peft_config.target_modules!r} matches {shown}, not {self._adaptable_kinds}; "
                f"this model's linear layers: {linear_layer_names(model)}"
            )
        if not targeted:
            selection = "".join(
                f", {field}={getattr(peft_config, field)!r}"
                for field in ("layers_to_transform", "layers_pattern", "exclude_modules")
                if getattr(peft_config, field) is not None
            )
            raise ValueError(
                f"target_modules={peft_config.target_modules!r}{selection} matches none of this model's linear "
                f"layers: {linear_layer_names(model)}"
            )
        return targeted

    def _prepare_head(self, peft_config, model: nn.Module, head_dense: str) -> None:
        """The head's parent (pooler / classification head; the layer itself where it is a top-level layer, as
        DistilBERT's pre_classifier) is trained and saved as a whole, as one modules_to_save copy per
        adapter. Tensorized, the copy's hidden x hidden layer is a TT layer (the
        paper's tensorized head: new Gaussian cores, as the label projection after it is new too), made
        here and put into the copy once PEFT has made it (_install_heads). The original keeps its
        pretrained layer: disable_adapter() and the "__base__" rows of a mixed batch run the model as it
        was."""
        self._add_modules_to_save(peft_config, [_head_module(head_dense)])
        if not peft_config.tensorized_head:
            return
        for name, module in model.named_modules():
            plain = re.sub(r"\.original_module(?=\.|$)", "", name)  # a head another adapter already wraps
            if (".modules_to_save." in f"{name}." or type(module) is not nn.Linear
                    or not name_matches(plain, [head_dense])):
                continue
            shape = resolve_tt_shape(module.in_features, module.out_features, peft_config.tt_shapes)
            tt = TTLinear(
                module.in_features,
                module.out_features,
                shape,
                peft_config.tensor_rank,
                bias=module.bias is not None,
                init="gaussian",
                device=module.weight.device,
                forward=peft_config.tt_forward,
                dense_dtype=module.weight.dtype,
            )
            saved_whole = "." not in head_dense  # the layer is the module saved, not a layer inside it
            self._heads_to_install.append((plain, tt, saved_whole))

    def _install_heads(self, model: nn.Module, adapter_name: str) -> None:
        for name, tt, saved_whole in self._heads_to_install:
            # PEFT has decided whether this adapter's copy trains: the active adapter's does, one added beside
            # it (add_adapter) or loaded for inference (load_adapter, is_trainable=False) does not. The TT layer
            # follows the dense layer it replaces there; new, it would train with the frozen copy around it.
            if saved_whole:
                copies = model.get_submodule(name).modules_to_save
                tt.requires_grad_(copies[adapter_name].weight.requires_grad)
                copies[adapter_name] = tt
                continue
            parent_name, _, child = name.rpartition(".")
            head_copy = model.get_submodule(parent_name).modules_to_save[adapter_name]
            tt.requires_grad_(getattr(head_copy, child).weight.requires_grad)
            setattr(head_copy, child, tt)

    @staticmethod
    def _add_modules_to_save(peft_config, names) -> None:
        current = list(peft_config.modules_to_save or [])
        for name in names:
            name = _unwrapped_name(name)
            if name and name not in current:
                current.append(name)
        peft_config.modules_to_save = current

    @classmethod
    def _core_key(cls, adapter_name: str | None = None) -> re.Pattern:
        """A TT core's key in the model: <layer>.loretta_rep_A.<adapter name>.cores.0 (or initial_cores);
        any adapter name if None."""
        layers = "|".join(re.escape(n) for n in cls.tuner_layer_cls.adapter_layer_names)
        name = r"[^.]+" if adapter_name is None else re.escape(adapter_name)
        return re.compile(rf"(\.(?:{layers}))\.{name}(\.(?:cores|initial_cores)\.\d+)$")

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        # PEFT drops the adapter name where LoRA's weights have it, last or second to last
        # (lora_A.<name>.weight); a TT core sits one level deeper (loretta_rep_A.<name>.cores.0). Saved
        # without it, as LoRA's are, an adapter loads under any name, and transformers' own loading
        # (model.load_adapter, from_pretrained of an adapter folder), which inserts the name after the
        # method's prefix, finds its cores.
        stripped = cls._core_key(adapter_name).sub(r"\1\2", key)
        return stripped if stripped != key else super()._remove_adapter_name_from_key(key, adapter_name)

    @classmethod
    def upgrade_saved_keys(cls, state_dict: dict) -> dict:
        """An adapter saved before 2026-11-30 kept the adapter name in its TT cores' keys: the same keys
        as saved now."""
        core_key = cls._core_key()
        return {core_key.sub(r"\1\2", k): v for k, v in state_dict.items()}

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        return super()._remap_adapter_state_dict_for_load(model, config, adapter_name, cls.upgrade_saved_keys(state_dict))

    def _replace_module(self, parent, child_name, new_module, child) -> None:
        # Plain replacement (as peft's LoRA does): the default would graft child.weight onto modules
        # without a base_layer, which breaks unloading RoBERTa's classification head.
        setattr(parent, child_name, new_module)

    def _unload_and_optionally_merge(self, merge=True, progressbar=False, safe_merge=False, adapter_names=None):
        model = super()._unload_and_optionally_merge(
            merge=merge, progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names
        )
        # A tensorized head becomes an ordinary nn.Linear, so the result is a stock transformers model.
        for name, module in list(model.named_modules()):
            if isinstance(module, TTLinear):
                parent_name, _, child = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, child, module.to_dense_linear())
        restore_dtypes(model)  # first: a recomputed norm's forward is inside the masters' cast
        restore_forward(model)
        handles = getattr(model, _REBUILD_HOOK, None)
        if handles is not None:
            for handle in handles:
                handle.remove()
            delattr(model, _REBUILD_HOOK)
        tt_batch.forget_tuner_layers(model)
        return model

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        layer_cls = self.tuner_layer_cls
        if isinstance(target, layer_cls):
            self._update_existing(target, adapter_name, peft_config, current_key)
            return
        new_module = self._new_layer(target, adapter_name, peft_config, current_key)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _new_layer(self, target, adapter_name, peft_config, current_key):
        raise NotImplementedError

    def _update_existing(self, target, adapter_name, peft_config, current_key) -> None:
        raise NotImplementedError
