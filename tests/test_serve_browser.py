"""The playground in a real headless Chromium: two models, one beginning, both stories streamed side by side."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

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


def test_names_from_run_files_are_text_in_the_page_never_markup(sweep_dir, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(sweep_dir, sweep)
    hostile = "<img src=x onerror=\"document.title='pwned'\">factual"
    probe = {"model": "tiny/step_00000020", "suite": hostile, "verdict": "correct"}
    (sweep / "eval" / "probes.jsonl").write_text(json.dumps(probe) + "\n")
    seen = {}

    def inspect(driver):
        from selenium.webdriver.common.by import By

        panel = driver.find_element(By.CSS_SELECTOR, "#columns .column .panel")
        seen.update(title=driver.title, text=panel.text, images=len(panel.find_elements(By.TAG_NAME, "img")))

    pool = ModelPool(discover_models([sweep / "tiny"]), max_models=1)
    with serve_in_thread(create_app(pool)) as url:
        write_stories(url, ["tiny/step_00000020"], "Tom", settings={"max_tokens": "3"}, inspect=inspect)
    assert seen["images"] == 0 and seen["title"] != "pwned" and hostile in seen["text"]


def test_the_readme_screenshot_command_writes_its_png_and_exits_0(sweep_dir, tmp_path):
    shot = tmp_path / "playground.png"
    script = Path(__file__).with_name("playground_browser.py")
    models = "tiny/step_00000010,tiny/step_00000020"
    done = subprocess.run(
        [sys.executable, str(script), str(sweep_dir / "tiny"), "--models", models, "--max-tokens", "20"]
        + ["--out", str(shot)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"wrote {shot}" in done.stdout and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
