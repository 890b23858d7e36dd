"""GPT-Neo against Hugging Face transformers' GPTNeoForCausalLM (the independent reference)."""

from __future__ import annotations

import logging

import pytest
import torch
from kernel_checks import assert_same_gradients, plain_reference

from tinystories.model import (
    PRESETS,
    GPTNeo,
    GPTNeoConfig,
    KVCache,
    config_from_preset,
    load_checkpoint,
    sample_next_token,
)
from tinystories.model.hf import hf_config_dict, load_hf_state_dict, to_hf_state_dict

transformers = pytest.importorskip("transformers")

# Small but with every feature exercised: a vocab that needs padding (1000 -> 1024), sequences longer
# than the local window, 16 heads, an intermediate size that is not 4x.
SMALL = dict(vocab_size=1000, hidden_size=64, num_layers=4, num_heads=16, max_position_embeddings=96, window_size=16)


def hf_twin(model: GPTNeo):
    hf_config = transformers.GPTNeoConfig(
        **{k: v for k, v in hf_config_dict(model.config).items() if k not in ("architectures", "model_type", "dtype")}
    )
    hf = transformers.GPTNeoForCausalLM(hf_config)
    hf.load_state_dict(to_hf_state_dict(model), strict=False)
    hf.tie_weights()
    return hf.eval()


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    model = GPTNeo(GPTNeoConfig(**SMALL, intermediate_size=96)).eval()
    # Non-trivial LayerNorm and bias values so a swapped or missing parameter cannot hide.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model, hf_twin(model)


def test_logits_attentions_hidden_states_match_hf(pair):
    model, hf = pair
    x = torch.randint(0, 1000, (3, 80))
    ours = model(x, output_attentions=True, output_hidden_states=True)
    ref = hf(x, output_attentions=True, output_hidden_states=True)
    assert ours.logits.shape == (3, 80, 1000)
    torch.testing.assert_close(ours.logits, ref.logits, atol=1e-5, rtol=0)
    assert len(ours.attentions) == len(ref.attentions) == 4
    for a, b in zip(ours.attentions, ref.attentions):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    for a, b in zip(ours.hidden_states, ref.hidden_states):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_local_layers_see_exactly_the_window(pair):
    model, _ = pair
    x = torch.randint(0, 1000, (1, 80))
    probs = model(x, output_attentions=True).attentions
    W = model.config.window_size
    i = torch.arange(80)
    distance = i[:, None] - i[None, :]
    local_visible = (distance >= 0) & (distance < W)
    assert ((probs[1][0] > 0) == local_visible).all()  # layer 1 is local: query i sees i-W+1..i
    assert ((probs[0][0] > 0) == (distance >= 0)).all()  # layer 0 is global: causal only


def test_loss_and_gradients_match_hf(pair):
    model, hf = pair
    model.train(), hf.train()
    x = torch.randint(0, 1000, (2, 64))
    targets = x[:, 1:].clone()
    targets[0, :5] = -100
    ours = model(x[:, :-1], targets).loss
    labels = x.clone()
    labels[0, 1:6] = -100
    ref = hf(x, labels=labels).loss  # HF shifts labels itself; the last position's logits go unused
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)
    model.zero_grad(), hf.zero_grad()
    ours.backward()
    ref.backward()
    ref_grads = dict(hf.named_parameters())
    for name, p in model.named_parameters():
        hf_name = to_hf_name(name)
        g = p.grad[: model.config.vocab_size] if name == "wte.weight" else p.grad
        torch.testing.assert_close(g, ref_grads[hf_name].grad, atol=1e-5, rtol=1e-4, msg=name)
    assert model.wte.weight.grad[model.config.vocab_size :].abs().max() == 0  # padding rows never move
    model.eval(), hf.eval()


def to_hf_name(name: str) -> str:
    from tinystories.model.hf import _hf_name

    return _hf_name(name)


def test_padding_the_vocabulary_changes_nothing():
    torch.manual_seed(1)
    padded = GPTNeo(GPTNeoConfig(**SMALL)).eval()
    unpadded = GPTNeo(GPTNeoConfig(**SMALL, vocab_multiple=1)).eval()
    assert padded.wte.weight.shape[0] == 1024 and unpadded.wte.weight.shape[0] == 1000
    load_hf_state_dict(unpadded, to_hf_state_dict(padded))
    x = torch.randint(0, 1000, (2, 50))
    a, b = padded(x, x), unpadded(x, x)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.loss, b.loss, atol=1e-6, rtol=0)


