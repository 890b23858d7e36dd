"""`tinystories serve` through the official openai client on loopback: routes, sampling, batching, errors."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import openai
import pytest
import torch
from _processes import wait_until
from _serve_fixtures import make_sweep

from tinystories.corpus import format_instructions
from tinystories.model import load_checkpoint
from tinystories.model.checkpoint import checkpoint_path, read_checkpoint, save_checkpoint
from tinystories.model.engine import Job
from tinystories.model.generate import Row, generate_texts
from tinystories.serve.app import create_app
from tinystories.serve.models import ModelPool, discover_models
from tinystories.serve.server import serve_in_thread

TINY, INSTRUCT = "tiny/step_00000020", "tiny-instruct/step_00000020"


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    return make_sweep(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(sweep_dir):
    pool = ModelPool(discover_models([sweep_dir]), max_models=4)
    app = create_app(pool, max_body_bytes=4096)
    with serve_in_thread(app) as url:
        yield url, pool


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, str]:
    """(status, text) of one raw request, for what the openai client cannot send (bad JSON, no route)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_models_are_listed_by_run_and_step_and_load_lazily(server, client):
    url, pool = server
    ids = [m.id for m in client.models.list().data]
    assert ids == ["tiny/step_00000010", "tiny/step_00000020", "tiny-instruct/step_00000010", INSTRUCT]
    assert client.models.retrieve(TINY).model_extra["step"] == 20
    assert "tiny/step_00000010" not in pool.loaded  # listing loads nothing


