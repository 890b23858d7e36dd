"""`tinystories serve` speaks OpenAI's and vLLM's completions in full: token-id prompts, echo, logprobs, penalties,
logit_bias, best_of, every other field of the references honoured or refused with a 400 naming it, and vLLM's
/health, /tokenize, /detokenize and /tokenizer_info."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest
import torch
from _serve_fixtures import make_sweep

from tinystories.model import load_checkpoint
from tinystories.serve.app import create_app
from tinystories.serve.models import ModelPool, discover_models
from tinystories.serve.server import serve_in_thread

TINY, INSTRUCT = "tiny/step_00000020", "tiny-instruct/step_00000020"
PROMPT = "Once upon a time, there was a little dog"


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    return make_sweep(tmp_path_factory.mktemp("protocol"))


@pytest.fixture(scope="module")
def url(sweep_dir):
    with serve_in_thread(create_app(ModelPool(discover_models([sweep_dir]), max_models=4))) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def tiny(sweep_dir):
    model, tokenizer, _ = load_checkpoint(sweep_dir / "tiny" / "checkpoints" / "step_00000020.pt")
    return model, tokenizer


def post(url: str, body: dict) -> tuple[int, dict | str]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            text = response.read().decode()
            return response.status, (text if text.startswith("data:") else json.loads(text))
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read().decode())


def log_probs(model, ids: list[int]) -> torch.Tensor:
    """(T, V) log-probabilities of the token after each position, straight from the model."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)


def test_echo_and_logprobs_score_the_prompt_as_the_model_does(client, tiny):
    model, tokenizer = tiny
    ids = tokenizer.encode(PROMPT)
    expected = log_probs(model, ids)
    by_text = client.completions.create(model=TINY, prompt=PROMPT, echo=True, logprobs=3, max_tokens=0)
    by_ids = client.completions.create(model=TINY, prompt=ids, echo=True, logprobs=3, max_tokens=0)
    assert by_text.choices[0].model_dump() == by_ids.choices[0].model_dump()
    choice = by_text.choices[0]
    assert choice.text == PROMPT and choice.finish_reason == "length" and by_text.usage.completion_tokens == 0
    lp = choice.logprobs
    assert lp.tokens == [tokenizer.decode([t]) for t in ids] and "".join(lp.tokens) == PROMPT
    assert lp.text_offset == [len(tokenizer.decode(ids[:i])) for i in range(len(ids))]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing before the first token
    for i in range(1, len(ids)):
        assert lp.token_logprobs[i] == pytest.approx(float(expected[i - 1, ids[i]]), abs=1e-5)
        top = expected[i - 1].topk(3)
        want: dict[str, float] = {}  # by text; tokens of the same text (a partial UTF-8 character): the best
        chosen = [(ids[i], float(expected[i - 1, ids[i]]))]  # the chosen token is always listed, as vLLM
        for token, value in [*zip(top.indices.tolist(), top.values.tolist()), *chosen]:
            want[tokenizer.decode([token])] = max(value, want.get(tokenizer.decode([token]), value))
        assert lp.top_logprobs[i] == pytest.approx(want, abs=1e-5)
    # lm-eval's loglikelihood request: token ids, one greedy token more, its log-prob and whether it was the best.
    answer = client.completions.create(model=TINY, prompt=[ids], echo=True, logprobs=1, max_tokens=1, temperature=0)
    lp = answer.choices[0].logprobs
    greedy = int(expected[-1].argmax())
    assert len(lp.token_logprobs) == len(ids) + 1 and lp.token_logprobs[:-1] == choice.logprobs.token_logprobs
    assert lp.token_logprobs[-1] == pytest.approx(float(expected[-1].max()), abs=1e-5)
    assert max(lp.top_logprobs[-1].values()) == lp.token_logprobs[-1]
    assert answer.choices[0].text == PROMPT + (tokenizer.decode([greedy]) if greedy != tokenizer.eot_token else "")


