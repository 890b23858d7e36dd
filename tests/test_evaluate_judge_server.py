"""Grading against an OpenAI-compatible judge server on 127.0.0.1, through the real `openai` client and the
project's shared client layer: exact parsing, the follow-up question, failures, caching, API faults."""

from __future__ import annotations

import json

import pytest
from _evaluate_fixtures import (
    ScriptedStudent,
    chat_requests,
    expected_grades,
    judge_answer,
    make_judge,
)

from tinystories.evaluate import conversation, grading, report
from tinystories.jsonl import read_jsonl

pytest.importorskip("openai")
from tinystories.testing.openai_server import Faults, OpenAIServer  # noqa: E402

BEGINNINGS = ["Tom had a red ball. He threw it high and", "Lily saw a little bird in the", "The cat was hungry, so it"]


def run_grade(server, tmp_path, students, *, samples=2, beginnings=BEGINNINGS, attempts=6, **config):
    judge = make_judge(server, attempts=attempts, **config)
    settings = grading.GradeSettings(judge_model="judge-test", samples=samples, max_new_tokens=16)
    return grading.grade(students, judge, beginnings, settings, tmp_path / "grades.jsonl", progress=False)


def test_well_formed_grades_are_recorded_exactly_and_cached(tmp_path):
    student = ScriptedStudent()
    with OpenAIServer(answer=judge_answer("ok")) as server:
        records = run_grade(server, tmp_path, [student])
        assert len(records) == len(BEGINNINGS) * 2
        assert chat_requests(server) == 2 * len(records)  # assessment + grades, no follow-up
        for r in records:
            assert r["status"] == "ok" and not r["follow_up"]
            assert r["grades"] == expected_grades(r["completion"]).as_dict()
            assert [m["role"] for m in r["conversation"]] == ["user", "assistant", "user", "assistant"]
            assert f"{r['beginning']}***{r['completion']}" in r["conversation"][0]["content"]
            assert r["usage"]["prompt_tokens"] > 0
        # a rerun costs nothing: no request, no generation
        generated = student.generated
        again = run_grade(server, tmp_path, [student])
        assert again == records and chat_requests(server) == 2 * len(records)
        assert student.generated == generated
        # more samples: only the new ones are generated and judged
        more = run_grade(server, tmp_path, [student], samples=3)
        assert len(more) == len(BEGINNINGS) * 3
        assert chat_requests(server) == 2 * len(more)
        assert [r for r in more if r["sample"] < 2] == records


