"""Judge prompts, grade parsing, the results cache and the summary statistics (no network)."""

from __future__ import annotations

import json
import math

import pytest

from tinystories.evaluate import cli as eval_cli
from tinystories.evaluate import conversation, grading, report
from tinystories.evaluate.conversation import GradeParseError, Grades, parse_grades

WELL_FORMED = [
    ("Grammar: 8/10\nCreativity: 7/10\nConsistency: 9/10\nPlot: 6/10\nAge group: C", Grades(8, 7, 9, 6, "C")),
    (
        "Grammar: 10/10\nCreativity: 1/10\nConsistency: 5/10\nPlot: 3/10\nAge group: A (3 or under)",
        Grades(10, 1, 5, 3, "A"),
    ),
    # the paper's judge wrote prose around the grades; markdown and "out of" are common too
    (
        "Sure! Here are my grades.\n**Grammar**: 6 out of 10\n**Creativity** - 4.5/10\n"
        "Consistency with the beginning: 7/10\nPlot: the plot is simple, 5/10\nAge group: B: 4-5.",
        Grades(6, 4.5, 7, 5, "B"),
    ),
    ("Grammar: 9 out of 10, Creativity: 8/10, Consistency: 7/10, Plot: 6/10 -- age group F", Grades(9, 8, 7, 6, "F")),
]

