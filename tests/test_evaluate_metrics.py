"""Held-out loss / bits per byte against a direct computation, and the novelty measures."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tinystories.corpus import iter_stories, read_text
from tinystories.evaluate import heldout, novelty
from tinystories.evaluate.students import Student, StudentInfo, windowed_nll


class ByteStudent(Student):
    """A byte-level toy model: token = UTF-8 byte, 256 = separator. ``mode`` picks what a logit may see."""

    def __init__(self, mode: str, context: int = 16):
        torch.manual_seed(0)
        self.mode, self.context_length, self.trained_seq_len = mode, context, context
        self.emb = torch.nn.Embedding(257, 32)
        self.out = torch.nn.Linear(32, 257)
        self.info = StudentInfo(name=f"bytes-{mode}", identity=mode)

    def encode_for_scoring(self, text):
        ids = [256]
        for i, doc in enumerate(text.split("<|endoftext|>")):
            ids += ([256] if i else []) + list(doc.encode("utf-8"))
        return ids

    @torch.no_grad()
    def window_logits(self, windows):
        h = self.emb(windows)
        if self.mode == "prefix":  # every earlier token of the window matters
            h = h.cumsum(dim=1) / torch.arange(1, windows.shape[1] + 1)[None, :, None]
        return self.out(h)


def direct_nll(student: ByteStudent, ids: list[int]) -> float:
    """Every target with its whole history, one forward pass (the text must fit when the model sees prefixes)."""
    x = torch.tensor([ids[:-1]])
    logp = torch.log_softmax(student.window_logits(x)[0], dim=-1)
    return -sum(float(logp[i, t]) for i, t in enumerate(ids[1:]))


TEXT = (
    "Tom saw a big dog. The dog was happy and ran to Tom.\n<|endoftext|>\n"
    "Sue had a red ball. \u2018Look!\u2019 she said."
)


@pytest.mark.parametrize("stride", [None, 1, 5, 16])
def test_windowed_nll_scores_every_target_once(stride):
    """A model that sees one token back gives the same NLL whatever the windows."""
    student = ByteStudent("bigram", context=16)
    ids = student.encode_for_scoring(TEXT)
    nll, scored = windowed_nll(ids, student.window_logits, context=16, stride=stride, batch_size=3)
    assert scored == ids[1:]
    assert nll == pytest.approx(direct_nll(student, ids), rel=1e-5)


def test_bits_per_byte_matches_a_direct_computation():
    student = ByteStudent("prefix", context=256)  # TEXT fits one window: windows change nothing
    result = heldout.text_loss(student, TEXT)
    ids = student.encode_for_scoring(TEXT)
    nll = direct_nll(student, ids)
    n_bytes = len(TEXT.replace("<|endoftext|>", "").encode("utf-8"))
    assert result.bytes == n_bytes and result.tokens == len(ids) - 1
    assert result.bits_per_byte == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-5)
    assert result.loss == pytest.approx(nll / (len(ids) - 1), rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(result.loss))


def test_long_text_with_prefix_model_differs_only_through_context():
    student = ByteStudent("prefix", context=8)
    ids = student.encode_for_scoring(TEXT)
    short, _ = windowed_nll(ids, student.window_logits, context=8)
    assert short != pytest.approx(direct_nll(ByteStudent("prefix", 256), ids))  # history was cut, as expected


def test_loss_input_errors(tmp_path):
    student = ByteStudent("bigram")
    with pytest.raises(ValueError, match="no text"):
        heldout.text_loss(student, "<|endoftext|>\n", source="empty.txt")
    with pytest.raises(ValueError, match="stride"):
        windowed_nll([1, 2, 3], student.window_logits, context=4, stride=5)
    path = tmp_path / "bad.txt"
    path.write_bytes(b"ok \xff")
    with pytest.raises(ValueError, match="bad.txt: invalid UTF-8 at byte offset 3"):
        read_text(path)  # held-out text is read by the one corpus reader


def test_read_text_zst(tmp_path):
    import zstandard

    path = tmp_path / "v.txt.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(TEXT.encode()))
    assert read_text(path) == TEXT


# ------------------------------------------------------------------------------------------------ novelty
def lcs_dp(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from("abcde"), max_size=80), st.lists(st.sampled_from("abcdef"), max_size=80))
def test_bit_parallel_lcs_equals_dynamic_programming(a, b):
    assert novelty.lcs_length(a, b) == lcs_dp(a, b)


def test_rouge_l_and_ngram_overlap_known_values():
    cand, ref = "the cat sat on the mat".split(), "the cat lay on the mat".split()
    assert novelty.rouge_l(cand, ref) == pytest.approx(5 / 6)
    assert novelty.rouge_l(cand, cand) == 1.0 and novelty.rouge_l([], ref) == 0.0
    assert novelty.ngram_overlap(cand, set(novelty.ngrams(ref, 2)), 2) == pytest.approx(3 / 5)


def test_cut_story_splits_at_a_word_near_the_middle():
    story = "Once upon a time there was a dog named Rex who loved to run."
    beginning, ending = novelty.cut_story(story)
    assert beginning + ending == story and ending.startswith(" ")
    assert abs(len(beginning) - len(story) / 2) <= 6


CORPUS = [
    "Lily had a red ball. She played with it in the park every day and her dog ran after it.",
    "Tom went to the sea with his dad. They saw a big fish jump out of the blue water and swim away.",
    "The little bird sang a song in the tall tree. All the animals came to listen and they were happy.",
    "Max liked to build towers with blocks. One day his tower fell down and he built it again, even taller.",
]


class Reciter:
    """Completes each cut story with a scripted text."""

    def __init__(self, reply):
        self.info, self.reply = StudentInfo(name="reciter", identity="r"), reply

    def complete(self, prompts, **kwargs):
        return [self.reply(p) for p in prompts]


def test_novelty_detects_recitation_of_the_true_ending():
    truth = {novelty.cut_story(s)[0]: novelty.cut_story(s)[1] for s in CORPUS}
    items = novelty.run_novelty(Reciter(lambda p: truth[p]), CORPUS, n_stories=4, n=3)
    assert sorted(i.story_index for i in items) == [0, 1, 2, 3]
    assert all(i.rouge_l_ending == 1.0 and i.ngram_overlap_ending == 1.0 for i in items)
    assert all(i.ngram_overlap_corpus == 1.0 for i in items)
    assert all(i.nearest_story != i.story_index for i in items)  # the source story itself is excluded


def test_novelty_finds_the_nearest_other_story_and_scores_new_text_low():
    copied = " saw a big fish jump out of the blue water and swim away"
    items = novelty.run_novelty(Reciter(lambda p: copied), CORPUS[:1] + CORPUS[2:] + CORPUS[1:2], n_stories=4, n=3)
    source_of_copy = 3  # CORPUS[1] moved to the end
    for item in items:
        if item.story_index != source_of_copy:
            assert item.nearest_story == source_of_copy and item.nearest_lcs_precision == 1.0
    fresh = novelty.run_novelty(Reciter(lambda p: " purple zebras quietly juggled seven moons"), CORPUS, n_stories=4)
    assert all(i.ngram_overlap_corpus == 0 and i.nearest_story is None for i in fresh)
    dist = novelty.distribution(fresh)
    assert dist["rouge_l_ending"]["max"] < 0.2 and set(dist["rouge_l_ending"]) >= {"mean", "p50", "p90"}


def test_read_stories_formats(tmp_path):
    # `eval novelty` reads its training stories with the one corpus reader (tinystories.corpus)
    (tmp_path / "s.txt").write_text("One.\n<|endoftext|>\nTwo.\n<|endoftext|>\n")
    assert list(iter_stories(tmp_path / "s.txt")) == ["One.", "Two."]
    (tmp_path / "s.jsonl").write_text('{"story": "One."}\n{"title": "x"}\n')
    with pytest.raises(ValueError, match="s.jsonl:2: no 'text' or 'story' field"):
        list(iter_stories(tmp_path / "s.jsonl"))
