"""Prompt rendering against the strings MeZO's templates produce (context = encode(x).strip(" "),
continuation = verbalize(x, c).strip(" ") minus the context)."""

import pytest

from tasks import Example, Prompted, get_task


def render(task, fields, label=None, answers=(), **kw):
    return get_task(task).prompt(Example(fields=fields, label=label, answers=list(answers), **kw))


def test_sst2():
    p = render("sst2", {"sentence": " a gripping , funny film . "}, 1)
    assert p == Prompted(context="a gripping , funny film . It was", candidates=[" terrible", " great"], gold=1)
    assert p.target == " great"


def test_movie_snippets_uses_the_sst2_prompt():
    p = render("movie_snippets", {"sentence": "Unwatchable."}, 0)
    assert (p.context, p.candidates, p.gold) == ("Unwatchable. It was", [" terrible", " great"], 0)


def test_rte():
    p = render("rte", {"premise": "The cat sat.", "hypothesis": "A cat sat."}, 0)
    assert p.context == 'The cat sat.\nDoes this mean that "A cat sat." is true? Yes or No?\n'
    assert p.candidates == ["Yes", "No"] and p.gold == 0  # entailment -> "Yes"


def test_cb():
    p = render("cb", {"premise": "It rained.", "hypothesis": "the ground is wet"}, 2)
    assert p.context == 'Suppose It rained. Can we infer that "the ground is wet"? Yes, No, or Maybe?\n'
    assert p.candidates == ["Yes", "No", "Maybe"] and p.gold == 2  # neutral -> "Maybe"


def test_boolq_capitalises_and_adds_the_question_mark():
    p = render("boolq", {"question": "is the sun a star", "passage": "Sun -- The Sun is a star."}, 1)
    assert p.context == "Sun -- The Sun is a star. Is the sun a star?\n"
    assert p.candidates == ["No", "Yes"] and p.target == "Yes"
    assert render("boolq", {"question": "", "passage": "P"}, 0).context == "P ?\n"  # empty question


def test_wsc_lowercases_the_pronoun():
    p = render("wsc", {"text": "Mark lied to Pete. He was wrong.", "span1_text": "Mark", "span2_text": "He"}, 0)
    assert p.context == ('Mark lied to Pete. He was wrong.\nIn the previous sentence, does the pronoun "he" '
                         'refer to Mark? Yes or No?\n')
    assert p.candidates == ["No", "Yes"] and p.target == "No"


def test_wic():
    p = render("wic", {"word": "bank", "sentence1": "The river bank.", "sentence2": "The bank loan."}, 0)
    assert p.context == ('Does the word "bank" have the same meaning in these two sentences? Yes, No?\n'
                         "The river bank.\nThe bank loan.\n")
    assert p.candidates == ["No", "Yes"]


def test_multirc():
    p = render("multirc", {"paragraph": "Ana bought apples.", "question": "Who?", "answer": "Ana"}, 1)
    assert p.context == 'Ana bought apples.\nQuestion: Who?\nI found this answer "Ana". Is that correct? Yes or No?\n'
    assert p.candidates == ["No", "Yes"] and p.gold == 1


def test_copa_cause_and_effect():
    fields = {"premise": "My body cast a shadow over the grass.", "choice1": "The sun was rising.",
              "choice2": "The grass was cut.", "question": "cause"}
    p = render("copa", fields, 0)
    assert p.context == "My body cast a shadow over the grass because"
    assert p.candidates == [" the sun was rising.", " the grass was cut."] and p.target == " the sun was rising."
    fields = {"premise": "I knocked on the door.", "choice1": "I heard footsteps.", "choice2": "Nobody was home.",
              "question": "effect"}
    p = render("copa", fields, 1)
    assert p.context == "I knocked on the door so"
    assert p.candidates == [" I heard footsteps.", " nobody was home."]  # "I" keeps its capital
    with pytest.raises(ValueError, match="cause"):
        render("copa", {**fields, "question": "why"}, 0)


def test_record_fills_the_placeholder_with_each_entity():
    fields = {"passage": "Messi scored twice.\n@highlight\nBarcelona won", "query": "@placeholder fans cheered.",
              "entities": ["Barcelona", "Messi"]}
    p = render("record", fields, 0, answers=["Barcelona"])
    assert p.context == "Messi scored twice.\n- Barcelona won\n-"
    assert p.candidates == [" Barcelona fans cheered.", " Messi fans cheered."] and p.gold == 0