G = "Creativity: 7/10\nConsistency: 9/10\nPlot: 6/10\nAge group: C"  # the other four fields, well formed
# Judge answers as they come, and what must be read from them: Grades, or the GradeParseError reason. Only
# "X/10" counts (the last one per field); ranges and several letters are ambiguous, never a guess.
JUDGE_ANSWERS = [
    ("Grammar has 3 minor slips, but they do not hurt.\nGrammar: 8/10\n" + G, Grades(8, 7, 9, 6, "C")),
    ("Grammar: the completion has 2 small errors, so 6/10\n" + G, Grades(6, 7, 9, 6, "C")),
    (
        "Grammar: 8/10\nCreativity: 7/10\nConsistency: 9/10\nPlot: the 3 events connect well, 8/10\nAge group: C",
        Grades(8, 7, 9, 8, "C"),
    ),
    (
        "Grammar: 8/10\nCreativity: 7/10\nConsistency with the first 2 sentences: 9/10\nPlot: 6/10\nAge group: C",
        Grades(8, 7, 9, 6, "C"),
    ),
    ("Grammar: 7-8/10\n" + G, "ambiguous"),
    ("Grammar: 7 - 8 / 10\n" + G, "ambiguous"),
    ("Grammar: 7 to 8 out of 10\n" + G, "ambiguous"),
    ("Grammar: 7 or 8/10\n" + G, "ambiguous"),
    ("Grammar: 8/10\nCreativity: 7/10\nConsistency: 9/10\nPlot: 6/10\nAge group: B or C", "ambiguous"),
    (
        "Grammar: 8/10\nCreativity: 7/10\nConsistency: 9/10\nPlot: 6/10\n"
        "Age group: A: 3 or under. B: 4-5. C: 6-7. D: 8-9. E: 10-12. F: 13-16.",
        "ambiguous",
    ),
    ("Grammar: 8/10\nCreativity: 7/10\nConsistency: 9/10\nPlot: 6/10\nAge group: C/D", "ambiguous"),
    ("Grammar: 8/10 (maybe 9/10)\n" + G, "ambiguous"),
    ("Grammar: 1e1/10\n" + G, "ambiguous"),  # issue 22.16: was read as 1/10
    ("Grammar: 2E-1/10\n" + G, "ambiguous"),
    ("Grammar: x1/10\n" + G, "missing"),  # part of a word, not a grade
    ("Grammar: 8\n" + G, "missing"),  # no "/10": not read
    ("Grammar is very good, I would say eight.\n" + G, "missing"),
    ("Grammar: 8/10\nCreativity: 7/10\nConsistency: 9/10\nPlot: 6/10", "missing"),
    ("Grammar: 8/10\nCreativity: 7/10\nConsistency: 9/10\nPlot: 6/10\nAge group: a young child", "missing"),
    ("Grammar: 12/10\n" + G, "out_of_range"),
    ("Grammar: 8/5\n" + G, "out_of_range"),
    ("Grammar: 75 out of 100\n" + G, "out_of_range"),
    ("I'm sorry, but I can't grade this.", "refusal"),
    ("Grammar: 4/10\nOn reflection, Grammar: 5/10\n" + G, Grades(5, 7, 9, 6, "C")),  # the last one counts
    (
        "**Grammar:** 8/10\n**Creativity:** 7/10\n**Consistency:** 9/10\n**Plot:** 6/10\n**Age group:** C",
        Grades(8, 7, 9, 6, "C"),
    ),
    (
        "- Grammar (8/10): clean.\n- Creativity (7/10)\n- Consistency (9/10)\n- Plot (6/10)\n- Age group (C)",
        Grades(8, 7, 9, 6, "C"),
    ),
    ("Grammar: 8/10, Creativity: 7/10, Consistency: 9/10, Plot: 6/10, Age group: C", Grades(8, 7, 9, 6, "C")),
    ("GRAMMAR: 10/10\nCREATIVITY: 0/10\nCONSISTENCY: 5/10\nPLOT: 3/10\nAGE GROUP: F", Grades(10, 0, 5, 3, "F")),
    ("Grammar: 7.5/10\n" + G, Grades(7.5, 7, 9, 6, "C")),
    ("Grammar: 8 / 10\n" + G, Grades(8, 7, 9, 6, "C")),
    ("Grammar: 8/10\nCreativity: 7/10\nConsistency: 9/10\nPlot: 6/10\nAge group: C (6-7)", Grades(8, 7, 9, 6, "C")),
    (
        "Grammar: 8/10\nCreativity: 7/10\nConsistency: 9/10\nPlot: 6/10\nAge group: C. A young child could write it.",
        Grades(8, 7, 9, 6, "C"),
    ),
    ("Grammar: 8/10\nCreativity: 7/10\nConsistency: 9/10\nPlot: 6/10\nAge: E", Grades(8, 7, 9, 6, "E")),
    (
        "The age group is hard to tell.\nGrammar: 8/10\nCreativity: 7/10\nConsistency: 9/10\nPlot: 6/10\nAge group: D",
        Grades(8, 7, 9, 6, "D"),
    ),
    (
        "Age group: B or C at first sight.\nGrammar: 8/10\nCreativity: 7/10\nConsistency: 9/10\nPlot: 6/10\n"
        "Age group: C",
        Grades(8, 7, 9, 6, "C"),
    ),  # the final answer settles it
    ("Grammar: 8/10 - consistent tense use.\n" + G, Grades(8, 7, 9, 6, "C")),
]


@pytest.mark.parametrize("text, expected", JUDGE_ANSWERS)
def test_a_table_of_judge_answers(text, expected):
    if isinstance(expected, Grades):
        assert parse_grades(text) == expected
    else:
        with pytest.raises(GradeParseError) as info:
            parse_grades(text)
        assert info.value.reason == expected, info.value


@pytest.mark.parametrize("text, expected", WELL_FORMED)
def test_well_formed_grades_are_parsed_exactly(text, expected):
    assert parse_grades(text) == expected