def greedy_with_penalties(
    model, ids: list[int], steps: int, presence: float, frequency: float, bias: dict
) -> list[int]:
    """OpenAI's documented formula, step by step without a KV cache: mu[j] - c[j] * frequency - (c[j] > 0) *
    presence + bias[j], then the best token."""
    out: list[int] = []
    for _ in range(steps):
        logits = log_probs(model, ids + out)[-1].clone()
        for token in set(out):
            logits[token] -= out.count(token) * frequency + presence
        for token, value in bias.items():
            logits[token] += value
        out.append(int(logits.argmax()))
    return out


def test_logprobs_without_echo_and_in_chat(client, tiny):
    model, tokenizer = tiny
    eot = tokenizer.eot_token
    answer = client.completions.create(
        model=TINY, prompt=PROMPT, logprobs=2, max_tokens=6, temperature=0, logit_bias={str(eot): -100}
    )
    lp = answer.choices[0].logprobs
    ids = tokenizer.encode(PROMPT)
    new = greedy_with_penalties(model, ids, 6, 0.0, 0.0, {eot: -100.0})
    expected = log_probs(model, ids + new)  # the model's own log-probs: before the bias
    assert lp.tokens == [tokenizer.decode([t]) for t in new] and "".join(lp.tokens) == answer.choices[0].text
    assert lp.text_offset == [len(tokenizer.decode(new[:i])) for i in range(6)]
    for i, token in enumerate(new):
        assert lp.token_logprobs[i] == pytest.approx(float(expected[len(ids) - 1 + i, token]), abs=1e-5)
    chat = client.chat.completions.create(
        model=INSTRUCT, messages=[{"role": "user", "content": "Words: dog"}], logprobs=True, top_logprobs=2, seed=4
    ).choices[0]
    assert b"".join(bytes(t.bytes) for t in chat.logprobs.content).decode("utf-8", "replace") == chat.message.content
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in chat.logprobs.content)
    assert all(bytes(t.bytes).decode("utf-8", "replace") == t.token for t in chat.logprobs.content)


def test_penalties_and_logit_bias_as_openai_defines_them(client, tiny):
    model, tokenizer = tiny
    ids = tokenizer.encode(PROMPT)
    eot = tokenizer.eot_token
    ban = {str(eot): -100.0}  # no early end, so each answer has all its tokens
    plain = client.completions.create(model=TINY, prompt=PROMPT, max_tokens=12, temperature=0, logit_bias=ban)
    for presence, frequency in ((1.5, 0.0), (0.0, 2.0), (-1.0, 0.5)):
        answer = client.completions.create(
            model=TINY,
            prompt=PROMPT,
            max_tokens=12,
            temperature=0,
            presence_penalty=presence,
            frequency_penalty=frequency,
            logit_bias=ban,
        )
        expected = greedy_with_penalties(model, ids, 12, presence, frequency, {eot: -100.0})
        assert answer.choices[0].text == tokenizer.decode(expected)
        if presence > 0:
            assert answer.choices[0].text != plain.choices[0].text  # the penalty changed the story
    forced = tokenizer.encode(" dog")[0]
    sampled = client.completions.create(model=TINY, prompt=PROMPT, max_tokens=5, seed=1, logit_bias={str(forced): 100})
    assert sampled.choices[0].text == tokenizer.decode([forced] * 5)
    # default max_tokens is 16, as OpenAI and vLLM
    default = client.completions.create(model=TINY, prompt=PROMPT, logit_bias=ban, seed=2)
    assert default.usage.completion_tokens == 16 and default.choices[0].finish_reason == "length"


def test_best_of_keeps_the_most_likely_candidates(client):
    kwargs = dict(model=TINY, prompt=["Tom", "Lily"], max_tokens=8, seed=21, logprobs=0)
    candidates = client.completions.create(n=4, **kwargs).choices  # the same seeds: candidate j uses seed + j
    best = client.completions.create(n=2, best_of=4, **kwargs).choices
    assert [c.index for c in best] == [0, 1, 2, 3]
    for p in range(2):
        ranked = sorted(candidates[4 * p : 4 * p + 4], key=lambda c: -sum(c.logprobs.token_logprobs))
        assert [c.text for c in best[2 * p : 2 * p + 2]] == [c.text for c in ranked[:2]]
    with pytest.raises(openai.BadRequestError, match="best_of: 1 is less than n") as err:
        client.completions.create(model=TINY, prompt="Tom", n=2, best_of=1)
    assert err.value.body["param"] == "best_of"