def test_seeded_completions_equal_tinystories_sample(sweep_dir, client):
    settings = ["--temperature", "0.9", "--top-k", "40", "--top-p", "0.95", "--max-new-tokens", "24", "--seed", "7"]
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinystories.cli",
            "sample",
            str(sweep_dir / "tiny"),
            "--prompt",
            "Once upon a time",
            "--prompt",
            "Tom",
            "--num-samples",
            "2",
            *settings,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr
    stories = [s.strip() for s in cli.stdout.split("--- story ")[1:]]
    stories = [s.split("---\n", 1)[1].strip() for s in stories]
    prompts = ["Once upon a time", "Tom"]
    answer = client.completions.create(
        model=TINY, prompt=prompts, n=2, seed=7, temperature=0.9, top_p=0.95, max_tokens=24, extra_body={"top_k": 40}
    )
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]  # prompt-major, as `sample` orders them
    assert [(prompts[c.index // 2] + c.text).strip() for c in answer.choices] == stories
    assert stories[0] != stories[1]  # each choice has its own generator
    usage = answer.usage
    tokenizer = load_checkpoint(sweep_dir / "tiny")[1]
    assert usage.prompt_tokens == sum(len(tokenizer.encode(p)) for p in prompts)  # once per prompt, not per choice
    assert 0 < usage.completion_tokens <= 4 * 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streaming_gives_the_same_text_and_usage(client):
    kwargs = dict(model=TINY, prompt="Lily saw a dog", n=2, seed=3, max_tokens=30)
    whole = client.completions.create(**kwargs)
    parts, usage = {0: "", 1: ""}, None
    finish = {}
    for chunk in client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs):
        for c in chunk.choices:
            parts[c.index] += c.text
            if c.finish_reason:
                finish[c.index] = c.finish_reason
        usage = chunk.usage or usage
    assert [parts[0], parts[1]] == [c.text for c in whole.choices]
    assert finish == {c.index: c.finish_reason for c in whole.choices}
    assert usage.completion_tokens == whole.usage.completion_tokens > 0
    # Without stream_options.include_usage, as OpenAI: no usage chunk, so every chunk has a choice.
    chunks = list(client.completions.create(stream=True, **kwargs))
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices[0].index == 0) == whole.choices[0].text


def test_stop_strings_cut_the_story(client):
    full = client.completions.create(model=TINY, prompt="Tom", seed=5, max_tokens=40).choices[0]
    assert full.finish_reason == "length"
    stop = full.text[10:13]
    cut = client.completions.create(model=TINY, prompt="Tom", seed=5, max_tokens=40, stop=[stop, "zzzz"]).choices[0]
    assert cut.text == full.text[: full.text.index(stop)] and cut.finish_reason == "stop"


def test_chat_uses_the_instruct_layout(sweep_dir, client):
    message = "Words: run, dog, happy\nFeatures: Dialogue, bad_ending\nStory: Once upon a time"
    # The system and user messages' lines are read together; content may come as text parts.
    answer = client.chat.completions.create(
        model=INSTRUCT,
        messages=[
            {"role": "system", "content": "Words: run, dog, happy"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Features: Dialogue, bad_ending"},
                    {"type": "text", "text": "Story: Once upon a time"},
                ],
            },
        ],
        seed=11,
        max_tokens=20,
    )
    model, tokenizer, _ = load_checkpoint(sweep_dir / "tiny-instruct")
    header = format_instructions(words=["run", "dog", "happy"], features=["dialogue", "bad_ending"])
    prompt = header + "Once upon a time"
    assert prompt.startswith("Features: Dialogue, BadEnding\nWords: run, dog, happy\nStory:\n")
    expected = generate_texts(model, tokenizer, [prompt], max_new_tokens=20, seed=11, include_prompt=False)
    assert answer.choices[0].message.content == expected[0]
    assert answer.usage.prompt_tokens == len(tokenizer.encode(prompt))
    chunks = list(
        client.chat.completions.create(
            model=INSTRUCT, messages=[{"role": "user", "content": message}], seed=11, max_tokens=20, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == expected[0]
    with pytest.raises(openai.BadRequestError, match="earlier turns") as err:
        client.chat.completions.create(
            model=INSTRUCT,
            messages=[
                {"role": "user", "content": message},
                {"role": "assistant", "content": "Once upon a time"},
                {"role": "user", "content": message},
            ],
        )
    assert err.value.body["param"] == "messages.1.role"
    with pytest.raises(openai.BadRequestError, match="unrecognised line 'You are a helpful assistant.'"):
        client.chat.completions.create(
            model=INSTRUCT,
            messages=[
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": message},
            ],
        )
    with pytest.raises(openai.BadRequestError, match="not an Instruct model"):
        client.chat.completions.create(model=TINY, messages=[{"role": "user", "content": message}])
    with pytest.raises(openai.BadRequestError, match="unknown feature 'Sadness'"):
        client.chat.completions.create(model=INSTRUCT, messages=[{"role": "user", "content": "Features: Sadness"}])
    with pytest.raises(openai.BadRequestError, match="unrecognised line 'write me a story'"):
        client.chat.completions.create(model=INSTRUCT, messages=[{"role": "user", "content": "write me a story"}])


def test_32_concurrent_requests_equal_32_sequential_ones(server):
    url, pool = server
    prompts = ["Once upon a time", "Tom", "One day, a little girl named Lily went to the park", ""]
    requests = [
        dict(
            model=TINY,
            prompt=prompts[i % 4],
            seed=100 + i,
            max_tokens=12 + i % 5,
            temperature=0.0 if i % 8 == 0 else 1.0,
            top_p=0.9 if i % 3 == 0 else 1.0,
        )
        for i in range(32)
    ]

    async def run(concurrent: bool) -> list[str]:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        if concurrent:
            answers = await asyncio.gather(*(client.completions.create(**r) for r in requests))
        else:
            answers = [await client.completions.create(**r) for r in requests]
        return [a.choices[0].text for a in answers]

    engine = asyncio.run(pool.get(TINY)).engine
    engine.batches.clear()
    sequential = asyncio.run(run(False))
    assert max(engine.batches) == 1
    engine.batches.clear()
    assert asyncio.run(run(True)) == sequential
    assert max(engine.batches) > 1  # rows decoded together: really batched
    assert len(set(sequential)) > 20


def test_errors_have_the_openai_shape(server, client):
    url, _ = server
    with pytest.raises(openai.NotFoundError, match="does not exist") as err:
        client.completions.create(model="nope/step_1", prompt="a")
    assert err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="context of 128 tokens") as err:
        client.completions.create(model=TINY, prompt="Once upon a time", max_tokens=128)
    assert err.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError, match="n: Input should be less than or equal to 32"):
        client.completions.create(model=TINY, prompt="a", n=33)
    with pytest.raises(openai.BadRequestError, match="5 prompts x n=32 is over 128 stories"):
        client.completions.create(model=TINY, prompt=["a"] * 5, n=32)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model=TINY, prompt="a", temperature=-1)
    with pytest.raises(openai.APIStatusError, match="over the limit of 4096 bytes") as err:
        client.completions.create(model=TINY, prompt="word " * 2000)
    assert err.value.status_code == 413
    status, text = http("POST", url + "/v1/completions", b'{"model": "tiny', {"content-type": "application/json"})
    assert status == 400 and json.loads(text)["error"]["code"] == "invalid_json"
    status, text = http("GET", url + "/v2/anything")
    assert status == 404 and "error" in json.loads(text)


