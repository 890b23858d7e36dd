"""The playground in a real browser: headless Chromium driven by selenium (``test_serve_browser.py``, the README
screenshot).

:func:`write_stories` opens the page, picks models, types a beginning, sets the sampling fields, clicks
"Write stories", waits for every column's stream to end and returns the stories it reads from the page;
with ``screenshot`` it saves a PNG of the page. Needs Debian's ``chromium`` and ``chromium-driver`` and
``pip install selenium``; :func:`find_chromium` says when they are missing.

    python tests/playground_browser.py runs/8m runs/28M --out docs/playground.png
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# No network, no first-run dialogs, no GPU: a headless browser that behaves the same on every machine.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)


def find_chromium() -> tuple[str, str] | None:
    """(chromium, chromedriver) paths, or None when either (or selenium) is missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def write_stories(
    url: str,
    models: list[str],
    beginning: str,
    *,
    settings: dict[str, str] | None = None,
    screenshot: str | Path | None = None,
    inspect: Callable[[Any], None] | None = None,
    timeout_s: float = 120,
) -> dict[str, str]:
    """model -> the story the page streamed for it (the beginning excluded); ``inspect`` gets the driver once
    every column is done."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    found = find_chromium()
    if found is None:
        raise RuntimeError("needs chromium, chromedriver (apt-get install chromium chromium-driver) and selenium")
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    with tempfile.TemporaryDirectory(prefix="tinystories-chromium-") as profile:
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(executable_path=found[1]))
        try:
            driver.get(url)
            wait = WebDriverWait(driver, timeout_s)
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#models input"))
            for box in driver.find_elements(By.CSS_SELECTOR, "#models input"):
                if box.is_selected() != (box.get_attribute("value") in models):
                    box.click()
            for field, value in {"prompt": beginning, **(settings or {})}.items():
                element = driver.find_element(By.ID, field)
                element.clear()
                element.send_keys(value)
            driver.find_element(By.ID, "go").click()
            columns = "#columns .column"
            wait.until(
                lambda d: (
                    len(d.find_elements(By.CSS_SELECTOR, columns)) == len(models)
                    and all(
                        c.get_attribute("data-state") != "streaming" for c in d.find_elements(By.CSS_SELECTOR, columns)
                    )
                )
            )
            wait.until(lambda d: all("loading" not in p.text for p in d.find_elements(By.CSS_SELECTOR, ".panel")))
            stories = {}
            for column in driver.find_elements(By.CSS_SELECTOR, columns):
                if column.get_attribute("data-state") != "done":
                    raise RuntimeError(
                        f"{column.get_attribute('data-model')}: {column.find_element(By.CSS_SELECTOR, '.status').text}"
                    )
                story = column.find_element(By.CSS_SELECTOR, ".story span:not(.beginning)")
                stories[column.get_attribute("data-model")] = story.get_attribute("textContent")
            if inspect is not None:
                inspect(driver)
            if screenshot is not None:
                # The whole page, not just the first screen: grow the window to the content's height.
                height = "return document.documentElement.getBoundingClientRect().height"
                for _ in range(2):
                    driver.set_window_size(1400, int(driver.execute_script(height)) + 200)
                driver.save_screenshot(str(screenshot))
            return stories
        finally:
            driver.quit()


def main(argv: list[str] | None = None) -> int:
    """Serve checkpoints on loopback, write stories with two of them in the browser, save the screenshot."""
    from tinystories.serve.app import create_app
    from tinystories.serve.models import ModelPool, discover_models
    from tinystories.serve.server import serve_in_thread

    parser = argparse.ArgumentParser(prog="python tests/playground_browser.py", description=main.__doc__)
    parser.add_argument("paths", nargs="+", help="checkpoints, run or sweep directories (as tinystories serve)")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument(
        "--models", help="comma-separated model ids (default: the newest checkpoint of the first two runs)"
    )
    parser.add_argument("--beginning", default="Once upon a time, there was a little dog named Max.")
    parser.add_argument("--seed", default="1")
    parser.add_argument("--max-tokens", default="120")
    args = parser.parse_args(argv)
    entries = discover_models(args.paths)
    newest = {e.run_dir: e.id for e in entries.values()}
    models = args.models.split(",") if args.models else list(newest.values())[:2]
    with serve_in_thread(create_app(ModelPool(entries, max_models=len(models)))) as url:
        settings = {"seed": args.seed, "max_tokens": args.max_tokens}
        stories = write_stories(url, models, args.beginning, settings=settings, screenshot=args.out)
    for model, story in stories.items():
        print(f"{model}: {args.beginning}{story}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
