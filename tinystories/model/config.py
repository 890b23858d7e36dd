"""The GPT-Neo configuration, the paper's model sizes as presets, and the training FLOPs of a configuration."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class GPTNeoConfig:
    vocab_size: int = 50257
    hidden_size: int = 768
    num_layers: int = 4
    num_heads: int = 16
    max_position_embeddings: int = 512
    window_size: int = 256
    # One entry per layer; empty means alternating "global", "local", "global", ...
    attention_layers: tuple[str, ...] = ()
    intermediate_size: int | None = None  # None means 4 * hidden_size
    layer_norm_eps: float = 1e-5
    dropout: float = 0.0  # embedding, attention and residual dropout (all 0 in the TinyStories models)
    initializer_range: float = 0.02
    vocab_multiple: int = 64

    def __post_init__(self) -> None:
        if not self.attention_layers:
            self.attention_layers = tuple("global" if i % 2 == 0 else "local" for i in range(self.num_layers))
        self.attention_layers = tuple(self.attention_layers)
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field when the configuration cannot describe a model."""
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "max_position_embeddings",
            "window_size",
            "intermediate_size",
            "vocab_multiple",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"model config: {name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model config: hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )
        if len(self.attention_layers) != self.num_layers:
            raise ValueError(
                f"model config: attention_layers has {len(self.attention_layers)} entries but "
                f"num_layers={self.num_layers}"
            )
        bad = [a for a in self.attention_layers if a not in ("global", "local")]
        if bad:
            raise ValueError(f"model config: attention_layers may hold only 'global'/'local', got {bad[0]!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model config: dropout must be in [0, 1), got {self.dropout!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"model config: layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / self.vocab_multiple) * self.vocab_multiple

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["attention_layers"] = list(self.attention_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTNeoConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"model config: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


# The paper's released models (roneneldan/TinyStories-*): 16 heads, context 512, GPT-Neo vocabulary.
# The Instruct twins share the architecture; only their training data differs.
_PAPER = {
    "1M": dict(hidden_size=64, num_layers=8),
    "3M": dict(hidden_size=128, num_layers=8),
    "8M": dict(hidden_size=256, num_layers=8),
    "28M": dict(hidden_size=512, num_layers=8),
    "33M": dict(hidden_size=768, num_layers=4),
    "21M-1L": dict(hidden_size=1024, num_layers=1),
    "33M-2L": dict(hidden_size=1024, num_layers=2),
}
PRESETS: dict[str, dict[str, Any]] = {}
for _name, _shape in _PAPER.items():
    PRESETS[_name] = dict(vocab_size=50257, num_heads=16, max_position_embeddings=512, window_size=256, **_shape)
    PRESETS[f"{_name}-instruct"] = dict(PRESETS[_name])
# Small enough to train in minutes on two CPU cores (vocab follows the demo tokenizer).
PRESETS["demo"] = dict(
    vocab_size=2048, hidden_size=128, num_layers=4, num_heads=4, max_position_embeddings=256, window_size=64
)


def config_from_preset(name: str, **overrides: Any) -> GPTNeoConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return GPTNeoConfig(**{**PRESETS[name], **overrides})


def mean_keys_attended(seq_len: int, window: int | None = None) -> float:
    """Average number of keys a query attends to in a causal sequence: query i sees min(i + 1, window) keys."""
    w = seq_len if window is None else min(window, seq_len)
    return (w * (w + 1) / 2 + (seq_len - w) * w) / seq_len


def flops_per_token(config: GPTNeoConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12 C sum over layers of K_attended,
    where K_attended is the mean number of keys a query sees in that layer (causal, and windowed for local
    layers), so masked-out scores are not counted."""
    C, L = config.hidden_size, config.num_layers
    assert config.intermediate_size is not None  # __post_init__ fills in the default
    per_layer = 4 * C * C + 2 * C * config.intermediate_size
    n = L * per_layer + config.vocab_size * C  # matmul weights, including the tied output head
    attended = sum(
        mean_keys_attended(seq_len, config.window_size if t == "local" else None) for t in config.attention_layers
    )
    return 6.0 * n + 12.0 * C * attended
