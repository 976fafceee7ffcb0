"""Generation with PEFT 0.21's prompt-learning methods (prefix and prompt tuning) under transformers 5.

transformers 5.24 passes the generation cache to `prepare_inputs_for_generation` and to the model
as `cache`; PEFT 0.21 reads it, and writes its prefix, under the old name `past_key_values`. So PEFT
never sees the cache: it treats every decoding step as the first, and
  prefix tuning  puts the prefix under `past_key_values`, which the model ignores when `cache` is
                 also given: generation ran without the prefix (the base model's greedy output, under
                 an attention mask widened for keys that were not there), while training used it;
  prompt tuning  on a causal LM prepends the virtual tokens' embeddings again at every step.
Teacher-forced logits and generation then disagree (tests/runner/test_prompt_learning_generation.py).
The fix renames on the way in and out: PEFT's code sees the cache under the old name, the model
under the new one. Where the names already agree it does nothing.
"""

from __future__ import annotations


def fix_prompt_learning_generation(peft_model) -> None:
    """Make `peft_model.generate` (a PEFT prefix- or prompt-tuning model) use its virtual tokens once.
    Models that do not generate (sequence classification) are left as they are."""
    if not hasattr(peft_model, "base_model_prepare_inputs_for_generation"):
        return
    base_prepare = peft_model.base_model_prepare_inputs_for_generation
    prepare = peft_model.prepare_inputs_for_generation

    def base_prepare_old_name(*args, **kwargs):
        inputs = base_prepare(*args, **kwargs)
        if "cache" in inputs and "past_key_values" not in inputs:
            inputs["past_key_values"] = inputs.pop("cache")
        return inputs

    def prepare_new_name(*args, **kwargs):
        inputs = prepare(*args, **kwargs)
        if "past_key_values" in inputs and "cache" not in inputs:
            inputs["cache"] = inputs.pop("past_key_values")
        return inputs

    # instance attributes: PEFT's generate installs `self.prepare_inputs_for_generation` on the base
    # model for the call, and its own prepare calls `self.base_model_prepare_inputs_for_generation`
    peft_model.base_model_prepare_inputs_for_generation = base_prepare_old_name
    peft_model.prepare_inputs_for_generation = prepare_new_name
