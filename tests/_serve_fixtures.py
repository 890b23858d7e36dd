"""What the serve tests share: a small sweep of tiny checkpoints (``make_sweep``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def make_sweep(root: Path) -> Path:
    """``root/sweep`` with two runs of randomly initialised tiny GPT-Neos (a story model and an Instruct one,
    two checkpoints each), each run with a metrics.jsonl, and eval results beside them as `sweep grade` puts them."""
    from tinystories.model import GPTNeo, config_from_preset
    from tinystories.model.checkpoint import checkpoint_path, save_checkpoint
    from tinystories.story_templates import generate_stories
    from tinystories.tokenizer import Tokenizer

    tokenizer = Tokenizer.train(generate_stories(200), vocab_size=384)
    sweep = root / "sweep"
    for run, preset in (("tiny", "1M"), ("tiny-instruct", "1M-instruct")):
        config = config_from_preset(
            "demo", vocab_size=tokenizer.n_vocab, hidden_size=32, num_layers=2, max_position_embeddings=128
        )
        for step in (10, 20):
            torch.manual_seed(step + len(run))
            save_checkpoint(
                {
                    "model_config": config.to_dict(),
                    "model": GPTNeo(config).state_dict(),
                    "tokenizer_json": tokenizer.to_json(),
                    "train_config": {"preset": preset},
                },
                checkpoint_path(sweep / run, step),
            )
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