def test_near_zero_temperature_and_top_p_are_greedy(client):
    greedy = client.completions.create(model=TINY, prompt=PROMPT, max_tokens=10, temperature=0).choices[0]
    assert greedy.text
    for setting in ({"temperature": 1e-40}, {"top_p": 1e-300}):
        answer = client.completions.create(model=TINY, prompt=PROMPT, max_tokens=10, seed=3, **setting).choices[0]
        assert (answer.text, answer.finish_reason) == (greedy.text, greedy.finish_reason)


# Every field of OpenAI's completions and chat references (and vLLM's common extensions): a value, and whether the
# server honours it (200) or refuses it (400 naming it). The README's table says the same.
COMPLETION_FIELDS = {
    "best_of": (2, 200),
    "echo": (True, 200),
    "frequency_penalty": (0.5, 200),
    "logit_bias": ({"5": 1.0}, 200),
    "logprobs": (2, 200),
    "max_tokens": (4, 200),
    "n": (2, 200),
    "presence_penalty": (0.5, 200),
    "seed": (1, 200),
    "stop": (["."], 200),
    "stream": (True, 200),
    "stream_options": ({"include_usage": True}, 200),
    "suffix": ("The end.", 400),
    "temperature": (0.5, 200),
    "top_p": (0.9, 200),
    "user": ("user-1", 200),
    "top_k": (5, 200),
    "min_p": (0.1, 400),
    "repetition_penalty": (1.1, 400),
}
CHAT_FIELDS = {
    "audio": ({"voice": "alloy", "format": "wav"}, 400),
    "frequency_penalty": (0.5, 200),
    "function_call": ("auto", 400),
    "functions": ([{"name": "f"}], 400),
    "logit_bias": ({"5": 1.0}, 200),
    "logprobs": (True, 200),
    "max_completion_tokens": (4, 200),
    "max_tokens": (4, 200),
    "metadata": ({"k": "v"}, 400),
    "modalities": (["text"], 400),
    "n": (2, 200),
    "parallel_tool_calls": (False, 400),
    "prediction": ({"type": "content", "content": "x"}, 400),
    "presence_penalty": (0.5, 200),
    "prompt_cache_key": ("k", 400),
    "prompt_cache_retention": ("24h", 400),
    "reasoning_effort": ("low", 400),
    "response_format": ({"type": "json_object"}, 400),
    "safety_identifier": ("user-1", 200),
    "seed": (1, 200),
    "service_tier": ("auto", 400),
    "stop": (["."], 200),
    "store": (False, 400),
    "stream": (True, 200),
    "stream_options": ({"include_usage": True}, 200),
    "temperature": (0.5, 200),
    "tool_choice": ("none", 400),
    "tools": ([{"type": "function", "function": {"name": "f"}}], 400),
    "top_logprobs": (2, 200),
    "top_p": (0.9, 200),
    "user": ("user-1", 200),
    "verbosity": ("low", 400),
    "web_search_options": ({}, 400),
    "top_k": (5, 200),
}


@pytest.mark.parametrize("route", ["completions", "chat/completions"])
def test_every_field_is_honoured_or_refused_by_name(url, route):
    if route == "completions":
        fields, base = COMPLETION_FIELDS, {"model": TINY, "prompt": "Tom", "max_tokens": 3}
    else:
        fields, base = CHAT_FIELDS, {"model": INSTRUCT, "messages": [{"role": "user", "content": "Words: dog"}]}
        base["max_tokens"] = 3
    needs = {"stream_options": {"stream": True}, "top_logprobs": {"logprobs": True}}
    for name, (value, status) in fields.items():
        body = {**base, **needs.get(name, {}), name: value}
        got, answer = post(f"{url}/v1/{route}", body)
        assert got == status, (name, answer)
        if status == 400:
            assert answer["error"]["param"] == name and name in answer["error"]["message"], answer
        elif name in ("stream", "stream_options"):
            assert answer.endswith("data: [DONE]\n\n") and ('"usage":{' in answer) == (name == "stream_options")
    got, answer = post(f"{url}/v1/{route}", {**base, "stream_options": {"include_usage": True}})
    assert got == 400 and answer["error"]["param"] == "stream_options"
    if route == "chat/completions":
        message = {"role": "user", "content": "Words: dog", "name": "tom"}
        got, answer = post(f"{url}/v1/{route}", {**base, "messages": [message]})
        assert got == 400 and answer["error"]["param"] == "messages.0.name"


