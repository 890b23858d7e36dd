"""What the serve tests share: a small sweep of tiny checkpoints (``make_sweep``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _fixtures import save_random_checkpoint

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def make_sweep(root: Path) -> Path:
    """``root/sweep`` with two runs of randomly initialised tiny GPT-Neos (a story model and an Instruct one,
    two checkpoints each), each run with a metrics.jsonl, and eval results beside them as `sweep grade` puts them."""
    from tinystories.story_templates import generate_stories
    from tinystories.tokenizer import Tokenizer

    tokenizer = Tokenizer.train(generate_stories(200), vocab_size=384)
    sweep = root / "sweep"
    for run, preset in (("tiny", "1M"), ("tiny-instruct", "1M-instruct")):
        for step in (10, 20):
            save_random_checkpoint(sweep / run, step, tokenizer, seed=step + len(run), train_config={"preset": preset})
        (sweep / run / "config.json").write_text(json.dumps({"train": {"preset": preset}}))
        with open(sweep / run / "metrics.jsonl", "w") as f:
            for step in range(1, 21):
                f.write(json.dumps({"step": step, "loss": 6.0 - step * 0.1}) + "\n")
            f.write(json.dumps({"step": 20, "val_loss": 4.5}) + "\n")
    (sweep / "eval").mkdir()
    grade = {
        "checkpoint": "tiny/step_00000020",
        "status": "ok",
        "grades": {"grammar": 3, "creativity": 4, "consistency": 2, "plot": 5, "age_group": "B"},
    }
    (sweep / "eval" / "grades.jsonl").write_text(
        json.dumps(grade) + "\n" + json.dumps({**grade, "grades": {**grade["grades"], "grammar": 5}}) + "\n"
    )
    probe = {"model": "tiny/step_00000020", "suite": "factual", "verdict": "wrong"}
    (sweep / "eval" / "probes.jsonl").write_text(
        json.dumps(probe) + "\n" + json.dumps({**probe, "verdict": "correct"}) + "\n"
    )
    return sweep
