"""Neuron top-k and attention-head classification: planted patterns with known answers."""

from __future__ import annotations

import math
import re

import pytest
import torch

from tinystories.interpret.heads import HeadStatsAccumulator, attention_statistics
from tinystories.interpret.neurons import NeuronTopK, top_token_share
from tinystories.interpret.report import heads_report_html, heatmap_png, neuron_report_html

T = 120


def _causal_rows(allowed: torch.Tensor) -> torch.Tensor:
    """Row-normalised causal attention that spreads evenly over the allowed keys."""
    m = (allowed & torch.ones(T, T, dtype=torch.bool).tril()).double()
    return (m / m.sum(-1, keepdim=True)).float()


def _planted_heads() -> tuple[torch.Tensor, list[str]]:
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    tokens = torch.randint(10, 500, (T,), generator=torch.Generator().manual_seed(0))
    tokens[[3, 40, 77, 100]] = 7  # the "main character": a content-selected head attends to its mentions
    heads = {
        "previous token": (_causal_rows((i - j == 1) | ((i == 0) & (j == 0))), "local"),
        "fixed offset 20": (_causal_rows((i - j == 20) | ((i < 20) & (j == 0))), "local"),
        "uniform": (_causal_rows(j <= i), "diffuse"),
        "sink": (_causal_rows((j == 0) & (i >= 0)), "first-token"),
        "character mentions": (_causal_rows((tokens[None, :] == 7) | ((i < 3) & (j == 0))), "semantic"),
    }
    return torch.stack([a for a, _ in heads.values()]), [kind for _, kind in heads.values()]


def test_planted_heads_are_classified_with_their_numbers():
    attention, expected = _planted_heads()
    acc = HeadStatsAccumulator(window=4)
    acc.add(0, attention)
    acc.add(0, attention)  # averaging two identical stories changes nothing
    heads = acc.heads()
    assert [h.kind for h in heads] == expected
    prev, offset, uniform, sink, semantic = heads
    assert prev.local_share == pytest.approx(1.0) and prev.mean_distance == pytest.approx(1.0)
    assert offset.local_share == pytest.approx(0.0) and "fixed offset profile" in offset.reason
    assert uniform.normalized_entropy == pytest.approx(1.0)
    assert sink.first_token_share == pytest.approx(1.0)
    assert semantic.positional_fit < 0.1 and semantic.normalized_entropy < 0.3
    assert f"{semantic.positional_fit:.0%}" in semantic.reason  # the numbers behind the call
    assert all(h.queries == 2 * (T - 5) for h in heads)


def test_attention_statistics_exact_values_on_a_small_case():
    # One head, T=4, window=1: queries 2 and 3 count. Query 2 -> key 0; query 3 -> keys 2 and 3 evenly.
    a = torch.zeros(1, 4, 4)
    a[0, 0, 0] = a[0, 1, 0] = 1
    a[0, 2, 0] = 1
    a[0, 3, 2] = a[0, 3, 3] = 0.5
    s = attention_statistics(a, window=1)
    assert s["mean_distance"].item() == pytest.approx((2 + 0.5) / 2)
    assert s["local_share"].item() == pytest.approx((0 + 1) / 2)
    assert s["first_token_share"].item() == pytest.approx(0.5)
    assert s["entropy"].item() == pytest.approx(math.log(2) / 2)
    assert s["normalized_entropy"].item() == pytest.approx((0 + math.log(2) / math.log(4)) / 2)
    assert s["queries"].item() == 2


def test_sliding_window_heads_are_normalised_by_the_keys_they_can_see():
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    uniform_in_window = _causal_rows(i - j < 16)[None]  # a GPT-Neo local layer with window 16
    s = attention_statistics(uniform_in_window, window=4, attention_window=16)
    assert s["normalized_entropy"].item() == pytest.approx(1.0)
    # without the window the same head looks focused: it sees 16 of up to 120 keys
    assert attention_statistics(uniform_in_window, window=4)["normalized_entropy"].item() < 0.75


def test_attention_statistics_rejects_bad_shapes():
    with pytest.raises(ValueError, match="must be \\(H, T, T\\)"):
        attention_statistics(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="no query farther than window=4"):
        attention_statistics(torch.zeros(1, 5, 5), window=4)


def test_neuron_topk_streaming_matches_a_global_sort():
    g = torch.Generator().manual_seed(1)
    stories = [torch.randn(int(n), 6, generator=g) for n in torch.randint(3, 30, (15,), generator=g)]
    top = NeuronTopK(6, k=4, context=2, per_story=2)
    for s, acts in enumerate(stories):
        top.add(s, acts)
    profiles = top.profiles()
    assert [p.peak for p in profiles] == sorted((p.peak for p in profiles), reverse=True)
    for prof in profiles:
        candidates = []  # the per-story top 2, then the global top 4
        for s, acts in enumerate(stories):
            v, pos = acts[:, prof.neuron].topk(min(2, len(acts)))
            candidates += [(float(x), s, int(p)) for x, p in zip(v, pos)]
        want = sorted(candidates, reverse=True)[:4]
        got = [(e.activation, e.story, e.position) for e in prof.examples]
        assert [(story, pos) for _, story, pos in got] == [(story, pos) for _, story, pos in want]
        assert [act for act, _, _ in got] == pytest.approx([act for act, _, _ in want])
        for e in prof.examples:  # the context window is the neuron's activation around the example
            acts = stories[e.story][:, prof.neuron]
            for offset, value in enumerate(e.context_activations):
                pos = e.context_start + offset
                if 0 <= pos < len(acts):
                    assert value == pytest.approx(float(acts[pos]))
                else:
                    assert math.isnan(value)


