"""Run by ``tests/test_hf.py`` (in its own environment and in one holding the ``hf`` extra's floor): an exported
folder read by transformers as users read it, and, where ``optimum`` is installed, exported to ONNX and generated
with ONNX Runtime.

    python _export_check.py SPEC.json   # {"dir", "context", "eot", "max_new_tokens", "greedy": {prompt: text}, "onnx"}

``greedy`` holds what ``tinystories sample --greedy --max-new-tokens N`` prints for each prompt.
Prints ``export ok`` when every check holds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import transformers


def main(spec: dict) -> None:
    folder, greedy, n = spec["dir"], spec["greedy"], spec["max_new_tokens"]
    prompts = list(greedy)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert (tok.pad_token_id, tok.eos_token_id) == (spec["eot"], spec["eot"]), (tok.pad_token_id, tok.eos_token_id)
    assert tok.model_max_length == spec["context"], tok.model_max_length

    encoded = tok(prompts[-1], return_tensors="pt")
    assert sorted(encoded.keys()) == ["attention_mask", "input_ids"], sorted(encoded.keys())
    with torch.no_grad():
        torch.testing.assert_close(model(**encoded).logits, model(encoded.input_ids).logits, rtol=0, atol=0)

    # a batch of prompts of different lengths generates what each prompt does alone, and what we generate
    pipe = transformers.pipeline("text-generation", model=model, tokenizer=tok)
    alone = [pipe(p, max_new_tokens=n, do_sample=False)[0]["generated_text"].strip() for p in prompts]
    batched = [r[0]["generated_text"].strip() for r in pipe(prompts, max_new_tokens=n, do_sample=False, batch_size=4)]
    assert batched == alone, (batched, alone)
    assert alone == list(greedy.values()), (alone, list(greedy.values()))

    if spec["onnx"]:
        from optimum.onnxruntime import ORTModelForCausalLM

        ort = ORTModelForCausalLM.from_pretrained(folder, export=True)
        for prompt, expected in greedy.items():
            ids = ort.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=n, do_sample=False)[0].tolist()
            assert tok.decode(ids, skip_special_tokens=True).strip() == expected, (prompt, ids, expected)
        print(f"onnx ok ({type(ort).__name__})")
    print(f"export ok (transformers {transformers.__version__})")


if __name__ == "__main__":
    main(json.loads(Path(sys.argv[1]).read_text()))