def test_run_data_for_the_playground(server):
    url, _ = server
    status, page = http("GET", url + "/")
    assert status == 200 and "/v1/completions" in page
    data = json.loads(http("GET", url + "/playground/run/" + TINY)[1])
    assert data["loss"][0] == [1, 5.9] and data["val_loss"] == [[20, 4.5]]
    assert data["grades"]["grammar"]["mean"] == 4.0 and data["grades"]["grammar"]["n"] == 2
    assert data["probes"] == {"factual": {"wrong": 1, "correct": 1}}
    other = json.loads(http("GET", url + "/playground/run/tiny/step_00000010")[1])
    assert other["grades"] is None and other["probes"] is None and len(other["loss"]) == 20


def test_models_are_evicted_least_recently_used(sweep_dir):
    pool = ModelPool(discover_models([sweep_dir / "tiny", sweep_dir / "tiny-instruct"]), max_models=1)

    async def use(*ids: str) -> None:
        for model_id in ids:
            await pool.get(model_id)

    asyncio.run(use(TINY))
    first = pool.loaded[TINY].engine
    asyncio.run(use(TINY, INSTRUCT))
    assert list(pool.loaded) == [INSTRUCT] and pool.loads == 2
    first.join(10)
    assert not first._thread.is_alive()  # the evicted model's engine stopped
    asyncio.run(use(TINY))
    assert list(pool.loaded) == [TINY] and pool.loads == 3
    pool.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_command_binds_to_loopback_and_checks_the_api_key(sweep_dir):
    port = _free_port()
    env = {**os.environ, "SERVE_TEST_KEY": "sekret"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tinystories.cli",
            "serve",
            str(sweep_dir / "tiny"),
            "--port",
            str(port),
            "--api-key-env",
            "SERVE_TEST_KEY",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.3)
        good = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sekret", max_retries=0)
        assert [m.id for m in good.models.list().data] == ["tiny/step_00000010", TINY]
        bad = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.completions.create(model=TINY, prompt="a")
        assert http("GET", f"http://127.0.0.1:{port}/v1/models")[0] == 401
        with socket.socket() as s:  # 127.0.0.1 only, unless told otherwise
            assert s.connect_ex((socket.gethostbyname(socket.gethostname()), port)) != 0 or socket.gethostbyname(
                socket.gethostname()
            ).startswith("127.")
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_command_names_the_extra_and_bad_paths(sweep_dir, tmp_path):
    code = (
        "import sys; sys.modules['uvicorn'] = None\n"
        "from tinystories.cli import main; sys.exit(main(['serve', sys.argv[1]]))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(sweep_dir)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and 'pip install "tinystories[serve]"' in out.stderr
    assert "Traceback" not in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "tinystories.cli", "serve", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2 and f"{tmp_path}: no checkpoints" in out.stderr and "Traceback" not in out.stderr


def test_generate_rows_gives_each_row_its_own_settings(sweep_dir):
    from tinystories.model.generate import Row, generate_rows

    model, tokenizer, _ = load_checkpoint(sweep_dir / "tiny")
    ids = tokenizer.encode("Once upon a time")
    rows = [
        Row(ids, 8, 1.0, None, None, torch.Generator().manual_seed(4)),
        Row(ids, 3, 0.0),
        Row(tokenizer.encode("Tom"), 5, 0.7, 20, 0.9, torch.Generator().manual_seed(9)),
    ]
    together = generate_rows(model, rows, tokenizer.eot_token)
    assert [len(t) for t in together] == [8, 3, 5]
    for row, tokens in zip(rows, together):
        if row.generator is not None:
            row.generator.manual_seed(row.generator.initial_seed())
        assert generate_rows(model, [row], tokenizer.eot_token) == [tokens]
    seen = []
    stopped = Row(ids, 10, 0.0, on_token=lambda t: seen.append(t) or len(seen) < 4)
    assert generate_rows(model, [stopped], tokenizer.eot_token) == [seen] and len(seen) == 4
    assert seen[:3] == together[1]  # greedy: the same tokens as the greedy row above


def test_post_bodies_must_be_json_and_a_loopback_server_answers_loopback_names_only(sweep_dir):
    """What a web page on another site can make a browser send without a preflight (a form, text/plain) or
    through DNS rebinding (its own Host name) is refused; what the openai client, curl -H and lm-eval send works."""
    pool = ModelPool(discover_models([sweep_dir / "tiny"]), max_models=1)
    with serve_in_thread(create_app(pool, bind_host="127.0.0.1")) as url:
        port = url.rsplit(":", 1)[1]
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        assert client.completions.create(model=TINY, prompt="Tom", max_tokens=2, seed=1).choices[0].text
        body = json.dumps({"model": TINY, "prompt": "Tom", "max_tokens": 2}).encode()
        for media in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
            status, text = http("POST", url + "/v1/completions", body, {"Content-Type": media} if media else {})
            if media is None:  # urllib sends a form's type when none is given, as curl -d does
                assert status == 415
                continue
            error = json.loads(text)["error"]
            assert (
                status == 415 and error["code"] == "unsupported_media_type" and media.split(";")[0] in error["message"]
            )
        status, text = http("POST", url + "/v1/completions", body, {"Content-Type": "application/json; charset=utf-8"})
        assert status == 200 and json.loads(text)["choices"][0]["text"]
        for host in ("evil.example", f"evil.example:{port}", f"192.0.2.1:{port}", "127.0.0.1.evil.example"):
            status, text = http("GET", url + "/v1/models", headers={"Host": host})
            error = json.loads(text)["error"]
            assert status == 403 and error["code"] == "host_not_allowed" and repr(host) in error["message"]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}", "127.0.0.2"):
            assert http("GET", url + "/v1/models", headers={"Host": host})[0] == 200, host
    with serve_in_thread(create_app(pool, bind_host="0.0.0.0")) as url:  # bound for other names: any Host
        assert http("GET", url + "/v1/models", headers={"Host": "tinystories.example"})[0] == 200
    pool.close()


