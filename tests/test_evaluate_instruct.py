"""Instruction following of Instruct checkpoints: shipped sets, rule checks, the judge's YES/NO answers."""

from __future__ import annotations

import json

import pytest

from tinystories import instruct_eval
from tinystories.instruct_eval import Instruction, parse_yes_no, rule_checks
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
    path.write_text('{"id": "a", "words": {"verb": "run"}}\n{"id": "b", "features": ["sarcasm"]}\n')
    with pytest.raises(ValueError, match=r"i.jsonl line 2: .*sarcasm"):
        instruct_eval.load_instructions(path)
    path.write_text('{"id": "a"}\n')
    with pytest.raises(ValueError, match="no instruction at all"):
        instruct_eval.load_instructions(path)


def test_rule_checks():
    ins = Instruction("t", {"verb": "run", "noun": "dog", "adjective": "happy"}, ("dialogue", "bad_ending"),
                      sentence="The sun went down.")
    story = 'Tom ran with his dogs. "Look!" said Tom. The  sun went\ndown. They were happier than ever.'
    assert rule_checks(ins, story) == {"word:run": True, "word:dog": True, "word:happy": True,
                                       "sentence": True, "feature:dialogue": True}
    story = "Tom walked with his cat. The sun was up. Nobody spoke. He was sad."
    assert rule_checks(ins, story) == {"word:run": False, "word:dog": False, "word:happy": False,
                                       "sentence": False, "feature:dialogue": False}
    # curly quotes count as dialogue; a word inside another word does not count
    ins = Instruction("t", {"noun": "cat"}, ("dialogue",))
    assert rule_checks(ins, "\u201cHi,\u201d said the category.") == {"word:cat": False, "feature:dialogue": True}


def test_judged_questions_leave_rule_features_to_rules():
    ins = Instruction("t", {}, ("dialogue", "plot_twist", "moral_value"), summary="A cat naps.")
    assert list(instruct_eval.judged_questions(ins)) == ["summary", "feature:plot_twist", "feature:moral_value"]


def test_parse_yes_no():
    text = "Summary: YES\n**Twist**: no, nothing unexpected\nMoralValue: Yes."
    assert parse_yes_no(text, ["Summary", "Twist", "MoralValue"]) == {"Summary": True, "Twist": False,
                                                                      "MoralValue": True}
    with pytest.raises(ValueError, match="no YES/NO for Twist"):
        parse_yes_no("Summary: YES\nTwist: maybe", ["Summary", "Twist"])


def test_summarize_instruct_on_known_records():
    records = [{"status": "ok", "score": 1.0, "checks": {"word:run": True, "summary": True}},
               {"status": "ok", "score": 0.5, "checks": {"word:dog": False, "summary": True}},
               {"status": "failed", "score": None, "checks": {"word:dog": True}}]
    s = instruct_eval.summarize_instruct(records)
    assert (s["n_scored"], s["n_items"], s["score"].mean) == (2, 3, 0.75)
    assert s["pass_rates"] == {"summary": 1.0, "word": 0.5}
    json.dumps(s["pass_rates"])