def test_squad_and_drop_are_generation():
    p = render("squad", {"title": "Super_Bowl_50", "context": "The Broncos won.", "question": " Who won? "},
               answers=["Broncos", "The Broncos"])
    assert p.context == "Title: Super_Bowl_50\nContext: The Broncos won.\nQuestion: Who won?\nAnswer:"
    assert p.candidates is None and p.gold is None and p.answers == ["Broncos", "The Broncos"]
    assert p.target == " Broncos\n"
    p = render("drop", {"passage": "They won 7 games.", "question": "How many games?"}, answers=["7"])
    assert p.context == "Passage: They won 7 games.\nQuestion: How many games?\nAnswer:" and p.target == " 7\n"


def test_empty_inputs():
    p = render("sst2", {"sentence": ""}, 0)
    assert p.context == "It was" and p.candidates == [" terrible", " great"]
    assert get_task("sst2").encoder_inputs(Example(fields={"sentence": ""}, label=0)) == ("", None)
    p = render("cb", {"premise": "", "hypothesis": ""}, 1)
    assert p.context == 'Suppose  Can we infer that ""? Yes, No, or Maybe?\n'
    assert render("squad", {"title": "", "context": "", "question": ""}, answers=["x"]).context == (
        "Title: \nContext: \nQuestion: \nAnswer:")


def test_unicode_passes_through():
    p = render("cb", {"premise": "Zoë said «non» — 東京.", "hypothesis": "naïve"}, 0)
    assert "Zoë said «non» — 東京." in p.context and '"naïve"' in p.context


# --- fitting long inputs ------------------------------------------------------------------------

LONG = " ".join(f"w{i}" for i in range(300))


def test_fit_prompt_keeps_the_squad_answer_span():
    context = LONG + " The answer is Denver Broncos here. " + LONG
    start = context.index("Denver Broncos")
    ex = Example(fields={"title": "T", "context": context, "question": "Who?"}, answers=["Denver Broncos"],
                 meta={"answer_starts": [start]})
    spec = get_task("squad")
    p = spec.fit_prompt(ex, max_tokens=60)
    assert len((p.context + p.target).split()) <= 60
    assert "Denver Broncos" in p.context and p.context.endswith("\nQuestion: Who?\nAnswer:")
    assert len(p.context.split()) > 40  # the window is as large as the budget allows
    cut = spec.fit_prompt(ex, max_tokens=60, keep_answer=False)
    assert "Denver Broncos" not in cut.context and "w0 w1" in cut.context


def test_fit_prompt_finds_the_answer_without_offsets_and_uses_a_token_counter():
    context = LONG + " It was 1932 . " + LONG
    ex = Example(fields={"passage": context, "question": "When?"}, answers=["1932"])
    chars = len
    p = get_task("drop").fit_prompt(ex, max_tokens=400, count_tokens=chars)
    assert len(p.context + p.target) <= 400 and "1932" in p.context


def test_fit_prompt_shortens_a_classification_passage_and_keeps_the_question():
    ex = Example(fields={"question": "is it long", "passage": LONG}, label=1)
    p = get_task("boolq").fit_prompt(ex, max_tokens=50)
    assert p.context.endswith(" Is it long?\n") and p.candidates == ["No", "Yes"]
    assert len((p.context + "Yes").split()) <= 50
    short = Example(fields={"question": "is it", "passage": "short"}, label=1)
    assert get_task("boolq").fit_prompt(short, max_tokens=50) == get_task("boolq").prompt(short)


def test_fit_prompt_finds_a_whole_answer_not_a_piece_of_a_longer_number():
    # "3" used to be found inside "1932": the window kept the year and lost the answer
    context = "Founded in 1932 , the club. " + LONG + " They scored 3 touchdowns."
    ex = Example(fields={"passage": context, "question": "How many touchdowns?"}, answers=["3"])
    p = get_task("drop").fit_prompt(ex, max_tokens=40)
    assert "scored 3 touchdowns" in p.context and "1932" not in p.context
    # no whole-word occurrence: a piece of a word is still better than nothing
    ex = Example(fields={"passage": LONG + " Reunification", "question": "What?"}, answers=["unification"])
    assert "Reunification" in get_task("drop").fit_prompt(ex, max_tokens=40).context
