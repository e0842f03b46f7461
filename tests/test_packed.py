"""The dialogue-packed layout: prefix property, training targets, leak guard, and (real SmolLM2) that packed
training logits equal single-prefix logits and that cached step-by-step labelling equals stateless labelling.
Tests taking `meld_packed` run with both packed templates: one chat turn per line (erc_packed.j2) and all lines in
one transcript turn (erc_packed_transcript.j2)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from watched import run_sft

from erc_llm.data import load_split
from erc_llm.evaluation import PredictionRecord, write_predictions
from erc_llm.labelling.packed import label_dialogues_packed
from erc_llm.labelling.scorers import HFPackedScorer
from erc_llm.prompting import PromptConfig
from erc_llm.prompting.answer import label_tokens
from erc_llm.prompting.dataset import build_prompt_builder
from erc_llm.prompting.packed import packed_messages, scene_history, transcript_turns
from erc_llm.prompting.templates import chat_ids, chat_prompt_ids
from erc_llm.training.data import IGNORE_INDEX, class_weights
from erc_llm.training.packed import build_packed_train_dataset, load_inline_predictions

PACKED = PromptConfig(template="erc_packed.j2", layout="packed", use_history=True, history_window=3)
TEMPLATES = ("erc_packed.j2", "erc_packed_transcript.j2")


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from erc_llm.offline_models import resolve_model

    path = resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def meld(data_dir):
    builder = build_prompt_builder(PACKED, "meld", data_dir)
    return builder, load_split("meld", "train", data_dir).dialogues, load_split("meld", "test", data_dir).dialogues


@pytest.fixture(scope="module", params=TEMPLATES)
def meld_packed(request, data_dir):
    config = dataclasses.replace(PACKED, template=request.param)
    builder = build_prompt_builder(config, "meld", data_dir)
    return builder, load_split("meld", "train", data_dir).dialogues, load_split("meld", "test", data_dir).dialogues


def after_answer(builder, tokenizer, answer) -> int:
    """The token that follows a label: the end of the assistant turn, or a transcript's newline."""
    if transcript_turns(builder):
        return tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    return answer.end_ids[0]


def shown_labels(prompt) -> list[str]:
    """The inline labels a packed prompt shows (assistant turns, or a transcript's label lines)."""
    last = prompt[-1]
    if "continued" in last:
        return last["content"].rstrip("\n").split("\n")[1::2]
    return [m["content"] for m in prompt if m["role"] == "assistant"]


class ConstantScorer:
    """Always answers one label; remembers every prompt it saw."""

    def __init__(self, answer: str, labels) -> None:
        self.answer, self.labels, self.seen = answer, tuple(labels), []

    def score(self, prompts):
        self.seen.extend(prompts)
        return [{label: float(label == self.answer) for label in self.labels} for _ in prompts]


def test_config_refuses_what_packing_cannot_show():
    with pytest.raises(ValueError, match="packed"):
        PromptConfig(layout="packed", use_demonstrations=True)
    with pytest.raises(ValueError, match="packed"):
        PromptConfig(layout="packed", future_window=1)


def test_prompt_of_line_i_is_a_prefix_of_line_i_plus_1(meld_packed, smollm2):
    builder, train, _ = meld_packed
    _, tokenizer = smollm2
    dialogue = max(train[:40], key=len)
    labels = [u.label for u in dialogue]
    previous: list[int] = []
    for i in range(len(dialogue)):
        ids = chat_prompt_ids(tokenizer, packed_messages(builder, dialogue, 0, i + 1, labels[:i], {}))
        assert ids[: len(previous)] == previous
        previous = ids


def test_training_targets_are_every_label_with_class_weights(meld_packed, smollm2):
    builder, train, _ = meld_packed
    _, tokenizer = smollm2
    answer = label_tokens(tokenizer, builder.label_set.labels)
    dialogues = train[:12]
    weights = class_weights([u.label for d in dialogues for u in d], "inverse")
    data, stats = build_packed_train_dataset(dialogues, builder, tokenizer, answer, weights, 2048,
                                             history=builder.gold_history(train))
    assert stats.sequences == len(dialogues) and stats.targets == sum(len(d) for d in dialogues)
    for row, dialogue in zip(data, dialogues):
        targets = [(t, w) for t, w in zip(row["labels"], row["label_weights"]) if t != IGNORE_INDEX]
        end = after_answer(builder, tokenizer, answer)
        expected = [(tok, weights[u.label]) for u in dialogue for tok in (*answer.ids[u.label], end)]
        assert [t for t, _ in targets] == [t for t, _ in expected]
        assert [w for _, w in targets] == pytest.approx([w for _, w in expected])


