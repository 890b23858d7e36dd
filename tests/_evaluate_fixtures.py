"""What the evaluation tests share: the ``tiny_run`` fixture (a plugin that ``conftest.py`` loads), a judge that
answers on the test server, a scripted student."""

from __future__ import annotations

import hashlib

import pytest
from _fixtures import save_random_checkpoint

from tinystories.evaluate import conversation, judge
from tinystories.evaluate.students import StudentInfo


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A randomly initialised demo-shaped GPT-Neo with a small BPE, saved as a real checkpoint of a run."""
    from tinystories.story_templates import generate_stories
    from tinystories.tokenizer import Tokenizer

    tokenizer = Tokenizer.train(generate_stories(200), vocab_size=384)
    run = tmp_path_factory.mktemp("runs") / "tiny"
    paths = [save_random_checkpoint(run, step, tokenizer, seed=step) for step in (10, 20)]
    return run, paths


# ------------------------------------------------------------------------------------------------ judge
def expected_grades(completion: str) -> conversation.Grades:
    """What the test judge gives a completion: a function of its text, so a test can recompute it."""
    h = hashlib.sha256(completion.encode()).digest()
    return conversation.Grades(1 + h[0] % 10, 1 + h[1] % 10, 1 + h[2] % 10, 1 + h[3] % 10, "ABCDEF"[h[4] % 6])


def grades_text(g: conversation.Grades) -> str:
    return (
        f"Grammar: {g.grammar:g}/10\nCreativity: {g.creativity:g}/10\nConsistency: {g.consistency:g}/10\n"
        f"Plot: {g.plot:g}/10\nAge group: {g.age_group}"
    )


def judge_answer(mode: str = "ok"):
    """An answer function that behaves like a judge: assessment, then grades (or a scripted misbehaviour)."""

    def answer(body: dict) -> str:
        messages = body["messages"]
        shown = messages[0]["content"].split("completion:\n\n", 1)[1].split("\n\nPlease provide", 1)[0]
        completion = shown.split("***", 1)[1]
        if len(messages) == 1:
            return "The completion is grammatical and follows the beginning; the split sentence is finished."
        follow_up = messages[-1]["content"].startswith("I could not read")
        good = grades_text(expected_grades(completion))
        if mode == "ok" or (mode == "fix_on_follow_up" and follow_up):
            return "Here are my grades.\n" + good
        if mode in ("malformed", "fix_on_follow_up"):
            return "It is a nice little story with a clear plot and good grammar overall."
        if mode == "out_of_range":
            return good.replace("Grammar: ", "Grammar: 1")  # 7/10 -> 17/10
        if mode == "refusal":
            return "I'm sorry, but I can't help with grading this text."
        raise AssertionError(mode)

    return answer


class ScriptedStudent:
    """A student whose completions depend only on the seed and the row, like a seeded sampler."""

    def __init__(self, name: str = "s", identity: str = "id-s"):
        self.info = StudentInfo(name=name, identity=identity, hidden_size=64, num_layers=2, step=100, run="r")
        self.generated = 0

    def complete(self, prompts, *, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=0):
        self.generated += len(prompts)
        return [f" went on and on ({seed % 997}-{row})." for row in range(len(prompts))]


def chat_requests(server) -> int:
    return sum(1 for e in server.log if e.path == "/v1/chat/completions")


def make_judge(server, *, attempts: int = 6, **config) -> judge.LLMJudge:
    from tinystories.llm import ClientConfig

    config = {"concurrency": 8, "backoff_initial_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 2.0, **config}
    return judge.LLMJudge(
        "judge-test", ClientConfig(base_url=server.url, api_key="test", max_attempts=attempts, **config)
    )