def test_kv_cache_decoding_equals_full_recomputation(pair):
    model, _ = pair
    x = torch.randint(0, 1000, (2, 70))  # past the local window, so cached local layers are exercised
    full = model(x).logits
    cache = KVCache(model.config.num_layers)
    pieces = [model(x[:, :30], kv_cache=cache).logits]
    for t in range(30, 70, 7):
        pieces.append(model(x[:, t : t + 7], kv_cache=cache).logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=0)
    assert cache.seq_len == 70


def test_left_padded_batch_equals_each_row_alone(pair):
    model, _ = pair
    torch.manual_seed(2)
    rows = [torch.randint(0, 1000, (n,)) for n in (5, 40, 23)]
    T = max(len(r) for r in rows)
    batch = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for i, r in enumerate(rows):
        batch[i, T - len(r) :], mask[i, T - len(r) :] = r, 1
    greedy = model.generate(batch, 30, temperature=0, attention_mask=mask)
    no_cache = model.generate(batch, 30, temperature=0, attention_mask=mask, use_cache=False)
    assert torch.equal(greedy, no_cache)
    for i, r in enumerate(rows):
        alone = model.generate(r[None], 30, temperature=0)
        assert torch.equal(greedy[i, T:], alone[0, len(r) :])
        logits_alone = model(alone[:, :-1]).logits
        logits_batch = model(
            greedy[i : i + 1, :-1], attention_mask=torch.cat([mask[i : i + 1], torch.ones(1, 29, dtype=torch.long)], 1)
        ).logits[:, T - len(r) :]
        torch.testing.assert_close(logits_batch, logits_alone, atol=1e-5, rtol=0)


def test_generate_stops_at_eos_and_pads_finished_rows(pair):
    model, _ = pair
    x = torch.randint(0, 1000, (2, 10))
    first = model.generate(x, 1, temperature=0)[:, -1]
    eos = int(first[0])  # row 0 emits "eos" at once; row 1 (usually) does not
    out = model.generate(x, 20, temperature=0, eos_token=eos)
    assert (out[0, 10:] == eos).all()
    if int(first[1]) != eos and not (out[1, 10:] == eos).any():
        assert out.shape[1] == 30


def test_sampling_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    assert sample_next_token(logits, temperature=0).item() == 0
    wide = torch.randn(3, 1, 96)[..., :90]  # greedy on a strided slice (the padded vocabulary), ties and NaN as torch
    wide[0, 0, [4, 9]], wide[1, 0, [7, 30]] = 50.0, float("nan")
    assert torch.equal(sample_next_token(wide[:, -1], temperature=0), wide[:, -1].argmax(dim=-1))
    draws = {sample_next_token(logits, top_k=2, generator=g).item() for _ in range(200)}
    assert draws == {0, 1}
    # softmax: p0=.64, p1=.24 -> top_p=0.7 keeps {0, 1}; top_p=0.5 keeps {0}
    assert {sample_next_token(logits, top_p=0.7, generator=g).item() for _ in range(200)} == {0, 1}
    assert {sample_next_token(logits, top_p=0.5, generator=g).item() for _ in range(50)} == {0}
    with pytest.raises(ValueError, match="top_p"):
        sample_next_token(logits, top_p=0)


def test_near_zero_temperature_and_top_p_sample_greedily():
    """Issue 22 item 12: temperature 1e-40 overflowed the scores (NaN) and top_p 1e-300 dropped every token."""
    logits = torch.randn(64, 2048, generator=torch.Generator().manual_seed(3)) * 5
    greedy = logits.argmax(dim=-1)
    g = torch.Generator().manual_seed(0)
    for temperature in (1e-40, 1e-300, 5e-324):
        assert torch.equal(sample_next_token(logits, temperature=temperature, generator=g), greedy)
    for top_p in (1e-300, 1e-40, 1e-9):
        assert torch.equal(sample_next_token(logits, top_p=top_p, generator=g), greedy)
    tied = torch.tensor([[1.0, 3.0, 3.0, 2.0]])  # the limit of a vanishing temperature: the best tokens, evenly
    assert {sample_next_token(tied, temperature=1e-30, generator=g).item() for _ in range(100)} == {1, 2}