def test_noised_inline_labels_still_target_gold(meld_packed, smollm2):
    builder, train, _ = meld_packed
    _, tokenizer = smollm2
    answer = label_tokens(tokenizer, builder.label_set.labels)
    dialogues = train[:30]
    data, stats = build_packed_train_dataset(dialogues, builder, tokenizer, answer, {}, 4096, label_noise=0.5,
                                             seed=1, history=None)
    assert stats.noised_labels > 0
    firsts = {answer.ids[label][0]: label for label in answer.labels}
    for row, dialogue in zip(data, dialogues):
        gold_firsts = [answer.ids[u.label][0] for u in dialogue]
        trained_firsts = [t for i, t in enumerate(row["labels"]) if t in firsts and
                          (i == 0 or row["labels"][i - 1] in (IGNORE_INDEX, after_answer(builder, tokenizer, answer)))]
        assert trained_firsts == gold_firsts


def test_chunks_repeat_the_header_and_keep_every_target(meld_packed, smollm2):
    builder, train, _ = meld_packed
    _, tokenizer = smollm2
    answer = label_tokens(tokenizer, builder.label_set.labels)
    dialogue = max(train, key=len)
    data, stats = build_packed_train_dataset([dialogue], builder, tokenizer, answer, {}, 400, history=None)
    assert stats.sequences > 1 and stats.chunked_dialogues == 1 and stats.targets == len(dialogue)
    assert all(n <= 400 for n in data["length"])
    header = "Labels:" if transcript_turns(builder) else "Emotion labels:"
    assert all(header in tokenizer.decode(ids) for ids in data["input_ids"])


def test_gold_test_labels_never_reach_packed_labelling_prompts(meld_packed):
    """Test labels replaced by sentinels: no prompt (header history or inline label) may contain one."""
    builder, _, test = meld_packed
    marked = [dataclasses.replace(d, utterances=[dataclasses.replace(u, label=f"GOLD{i}")
                                                 for i, u in enumerate(d.utterances)]) for d in test[:25]]
    scorer = ConstantScorer("joy", builder.label_set.labels)
    results = label_dialogues_packed(marked, builder, scorer, progress=False)
    assert len(results) == sum(len(d) for d in marked)
    text = "\n".join(m["content"] for prompt in scorer.seen for m in prompt)
    assert "GOLD" not in text
    # history from the model's own earlier predictions only: every shown emotion is the constant answer
    seen_history = "(earlier: joy" if transcript_turns(builder) else "most recent emotions before this scene, oldest first: joy"
    assert seen_history in text.lower()
    inline = [label for prompt in scorer.seen for label in shown_labels(prompt)]
    assert inline and set(inline) == {"joy"}


