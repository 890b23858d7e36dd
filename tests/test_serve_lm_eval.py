"""lm-evaluation-harness scores through `tinystories serve` (``--model local-completions``, its default settings:
token-id prompts, the Hugging Face tokenizer of the export) exactly as it scores the exported directory with
``--model hf``: a multiple_choice, a loglikelihood_rolling and a generate_until task built from real stories."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _serve_fixtures import make_sweep

from tinystories.serve.app import create_app
from tinystories.serve.models import ModelPool, discover_models
from tinystories.serve.server import serve_in_thread

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

MODEL = "tiny/step_00000020"
CONTEXT = 128  # the tiny models' context (tests/_fixtures.py TINY)

TASKS = {
    "ts_choice": """
output_type: multiple_choice
doc_to_text: "{{context}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{label}}"
metric_list:
  - metric: acc
""",
    "ts_rolling": """
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""",
    "ts_generate": """
output_type: generate_until
doc_to_text: "{{prompt}}"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 12
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
""",
}


def sentences(story: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", story.replace("\n", " ")) if s]


def write_tasks(root: Path, stories: list[str]) -> Path:
    """Three local tasks (data as jsonl, no network): which sentence comes next (the story's own or one of three
    others'), each story's whole text scored, and each story's first sentence continued greedily."""
    usable = [s for s in stories if len(sentences(s)) >= 3][:40]
    docs = {
        "ts_choice": [
            {
                "context": sentences(story)[0],
                "choices": [" " + sentences(story)[1]] + [" " + sentences(usable[(i + k) % 40])[1] for k in (1, 2, 3)],
                "label": 0,
            }
            for i, story in enumerate(usable[:16])
        ],
        "ts_rolling": [{"text": story} for story in usable[16:24]],  # several 126-token windows each
        "ts_generate": [{"prompt": sentences(s)[0], "answer": " " + sentences(s)[1]} for s in usable[24:34]],
    }
    for name, config in TASKS.items():
        data = root / f"{name}.jsonl"
        data.write_text("".join(json.dumps(doc) + "\n" for doc in docs[name]))
        (root / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"test_split: test\n{config}"
        )
    return root


def evaluate(model: str, model_args: dict, tasks: Path) -> dict:
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=list(TASKS),
        task_manager=TaskManager(include_path=str(tasks)),
        batch_size=1,
        log_samples=True,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )


def test_lm_eval_through_the_server_equals_lm_eval_on_the_export(tmp_path, real_stories):
    sweep = make_sweep(tmp_path)
    export = tmp_path / "export"
    out = subprocess.run(
        [sys.executable, "-m", "tinystories.cli", "export", str(sweep / "tiny"), "--out", str(export)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    (tmp_path / "tasks").mkdir()
    tasks = write_tasks(tmp_path / "tasks", real_stories)
    # lm-eval's API models keep one token for the answer and windows of max_length - 2 tokens; HF's model windows of
    # max_length: these lengths give both the same windows and the same truncation.
    hf = evaluate(
        "hf", {"pretrained": str(export), "dtype": "float32", "device": "cpu", "max_length": CONTEXT - 2}, tasks
    )
    pool = ModelPool(discover_models([sweep / "tiny"]))
    with serve_in_thread(create_app(pool)) as url:
        served = evaluate(
            "local-completions",
            {"base_url": f"{url}/v1/completions", "model": MODEL, "tokenizer": str(export), "max_length": CONTEXT},
            tasks,
        )
    assert served["results"]["ts_choice"]["acc,none"] == hf["results"]["ts_choice"]["acc,none"]
    for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        assert served["results"]["ts_rolling"][metric] == pytest.approx(hf["results"]["ts_rolling"][metric], rel=1e-4)
    assert served["results"]["ts_generate"] == hf["results"]["ts_generate"]
    # and document by document: the same log-likelihoods, the same choices, the same generated text
    for task in TASKS:
        ours, theirs = served["samples"][task], hf["samples"][task]
        assert len(ours) == len(theirs) > 0
        for a, b in zip(ours, theirs):
            if task == "ts_generate":
                assert a["filtered_resps"] == b["filtered_resps"]
                continue
            got = [r[0] if isinstance(r, (list, tuple)) else r for r in a["filtered_resps"]]
            want = [r[0] if isinstance(r, (list, tuple)) else r for r in b["filtered_resps"]]
            assert got == pytest.approx(want, rel=1e-4, abs=1e-4)
    generated = [s["filtered_resps"][0] for s in served["samples"]["ts_generate"]]
    assert any(text.strip() for text in generated)  # the model really wrote something
