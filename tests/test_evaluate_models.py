"""Students end to end: a tiny random Hugging Face GPT-Neo directory and our GPT-Neo run through probes and loss."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from tinystories.evaluate import heldout, probes
from tinystories.evaluate.students import HFStudent, fingerprint_path


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, gpt2_files):
    transformers = pytest.importorskip("transformers")
    vocab, merges = gpt2_files
    directory = tmp_path_factory.mktemp("hf-tiny")
    tokenizer = transformers.GPT2TokenizerFast(vocab_file=str(vocab), merges_file=str(merges))
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    config = transformers.GPTNeoConfig(
        vocab_size=50257,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        attention_types=[[["global", "local"], 1]],
        max_position_embeddings=64,
        window_size=16,
        intermediate_size=64,
    )
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
    ids = (
        [student.eos]
        + student.tokenizer.encode("Lily had a red ball.\n", add_special_tokens=False)
        + [student.eos]
        + student.tokenizer.encode("\nTom had a blue car. He drove it fast.", add_special_tokens=False)
    )
    with torch.no_grad():
        logits = student.model(torch.tensor([ids[:-1]])).logits[0].float()
    nll = float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))
    n_bytes = len(text.replace("<|endoftext|>", "").encode())
    assert result.tokens == len(ids) - 1 and result.bytes == n_bytes
    assert result.bits_per_byte == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-5)


def test_hf_directory_given_as_a_checkpoint_gets_a_hint(hf_dir):
    from tinystories.evaluate.students import load_student

    with pytest.raises(FileNotFoundError, match="--hf-model"):
        load_student(hf_dir)


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


# ------------------------------------------------------------------------------------------------ our GPT-Neo
def test_checkpoint_student_identity_and_generation(tiny_run):
    from tinystories.evaluate.students import GPTNeoStudent, load_student

    run, (first, second) = tiny_run
    student = GPTNeoStudent.from_checkpoint(first)
    info = student.info
    assert (info.run, info.step, info.hidden_size, info.num_layers) == ("tiny", 10, 32, 2)
    assert info.name == "tiny/step_00000010"
    newest = load_student(run)  # a run directory means its newest checkpoint
    assert newest.info.step == 20 and newest.info.identity != info.identity

    prompts = ["Once upon a time, there was a little", "Tom saw a big dog. The dog"]
    greedy = student.complete(prompts, max_new_tokens=8, temperature=0.0)
    assert greedy == student.complete(prompts, max_new_tokens=8, temperature=0.0)
    assert student.complete(prompts[1:], max_new_tokens=8, temperature=0.0) == greedy[1:]  # batching is exact
    sampled = student.complete(prompts * 3, max_new_tokens=8, temperature=1.0, seed=7)
    assert sampled == student.complete(prompts * 3, max_new_tokens=8, temperature=1.0, seed=7)
    assert sampled != student.complete(prompts * 3, max_new_tokens=8, temperature=1.0, seed=8)
    with pytest.raises(ValueError, match="no room for a prompt"):
        student.complete(prompts, max_new_tokens=128)


def test_checkpoint_student_bits_per_byte_equals_direct_computation(tiny_run):
    from tinystories.evaluate.students import GPTNeoStudent

    student = GPTNeoStudent.from_checkpoint(tiny_run[1][0])
    text = "Lily had a red ball. She liked to play.\n<|endoftext|>\nTom ran to the park with his dog."
    result = heldout.text_loss(student, text)
    tok = student.tokenizer
    ids = [tok.eot_token] + tok.encode(text, allowed_special="all")
    with torch.no_grad():
        logits = student.model(torch.tensor([ids[:-1]])).logits[0]
    nll = float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))
    n_bytes = len(text.replace("<|endoftext|>", "").encode())
    assert result.bits_per_byte == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-5)
    # a long text in sliding windows: every token scored once
    long_text = " ".join(["The cat sat on the mat and looked at the sun."] * 40)
    windowed = heldout.text_loss(student, long_text, stride=32)
    assert windowed.tokens == len(tok.encode(long_text, allowed_special="all"))
    lengths = heldout.token_byte_lengths(tok)
    assert lengths[tok.eot_token] == 0 and int(lengths[tok.encode_ordinary(long_text)].sum()) == len(long_text)


def test_probes_cli_end_to_end_on_a_checkpoint(tiny_run, tmp_path, capsys):
    """Two runs into one --out folder: the second keeps the first one's model; a rerun replaces its own."""
    from tinystories.cli import main

    def probe(checkpoint) -> str:
        argv = ["eval", "probes", str(checkpoint), "--suites", "factual,context", "--max-new-tokens", "4"]
        assert main([*argv, "--out", str(tmp_path)]) == 0
        return capsys.readouterr().out

    probe(tiny_run[1][0])
    n_prompts = len(probes.load_suite("factual")) + len(probes.load_suite("context"))
    assert f"{n_prompts} records, {n_prompts} of other models kept" in probe(tiny_run[1][1])
    printed = probe(tiny_run[1][1])
    assert f"{n_prompts} of other models kept, {n_prompts} earlier of these models replaced" in printed
    lines = (tmp_path / "probes.jsonl").read_text().splitlines()
    assert len(lines) == 2 * n_prompts
    page = (tmp_path / "probes.html").read_text()
    assert "tiny/step_00000010" in page and "tiny/step_00000020" in page
    assert "probe scores" in printed


