"""Insight: look inside a trained model, as the paper's section 5 did.

``neurons`` (the top-activating tokens of every MLP neuron of a layer), ``heads`` (per-head attention
distance, entropy and locality, and the local / first-token / diffuse / semantic class with the numbers
behind it), ``report`` (self-contained HTML, PNG heat maps) and ``cli`` (``tinystories inspect``). The
analyses take plain tensors, so they are testable on planted patterns.
"""

from tinystories.interpret.heads import (
    HeadRule,
    HeadStats,
    HeadStatsAccumulator,
    analyse_heads,
    attention_maps,
    attention_statistics,
    classify_head,
)
from tinystories.interpret.neurons import NeuronTopK, analyse_neurons, default_layer, mlp_activations

__all__ = [
    "HeadRule",
    "HeadStats",
    "HeadStatsAccumulator",
    "NeuronTopK",
    "analyse_heads",
    "analyse_neurons",
    "attention_maps",
    "attention_statistics",
    "classify_head",
    "default_layer",
    "mlp_activations",
]