def test_emorynlp_label_glosses_are_fixed_text_added_to_the_transcript_prompt(data_dir):
    """erc_packed_transcript_emorynlp_wheel.j2 on EmoryNLP test scenes with gold replaced by sentinels: every
    labelling prompt is the plain transcript template's prompt plus one gloss line per label, the same lines in
    every prompt, and no gold reaches it."""
    config = dataclasses.replace(PACKED, template="erc_packed_transcript.j2", history_window=5)
    plain = build_prompt_builder(config, "emorynlp", data_dir)
    wheel = build_prompt_builder(dataclasses.replace(config, template="erc_packed_transcript_emorynlp_wheel.j2"),
                                 "emorynlp", data_dir)
    test = load_split("emorynlp", "test", data_dir).dialogues[:20]
    marked = [dataclasses.replace(d, utterances=[dataclasses.replace(u, label=f"GOLD{i}")
                                                 for i, u in enumerate(d.utterances)]) for d in test]
    seen = {}
    for name, builder in (("plain", plain), ("wheel", wheel)):
        scorer = ConstantScorer("peaceful", builder.label_set.labels)
        label_dialogues_packed(marked, builder, scorer, progress=False)
        seen[name] = scorer.seen
    assert len(seen["wheel"]) == len(seen["plain"]) == sum(len(d) for d in marked)
    labels = wheel.label_set.labels
    for plain_prompt, wheel_prompt in zip(seen["plain"], seen["wheel"]):
        assert "GOLD" not in "\n".join(m["content"] for m in wheel_prompt)
        assert [m["role"] for m in wheel_prompt] == [m["role"] for m in plain_prompt]
        assert [m for m in wheel_prompt if m["role"] != "user"] == [m for m in plain_prompt if m["role"] != "user"]
        (user,) = [m["content"].split("\n") for m in wheel_prompt if m["role"] == "user"]
        (plain_user,) = [m["content"].split("\n") for m in plain_prompt if m["role"] == "user"]
        glosses = user[1:1 + len(labels)]
        assert [line.split(":")[0] for line in glosses] == list(labels)
        assert user[:1] + user[1 + len(labels):] == plain_user
    first = [m["content"] for m in seen["wheel"][0] if m["role"] == "user"][0].split("\n")[1:1 + len(labels)]
    assert all(len(line.split(": ")[1].split(", ")) >= 4 for line in first[1:])


