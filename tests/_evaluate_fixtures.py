"""Fixtures shared by the evaluation tests (imported by name into the test modules that use them)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A randomly initialised demo-shaped GPT-Neo with a small BPE, saved as a real checkpoint of a run."""
    from tinystories.checkpoint import checkpoint_path, save_checkpoint, tokenizer_to_json
    from tinystories.model import GPTNeo, config_from_preset
    from tinystories.story_templates import generate_stories
    from tinystories.tokenizer import Tokenizer

    tokenizer = Tokenizer.train(generate_stories(200), vocab_size=384)
    config = config_from_preset("demo", vocab_size=tokenizer.n_vocab, hidden_size=32, num_layers=2,
                                max_position_embeddings=128)
    run = tmp_path_factory.mktemp("runs") / "tiny"
    paths = []
    for step in (10, 20):
        torch.manual_seed(step)
        model = GPTNeo(config)
        paths.append(save_checkpoint({"model_config": config.to_dict(), "model": model.state_dict(),
                                      "tokenizer_json": tokenizer_to_json(tokenizer), "train_config": {}},
                                     checkpoint_path(run, step)))
    return run, paths
