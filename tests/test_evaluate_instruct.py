"""Instruction following of Instruct checkpoints: shipped sets, rule checks, the judge's YES/NO answers."""

from __future__ import annotations

import json

import pytest
from _evaluate_fixtures import ScriptedStudent, chat_requests, make_judge

from tinystories.evaluate import grading
from tinystories.evaluate import instruct as instruct_eval
from tinystories.evaluate.instruct import Instruction, parse_yes_no, rule_checks
from tinystories.testing.openai_server import OpenAIServer
from tinystories.vocabulary import WORDS_BY_PART_OF_SPEECH


def test_shipped_instruction_sets_use_the_vocabulary():
    sets = instruct_eval.load_instructions()
    assert len(sets) >= 20 and len({s.id for s in sets}) == len(sets)
    for s in sets:
        for pos, word in s.words.items():
            assert word in WORDS_BY_PART_OF_SPEECH[pos], (s.id, word)
    kinds = {k for s in sets for k, v in (("words", s.words), ("summary", s.summary), ("sentence", s.sentence)) if v}
    assert kinds == {"words", "summary", "sentence"}
    assert {f for s in sets for f in s.features} == set(instruct_eval.FEATURES)


def test_bad_instruction_files_name_the_line(tmp_path):
    path = tmp_path / "i.jsonl"
    path.write_text('{"id": "a", "summary": "A dog runs."}\n{"id": "b", "features": ["sarcasm"]}\n')
    with pytest.raises(ValueError, match=r"i.jsonl line 2: .*sarcasm"):
        instruct_eval.load_instructions(path)
    path.write_text('{"id": "a"}\n')
    with pytest.raises(ValueError, match="no instruction at all"):
        instruct_eval.load_instructions(path)
    path.write_text('{"id": "a", "words": {"verb": "run"}}\n')
    with pytest.raises(ValueError, match="one verb, one noun and one adjective"):
        instruct_eval.load_instructions(path)


def test_rule_checks():
    ins = Instruction(
        "t",
        {"verb": "run", "noun": "dog", "adjective": "happy"},
        ("dialogue", "bad_ending"),
        sentence="The sun went down.",
    )
    story = "Tom ran with his dogs. \u201cLook!\u201d said Tom. The  sun went\ndown. They were happier than ever."
    assert rule_checks(ins, story) == {
        "word:run": True,
        "word:dog": True,
        "word:happy": True,
        "sentence": True,
        "feature:dialogue": True,
    }
    story = "Tom walked with his cat. The sun was up. Nobody spoke. He was sad."
    assert rule_checks(ins, story) == {
        "word:run": False,
        "word:dog": False,
        "word:happy": False,
        "sentence": False,
        "feature:dialogue": False,
    }
    # a word inside another word does not count
    ins = Instruction("t", {"verb": "run", "noun": "cat", "adjective": "red"}, ("dialogue",))
    assert rule_checks(ins, '"Hi," said the category to the runner.') == {
        "word:run": False,
        "word:cat": False,
        "word:red": False,
        "feature:dialogue": True,
    }


def test_judged_questions_leave_rule_features_to_rules():
    ins = Instruction("t", {}, ("dialogue", "plot_twist", "moral_value"), summary="A cat naps.")
    assert list(instruct_eval.judged_questions(ins)) == ["summary", "feature:plot_twist", "feature:moral_value"]


def test_parse_yes_no():
    text = "Summary: YES\n**Twist**: no, nothing unexpected\nMoralValue: Yes."
    assert parse_yes_no(text, ["Summary", "Twist", "MoralValue"]) == {
        "Summary": True,
        "Twist": False,
        "MoralValue": True,
    }
    with pytest.raises(ValueError, match="no YES/NO for Twist"):
        parse_yes_no("Summary: YES\nTwist: maybe", ["Summary", "Twist"])


def test_summarize_instruct_on_known_records():
    records = [
        {"status": "ok", "score": 1.0, "checks": {"word:run": True, "summary": True}},
        {"status": "ok", "score": 0.5, "checks": {"word:dog": False, "summary": True}},
        {"status": "failed", "score": None, "checks": {"word:dog": True}},
    ]
    s = instruct_eval.summarize_instruct(records)
    assert (s["n_scored"], s["n_items"], s["score"].mean) == (2, 3, 0.75)
    assert s["pass_rates"] == {"summary": 1.0, "word": 0.5}
    json.dumps(s["pass_rates"])