def test_a_torn_grade_record_is_cut_and_only_its_item_graded_again(tmp_path):
    """The grades file follows the one JSONL rule (tinystories.jsonl): readers skip a torn last line, the next
    run cuts it off and judges that item again."""
    student = ScriptedStudent()
    path = tmp_path / "grades.jsonl"
    with OpenAIServer(answer=judge_answer("ok")) as server:
        first = run_grade(server, tmp_path, [student], beginnings=BEGINNINGS[:2])
        raw = path.read_bytes()
        last = raw[:-1].rsplit(b"\n", 1)[1]
        path.write_bytes(raw[: -len(last) - 1] + last[: len(last) // 2])  # the last record cut short by a crash
        assert len(list(read_jsonl(path))) == len(first) - 1
        before = chat_requests(server)
        again = run_grade(server, tmp_path, [student], beginnings=BEGINNINGS[:2])
        assert chat_requests(server) - before == 2  # one conversation: the torn item's
    assert sorted(r["key"] for r in again) == sorted(r["key"] for r in first)
    assert path.read_bytes().endswith(b"\n")
    assert len([json.loads(line) for line in path.read_text().splitlines()]) == len(first)


@pytest.mark.parametrize(
    "mode, status, failure, requests_per_item",
    [
        ("fix_on_follow_up", "ok", None, 3),
        ("malformed", "failed", "missing", 3),
        ("out_of_range", "failed", "out_of_range", 3),
        ("refusal", "failed", "refusal", 3),
    ],
)
def test_unreadable_grades_get_one_follow_up_then_a_recorded_failure(
    tmp_path, mode, status, failure, requests_per_item
):
    with OpenAIServer(answer=judge_answer(mode)) as server:
        records = run_grade(server, tmp_path, [ScriptedStudent()], samples=1)
        assert chat_requests(server) == requests_per_item * len(records)
    for r in records:
        assert r["status"] == status and r["failure"] == failure and r["follow_up"]
        assert r["conversation"][-2]["content"].startswith("I could not read your grades")
        if status == "ok":
            assert r["grades"] == expected_grades(r["completion"]).as_dict()
        else:
            assert r["grades"] is None  # never a made-up score
    summary = report.summarize(records)
    assert summary["n_graded"] == (len(records) if status == "ok" else 0)
    if failure:
        assert summary["failures"] == {failure: len(records)}
    # failures are final: a rerun does not ask again
    with OpenAIServer(answer=judge_answer("ok")) as server:
        run_grade(server, tmp_path, [ScriptedStudent()], samples=1)
        assert chat_requests(server) == 0


def test_transient_faults_are_retried_by_the_shared_client(tmp_path):
    faults = Faults(rate=0.3, kinds=("rate_limit", "server_error", "malformed"), seed=1)
    with OpenAIServer(answer=judge_answer("ok"), faults=faults) as server:
        records = run_grade(server, tmp_path, [ScriptedStudent()])
        assert any(e.outcome != "ok" for e in server.log)  # faults did happen
    assert all(r["status"] == "ok" and r["grades"] == expected_grades(r["completion"]).as_dict() for r in records)


def test_api_failure_is_recorded_and_retried_next_run_with_the_same_completion(tmp_path):
    student = ScriptedStudent()
    faults = Faults(rate=1.0, kinds=("server_error",), max_per_request=10**6)
    with OpenAIServer(answer=judge_answer("ok"), faults=faults) as server:
        assert run_grade(server, tmp_path, [student], samples=1, attempts=2) == []
    errors = list(read_jsonl(tmp_path / "grades.jsonl"))
    assert len(errors) == len(BEGINNINGS) and {r["status"] for r in errors} == {"error"}
    generated = student.generated
    with OpenAIServer(answer=judge_answer("ok")) as server:
        records = run_grade(server, tmp_path, [student], samples=1)
    assert student.generated == generated  # the completions were kept
    assert {r["key"]: r["completion"] for r in records} == {r["key"]: r["completion"] for r in errors}
    assert all(r["status"] == "ok" for r in records)


def test_two_students_are_cached_separately(tmp_path):
    a, b = ScriptedStudent("a", "id-a"), ScriptedStudent("b", "id-b")
    with OpenAIServer(answer=judge_answer("ok")) as server:
        first = run_grade(server, tmp_path, [a], samples=1)
        both = run_grade(server, tmp_path, [a, b], samples=1)
        assert chat_requests(server) == 2 * 2 * len(BEGINNINGS)
    assert both[: len(first)] == first and {r["checkpoint"] for r in both} == {"a", "b"}


def test_grade_cli_end_to_end_with_a_tiny_random_model(tmp_path, monkeypatch, tiny_run):
    from tinystories.cli import main

    beginnings = tmp_path / "b.txt"
    beginnings.write_text("\n".join(BEGINNINGS[:2]) + "\n")
    monkeypatch.setenv("JUDGE_KEY", "test")
    with OpenAIServer(answer=judge_answer("ok")) as server:
        argv = [
            "eval",
            "grade",
            str(tiny_run[1][0]),
            "--judge-model",
            "judge-test",
            "--base-url",
            server.url,
            "--api-key-env",
            "JUDGE_KEY",
            "--beginnings",
            str(beginnings),
            "--num-samples",
            "3",
            "--max-new-tokens",
            "12",
            "--out",
            str(tmp_path / "eval"),
        ]
        assert main(argv) == 0
        assert chat_requests(server) == 2 * 2 * 3
        assert main(argv) == 0  # cached
        assert chat_requests(server) == 2 * 2 * 3
    records = [json.loads(line) for line in (tmp_path / "eval" / "grades.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(r["status"] == "ok" for r in records)
    assert {r["checkpoint"] for r in records} == {"tiny/step_00000010"}
    assert all(r["grades"] == expected_grades(r["completion"]).as_dict() for r in records)
    # one beginning's three samples come from one seeded batch and differ from each other
    assert len({r["completion"] for r in records if r["beginning_index"] == 0}) > 1


def test_grade_cli_all_checkpoints_of_a_run_give_the_step_curves(tmp_path, monkeypatch, tiny_run):
    from tinystories.cli import main

    beginnings = tmp_path / "b.txt"
    beginnings.write_text(BEGINNINGS[0] + "\n")
    monkeypatch.setenv("JUDGE_KEY", "test")
    out = tmp_path / "eval"
    with OpenAIServer(answer=judge_answer("ok")) as server:
        assert (
            main(
                [
                    "eval",
                    "grade",
                    str(tiny_run[0]),
                    "--all-checkpoints",
                    "--judge-model",
                    "judge-test",
                    "--base-url",
                    server.url,
                    "--api-key-env",
                    "JUDGE_KEY",
                    "--beginnings",
                    str(beginnings),
                    "--num-samples",
                    "2",
                    "--max-new-tokens",
                    "8",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
    records = list(read_jsonl(out / "grades.jsonl"))
    assert sorted({(r["checkpoint"], r["step"]) for r in records}) == [
        ("tiny/step_00000010", 10),
        ("tiny/step_00000020", 20),
    ]
    assert (out / "grades_vs_step.png").read_bytes()[:4] == b"\x89PNG"


def test_budget_stop_records_the_rest_for_the_next_run(tmp_path):
    from tinystories.llm import PriceTable

    # The test server counts ~4 characters per token: at $100 per 1M tokens a judge turn costs ~$0.03 and the
    # 12 conversations ~$0.7. The client stops before a request could take the spend past the budget (its
    # reserve per request in flight is the dearest so far, or a bound from the prompt and 4096 answer tokens).
    prices = PriceTable({"judge-test": (100.0, 100.0)})
    student = ScriptedStudent()
    with OpenAIServer(answer=judge_answer("ok")) as server:
        judge = make_judge(server, max_cost_usd=0.5, prices=prices, concurrency=1)
        settings = grading.GradeSettings(judge_model="judge-test", samples=4, max_new_tokens=16)
        records = grading.grade([student], judge, BEGINNINGS, settings, tmp_path / "grades.jsonl", progress=False)
        assert judge.stats.stopped == "budget" and judge.stats.cost_usd <= 0.5 + 0.05
        spent = chat_requests(server)
    assert 0 < len(records) < 12 and all(r["status"] == "ok" for r in records)
    left = [r for r in read_jsonl(tmp_path / "grades.jsonl") if r["status"] == "error"]
    assert len(records) + len(left) == 12
    assert all("stopped: budget" in r["failure_detail"]["error"] for r in left)
    with OpenAIServer(answer=judge_answer("ok")) as server:
        done = run_grade(server, tmp_path, [student], samples=4)
        # only what the budget left out: turns answered before the stop are not asked again
        assert chat_requests(server) == 2 * len(left) - sum(len(r["turns"]) for r in left)
    assert len(done) == 12 and spent > 0


def test_a_budget_stop_keeps_every_answered_turn_and_the_rerun_pays_for_none_twice(tmp_path):
    from tinystories.llm import PriceTable

    bodies = []

    def answer(body: dict) -> str:
        bodies.append(body)
        return judge_answer("ok")(body)

    # Each request reserves its prompt bound plus its max_tokens (~$0.1 here, at $100 per 1M tokens); with
    # 4,096 answer tokens reserved (no max_tokens) not even the first request would fit in $0.3.
    student, settings = ScriptedStudent(), grading.GradeSettings(judge_model="judge-test", samples=4, max_new_tokens=16)
    with OpenAIServer(answer=answer, latency_s=0.02) as server:
        judge = make_judge(server, max_cost_usd=0.3, prices=PriceTable({"judge-test": (100.0, 100.0)}), concurrency=8)
        grading.grade([student], judge, BEGINNINGS, settings, tmp_path / "grades.jsonl", progress=False)
        first_run = server.requested_ids()
    assert judge.stats.stopped == "budget" and first_run
    assert all(
        b["max_tokens"]
        == (conversation.ASSESSMENT_MAX_TOKENS if len(b["messages"]) == 1 else conversation.GRADES_MAX_TOKENS)
        for b in bodies
    )
    left = [r for r in read_jsonl(tmp_path / "grades.jsonl") if r["status"] == "error"]
    half_done = [r for r in left if r["turns"]]
    assert half_done, "a budget stop mid-way leaves conversations with paid turns"
    for r in half_done:  # every paid turn is kept with its text and cost
        assert all(t["text"] and t["cost_usd"] > 0 and t["id"] in first_run for t in r["turns"])
        assert r["cost_usd"] == pytest.approx(sum(t["cost_usd"] for t in r["turns"]))
    with OpenAIServer(answer=judge_answer("ok")) as server:
        done = run_grade(server, tmp_path, [student], samples=4)
        assert not set(server.requested_ids()) & set(first_run)  # nothing paid for twice
    assert len(done) == 12
    for r in done:  # resumed conversations are whole and graded as if never interrupted
        assert r["status"] == "ok" and r["grades"] == expected_grades(r["completion"]).as_dict()
        assert [m["role"] for m in r["conversation"]] == ["user", "assistant", "user", "assistant"]