def test_serving_a_folder_finds_the_runs_of_the_sweeps_in_it(sweep_dir, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(sweep_dir, runs / "sweep")  # runs/sweep/tiny, runs/sweep/tiny-instruct
    shutil.copytree(sweep_dir / "tiny", runs / "demo")  # runs/demo
    found = discover_models([runs])
    assert sorted(found) == sorted(
        [
            "demo/step_00000010",
            "demo/step_00000020",
            "tiny/step_00000010",
            TINY,
            "tiny-instruct/step_00000010",
            INSTRUCT,
        ]
    )
    assert found[TINY].run_dir == (runs / "sweep" / "tiny").resolve()


def test_unloadable_checkpoints_and_damaged_run_files_get_openai_shaped_errors(sweep_dir, tmp_path):
    good = read_checkpoint(sweep_dir / "tiny" / "checkpoints" / "step_00000020.pt")
    good.pop("format")
    wrong_shape = {**good["model_config"], "hidden_size": good["model_config"]["hidden_size"] * 2}
    layers = good["model_config"]["attention_layers"]
    huge = {**good["model_config"], "hidden_size": 100_000_000, "num_layers": 100, "attention_layers": layers * 50}
    bad = {
        "no-config": {k: v for k, v in good.items() if k != "model_config"},
        "wrong-shapes": {**good, "model_config": wrong_shape},
        "huge": {**good, "model_config": huge},
    }
    for name, payload in bad.items():
        save_checkpoint(payload, checkpoint_path(tmp_path / name, 1))
    run = tmp_path / "damaged-metrics"
    shutil.copytree(sweep_dir / "tiny", run)
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[4] = '{"step": 5, "lo\n'  # a torn record in the middle (a full disk), later records after it
    lines[1] = json.dumps({"step": 2, "loss": float("nan")}) + "\n"  # a diverged step (NaN is not JSON)
    (run / "metrics.jsonl").write_text("".join(lines))
    pool = ModelPool(discover_models([tmp_path]), max_models=1)
    with serve_in_thread(create_app(pool)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        mismatch = "do not match its model_config"
        says = {"no-config": "has no model_config", "wrong-shapes": mismatch, "huge": mismatch}
        for name, message in says.items():
            with pytest.raises(openai.InternalServerError) as err:
                client.completions.create(model=f"{name}/step_00000001", prompt="Tom", max_tokens=2)
            assert err.value.body["type"] == "server_error" and message in err.value.body["message"], err.value.body
            assert str(tmp_path / name) in err.value.body["message"]
        status, text = http("GET", url + "/playground/run/damaged-metrics/step_00000020")
        data = json.loads(text)
        assert status == 200 and data["problems"] == [data["problems"][0]]
        assert f"{run / 'metrics.jsonl'}:5" in data["problems"][0]
        steps = [step for step, _ in data["loss"]]  # what was read is shown; the NaN step is not (JSON has no NaN)
        assert steps[:4] == [1, 3, 4, 6] and 2 not in steps and 5 not in steps  # the records after the damage too
        assert client.completions.create(model="damaged-metrics/step_00000020", prompt="Tom", max_tokens=2).choices
    pool.close()


def test_closing_the_pool_waits_for_its_engines_to_finish(sweep_dir):
    """No engine thread may still be inside torch when the interpreter exits (the README's screenshot command
    aborted with exit 134 after writing its PNG)."""
    pool = ModelPool(discover_models([sweep_dir / "tiny"]), max_models=1)
    engine = asyncio.run(pool.get(TINY)).engine
    finished = []
    engine.submit(Job([Row([1, 2, 3], 100) for _ in range(4)], lambda job: finished.append(job.tokens)))
    pool.close()
    assert len(finished) == 1 and [len(t) for t in finished[0]] == [100] * 4 and not engine._thread.is_alive()


def test_a_request_arriving_mid_batch_starts_at_the_next_step(server, client):
    url, pool = server
    engine = asyncio.run(pool.get(TINY)).engine
    jobs = []
    submit, step = engine.submit, engine.decoder.step

    def slow_step() -> None:  # the tiny model decodes 100 tokens faster than a loaded machine answers a request
        time.sleep(0.01)
        step()

    engine.submit = lambda job: (jobs.append(job), submit(job))  # type: ignore[method-assign]
    engine.decoder.step = slow_step  # type: ignore[method-assign]
    try:
        long = iter(
            client.completions.create(model=TINY, prompt="Once upon a time", max_tokens=100, seed=1, stream=True)
        )
        for _ in range(10):  # the long story is being decoded
            next(long)
        short = client.completions.create(model=TINY, prompt="Tom", max_tokens=5, seed=3)
        rest = "".join(chunk.choices[0].text for chunk in long if chunk.choices)
    finally:
        engine.submit, engine.decoder.step = submit, step  # type: ignore[method-assign]
    first, second = jobs
    assert second.first_token_step is not None and first.first_token_step is not None
    # it arrived while the first was decoding (its last token came len - 1 steps after its first)...
    assert first.first_token_step < second.submitted_step < first.first_token_step + len(first.tokens[0]) - 1
    assert second.first_token_step - second.submitted_step <= 1  # ...and started within one decode step
    assert len(first.tokens[0]) > 20 and rest  # the long story went on meanwhile
    assert short.usage.completion_tokens == 5


@pytest.mark.parametrize("stream", [False, True])
def test_clients_that_walk_away_free_their_rows(sweep_dir, stream):
    pool = ModelPool(discover_models([sweep_dir / "tiny"]), max_models=1, max_batch=8)
    with serve_in_thread(create_app(pool)) as url:
        engine = asyncio.run(pool.get(TINY)).engine
        body = json.dumps({"model": TINY, "prompt": "Once upon a time", "max_tokens": 110, "stream": stream}).encode()
        port = int(url.rsplit(":", 1)[1])
        sockets = []
        try:
            for _ in range(100):  # each asks for a long story, then hangs up without reading a byte of it
                s = socket.create_connection(("127.0.0.1", port), timeout=30)
                s.sendall(
                    b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                sockets.append(s)
            wait_until(lambda: len(engine.batches) >= 3, what="the requests to start decoding")
        finally:
            for s in sockets:
                s.close()
        wait_until(lambda: engine.decoder.idle, what="the engine to drop the walked-away requests")
        steps = engine.steps
        # 100 stories of 110 tokens, 8 at a time, would take 1,375 decode steps; the server dropped them instead
        assert steps < 300, steps
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        answer = client.completions.create(model=TINY, prompt="Tom", max_tokens=5, seed=1)
        assert answer.usage.completion_tokens == 5 and engine.steps - steps <= 5
    pool.close()
