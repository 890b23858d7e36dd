"""What requests cost: a price table (USD per 1M tokens, editable, JSON/TOML overrides) and the budget that
stops a run before it spends more than ``max_cost_usd``."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# USD per 1M tokens (input, output) at the standard tier, as published by OpenAI when this was written.
# Prices change: edit this table or pass a JSON/TOML file (`PriceTable.load`, `--prices FILE`).
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-3.5-turbo": (0.50, 1.50),
    "gpt-4": (30.00, 60.00),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
}
BATCH_DISCOUNT = 0.5  # the Batch API bills half the standard price


@dataclass
class PriceTable:
    """Model -> (input, output) USD per 1M tokens. A dated snapshot ("gpt-4o-mini-2024-07-18") uses the
    price of its longest listed prefix; a model with no price costs 0 and `has_price` says so."""

    prices: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    batch_discount: float = BATCH_DISCOUNT

    @classmethod
    def load(cls, path: str | Path, *, base: PriceTable | None = None) -> PriceTable:
        """Overrides from a JSON or TOML file: {"gpt-4o-mini": {"input": 0.15, "output": 0.6}, ...} and an
        optional top-level "batch_discount"."""
        path = Path(path)
        try:
            if path.suffix != ".toml":
                data = json.loads(path.read_text())
            elif sys.version_info >= (3, 11):
                import tomllib

                data = tomllib.loads(path.read_text())
            else:
                raise ValueError("TOML needs Python >= 3.11 (tomllib); write the prices as JSON")
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read price table {path}: {e}") from e
        table = PriceTable(dict((base or cls()).prices), (base or cls()).batch_discount)
        for model, entry in data.items():
            if model == "batch_discount":
                table.batch_discount = float(entry)
                continue
            try:
                table.prices[model] = (float(entry["input"]), float(entry["output"]))
            except (TypeError, KeyError, ValueError) as e:
                raise ValueError(
                    f'price table {path}: model {model!r} needs {{"input": USD/1M, "output": USD/1M}}, got {entry!r}'
                ) from e
        return table

    def lookup(self, model: str) -> tuple[float, float] | None:
        if model in self.prices:
            return self.prices[model]
        prefixes = [m for m in self.prices if model.startswith(m + "-")]
        return self.prices[max(prefixes, key=len)] if prefixes else None

    def has_price(self, model: str) -> bool:
        return self.lookup(model) is not None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int, *, batch: bool = False) -> float:
        price = self.lookup(model)
        if price is None:
            return 0.0
        usd = (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6
        return usd * self.batch_discount if batch else usd


class Budget:
    """Admits a request only while spent + (requests in flight + 1) x reserve stays within the limit. The reserve
    is the dearest request so far, or before any has finished an upper bound from the request itself
    (its prompt and max_tokens): the budget holds unless a request costs more than every one before it."""

    def __init__(self, max_cost_usd: float | None, prices: PriceTable, already_spent: float = 0.0):
        self.max = max_cost_usd
        self.prices = prices
        self.spent = already_spent
        self.dearest = 0.0
        self.in_flight = 0

    def affordable(self, body: dict[str, Any]) -> int:
        """How many more requests like the one with JSON ``body`` may start now."""
        if self.max is None:
            return 1 << 30
        reserve = self.dearest or self.upper_bound(body)
        if reserve <= 0:
            return 1 << 30
        return max(0, math.floor((self.max - self.spent) / reserve) - self.in_flight)

    def upper_bound(self, body: dict[str, Any]) -> float:
        prompt_tokens = len(json.dumps(body.get("messages", ""))) // 2  # >= real tokens for any text
        completion_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 4096
        return self.prices.cost(body.get("model", ""), prompt_tokens, completion_tokens)

    def start(self, count: int = 1) -> None:
        self.in_flight += count

    def finish(self, cost: float) -> None:
        self.in_flight -= 1
        self.spent += cost
        self.dearest = max(self.dearest, cost)
