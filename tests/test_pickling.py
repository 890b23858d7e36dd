"""A Tokenizer and a TokenLoader pickle, so they go to ``multiprocessing`` and ``DataLoader`` workers: the workers
encode as the parent does and a loader sent to one yields the parent's next batch."""

from __future__ import annotations

import copy
import multiprocessing
import pickle

import numpy as np
import pytest

from tinystories.data import TokenLoader
from tinystories.story_templates import generate_stories
from tinystories.tokenizer import Tokenizer

START_METHODS = ["spawn", "fork"]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(generate_stories(100, seed=5), vocab_size=400)


def test_a_tokenizer_pickles_to_the_same_tokenizer(tokenizer):
    text = "Once upon a time, Lily saw a big red ball. <|endoftext|> The end — naïve café 🙂"
    for copied in (pickle.loads(pickle.dumps(tokenizer)), copy.deepcopy(tokenizer)):
        assert copied == tokenizer and copied is not tokenizer
        assert copied.vocab == tokenizer.vocab and copied.merges == tokenizer.merges
        assert copied.special_tokens == tokenizer.special_tokens
        assert copied.encode(text, allowed_special="all") == tokenizer.encode(text, allowed_special="all")


def test_gpt2_pickles_to_the_same_tokenizer(gpt2_files):
    gpt2 = Tokenizer.from_gpt2_files(*gpt2_files)
    copied = pickle.loads(pickle.dumps(gpt2))
    assert copied == gpt2 and copied.n_vocab == 50257 and copied.eot_token == gpt2.eot_token


@pytest.mark.parametrize("start_method", START_METHODS)
def test_workers_encode_as_the_parent_does(tokenizer, start_method):
    texts = generate_stories(12, seed=9)
    with multiprocessing.get_context(start_method).Pool(2) as pool:
        # Every task carries the tokenizer: each worker unpickles its own copy.
        encoded = pool.starmap(Tokenizer.encode_ordinary, [(tokenizer, text) for text in texts])
    assert encoded == [tokenizer.encode_ordinary(text) for text in texts]


def test_a_pickled_loader_continues_where_the_original_is(tiny_shards):
    loader = TokenLoader(tiny_shards, batch_size=3, seq_len=16, seed=4, threads=1, prefetch=2)
    for _ in range(5):
        next(loader)
    copied = pickle.loads(pickle.dumps(loader))
    assert copied is not loader and copied.state() == loader.state()
    assert (copied.batch_size, copied.seq_len, copied.seed, copied.threads, copied.prefetch) == (3, 16, 4, 1, 2)
    for _ in range(3):  # the copy and the original go on independently, batch for batch
        for a, b in zip(next(copied), next(loader)):
            np.testing.assert_array_equal(a, b)


def test_a_finished_single_pass_pickles_finished(tiny_shards):
    loader = TokenLoader(tiny_shards, split="val", batch_size=4, seq_len=16, shuffle=False, loop=False)
    batches = [x for x, _ in loader]
    copied = copy.deepcopy(loader)
    with pytest.raises(StopIteration):
        next(copied)
    np.testing.assert_array_equal(next(iter(copied))[0], batches[0])  # iterating again starts over, as here


@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_loader_sent_to_a_worker_yields_the_next_batch(tiny_shards, start_method):
    # The pool first: forking a process whose loader threads are running would copy them mid-work.
    with multiprocessing.get_context(start_method).Pool(1) as pool:
        loader = TokenLoader(tiny_shards, batch_size=2, seq_len=24, seed=1, threads=1)
        next(loader)
        x_worker, y_worker = pool.apply(next, (loader,))
        x, y = next(loader)
    np.testing.assert_array_equal(x_worker, x)
    np.testing.assert_array_equal(y_worker, y)
