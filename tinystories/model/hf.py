"""Hugging Face interop: our GPT-Neo <-> a ``GPTNeoForCausalLM`` directory.

An exported directory holds ``config.json``, ``model.safetensors`` (the weights under HF's names, the
embedding unpadded, the tied ``lm_head`` left to HF to tie), ``generation_config.json`` and the tokenizer
(``tokenizer.json`` + ``tokenizer_config.json``), so ``AutoModelForCausalLM.from_pretrained(DIR)`` and
``AutoTokenizer.from_pretrained(DIR)`` work offline. Importing reads the same layout, e.g. the paper's
released ``roneneldan/TinyStories-*`` checkpoints once a user has them on disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tinystories.atomic import atomic_directory
from tinystories.corpus import EOT
from tinystories.model.config import GPTNeoConfig
from tinystories.model.gpt_neo import GPTNeo
from tinystories.tokenizer import Tokenizer, resolve_tokenizer

_HF_ARCH = "GPTNeoForCausalLM"


def _hf_name(name: str) -> str:
    """Our parameter name -> HF's (``blocks.0.attn.q_proj.weight`` ->
    ``transformer.h.0.attn.attention.q_proj.weight``)."""
    name = name.replace("blocks.", "h.", 1).replace(".attn.", ".attn.attention.")
    return f"transformer.{name}"


def hf_config_dict(config: GPTNeoConfig, eos_token_id: int | None = None) -> dict[str, Any]:
    """A transformers ``GPTNeoConfig`` (config.json) describing the same function as ``config``."""
    layers = list(config.attention_layers)
    # HF's compact form [[pattern, repeats], ...]; alternating layers compress to one entry.
    if len(layers) % 2 == 0 and layers == ["global", "local"] * (len(layers) // 2):
        attention_types = [[["global", "local"], len(layers) // 2]]
    else:
        attention_types = [[[t], 1] for t in layers]
    eos = eos_token_id if eos_token_id is not None else config.vocab_size - 1
    return {
        "architectures": [_HF_ARCH],
        "model_type": "gpt_neo",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_layers": config.num_layers,
        "num_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
        "max_position_embeddings": config.max_position_embeddings,
        "window_size": config.window_size,
        "attention_types": attention_types,
        "attention_layers": layers,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": config.layer_norm_eps,
        "embed_dropout": config.dropout,
        "attention_dropout": config.dropout,
        "resid_dropout": config.dropout,
        "initializer_range": config.initializer_range,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "tie_word_embeddings": True,
        "use_cache": True,
        "dtype": "float32",  # transformers >= 4.56 name (torch_dtype is deprecated)
    }


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> GPTNeoConfig:
    """Our config from a transformers GPT-Neo config.json dict; unsupported features raise ValueError."""
    if hf.get("model_type") != "gpt_neo":
        raise ValueError(f"{source}: model_type is {hf.get('model_type')!r}, only 'gpt_neo' can be imported")
    if hf.get("activation_function", "gelu_new") != "gelu_new":
        raise ValueError(
            f"{source}: activation_function {hf['activation_function']!r} is not supported (only gelu_new)"
        )
    if not hf.get("tie_word_embeddings", True):
        raise ValueError(f"{source}: untied input/output embeddings are not supported")
    dropouts = {hf.get(k, 0.0) for k in ("embed_dropout", "attention_dropout", "resid_dropout")}
    layers = hf.get("attention_layers")
    if not layers:
        layers = [t for pattern, repeats in hf["attention_types"] for _ in range(repeats) for t in pattern]
    return GPTNeoConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_layers"],
        num_heads=hf["num_heads"],
        max_position_embeddings=hf["max_position_embeddings"],
        window_size=hf.get("window_size", 256),
        attention_layers=tuple(layers),
        intermediate_size=hf.get("intermediate_size"),
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        dropout=float(max(dropouts)),
        initializer_range=hf.get("initializer_range", 0.02),
    )


def to_hf_state_dict(model: GPTNeo) -> dict[str, torch.Tensor]:
    """HF-named fp32 tensors (contiguous, unpadded embedding, no lm_head: HF ties it to wte)."""
    V = model.config.vocab_size
    out = {}
    for name, tensor in model.state_dict().items():
        if name == "wte.weight":
            tensor = tensor[:V]
        out[_hf_name(name)] = tensor.detach().to("cpu", torch.float32).contiguous().clone()
    return out


def load_hf_state_dict(model: GPTNeo, hf_state: dict[str, torch.Tensor], source: str = "weights") -> None:
    """Copy HF-named weights into ``model`` (all must be present and of the right shape)."""
    V = model.config.vocab_size
    ours = model.state_dict()
    expected = {_hf_name(n): n for n in ours}
    extra = sorted(set(hf_state) - set(expected) - {"lm_head.weight"})
    extra = [k for k in extra if not k.endswith((".attn.attention.bias", ".attn.attention.masked_bias"))]
    missing = sorted(set(expected) - set(hf_state))
    if missing or extra:
        raise ValueError(
            f"{source}: tensors do not match a GPT-Neo of this config; missing {missing[:5]}, unexpected {extra[:5]}"
        )
    with torch.no_grad():
        for hf_name, name in expected.items():
            src, dst = hf_state[hf_name], ours[name]
            if name == "wte.weight":
                if tuple(src.shape) != (V, dst.shape[1]):
                    raise ValueError(f"{source}: {hf_name} has shape {tuple(src.shape)}, expected {(V, dst.shape[1])}")
                dst.zero_()
                dst[:V].copy_(src)
            else:
                if src.shape != dst.shape:
                    raise ValueError(f"{source}: {hf_name} has shape {tuple(src.shape)}, expected {tuple(dst.shape)}")
                dst.copy_(src)
    if "lm_head.weight" in hf_state and not torch.equal(
        hf_state["lm_head.weight"].float(), hf_state["transformer.wte.weight"].float()
    ):
        raise ValueError(f"{source}: lm_head.weight differs from transformer.wte.weight (untied head unsupported)")


def load_hf_model(directory: str | Path) -> GPTNeo:
    """Our GPT-Neo from a GPTNeoForCausalLM directory (config.json + model.safetensors or pytorch_model.bin)."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory}: no config.json (expected a Hugging Face GPTNeoForCausalLM directory)")
    config = config_from_hf(json.loads(config_path.read_text()), str(config_path))
    if (directory / "model.safetensors").is_file():
        from safetensors.torch import load_file

        weights_path = directory / "model.safetensors"
        state = load_file(str(weights_path))
    elif (directory / "pytorch_model.bin").is_file():
        weights_path = directory / "pytorch_model.bin"
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{directory}: neither model.safetensors nor pytorch_model.bin found")
    model = GPTNeo(config)
    load_hf_state_dict(model, state, str(weights_path))
    return model.eval()