def test_sampling_draws_each_token_with_its_probability():
    """Rows sampled together follow their own softmax; masked (-inf) tokens, first and last included, never come."""
    logits = torch.tensor([[-float("inf"), 1.0, 0.5, 0.0, -float("inf")], [2.0, 0.0, -float("inf"), 1.0, -1.0]])
    expected = torch.softmax(logits, dim=-1)
    g = torch.Generator().manual_seed(1)
    n = 20_000
    draws = torch.stack([sample_next_token(logits, generator=g) for _ in range(n)])  # (n, 2)
    for row in range(2):
        freq = torch.bincount(draws[:, row], minlength=5).double() / n
        assert torch.allclose(freq, expected[row].double(), atol=0.015), (row, freq, expected[row])
        assert freq[expected[row] == 0].sum() == 0


def test_mlp_act_hook_sees_gelu_new_activations(pair):
    from transformers.activations import ACT2FN

    model, _ = pair
    seen = {}
    handle = model.blocks[2].mlp.act.register_forward_hook(lambda m, i, o: seen.update(inp=i[0], out=o))
    model(torch.randint(0, 1000, (1, 12)))
    handle.remove()
    assert seen["out"].shape == (1, 12, 96)  # (B, T, intermediate_size): one value per neuron
    torch.testing.assert_close(seen["out"], ACT2FN["gelu_new"](seen["inp"]), atol=1e-7, rtol=0)


def test_fused_impl_falls_back_with_a_logged_reason(pair, caplog):
    model, _ = pair
    x = torch.randint(0, 1000, (1, 20))
    expected = model(x, output_attentions=True)
    model.impl = "fused"
    try:
        with caplog.at_level(logging.WARNING, logger="tinystories.model"):
            got = model(x, output_attentions=True)  # probabilities exist only on the plain path
        assert "falls back to the plain PyTorch path" in caplog.text
        torch.testing.assert_close(got.logits, expected.logits, atol=0, rtol=0)
        assert len(got.attentions) == 4
    finally:
        model.impl = "torch"
    with pytest.raises(ValueError, match="impl"):
        model.impl = "triton"


def test_fused_impl_computes_the_same_function(caplog):
    """The Triton kernels (on CUDA, or on CPU in Triton's interpreter) against the plain path, fwd + bwd."""
    from tinystories.kernels import kernels_available

    ok, reason = kernels_available()
    if not ok:
        pytest.skip(reason)
    model, x, y, plain, plain_grads = plain_reference()
    model.impl = "fused"
    with caplog.at_level(logging.WARNING, logger="tinystories.model"):
        fused = model(x, y)
        loss = model(x, y, return_logits=False).loss  # linear + cross-entropy without logits
    assert "falls back" not in caplog.text
    torch.testing.assert_close(fused.logits, plain.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(loss, plain.loss, atol=1e-5, rtol=1e-5)
    loss.backward()
    assert_same_gradients(model, plain_grads)


def test_presets_and_config_errors():
    for name in ("1M", "3M", "8M", "28M", "33M", "21M-1L", "33M-2L"):
        assert name in PRESETS and f"{name}-instruct" in PRESETS
        cfg = config_from_preset(name)
        assert cfg.num_heads == 16 and cfg.max_position_embeddings == 512 and cfg.window_size == 256
        assert cfg.attention_layers[:2] == ("global", "local")[: cfg.num_layers]
        assert cfg.padded_vocab_size == 50304
    assert (config_from_preset("33M").hidden_size, config_from_preset("33M").num_layers) == (768, 4)
    assert (config_from_preset("21M-1L").hidden_size, config_from_preset("21M-1L").num_layers) == (1024, 1)
    with pytest.raises(ValueError, match="num_heads"):
        GPTNeoConfig(hidden_size=100, num_heads=16)
    with pytest.raises(ValueError, match="attention_layers"):
        GPTNeoConfig(num_layers=2, attention_layers=("global", "sparse"))
    with pytest.raises(ValueError, match="unknown model preset"):
        config_from_preset("7B")
    with pytest.raises(ValueError, match="max_position_embeddings"):
        GPTNeo(GPTNeoConfig(**SMALL))(torch.zeros(1, 97, dtype=torch.long))


def test_flops_count_exactly_the_keys_each_query_attends_to():
    from tinystories.model import GPTNeoConfig, flops_per_token, mean_keys_attended

    for seq_len, window in [(512, 256), (512, None), (100, 256), (7, 3), (1, 1)]:
        mask = torch.ones(seq_len, seq_len).tril()
        if window is not None:
            mask = mask.triu(-(window - 1))
        assert mean_keys_attended(seq_len, window) == pytest.approx(mask.sum().item() / seq_len)
    config = GPTNeoConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, window_size=4)
    n = 2 * (4 * 32 * 32 + 2 * 32 * 128) + 100 * 32  # matmul weights of 2 layers + the tied head
    keys_global = (1 + 16) / 2  # layer 0 (global): query i sees i + 1 keys
    keys_local = (1 + 2 + 3 + 4 * 13) / 16  # layer 1 (local, window 4)
    assert flops_per_token(config, 16) == pytest.approx(6 * n + 12 * 32 * (keys_global + keys_local))


