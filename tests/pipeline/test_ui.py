"""``inflora ui`` in a real browser: Debian's Chromium, headless, driven by Selenium.

A tiny run is logged to a sqlite store; ``inflora ui`` serves it; the browser opens
the experiment's address that the command prints, clicks the run, then the run's
"Model metrics" tab, and checks what a researcher looks for: the run's name, the
``acc/test/task_mean`` chart and the accuracy-matrix heat map (an MLflow image
logged by the tracker, among the ``acc/test`` charts). MLflow 3.17's UI opens an
experiment in its GenAI view unless told otherwise (a switch kept in the browser,
whatever the experiment's ``mlflow.experimentKind`` tag says), so ``inflora ui``
prints one address per experiment in the "Model training" view. The page is saved as
``benchmarks/results/ui/run_page.png`` (the README shows it). Without chromium and
chromium-driver (``apt-get install chromium chromium-driver``) the test skips,
unless ``INFLORA_CI`` is set: then it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import tiny_config_dict
from process_helpers import stop_process_group

from pipeline.config import config_from_dict
from pipeline.runner import execute, make_specs
from pipeline.tracking import HEATMAP_IMAGE_KEY

pytestmark = pytest.mark.ui

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "benchmarks" / "results" / "ui" / "run_page.png"
WAIT_S = 90  # the UI's first load on 2 busy cores
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _need(what: str, found) -> None:
    if not found:
        if os.environ.get("INFLORA_CI"):
            pytest.fail(f"{what} is missing, and INFLORA_CI is set: CI must install it (apt-get install -y chromium chromium-driver)")
        pytest.skip(f"{what} is missing (apt-get install -y chromium chromium-driver; INFLORA_CI=1 makes this a failure)")


@pytest.fixture
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _need("selenium (the test extra)", False)
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    _need("chromium", chromium)
    _need("chromedriver (chromium-driver)", driver_path)
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1250", "--proxy-server=direct://"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def ui(tmp_path, tiny_checkpoint):
    """A 3-task run in a sqlite store, and ``inflora ui`` serving it; yields (printed URL, run)."""
    from mlflow import MlflowClient

    cfg = config_from_dict(tiny_config_dict(tmp_path, tiny_checkpoint, name="demo",
                                            tracking={"experiment": "inflora-demo", "uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}))
    (outcome,) = execute(make_specs(cfg), progress=False)
    run = MlflowClient(tracking_uri=cfg.tracking.uri).get_run(outcome.run_id)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path / "ui.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "ui", "--tracking-uri", cfg.tracking.uri, "--port", str(port)],
                                start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + WAIT_S
        while True:
            try:
                with _DIRECT.open(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None, log.read_text()[-2000:]
                assert time.time() < deadline, f"inflora ui did not come up:\n{log.read_text()[-2000:]}"
                time.sleep(0.5)
        printed = re.search(r"^  inflora-demo: (\S+)$", log.read_text(), re.M)
        assert printed, log.read_text()[:2000]
        yield printed.group(1), run
    finally:
        stop_process_group(proc)


def test_run_page_shows_the_run_its_chart_and_heat_map(ui, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, run = ui
    wait = WebDriverWait(browser, WAIT_S)
    assert url.startswith("http://127.0.0.1:") and url.endswith(f"/#/experiments/{run.info.experiment_id}/runs?workflowType=machine_learning")
    browser.get(url)  # the experiment's address that inflora ui printed: its runs table (not the GenAI traces view)
    wait.until(ec.presence_of_element_located((By.LINK_TEXT, run.info.run_name)))
    # The link shows the runs, but only the side bar's switch is remembered (in the browser) for
    # the pages that follow: flip it as a user would, GenAI and back to Model training.
    # (JavaScript clicks: a GenAI tour pop-up may lie over the switch.)
    switch = "//*[@role='button' or self::button][normalize-space()='{}']"
    for side in ("GenAI", "Model training"):
        browser.execute_script("arguments[0].click()", wait.until(ec.presence_of_element_located((By.XPATH, switch.format(side)))))
    wait.until(ec.url_contains("/runs"))
    wait.until(ec.element_to_be_clickable((By.LINK_TEXT, run.info.run_name))).click()
    wait.until(ec.url_contains(f"/runs/{run.info.run_id}"))
    # the run page -> its "Model metrics" tab
    wait.until(ec.element_to_be_clickable((By.XPATH, "//*[@role='tab' or self::a or self::button][normalize-space()='Model metrics']"))).click()
    # A run logs dozens of metrics and the page draws only the charts in view: filter them
    # with the page's own chart search, as a user looking for one metric would.
    search = wait.until(ec.element_to_be_clickable((By.XPATH, "//input[contains(@placeholder, 'earch')]")))

    def show(text: str) -> None:
        search.send_keys(Keys.CONTROL, "a")
        search.send_keys(Keys.BACKSPACE)
        search.send_keys(text)

    try:
        show("acc/test/task_mean")
        wait.until(ec.presence_of_element_located((By.XPATH, "//*[contains(text(), '(acc/test/task_mean)')]")))
        show("acc/test/")  # the chart and the heat map image side by side
    except Exception:
        browser.save_screenshot(str(Path(tempfile.gettempdir()) / "inflora_ui_failure.png"))  # to see what the page showed
        raise
    heatmap = HEATMAP_IMAGE_KEY.replace("/", "~")  # how MLflow names an image key's files
    image = wait.until(lambda d: [i for i in d.find_elements(By.TAG_NAME, "img") if heatmap in (i.get_attribute("src") or "") and i.get_attribute("naturalWidth") not in (None, "0")])
    assert image
    body = browser.find_element(By.TAG_NAME, "body").text
    assert run.info.run_name in body
    assert "Evaluation runs" not in body  # the Model training view's side bar, not the GenAI one
    assert "task_mean" in body and "acc/test" in body
    for close in browser.find_elements(By.XPATH, "//*[contains(., 'MLflow Assistant')]/ancestor::*[.//button][1]//button[@aria-label='Close']"):
        close.click()  # the assistant's side panel, only for a wider screenshot
        break
    browser.execute_script("arguments[0].scrollIntoView({block: 'nearest', inline: 'nearest'});", image[0])  # inside its card
    time.sleep(1)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 20_000