def test_instruction_prompt_uses_the_instruct_corpus_layout():
    ins = Instruction(
        "t",
        {"verb": "run", "noun": "dog", "adjective": "happy"},
        ("dialogue", "plot_twist"),
        summary="A dog runs home.",
        sentence="The dog was fast.",
    )
    assert instruct_eval.instruction_prompt(ins) == (
        "Features: Dialogue, Twist\nWords: run, dog, happy\nSummary: A dog runs home.\n"
        "Random sentence: The dog was fast.\nStory:\n"
    )
    assert instruct_eval.instruction_prompt(Instruction("u", summary="A cat naps.")) == "Summary: A cat naps.\nStory:\n"


def instruct_answer(mode: str = "ok"):
    """Answers the instruction-following questions: YES for the summary, NO for every feature."""

    def answer(body: dict) -> str:
        messages = body["messages"]
        labels = [
            line.split(":", 1)[0]
            for line in messages[0]["content"].split("exactly this format:\n", 1)[1].splitlines()
            if line.strip()
        ]
        if mode == "malformed" or (mode == "fix_on_follow_up" and len(messages) == 1):
            return "The story mostly follows the instructions."
        return "\n".join(f"{label}: {'YES' if label == 'Summary' else 'NO'}" for label in labels)

    return answer


@pytest.mark.parametrize("mode", ["ok", "fix_on_follow_up", "malformed"])
def test_instruction_following_rules_and_judge(tmp_path, mode):
    from tinystories.evaluate.instruct import Instruction

    instructions = [
        Instruction(
            "a", {"verb": "run", "noun": "dog", "adjective": "happy"}, ("dialogue", "plot_twist"), summary="A dog runs."
        ),
        Instruction("b", {"verb": "jump", "noun": "ball", "adjective": "red"}),  # rules only: no request
    ]

    class Writer(ScriptedStudent):
        def complete(self, prompts, **kwargs):
            self.generated += len(prompts)
            return [' "Run!" said the happy dog, and it ran.' if "Summary" in p else " A ball." for p in prompts]

    with OpenAIServer(answer=instruct_answer(mode)) as server:
        settings = grading.GradeSettings(judge_model="judge-test", samples=2, max_new_tokens=16)
        records = instruct_eval.grade_instruction_following(
            [Writer()], make_judge(server), instructions, settings, tmp_path / "instruct.jsonl", progress=False
        )
        assert chat_requests(server) == 2 * {"ok": 1, "fix_on_follow_up": 2, "malformed": 2}[mode]
    by_id = {}
    for r in records:
        by_id.setdefault(r["instruction"]["id"], []).append(r)
    for r in by_id["b"]:  # words only: decided by rules, no judge
        assert r["status"] == "ok" and r["conversation"] == []
        assert r["checks"] == {"word:jump": False, "word:ball": True, "word:red": False} and r["score"] == 1 / 3
    for r in by_id["a"]:
        assert r["checks"]["word:run"] and r["checks"]["feature:dialogue"]
        if mode == "malformed":
            assert r["status"] == "failed" and r["score"] is None
        else:
            assert r["status"] == "ok" and r["checks"]["summary"] and not r["checks"]["feature:plot_twist"]
            assert r["score"] == pytest.approx(5 / 6)  # run, dog, happy, dialogue, summary pass; twist fails


def test_instruct_cli_end_to_end_with_a_tiny_random_model(tmp_path, monkeypatch, tiny_run, capsys):
    from tinystories.cli import main

    sets = tmp_path / "sets.jsonl"
    sets.write_text(
        '{"id": "a", "words": {"verb": "run", "noun": "dog", "adjective": "happy"}, '
        '"summary": "A dog runs.", "features": ["plot_twist"]}\n'
    )
    monkeypatch.setenv("JUDGE_KEY", "test")
    with OpenAIServer(answer=instruct_answer("ok")) as server:
        assert (
            main(
                [
                    "eval",
                    "grade",
                    str(tiny_run[1][0]),
                    "--instruct",
                    "--instructions",
                    str(sets),
                    "--judge-model",
                    "judge-test",
                    "--base-url",
                    server.url,
                    "--api-key-env",
                    "JUDGE_KEY",
                    "--num-samples",
                    "2",
                    "--max-new-tokens",
                    "12",
                    "--out",
                    str(tmp_path / "eval"),
                ]
            )
            == 0
        )
        assert chat_requests(server) == 2
    records = [json.loads(line) for line in (tmp_path / "eval" / "instruct.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["status"] == "ok" for r in records)
    for r in records:
        assert r["prompt"].endswith("Story:\n") and r["checks"]["summary"] is True
        assert r["score"] == pytest.approx(sum(r["checks"].values()) / len(r["checks"]))
    assert main(["eval", "report", str(tmp_path / "eval" / "instruct.jsonl")]) == 0
    assert "instruction following" in capsys.readouterr().out