def load_hf_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer of a HF directory: our tokenizer.json when present, else GPT-2 vocab.json + merges.txt."""
    directory = Path(directory)
    if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        return Tokenizer.from_gpt2_files(directory / "vocab.json", directory / "merges.txt")
    return resolve_tokenizer(directory)


def hf_tokenizer_config(tokenizer: Tokenizer, context: int) -> dict[str, Any]:
    """tokenizer_config.json that every transformers version reads the same way (4.x and 5.x, optimum, lm-eval).

    ``model_input_names`` keeps ``token_type_ids`` out of ``tok(text)`` (transformers 4.x would return them and
    GPT-Neo would add their embeddings); the pad token is the end-of-text token, as in the published
    ``roneneldan/TinyStories-*`` models, so batches pad; prompts pad on the left, so a batch generates what each
    prompt alone does."""
    eot = EOT if EOT in tokenizer.special_tokens else None
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": context,
        "bos_token": eot,
        "eos_token": eot,
        "unk_token": eot,
        "pad_token": eot,
        "padding_side": "left",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
    }


def export_hf(model: GPTNeo, out_dir: str | Path, tokenizer: Tokenizer | None = None, card: str | None = None) -> Path:
    """Write ``model`` (and ``tokenizer``, and the model card ``README.md``) as a GPTNeoForCausalLM directory,
    atomically (it appears whole or not at all); ``out_dir`` must not exist or be empty."""
    from safetensors.torch import save

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose a new --out directory")
    config = hf_config_dict(model.config, tokenizer.eot_token if tokenizer is not None else None)
    with atomic_directory(out_dir) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}
        if tokenizer is not None:
            generation["pad_token_id"] = config["eos_token_id"]
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        # bytes written by us: safetensors' own file writer creates mode 0600, unreadable by colleagues
        (tmp / "model.safetensors").write_bytes(save(to_hf_state_dict(model), metadata={"format": "pt"}))
        if tokenizer is not None:
            tokenizer.save_hf(tmp / "tokenizer.json")
            tokenizer_config = hf_tokenizer_config(tokenizer, model.config.max_position_embeddings)
            (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
        if card is not None:
            (tmp / "README.md").write_text(card)
    return out_dir