@pytest.mark.parametrize(
    "text, reason, detail",
    [
        ("Grammar: 8/10\nCreativity: 7/10\nConsistency: 9/10\nAge group: C", "missing", "no plot grade"),
        ("Grammar: 8/10\nCreativity: 7/10\nConsistency: 9/10\nPlot: 6/10", "missing", "no age group"),
        # "a" in "a young child" is not an age-group letter
        ("Grammar: 8\nCreativity: 7\nConsistency: 9\nPlot: 6\nAge group: a young child", "missing", "no age group"),
        ("The story is lovely and the student writes well.", "missing", "no grammar grade"),
        ("Grammar: 11/10\nCreativity: 7/10\nConsistency: 9/10\nPlot: 6/10\nAge group: C", "out_of_range", "11"),
        ("Grammar: 80/100\nCreativity: 7/10\nConsistency: 9/10\nPlot: 6/10\nAge group: C", "out_of_range", "80/100"),
        ("Grammar: -2/10\nCreativity: 7/10\nConsistency: 9/10\nPlot: 6/10\nAge group: C", "out_of_range", "-2"),
        ("I'm sorry, but I can't help with grading this text.", "refusal", "declined"),
        ("As an AI, I am unable to assign grades.", "refusal", "declined"),
    ],
)
def test_bad_answers_raise_with_a_reason(text, reason, detail):
    with pytest.raises(GradeParseError) as info:
        parse_grades(text)
    assert info.value.reason == reason
    assert detail in info.value.detail


def test_partial_grades_are_kept_as_found_but_never_completed():
    with pytest.raises(GradeParseError) as info:
        parse_grades("Grammar: 8/10\nCreativity: 7/10")
    assert info.value.found == {"grammar": 8.0, "creativity": 7.0}


def test_assessment_prompt_has_the_papers_structure():
    prompt = conversation.assessment_prompt("Tom saw a big", " dog in the park.")
    assert "Tom saw a big*** dog in the park." in prompt
    assert "general assessment" in prompt and "split in the middle by the separator ***" in prompt
    for word in ("grammar", "creativity", "consistency", "plot", "A: 3 or under", "F: 13-16"):
        assert word in conversation.GRADING_REQUEST


def test_cache_key_changes_with_every_input():
    base = dict(
        checkpoint_id="abc", beginning="Once", seed=0, sample=0, generation={"temperature": 1.0}, judge_model="gpt-4o"
    )
    key = grading.cache_key(**base)
    assert key == grading.cache_key(**base)
    for field, other in [
        ("checkpoint_id", "abd"),
        ("beginning", "Once "),
        ("seed", 1),
        ("sample", 1),
        ("generation", {"temperature": 0.5}),
        ("judge_model", "gpt-4o-mini"),
    ]:
        assert grading.cache_key(**{**base, field: other}) != key, field
    assert grading.cache_key(**base, prompt_version="other") != key


def test_mean_ci95_on_known_inputs():
    s = report.mean_ci95([1, 2, 3, 4, 5])
    # mean 3, sample sd sqrt(2.5), t(0.975, 4) = 2.776445 (statistical tables)
    assert s.n == 5 and s.mean == 3
    assert s.ci95 == pytest.approx(2.776445 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)
    s = report.mean_ci95([7.0] * 30)
    assert (s.mean, s.ci95) == (7.0, 0.0)
    assert math.isnan(report.mean_ci95([4.0]).ci95) and report.mean_ci95([]).n == 0


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 10, 30, 31, 57, 200, 5000):
        assert report.t975(df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-6), df


def test_summarize_counts_failures_and_averages_only_graded_records():
    def ok(g, c, s, p, age):
        return {"status": "ok", "grades": Grades(g, c, s, p, age).as_dict()}

    records = [
        ok(8, 6, 7, 5, "B"),
        ok(6, 4, 9, 7, "D"),
        {"status": "failed", "failure": "refusal", "grades": None},
        {"status": "failed", "failure": "missing", "grades": None},
    ]
    s = report.summarize(records)
    assert (s["n_graded"], s["n_items"]) == (2, 4)
    assert s["failures"] == {"refusal": 1, "missing": 1}
    assert [s[k].mean for k in conversation.SCORES] == [7, 5, 8, 6]
    assert s["grammar"].ci95 == pytest.approx(12.706205 * math.sqrt(2) / math.sqrt(2), rel=1e-6)
    assert s["age"].mean == 3 and report.age_letter(s["age"].mean) == "C"