def test_loss_cli_on_a_text_file(tiny_run, tmp_path, capsys):
    from tinystories.cli import main

    path = tmp_path / "valid.txt"
    path.write_text("Sue had a cat.\n<|endoftext|>\nThe cat was soft and warm.\n")
    assert main(["eval", "loss", str(tiny_run[1][0]), "--stories", str(path), "--out", str(tmp_path)]) == 0
    [result] = json.loads((tmp_path / "loss.json").read_text())
    # the stories' own bytes: the separators and the line breaks around them are the file's layout
    assert result["model"] == "tiny/step_00000010" and result["bytes"] == len(
        b"Sue had a cat.The cat was soft and warm."
    )
    assert result["bits_per_byte"] == pytest.approx(result["nll_nats"] / math.log(2) / result["bytes"])
    assert "bits per byte" in capsys.readouterr().out


def test_novelty_cli_end_to_end_on_a_checkpoint(tiny_run, tmp_path):
    from tinystories.cli import main
    from tinystories.story_templates import generate_stories

    stories = tmp_path / "train.txt"
    stories.write_text("".join(f"{s}\n<|endoftext|>\n" for s in generate_stories(60, seed=1)))
    assert (
        main(
            [
                "eval",
                "novelty",
                str(tiny_run[1][0]),
                "--stories",
                str(stories),
                "--num-stories",
                "6",
                "--max-new-tokens",
                "16",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    items = [json.loads(line) for line in (tmp_path / "novelty.jsonl").read_text().splitlines()]
    assert len(items) == 6 and len({i["story_index"] for i in items}) == 6
    for item in items:
        assert 0 <= item["rouge_l_ending"] <= 1 and 0 <= item["ngram_overlap_corpus"] <= 1
        assert item["nearest_story"] != item["story_index"]


def test_split_loss_on_token_shards_matches_the_packed_stream(tiny_run, tmp_path):
    from tinystories.data import prepare, story_in_val
    from tinystories.evaluate.students import GPTNeoStudent
    from tinystories.story_templates import generate_stories

    student = GPTNeoStudent.from_checkpoint(tiny_run[1][0])
    tok = student.tokenizer
    stories = generate_stories(150, seed=3)
    corpus = tmp_path / "stories.txt"
    corpus.write_text("".join(f"{s}\n<|endoftext|>\n" for s in stories))
    prepare([corpus], tmp_path / "data", tok, val_fraction=0.2, progress=False)
    result = heldout.split_loss(student, tmp_path / "data", batch_size=4)

    # the val stream, tokenized here: the val stories in file order, each followed by EOT
    stream = [t for s in stories if story_in_val(s, 0.2) for t in tok.encode_ordinary(s) + [tok.eot_token]]
    T = student.context_length
    assert result.tokens == len(stream) - 1  # every token but the first is a target once, the tail included
    nll, targets = 0.0, []
    for start in range(0, len(stream) - 1, T):
        x, y = torch.tensor([stream[start : start + T]]), torch.tensor(stream[start + 1 : start + T + 1])
        with torch.no_grad():
            logits = student.model(x[:, : len(y)]).logits[0]
        nll += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        targets += y.tolist()
    n_bytes = len(tok.decode_bytes([t for t in targets if t != tok.eot_token]))
    assert result.bytes == n_bytes
    assert result.nll_nats == pytest.approx(nll, rel=1e-4)
    assert result.bits_per_byte == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-4)


def test_loss_without_eot_equals_lm_eval_on_the_export(tmp_path, real_stories):
    """`eval loss --no-eot` gives lm-eval's bits_per_byte and word_perplexity (`--model hf` on the export, a local
    loglikelihood_rolling task of the same stories); the checkpoint and its export agree at the same window, and
    stories longer than the window (128 tokens here) are scored in lm-eval's rolling windows."""
    pytest.importorskip("lm_eval")
    from _fixtures import save_random_checkpoint

    from tinystories.tokenizer import Tokenizer, resolve_tokenizer

    run = tmp_path / "run"
    save_random_checkpoint(run, 10, Tokenizer.train(real_stories[:300], vocab_size=512), train_config={"seq_len": 64})
    export = tmp_path / "hf"
    stories = real_stories[1000:1040]
    valid = tmp_path / "valid.txt"
    valid.write_text("".join(f"{s}\n<|endoftext|>\n" for s in stories))
    task = tmp_path / "task"
    task.mkdir()
    (task / "docs.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in stories))
    (task / "ts_rolling.yaml").write_text(
        "task: ts_rolling\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {task / 'docs.jsonl'}\n"
        "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n"
    )
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}

    def run_cli(*argv: str) -> subprocess.CompletedProcess:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    tinystories = [sys.executable, "-m", "tinystories.cli"]
    run_cli(*tinystories, "export", str(run), "--out", str(export))
    assert max(len(resolve_tokenizer(export).encode_ordinary(s)) for s in stories) > 128  # some need 2 windows
    run_cli(
        sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={export},dtype=float32",
        "--tasks", "ts_rolling", "--include_path", str(task), "--device", "cpu", "--batch_size", "4",
        "--output_path", str(tmp_path / "lm_eval"),
    )  # fmt: skip
    (results_file,) = (tmp_path / "lm_eval").rglob("results_*.json")
    lm_eval = json.loads(results_file.read_text())["results"]["ts_rolling"]
    printed = run_cli(
        *tinystories, "eval", "loss", str(run), "--hf-model", str(export), "--stories", str(valid),
        "--no-eot", "--seq-len", "128", "--out", str(tmp_path / "ours"),
    ).stdout  # fmt: skip
    ours = json.loads((tmp_path / "ours" / "loss.json").read_text())
    assert len(ours) == 2 and {r["window"] for r in ours} == {128} and {r["scored"] for r in ours} == {"stories"}
    for result in ours:
        assert result["bits_per_byte"] == pytest.approx(lm_eval["bits_per_byte,none"], rel=1e-4)
        assert result["word_perplexity"] == pytest.approx(lm_eval["word_perplexity,none"], rel=1e-4)
        assert result["bytes"] == sum(len(s.encode()) for s in stories)
    assert "lm-eval's loglikelihood_rolling" in printed and "window" in printed

    # the default convention scores the separators too, at the checkpoint's own window: it differs and says so
    printed = run_cli(
        *tinystories, "eval", "loss", str(run), "--stories", str(valid), "--out", str(tmp_path / "d")
    ).stdout
    (default,) = json.loads((tmp_path / "d" / "loss.json").read_text())
    assert (default["window"], default["scored"]) == (64, "stream")
    assert default["tokens"] == ours[0]["tokens"] + len(stories) - 1  # the separators between the stories
    assert "separators scored too" in printed
