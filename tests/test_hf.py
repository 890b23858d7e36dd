"""Export to / import from a Hugging Face GPTNeoForCausalLM directory."""

from __future__ import annotations

import pytest
import torch

from tinystories.model import GPTNeo, GPTNeoConfig
from tinystories.model.hf import export_hf, load_hf_model

transformers = pytest.importorskip("transformers")


def test_export_loads_in_transformers_with_equal_logits(tmp_path):
    torch.manual_seed(0)
    model = GPTNeo(
        GPTNeoConfig(
            vocab_size=500, hidden_size=64, num_layers=3, num_heads=16, max_position_embeddings=128, window_size=32
        )
    ).eval()
    out = export_hf(model, tmp_path / "hf")
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors"}
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "GPTNeoForCausalLM"
    x = torch.randint(0, 500, (2, 100))
    with torch.no_grad():
        diff = (hf(x).logits - model(x).logits).abs().max().item()
    assert diff <= 1e-4

    again = load_hf_model(out)  # and back: the import is the export's inverse
    assert again.config == model.config
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_import_of_a_transformers_saved_model(tmp_path):
    hf_config = transformers.GPTNeoConfig(
        vocab_size=300,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        max_position_embeddings=64,
        window_size=8,
        attention_types=[[["global", "local"], 1]],
    )
    torch.manual_seed(3)
    hf = transformers.GPTNeoForCausalLM(hf_config).eval()
    hf.save_pretrained(tmp_path / "saved")
    model = load_hf_model(tmp_path / "saved")
    x = torch.randint(0, 300, (2, 50))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, hf(x).logits, atol=1e-5, rtol=0)


def test_export_refuses_a_non_empty_directory_and_import_names_missing_files(tmp_path):
    model = GPTNeo(GPTNeoConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=4))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="busy"):
        export_hf(model, tmp_path / "busy")
    assert (tmp_path / "busy" / "keep.txt").read_text() == "x"
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_model(tmp_path)