def test_shipped_beginnings_are_cut_mid_sentence():
    beginnings = grading.load_beginnings()
    assert len(beginnings) >= 50 and len(set(beginnings)) == len(beginnings)
    for b in beginnings:
        assert b[-1] not in ".!?\"'", b  # stops in the middle of a sentence
        assert len(b.split()) >= 8


def test_user_beginnings_file(tmp_path):
    path = tmp_path / "b.txt"
    path.write_text("# my beginnings\nOnce upon a time, a cat\n\nTom ran to the\n")
    assert grading.load_beginnings(path) == ["Once upon a time, a cat", "Tom ran to the"]
    path.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no beginnings"):
        grading.load_beginnings(path)


def test_beginning_seed_depends_only_on_seed_and_text():
    assert grading.beginning_seed(0, "Tom ran") == grading.beginning_seed(0, "Tom ran")
    assert len({grading.beginning_seed(s, b) for s in (0, 1) for b in ("Tom ran", "Sue sat")}) == 4


def test_report_from_records_writes_layout_and_curves(tmp_path):
    """Two shapes and three steps of one run: the layout table/PNG and the curves PNG are drawn."""
    records = []
    for name, hidden, layers, step, run, base in [
        ("a/s100", 64, 8, 100, "a", 3),
        ("a/s200", 64, 8, 200, "a", 5),
        ("a/s300", 64, 8, 300, "a", 6),
        ("b/s300", 128, 2, 300, "b", 7),
    ]:
        for i in range(4):
            records.append(
                {
                    "checkpoint": name,
                    "hidden_size": hidden,
                    "num_layers": layers,
                    "step": step,
                    "run": run,
                    "status": "ok",
                    "grades": Grades(base, base - 1, base + (i % 2), base, "C").as_dict(),
                }
            )
    from tinystories.evaluate import report as eval_report

    groups = eval_report.group_by_model(records)
    hidden, layers, cells = eval_report.layout_grid(groups)
    assert (hidden, layers) == ([64, 128], [2, 8])
    assert cells[(64, 8)]["grammar"].mean == 6  # the latest step of run a fills its cell
    assert [s for s, _ in eval_report.runs_with_steps(groups)["a"]] == [100, 200, 300]
    path = tmp_path / "grades.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert eval_cli.run_cli(_parse(["report", str(path)])) == 0
    for png in ("grades_by_shape.png", "grades_vs_step.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _parse(argv):
    from tinystories.cli import build_parser

    parser, _ = build_parser("eval")
    return parser.parse_args(argv)


def test_grades_of_different_judges_are_never_pooled():
    from tinystories.evaluate import report as eval_report

    records = [
        {"checkpoint": "m", "judge_model": j, "status": "ok", "grades": Grades(g, g, g, g, "C").as_dict()}
        for j, g in (("a", 2), ("b", 8))
    ]
    groups = eval_report.group_by_model(records)
    assert sorted(groups) == ["m [a]", "m [b]"]
    assert list(eval_report.group_by_model(records[:1])) == ["m"]


def test_cli_input_errors_are_one_clear_line(tmp_path, monkeypatch, capsys):
    from tinystories.cli import main

    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    argv = [
        "eval",
        "grade",
        str(tmp_path / "missing.pt"),
        "--judge-model",
        "gpt-4o",
        "--api-key-env",
        "NO_SUCH_KEY_VAR",
    ]
    assert main(argv) == 2
    assert "error: no API key: set the environment variable NO_SUCH_KEY_VAR" in capsys.readouterr().err
    assert main(["eval", "loss", str(tmp_path / "missing.pt"), "--stories", str(tmp_path / "v.txt")]) == 2
    assert "missing.pt does not exist" in capsys.readouterr().err
    assert (
        main(
            ["eval", "grade", "x.pt", "--judge-model", "m", "--base-url", "http://127.0.0.1:9/v1", "--num-samples", "0"]
        )
        == 2
    )
    assert "samples (0)" in capsys.readouterr().err