# -- the generation engine (continuous batching over per-slot KV caches) ------------------------------------
def _demo_model() -> GPTNeo:
    torch.manual_seed(1)
    return GPTNeo(config_from_preset("demo")).eval()  # window 64, context 256: prompts below cross the window


def _prompts(vocab: int, lengths: tuple[int, ...]) -> list[list[int]]:
    g = torch.Generator().manual_seed(sum(lengths))
    return [torch.randint(0, vocab - 1, (n,), generator=g).tolist() for n in lengths]


def _sampled_rows(prompts: list[list[int]], new: int) -> list:
    """Rows with settings of their own: greedy, plain sampling, top-k, top-p; seeded generators."""
    from tinystories.model.generate import Row

    settings = [(0.0, None, None), (1.0, None, None), (0.8, 20, None), (1.2, None, 0.9)]
    return [Row(ids, new - i, *settings[i % 4], torch.Generator().manual_seed(10 + i)) for i, ids in enumerate(prompts)]


def _reseed(rows: list) -> list:
    for row in rows:
        row.generator.manual_seed(row.generator.initial_seed())
    return rows


@pytest.mark.parametrize("model_name", ["small", "demo"])
def test_engine_equals_model_generate_token_for_token(pair, model_name):
    from tinystories.model.generate import generate_rows, left_pad

    model = pair[0] if model_name == "small" else _demo_model()
    vocab, eos = model.config.vocab_size, model.config.vocab_size - 1
    # past the local window (16 and 64 tokens) while decoding; the context is 96 and 256
    prompts = _prompts(vocab, (5, 40, 23, 1, 60) if model_name == "small" else (5, 40, 23, 1, 70))
    new = 30 if model_name == "small" else 50
    ids, mask = left_pad(prompts, eos)
    greedy = model.generate(ids, new, temperature=0, attention_mask=mask)[:, ids.shape[1] :].tolist()
    rows = _sampled_rows(prompts, new)
    for row in rows:
        row.temperature = 0.0
    # model.generate, the KV-cache reference (row i asks for new - i tokens)
    assert generate_rows(model, rows, eos) == [tokens[: new - i] for i, tokens in enumerate(greedy)]
    rows = _sampled_rows(prompts, new)
    engine = generate_rows(model, rows, eos)
    assert [len(t) for t in engine] == [new - i for i in range(len(prompts))]
    assert engine == generate_rows(model, _reseed(rows), eos, use_cache=False)  # recomputing every prefix
    for row, tokens in zip(_reseed(rows), engine):  # each row alone
        assert generate_rows(model, [row], eos) == [tokens]


