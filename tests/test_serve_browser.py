"""The playground in a real headless Chromium: two models, one beginning, both stories streamed side by side."""

from __future__ import annotations

import openai
import pytest
from _serve_fixtures import make_sweep
from playground_browser import find_chromium, write_stories

from tinystories.serve.app import create_app
from tinystories.serve.models import ModelPool, discover_models
from tinystories.serve.server import serve_in_thread

pytestmark = pytest.mark.skipif(
    find_chromium() is None, reason="needs chromium + chromium-driver (apt) and selenium (pip)"
)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    return make_sweep(tmp_path_factory.mktemp("serve"))


def test_the_page_streams_two_models_side_by_side(sweep_dir, tmp_path):
    models = ["tiny/step_00000020", "tiny-instruct/step_00000020"]
    beginning = "Once upon a time, Tom"
    pool = ModelPool(discover_models([sweep_dir]), max_models=2)
    with serve_in_thread(create_app(pool)) as url:
        shot = tmp_path / "playground.png"
        stories = write_stories(
            url, models, beginning, settings={"seed": "5", "max_tokens": "25", "temperature": "0.9"}, screenshot=shot
        )
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        for model in models:  # what the page shows is what the API gives for the same settings
            expected = client.completions.create(
                model=model, prompt=beginning, seed=5, max_tokens=25, temperature=0.9, top_p=1.0
            )
            assert stories[model] == expected.choices[0].text and stories[model]
    assert stories[models[0]] != stories[models[1]]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
