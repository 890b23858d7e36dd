"""Capability probe suites: the shipped suites, rule scoring on hand-made completions, the reports."""

from __future__ import annotations

import json
import re

import pytest

from tinystories.evaluate import probes
from tinystories.evaluate.probes import Probe, ProbeResult, score_completion

BED = Probe(
    "factual",
    "t-bed",
    "Alice was so tired when she got back home so she went straight to",
    ("bed",),
    ("sleep", "room", "bedroom"),
)
CAT = Probe(
    "reasoning",
    "t-cat",
    "Lily wanted a cat or a dog. She could not get a dog, so she got a",
    ("cat", "kitten"),
    ("pet",),
)
NAME = Probe("context", "t-name", "Sara had a doll. Ben wanted the doll, so he asked", ("sara",), ("her",))
DOOR = Probe("reasoning", "t-door", "The door was locked, so he could not", ("get in", "open"), ())


@pytest.mark.parametrize(
    "probe, completion, verdict",
    [
        (BED, " bed and fell asleep.", "correct"),
        (BED, " her bed.", "correct"),  # leading filler words are skipped
        (BED, " Bed!", "correct"),
        (BED, "\nbed", "correct"),
        (BED, " sleep in her cozy bed.", "partial"),  # a partial answer first, the right one later
        (BED, " the kitchen to eat. Then bed.", "wrong"),  # only the first sentence counts
        (BED, " the park with her mom and dad to play.", "wrong"),
        (BED, "", "wrong"),
        (CAT, " cat. She loved it.", "correct"),
        (CAT, " big fluffy kitten.", "correct"),
        (CAT, " new pet.", "partial"),
        (CAT, " dog and a big black cat.", "partial"),
        (CAT, " dog.", "wrong"),
        (CAT, " category of toys.", "wrong"),  # whole words only
        (NAME, " Sara if he could play.", "correct"),
        (NAME, " her if he could play.", "partial"),  # a partial answer that is itself a filler word
        (NAME, " his mom.", "wrong"),
        (DOOR, " get in.", "correct"),  # multi-word answers
        (DOOR, " get out.", "wrong"),
        (DOOR, " open it.", "correct"),
    ],
)
def test_rule_scoring_on_hand_made_completions(probe, completion, verdict):
    assert score_completion(probe, completion).verdict == verdict


def test_possessives_and_curly_quotes_are_normalised():
    probe = Probe("context", "t", "Lucy ran to", ("grandpa",), ())
    assert score_completion(probe, " Grandpa\u2019s house.").verdict == "correct"


@pytest.mark.parametrize("suite", probes.SUITES)
def test_shipped_suites_are_complete(suite):
    items = probes.load_suite(suite)
    assert len(items) >= 20
    assert len({p.id for p in items}) == len(items)
    for p in items:
        assert p.suite == suite and p.accept
        assert not set(p.accept) & set(p.partial), p.id
        assert not p.prompt.endswith(" "), p.id
        # every accepted answer is scored correct when it is the completion
        for answer in p.accept:
            assert score_completion(p, f" {answer}.").verdict == "correct", (p.id, answer)


def test_bad_suite_file_is_named_in_the_error(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"suite": "mine", "prompts": [{"id": "x", "prompt": "Tom ran to the"}]}))
    with pytest.raises(ValueError, match=r"mine.json: prompt #0 has no 'accept'"):
        probes.load_suite(path)
    with pytest.raises(FileNotFoundError, match="nope"):
        probes.load_suite("nope")
    path.write_text(json.dumps({"prompts": [{"id": "x", "prompt": "Tom ran to the", "accept": ["park"]}]}))
    assert probes.load_suite(path) == [Probe("mine", "x", "Tom ran to the", ("park",), ())]


class ScriptedStudent:
    """Answers each prompt with a fixed completion (greedy), so scoring is checked without a model."""

    def __init__(self, name, answers):
        from tinystories.evaluate.students import StudentInfo

        self.info, self.answers, self.calls = StudentInfo(name=name, identity=name), answers, []

    def complete(self, prompts, *, max_new_tokens, temperature=1.0, **kwargs):
        self.calls.append((list(prompts), temperature))
        return [self.answers.get(p, " nothing.") for p in prompts]


def test_run_probes_side_by_side_reports(tmp_path):
    suite = [BED, CAT, NAME]
    good = ScriptedStudent("good", {BED.prompt: " bed.", CAT.prompt: " cat.", NAME.prompt: " her."})
    bad = ScriptedStudent("bad", {BED.prompt: " the moon."})
    results = probes.run_probes(good, suite, batch_size=2) + probes.run_probes(bad, suite)
    assert all(t == 0.0 for _, t in good.calls)  # greedy
    assert [r.verdict for r in results] == ["correct", "correct", "partial", "wrong", "wrong", "wrong"]
    counts = probes.tally(results)
    assert counts[("good", "factual")] == {"correct": 1, "partial": 0, "wrong": 0}
    assert counts[("bad", "context")] == {"correct": 0, "partial": 0, "wrong": 1}

    page = probes.render_html(results, tmp_path / "p.html").read_text()
    assert "<script" not in page and "http" not in page  # self-contained
    assert page.count("<td class='correct'") == 2 and page.count("<td class='partial'") == 1
    assert page.count("<td class='wrong'") == 3
    assert re.search(r"<th>good</th><th>bad</th>", page)

    from rich.console import Console

    console = Console(record=True, width=200, color_system="truecolor")
    probes.render_terminal(results, console=console)
    text = console.export_text()
    assert "good" in text and "bad" in text and "1 / 0 / 0" in text


def test_judge_verdict_parsing():
    assert probes.parse_judge_verdict("CORRECT") == "correct"
    assert probes.parse_judge_verdict("Wrong.") == "wrong"
    assert probes.parse_judge_verdict("It is correct, not wrong") is None
    assert probes.parse_judge_verdict("maybe") is None
    assert "bed" in probes.judge_prompt(BED, " sleep.")


def test_probe_result_round_trips_to_json():
    r = ProbeResult("m", "factual", "x", "p", " c", "correct", "c")
    assert json.loads(json.dumps(r.as_dict()))["verdict"] == "correct"


def test_judge_pass_settles_only_clear_answers():
    import asyncio

    from tinystories.evaluate.judge import ChatReply

    results = probes.run_probes(
        ScriptedStudent("m", {BED.prompt: " sleep.", CAT.prompt: " pet.", NAME.prompt: " Sara."}), [BED, CAT, NAME]
    )
    asked = []

    async def chat(messages, request_id):
        asked.append(request_id)
        text = messages[0]["content"]
        return ChatReply("CORRECT" if "sleep" in text else "Hmm, hard to say.", {}, 0.0)

    assert asyncio.run(probes.judge_partials(chat, results, [BED, CAT, NAME])) == 1
    assert sorted(asked) == ["probe-m-t-bed", "probe-m-t-cat"]  # only the partial ones
    assert [(r.verdict, r.judged) for r in results] == [("correct", True), ("partial", False), ("correct", False)]
