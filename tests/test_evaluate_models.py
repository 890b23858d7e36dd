"""Students end to end: a tiny random Hugging Face GPT-Neo directory and our GPT-Neo run through probes and loss."""

from __future__ import annotations

import math

import pytest
import torch

from tinystories import heldout, probes
from tinystories.students import HFStudent, fingerprint_path


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, gpt2_files):
    transformers = pytest.importorskip("transformers")
    vocab, merges = gpt2_files
    directory = tmp_path_factory.mktemp("hf-tiny")
    tokenizer = transformers.GPT2TokenizerFast(vocab_file=str(vocab), merges_file=str(merges))
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    config = transformers.GPTNeoConfig(vocab_size=50257, hidden_size=32, num_layers=2, num_heads=2,
                                       attention_types=[[["global", "local"], 1]], max_position_embeddings=64,
                                       window_size=16, intermediate_size=64)
    transformers.GPTNeoForCausalLM(config).save_pretrained(directory)
    return directory


def test_hf_student_completes_greedily_and_deterministically(hf_dir):
    student = HFStudent(hf_dir)
    assert (student.info.hidden_size, student.info.num_layers, student.context_length) == (32, 2, 64)
    prompts = ["Once upon a time, a little", "Tom saw a big dog. The dog was"]
    a = student.complete(prompts, max_new_tokens=6, temperature=0.0)
    assert a == student.complete(prompts, max_new_tokens=6, temperature=0.0)
    assert all(isinstance(c, str) for c in a) and len(a) == 2
    # a batch does not change a row's greedy completion (left padding is masked)
    assert student.complete(prompts[1:], max_new_tokens=6, temperature=0.0) == a[1:]
    sampled = student.complete(prompts * 2, max_new_tokens=6, temperature=1.0, seed=3)
    assert sampled == student.complete(prompts * 2, max_new_tokens=6, temperature=1.0, seed=3)


def test_hf_student_bits_per_byte_equals_direct_computation(hf_dir):
    student = HFStudent(hf_dir)
    text = "Lily had a red ball.\n<|endoftext|>\nTom had a blue car. He drove it fast."
    result = heldout.text_loss(student, text)
    ids = [student.eos] + student.tokenizer.encode("Lily had a red ball.\n", add_special_tokens=False) \
        + [student.eos] + student.tokenizer.encode("\nTom had a blue car. He drove it fast.", add_special_tokens=False)
    with torch.no_grad():
        logits = student.model(torch.tensor([ids[:-1]])).logits[0].float()
    nll = float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))
    n_bytes = len(text.replace("<|endoftext|>", "").encode())
    assert result.tokens == len(ids) - 1 and result.bytes == n_bytes
    assert result.bits_per_byte == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-5)


def test_hf_student_runs_the_probe_suites(hf_dir):
    student = HFStudent(hf_dir)
    suite = probes.load_suite("factual")[:5]
    results = probes.run_probes(student, suite, max_new_tokens=4, batch_size=3)
    assert [r.id for r in results] == [p.id for p in suite]
    assert all(r.verdict in probes.VERDICTS and r.model == student.info.name for r in results)


def test_fingerprint_follows_content(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"weights")
    first = fingerprint_path(tmp_path)
    (tmp_path / "a.bin").write_bytes(b"weightz")
    assert fingerprint_path(tmp_path) != first
    with pytest.raises(FileNotFoundError):
        fingerprint_path(tmp_path / "empty_dir_missing")