def test_resumed_packed_labelling_builds_the_same_prompts(meld_packed):
    builder, _, test = meld_packed
    dialogues = test[:6]
    full = ConstantScorer("anger", builder.label_set.labels)
    first = label_dialogues_packed(dialogues, builder, full, progress=False)
    done = {item.example.key: item.pred for item in first[: len(first) // 2]}
    resumed = ConstantScorer("anger", builder.label_set.labels)
    rest = label_dialogues_packed(dialogues, builder, resumed, done=done, progress=False)
    assert {i.example.key for i in rest} == {i.example.key for i in first} - set(done)
    assert resumed.seen == [i.example.messages for i in first if i.example.key not in done]


@pytest.mark.slow
def test_packed_logits_equal_single_prefix_logits(meld_packed, smollm2):
    """One forward pass over a packed training sequence gives, at every label position, the logits of the
    corresponding labelling prompt run alone (fp32, atol 1e-4)."""
    builder, train, _ = meld_packed
    model, tokenizer = smollm2
    dialogue = train[5]
    labels = [u.label for u in dialogue]
    history = {}
    full = chat_ids(tokenizer, packed_messages(builder, dialogue, 0, len(dialogue), labels, history),
                    add_generation_prompt=False)
    with torch.no_grad():
        packed_logits = model(input_ids=torch.tensor([full])).logits[0]
        for i in range(len(dialogue)):
            prompt = chat_prompt_ids(tokenizer, packed_messages(builder, dialogue, 0, i + 1, labels[:i], history))
            assert full[: len(prompt)] == prompt
            alone = model(input_ids=torch.tensor([prompt])).logits[0, -1]
            torch.testing.assert_close(packed_logits[len(prompt) - 1], alone, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_cached_step_labelling_equals_stateless_labelling(meld_packed, smollm2):
    """HFPackedScorer with kept KV caches labels real dialogues exactly like scoring every prompt from scratch."""
    builder, _, test = meld_packed
    model, tokenizer = smollm2
    dialogues = test[:3]
    cached = HFPackedScorer(model, tokenizer, builder.label_set.labels)
    with_cache = label_dialogues_packed(dialogues, builder, cached, progress=False)
    stateless = HFPackedScorer(model, tokenizer, builder.label_set.labels)
    plain = label_dialogues_packed(dialogues, builder, _Plain(stateless), progress=False)
    assert [i.pred for i in with_cache] == [i.pred for i in plain]
    for a, b in zip(with_cache, plain):
        assert a.scores == pytest.approx(b.scores, abs=1e-4)
    assert cached.cached_tokens > cached.prompt_tokens  # most of every step came from the kept cache


class _Plain:
    """Hides a packed scorer's stream methods."""

    def __init__(self, scorer) -> None:
        self.scorer = scorer

    def score(self, prompts):
        return self.scorer.score(prompts)


class PromptHashScorer:
    """A deterministic stand-in whose answer depends on every character of the prompt (so any difference in the
    history or inline labels a prompt shows changes the labels that follow)."""

    def __init__(self, labels) -> None:
        self.labels = tuple(labels)

    def score(self, prompts):
        import hashlib

        out = []
        for prompt in prompts:
            text = "\n".join(m["content"] for m in prompt)
            pick = int(hashlib.sha256(text.encode()).hexdigest(), 16) % len(self.labels)
            out.append({label: float(i == pick) for i, label in enumerate(self.labels)})
        return out


def test_dependency_waves_label_exactly_like_one_dialogue_at_a_time(meld, monkeypatch):
    import erc_llm.labelling.packed as packed

    builder, _, test = meld
    dialogues = test[:40]
    waves = packed.dependency_waves(builder, packed.chronological_order(dialogues), linked=True)
    assert len(waves) < len(dialogues)  # some dialogues share no speaker with their predecessors
    together = label_dialogues_packed(dialogues, builder, PromptHashScorer(builder.label_set.labels), progress=False)
    monkeypatch.setattr(packed, "dependency_waves", lambda b, ordered, linked: [[d] for d in ordered])
    one_by_one = label_dialogues_packed(dialogues, builder, PromptHashScorer(builder.label_set.labels),
                                        progress=False)
    assert {i.example.key: i.pred for i in together} == {i.example.key: i.pred for i in one_by_one}


@pytest.mark.parametrize("layout", ["packed", "per_utterance"])
def test_sharded_chained_labelling_equals_one_process(meld, layout):
    """Two 'processes' (threads with an all-gather after each wave/round) label exactly like one process."""
    import threading

    from erc_llm.labelling.loop import label_dialogues
    from erc_llm.prompting.dataset import build_prompt_builder

    builder, _, test = meld
    if layout == "per_utterance":
        builder = build_prompt_builder(PromptConfig(use_history=True, history_window=3), "meld")
    run = label_dialogues_packed if layout == "packed" else label_dialogues
    dialogues = test[:30]
    single = run(dialogues, builder, PromptHashScorer(builder.label_set.labels), progress=False)
    barrier, slots, outputs = threading.Barrier(2), [None, None], [None, None]

    def exchange_for(rank):
        def exchange(items):
            slots[rank] = items
            barrier.wait()
            everyone = [item for part in slots for item in part]
            barrier.wait()
            return everyone
        return exchange

    def worker(rank):
        outputs[rank] = run(dialogues, builder, PromptHashScorer(builder.label_set.labels), progress=False,
                            shard=(rank, 2), exchange=exchange_for(rank))

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = {i.example.key: i.pred for i in single}
    for out in outputs:
        assert {i.example.key: i.pred for i in out} == expected


@pytest.mark.slow
def test_packed_sft_recipe_runs_end_to_end(tmp_path, data_dir):
    """recipes/sft.py in the packed layout (transcript template; the chat template's whole run is
    tests/test_staged.py's) with corpus history, the label-set loss and self-predicted inline labels: trains on
    packed dialogues, selects on dev by packed labelling, labels test, and records the layout, loss and in-step
    predictions in the run summary."""
    import json

    out = run_sft(tmp_path / "packed", "--layout", "packed", "--template", "erc_packed_transcript.j2",
                  "--use_history", "true", "--batching", "padding_free", "--per_device_train_batch_size", "2",
                  "--train_subsample", "40", "--test_split", "test", "--test_subsample", "20",
                  "--label_loss", "label_set", "--packed_inline_self_predictions", "1", data_dir=data_dir)
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["layout"] == "packed" and summary["train_sequences"] < summary["train_examples"]
    assert summary["label_loss"] == "label_set"
    assert len(summary["train_step_lines"]) == summary["train_steps"] == len(summary["train_step_end_seconds"])
    assert sum(summary["train_step_lines"]) <= summary["train_examples"] and min(summary["train_step_lines"]) > 0
    self_predicted = summary["inline_self_predicted"]  # every answer predicted in-step; wrong ones shown inline
    assert self_predicted["answers"] >= summary["train_examples"] and self_predicted["shown"] == self_predicted["wrong"]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert rows and all(r["pred"] in r["scores"] for r in rows)


@pytest.mark.slow
def test_batch_of_dialogues_and_accumulated_single_dialogues_take_the_same_step(tmp_path, data_dir):
    """One optimizer step over the packed dialogues of a 30-line subsample (3): batch 4 in one flat sequence, batch
    1 with 4 accumulation
    steps (each dialogue alone, no cross-dialogue attention work), or batch 4 as one padded length-grouped batch
    (attention mask), or two processes with one dialogue per micro-batch in the process-balanced order (the step's
    dialogues dealt out by length, DDP averaging), gives the same LoRA update: the loss is the mean over the step's
    answer tokens either way."""
    from safetensors.torch import load_file

    adapters = []
    # (per-process batch, accumulation, batching, processes). The subsample is 3 dialogues: the 4-dialogue arms
    # take them all in one step; flat2 and the 2-process arm (one dialogue each, DDP) take the same first two.
    arms = {"flat4": (4, 1, "padding_free", 1), "acc1x4": (1, 4, "padding_free", 1),
            "grouped4": (4, 1, "length_grouped", 1), "flat2": (2, 1, "padding_free", 1),
            "ddp2x1": (1, 1, "padding_free", 2)}
    for name, (batch, accumulation, batching, processes) in arms.items():
        out = run_sft(tmp_path / name, "--layout", "packed", "--template", "erc_packed.j2", "--batching", batching,
                      "--max_steps", "1", "--per_device_train_batch_size", str(batch),
                      "--gradient_accumulation_steps", str(accumulation), "--train_subsample", "30",
                      "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
                      "--dtype", "float32", "--bf16", "false",
                      "--optim", "sgd",  # plain SGD: Adam's first step is ~lr * sign(g), which amplifies rounding noise
                      data_dir=data_dir, processes=processes)
        adapters.append(load_file(str(out / "adapter_model.safetensors")))
    for flat, *others in (adapters[:3], adapters[3:]):
        assert_same_update(flat, others)


def assert_same_update(flat: dict, others: list[dict]) -> None:
    """Every adapter in `others` took the one-step update of `flat` (up to float32 summation order)."""
    moved = [key for key in flat if "lora_B" in key]  # B starts at zero: after one step it is -lr * gradient
    assert moved and all(float(flat[key].abs().max()) > 0 for key in moved)
    for other in others:
        assert flat.keys() == other.keys()
        for key in moved:  # the same update up to float32 summation order (without the step-wide mean: ~100% apart)
            diff, size = float((flat[key] - other[key]).abs().max()), float(flat[key].abs().max())
            assert diff <= 1e-3 * size, (key, diff, size)
        assert all(torch.equal(flat[key], other[key]) for key in flat if key not in moved)  # A: no gradient while B = 0


def test_inline_predictions_are_shown_and_gold_is_still_the_target(meld, smollm2, tmp_path):
    builder, train, _ = meld
    _, tokenizer = smollm2
    answer = label_tokens(tokenizer, builder.label_set.labels)
    dialogues = train[:20]
    labels = list(builder.label_set.labels)
    # an "earlier model" that always says the label after gold in the label list (never gold)
    wrong = {u.key: labels[(labels.index(u.label) + 1) % len(labels)] for d in dialogues for u in d}
    path = tmp_path / "predictions.jsonl"
    write_predictions(path, [PredictionRecord(dialogue_id=k[0], utterance_index=k[1], speaker="s", text="t", pred=p)
                             for k, p in wrong.items()])
    inline = load_inline_predictions(path, dialogues, labels)
    data, stats = build_packed_train_dataset(dialogues, builder, tokenizer, answer, {}, 4096, inline_labels=inline)
    assert stats.predicted_inline_labels == sum(len(d) for d in dialogues)
    firsts = {answer.ids[label][0] for label in labels}
    for row, dialogue in zip(data, dialogues):
        no_history = scene_history(builder, dialogue, None, ())  # history on, no tracker: empty per speaker
        shown = packed_messages(builder, dialogue, 0, len(dialogue), inline[dialogue.id], no_history)
        assert row["input_ids"] == chat_ids(tokenizer, shown, add_generation_prompt=False)  # predictions inline
        trained = [t for t in row["labels"] if t != IGNORE_INDEX]
        assert trained == [answer.ids[u.label][0] for u in dialogue]  # only gold first tokens
        assert set(trained) <= firsts


def test_inline_predictions_must_cover_every_training_line(meld, tmp_path):
    builder, train, _ = meld
    dialogues = train[:3]
    labels = list(builder.label_set.labels)
    path = tmp_path / "predictions.jsonl"
    records = [PredictionRecord(dialogue_id=u.dialogue_id, utterance_index=u.index, speaker="s", text="t",
                                pred=u.label) for d in dialogues for u in d]
    write_predictions(path, records[:-1])
    with pytest.raises(ValueError, match=rf"{path}.* no prediction for 1 of the training lines"):
        load_inline_predictions(path, dialogues, labels)
    write_predictions(path, [dataclasses.replace(records[0], pred="bored"), *records[1:]])
    with pytest.raises(ValueError, match=rf"{path}: record 1 .*'bored'"):
        load_inline_predictions(path, dialogues, labels)


def _collated(data) -> dict:
    from erc_llm.training.collator import LabelOnlyCollator

    return LabelOnlyCollator(pad_token_id=0, padding_free=True)([dict(row) for row in data])


def test_inline_labels_shown_in_a_step_equal_packing_with_those_labels(meld_packed, smollm2):
    """`show_inline_labels` on a collated gold batch gives exactly the batch that packing with those labels inline
    makes (tokens, restarting positions, target positions, gold targets, class weights)."""
    from erc_llm.training.packed import answer_spans, show_inline_labels

    builder, train, _ = meld_packed
    _, tokenizer = smollm2
    answer = label_tokens(tokenizer, builder.label_set.labels)
    labels = list(builder.label_set.labels)
    dialogues = train[:8]
    weights = class_weights([u.label for d in dialogues for u in d], "inverse")
    history = builder.gold_history(train)
    # every other line shows another label (several lengths in tokens), the rest stays gold
    inline = {d.id: [labels[(labels.index(u.label) + 1 + i) % len(labels)] if i % 2 else u.label
                     for i, u in enumerate(d)] for d in dialogues}
    gold_data, _ = build_packed_train_dataset(dialogues, builder, tokenizer, answer, weights, 4096, history=history)
    shown_data, stats = build_packed_train_dataset(dialogues, builder, tokenizer, answer, weights, 4096,
                                                   history=history, inline_labels=inline)
    assert stats.predicted_inline_labels > 0
    gold_batch = _collated(gold_data)
    assert [g for _, _, g in answer_spans(gold_batch, answer)] == [u.label for d in dialogues for u in d]
    shown = [label if label != u.label else None for d in dialogues for u, label in zip(d, inline[d.id])]
    got, want = show_inline_labels(gold_batch, shown, answer), _collated(shown_data)
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    assert torch.equal(show_inline_labels(gold_batch, [None] * len(shown), answer)["input_ids"], gold_batch["input_ids"])
    with pytest.raises(ValueError, match="gold"):
        answer_spans(want, answer)  # a batch that already shows other labels cannot be told apart from gold


def test_step_predictions_are_what_packed_labelling_answers_given_gold_inline_labels(meld_packed, smollm2):
    """The trainer's in-step predictions (one pass over a flat batch of several dialogues) are, answer for answer,
    the labels the packed labeller's scorer gives each line with gold labels inline before it."""
    from erc_llm.training.trainer import predict_answers

    builder, train, _ = meld_packed
    model, tokenizer = smollm2
    answer = label_tokens(tokenizer, builder.label_set.labels)
    dialogues = [d for d in train[:20] if 3 <= len(d) <= 8][:3]
    data, _ = build_packed_train_dataset(dialogues, builder, tokenizer, answer, {}, 4096, history=None)
    model.train()
    predicted = predict_answers(model, _collated(data), answer)
    assert model.training  # the train/eval state is restored
    model.eval()
    scorer = HFPackedScorer(model, tokenizer, builder.label_set.labels)
    expected = []
    for d in dialogues:
        gold = [u.label for u in d]
        no_history = scene_history(builder, d, None, ())
        for r in range(len(d)):
            scores = scorer.score([packed_messages(builder, d, 0, r + 1, gold[:r], no_history)])[0]
            expected.append(max(scores, key=scores.get))
    assert predicted == expected and len(set(expected)) > 1