def test_neuron_report_html_highlights_the_activating_token():
    stories = [[1, 2, 3, 4, 5], [6, 7, 3, 9]]
    acts = [torch.zeros(5, 2), torch.zeros(4, 2)]
    acts[0][2, 1] = 2.0
    acts[1][2, 1] = 1.0
    acts[0][1, 1] = 0.5
    top = NeuronTopK(2, k=2, context=1)
    for s, a in enumerate(acts):
        top.add(s, a)
    profiles = top.profiles()
    assert profiles[0].neuron == 1
    assert top_token_share(profiles[0], stories) == (3, 1.0)
    page = neuron_report_html(profiles, stories, lambda ids: [f"<w{t}>" for t in ids], title="t")
    assert page.count("<h2") == 2 and "&lt;w3&gt;" in page  # escaped token text
    assert re.search(r"class='tok peak' style='background:rgba\(255,0,0,1\.000\)'[^>]*>&lt;w3&gt;", page)
    assert "rgba(255,0,0,0.250)" in page  # 0.5 / peak 2.0
    assert "<script" not in page and "http" not in page  # self-contained


def test_heatmap_png_and_heads_report_embed_the_image():
    attention, _ = _planted_heads()
    png = heatmap_png(attention[0, :20, :20], [f"t{i}" for i in range(20)], "L0H0")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    acc = HeadStatsAccumulator(window=4)
    acc.add(0, attention)
    page = heads_report_html(acc.heads(), [("L0H0", png)], title="heads")
    assert "data:image/png;base64," in page and "semantic" in page and "first-token" in page


# ---------------------------------------------------------------------------------------------
# Through a real GPTNeo: planted weights, hooks, output_attentions
# ---------------------------------------------------------------------------------------------
def _planted_model(token: int, neuron: int):
    """A 3-layer GPTNeo whose layer-1 (the default: one before last) MLP neuron ``neuron`` fires on ``token``.

    Every attention and MLP output projection is zeroed, so each block sees the bare token embedding;
    the planted token's embedding is the only one with weight on dimension 0, and the neuron reads it.
    """
    from tinystories.model import GPTNeo, GPTNeoConfig

    torch.manual_seed(0)
    model = GPTNeo(
        GPTNeoConfig(
            vocab_size=64, hidden_size=16, num_layers=3, num_heads=2, max_position_embeddings=64, window_size=8
        )
    ).eval()
    with torch.no_grad():
        model.wpe.weight.zero_()
        model.wte.weight[:, 0] = 0.0
        model.wte.weight[token] = 0.0
        model.wte.weight[token, 0] = 1.0
        for block in model.blocks:
            block.attn.out_proj.weight.zero_()
            block.mlp.c_proj.weight.zero_()
        fc = model.blocks[1].mlp.c_fc
        fc.weight[neuron] = 0.0
        fc.weight[neuron, 0] = 1.0
        fc.bias[neuron] = -2.0
    return model


def test_planted_neuron_reports_exactly_its_token():
    from tinystories.interpret import analyse_neurons, default_layer

    token, neuron = 42, 5
    model = _planted_model(token, neuron)
    assert default_layer(model) == 1
    g = torch.Generator().manual_seed(3)
    stories, planted = [], {}
    for s in range(12):
        ids = torch.randint(0, 64, (30,), generator=g)
        ids[ids == token] = 0
        if s % 2 == 0:  # the token appears in every other story, once, at a random place
            planted[s] = int(torch.randint(0, 30, (1,), generator=g))
            ids[planted[s]] = token
        stories.append(ids.tolist())
    profiles = analyse_neurons(model, stories, k=len(planted), context=3)
    top = profiles[0]
    assert top.neuron == neuron  # ranked first by peak activation
    assert {(e.story, e.position) for e in top.examples} == set(planted.items())
    assert all(stories[e.story][e.position] == token for e in top.examples)
    assert top_token_share(top, stories) == (token, 1.0)
    assert top.peak > 1.0 > max(p.peak for p in profiles[1:])


def test_attention_from_the_model_is_causal_and_feeds_the_head_statistics():
    from tinystories.interpret import analyse_heads, attention_maps

    model = _planted_model(1, 0)
    story = list(range(2, 40))
    maps = attention_maps(model, story)
    assert len(maps) == 3 and maps[0].shape == (2, 38, 38)
    assert torch.allclose(maps[0].sum(-1), torch.ones(2, 38), atol=1e-5)
    assert float(maps[0].triu(1).abs().max()) == 0.0
    # layer 1 is "local" with window 8: nothing beyond 8 tokens back
    assert float(maps[1].tril(-8).abs().max()) == 0.0
    heads = analyse_heads(model, [story, story[:20]], window=4)
    assert [(h.layer, h.head) for h in heads] == [(layer, h) for layer in range(3) for h in range(2)]
    assert all(h.queries == (38 - 5) + (20 - 5) for h in heads)