def test_bad_values_are_openai_shaped_400s(client, tiny):
    _, tokenizer = tiny
    cases = [
        (dict(prompt="Tom", logprobs=6), "logprobs", "less than or equal to 5"),
        (dict(prompt="Tom", logprobs=-1), "logprobs", "greater than or equal to 0"),
        (dict(prompt=[1, 2, tokenizer.n_vocab]), "prompt", f"token id {tokenizer.n_vocab} is outside the vocabulary"),
        (dict(prompt=[[3, 4], [-1]]), "prompt", "token id -1 is outside"),
        (dict(prompt=[[5], []]), "prompt", "an empty list of token ids"),
        (dict(prompt=[5] * 129, echo=True, max_tokens=0), "prompt", "context of 128 tokens"),
        (dict(prompt=[5] * 128, echo=True, max_tokens=1), "prompt", "context of 128 tokens"),
        (dict(prompt="Tom", logit_bias={"dog": 1}), "logit_bias", "'dog' is not a token id"),
        (dict(prompt="Tom", logit_bias={"5": 101}), "logit_bias", "outside -100..100"),
        (dict(prompt="Tom", stream=True, logprobs=1), "logprobs", "not available when streaming"),
        (dict(prompt="Tom", stream=True, n=1, best_of=2), "best_of", "cannot be more than n when streaming"),
    ]
    for kwargs, param, message in cases:
        with pytest.raises(openai.BadRequestError, match=message) as err:
            client.completions.create(model=TINY, **kwargs)
        assert err.value.body["param"] == param, kwargs
    # a full context scores fine when nothing is generated
    full = client.completions.create(model=TINY, prompt=[5] * 128, echo=True, logprobs=0, max_tokens=0)
    assert len(full.choices[0].logprobs.token_logprobs) == 128


def test_vllm_tokenizer_routes(url, tiny):
    _, tokenizer = tiny
    request = urllib.request.Request(url + "/health")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200 and response.read() == b""
    status, answer = post(url + "/tokenize", {"prompt": PROMPT + "<|endoftext|>", "add_special_tokens": False})
    ids = tokenizer.encode(PROMPT) + [tokenizer.eot_token]
    assert status == 200 and answer == {"count": len(ids), "max_model_len": 128, "tokens": ids, "token_strs": None}
    status, answer = post(url + "/tokenize", {"model": TINY, "prompt": "Tom", "return_token_strs": True})
    assert answer["token_strs"] == [tokenizer.decode([t]) for t in tokenizer.encode("Tom")]
    assert post(url + "/detokenize", {"tokens": ids}) == (200, {"prompt": PROMPT + "<|endoftext|>"})
    status, answer = post(url + "/detokenize", {"tokens": [tokenizer.n_vocab]})
    assert status == 400 and answer["error"]["param"] == "tokens"
    status, answer = post(url + "/tokenize", {"messages": [{"role": "user", "content": "hi"}], "prompt": "a"})
    assert status == 400 and answer["error"]["param"] == "messages"
    with urllib.request.urlopen(url + "/tokenizer_info", timeout=30) as response:
        info = json.loads(response.read())
    assert info["eos_token"] == "<|endoftext|>" and info["model_max_length"] == 128
    lm_eval_utils = pytest.importorskip("lm_eval.utils")  # what lm-eval's tokenizer_backend="remote" does with them

    remote = lm_eval_utils.RemoteTokenizer(url + "/v1/completions")
    assert remote.encode(PROMPT) == tokenizer.encode(PROMPT) and remote.eos_token_id == tokenizer.eot_token
    assert remote.decode(tokenizer.encode(PROMPT)) == PROMPT