def test_rows_joining_a_running_batch_get_their_own_tokens(pair):
    from tinystories.model.engine import Engine, Job
    from tinystories.model.generate import choose_tokens, generate_rows

    model = pair[0]
    vocab, eos = model.config.vocab_size, model.config.vocab_size - 1
    early = Job(_sampled_rows(_prompts(vocab, (12, 30)), 40))
    late = Job(_sampled_rows(_prompts(vocab, (3, 50, 8, 20)), 30))
    finished = []
    late.done = finished.append
    # the late job's first row takes the free slot, the others the slots that rows free as they end
    engine = Engine(model, eos, choose_tokens, max_batch=3)
    engine.submit(early)
    for _ in range(5):
        engine.step()
    assert list(engine.batches) == [2] * 5
    engine.submit(late)
    engine.step()
    assert late.first_token_step == late.submitted_step == 5  # it joined at the next step
    assert engine.batches[-1] == 3 and len(engine.waiting) == 3  # the other rows wait for a slot
    engine.run()
    assert finished == [late] and engine.idle and max(engine.batches) == 3
    for job in (early, late):
        for row, tokens in zip(_reseed(job.rows), job.tokens):
            assert generate_rows(model, [row], eos) == [tokens]


def test_cancelled_rows_leave_at_the_next_step(pair):
    from tinystories.model.engine import Engine, Job
    from tinystories.model.generate import choose_tokens

    model = pair[0]
    vocab, eos = model.config.vocab_size, model.config.vocab_size - 1
    ended = []
    gone = Job(_sampled_rows(_prompts(vocab, (4, 9, 6)), 60), done=ended.append)
    queued = Job(_sampled_rows(_prompts(vocab, (5,)), 60), done=ended.append)
    stays = Job(_sampled_rows(_prompts(vocab, (7,)), 20), done=ended.append)
    engine = Engine(model, eos, choose_tokens, max_batch=4)
    for job in (gone, stays, queued):
        engine.submit(job)
    engine.step()
    assert list(engine.batches) == [4] and len(engine.waiting) == 1
    gone.cancelled = queued.cancelled = True
    engine.step()
    assert ended == [queued, gone] and engine.batches[-1] == 1  # only `stays` decodes
    engine.run()
    assert ended[-1] is stays and len(stays.tokens[0]) == 20


def test_a_failed_forward_pass_fails_its_jobs(pair):
    from tinystories.model.engine import Engine, Job
    from tinystories.model.generate import choose_tokens

    model = pair[0]
    vocab, eos = model.config.vocab_size, model.config.vocab_size - 1
    ended = []
    engine = Engine(model, eos, choose_tokens, max_batch=1)
    first, second = (Job(_sampled_rows(_prompts(vocab, (n,)), 10), done=ended.append) for n in (3, 4))
    engine.submit(first)
    engine.submit(second)
    first.rows[0].temperature = -1.0  # sample_next_token refuses it
    with pytest.raises(ValueError, match="temperature"):
        engine.step()
    assert ended == [first] and isinstance(first.error, ValueError) and not engine.running
    engine.run()
    assert ended == [first, second] and second.error is None and len(second.tokens[0]) == 10
    with pytest.raises(ValueError, match="exceed the context of 96 tokens"):
        engine.submit(Job(_sampled_rows(_prompts(vocab, (90,)), 10)))


def test_sample_says_when_the_new_tokens_do_not_fit_the_context(tmp_path):
    import subprocess
    import sys

    from _fixtures import save_random_checkpoint

    from tinystories.story_templates import generate_stories
    from tinystories.tokenizer import Tokenizer

    tokenizer = Tokenizer.train(generate_stories(100), vocab_size=300)
    path = save_random_checkpoint(tmp_path / "run", 1, tokenizer)
    context = load_checkpoint(path)[0].config.max_position_embeddings
    prompt_tokens = len(tokenizer.encode("Once upon a time"))
    command = [sys.executable, "-m", "tinystories.cli", "sample", str(path), "--prompt", "Once upon a time", "--greedy"]
    out = subprocess.run([*command, "--max-new-tokens", "100000"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert (
        f"tinystories sample: note: --max-new-tokens 100000 does not fit the model's context of {context} tokens: "
        f"at most {context - prompt_tokens} new tokens follow the longest prompt ({prompt_tokens} tokens)"
    ) in out.stderr.splitlines()
    most = str(context - prompt_tokens)
    fits = subprocess.run([*command, "--max-new-tokens", most], capture_output=True, text=True, timeout=300)
    assert fits.returncode == 0 and "note:" not in fits.stderr, fits.stderr
    assert fits.stdout == out.stdout  # the same story: the context's worth of tokens
