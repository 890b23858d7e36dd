"""MLP neurons: the top-activating tokens of every neuron of a layer, over a stream of stories.

Eldan & Li (2023, section 5) found many neurons of TinyStories models fire on one clear concept (the
protagonist's name, action verbs...). :class:`NeuronTopK` keeps a running top-k on plain ``(T, n_neurons)``
activation tensors (testable on planted patterns); :func:`analyse_neurons` gets those activations out of
a :class:`~tinystories.model.GPTNeo` with a forward hook on ``blocks[i].mlp.act``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor

from tinystories.model.gpt_neo import Block, GPTNeo


@dataclass
class NeuronExample:
    """One top activation of a neuron: where it happened and the neuron's activation around it."""

    activation: float
    story: int  # index of the story in the analysed stream
    position: int  # token index inside the story
    context_start: int  # token index of context_activations[0] (may be < 0 near the story start)
    context_activations: list[float]  # this neuron at positions context_start.., NaN outside the story


@dataclass
class NeuronProfile:
    neuron: int
    peak: float
    examples: list[NeuronExample]  # highest activation first


class NeuronTopK:
    """Running top-k activations of every neuron of one layer over a stream of stories.

    ``add(story, activations)`` takes one story's ``(T, n_neurons)`` activations. Each story contributes
    at most ``per_story`` examples per neuron (default 1: the top examples then come from different
    stories, which tells more about a neuron than one story's repeats). Memory is
    ``O(n_neurons * k * context)``, independent of the number of stories.
    """

    def __init__(self, n_neurons: int, k: int = 10, context: int = 12, per_story: int = 1) -> None:
        for name, value in (("n_neurons", n_neurons), ("k", k), ("per_story", per_story)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if context < 0:
            raise ValueError(f"context must be >= 0, got {context}")
        self.n_neurons, self.k, self.context, self.per_story = n_neurons, k, context, per_story
        width = 2 * context + 1
        self.values = torch.empty(n_neurons, 0)
        self.stories = torch.empty(n_neurons, 0, dtype=torch.long)
        self.positions = torch.empty(n_neurons, 0, dtype=torch.long)
        self.windows = torch.empty(n_neurons, 0, width)

    def add(self, story: int, activations: Tensor) -> None:
        if activations.ndim != 2 or activations.shape[1] != self.n_neurons:
            raise ValueError(f"activations must be (T, {self.n_neurons}), got {tuple(activations.shape)}")
        acts = activations.detach().float().cpu()
        T = acts.shape[0]
        if T == 0:
            return
        values, positions = acts.topk(min(self.per_story, T), dim=0)  # (m, n)
        values, positions = values.T, positions.T  # (n, m)
        c = self.context
        padded = F.pad(acts.T, (c, c), value=float("nan"))  # (n, T + 2c): NaN outside the story
        offsets = positions[..., None] + torch.arange(2 * c + 1)  # index into padded == position - c + o
        n, m = positions.shape
        windows = padded.gather(1, offsets.reshape(n, -1)).reshape(n, m, 2 * c + 1)

        all_values = torch.cat([self.values, values], dim=1)
        keep = all_values.topk(min(self.k, all_values.shape[1]), dim=1).indices
        self.values = all_values.gather(1, keep)
        self.stories = torch.cat([self.stories, torch.full_like(positions, story)], dim=1).gather(1, keep)
        self.positions = torch.cat([self.positions, positions], dim=1).gather(1, keep)
        all_windows = torch.cat([self.windows, windows], dim=1)
        self.windows = all_windows.gather(1, keep[..., None].expand(-1, -1, all_windows.shape[2]))

    def profiles(self) -> list[NeuronProfile]:
        """Every neuron with its top examples, ranked by peak activation (highest first)."""
        if self.values.shape[1] == 0:
            raise ValueError("no activations were added")
        order = self.values[:, 0].argsort(descending=True, stable=True)
        result = []
        for neuron in order.tolist():
            examples = [
                NeuronExample(
                    activation=float(self.values[neuron, e]),
                    story=int(self.stories[neuron, e]),
                    position=int(self.positions[neuron, e]),
                    context_start=int(self.positions[neuron, e]) - self.context,
                    context_activations=self.windows[neuron, e].tolist(),
                )
                for e in range(self.values.shape[1])
            ]
            result.append(NeuronProfile(neuron=neuron, peak=examples[0].activation, examples=examples))
        return result


def top_token_share(profile: NeuronProfile, stories: Sequence[Sequence[int]]) -> tuple[int, float]:
    """The token id most common among a neuron's top examples and the share of examples it takes."""
    ids = [stories[e.story][e.position] for e in profile.examples]
    best = max(set(ids), key=ids.count)
    return best, ids.count(best) / len(ids)


def as_batch(model: GPTNeo, ids: Sequence[int]) -> Tensor:
    device = next(model.parameters()).device
    return torch.as_tensor(list(ids), dtype=torch.long, device=device)[None]


@torch.no_grad()
def mlp_activations(model: GPTNeo, ids: Sequence[int], layer: int) -> Tensor:
    """``(T, intermediate_size)`` outputs of ``blocks[layer].mlp.act`` (after gelu_new) for one story."""
    if not -len(model.blocks) <= layer < len(model.blocks):
        raise ValueError(f"layer {layer} does not exist: the model has {len(model.blocks)} layers")
    captured: list[Tensor] = []
    block = cast(Block, model.blocks[layer])  # an nn.ModuleList gives its items as plain Modules
    handle = block.mlp.act.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        model(as_batch(model, ids))
    finally:
        handle.remove()
    return captured[0][0].float().cpu()


def analyse_neurons(
    model: GPTNeo,
    stories: Iterable[Sequence[int]],
    layer: int | None = None,
    *,
    k: int = 10,
    context: int = 12,
    per_story: int = 1,
    progress: Callable[[], None] | None = None,
) -> list[NeuronProfile]:
    """Top-k activating tokens of every MLP neuron of ``layer`` (default: the one before last)."""
    layer = default_layer(model) if layer is None else layer
    assert model.config.intermediate_size is not None  # GPTNeoConfig.__post_init__ fills in the default
    top = NeuronTopK(model.config.intermediate_size, k=k, context=context, per_story=per_story)
    for index, ids in enumerate(stories):
        top.add(index, mlp_activations(model, ids, layer))
        if progress:
            progress()
    return top.profiles()


def default_layer(model: GPTNeo) -> int:
    return max(len(model.blocks) - 2, 0)
