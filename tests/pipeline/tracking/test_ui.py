"""``inflora ui`` in a real browser: Debian's Chromium, headless, driven by Selenium.

A tiny run is logged to a sqlite store; ``inflora ui`` serves it; a fresh browser opens
the newest run's address that the command prints and checks what a researcher looks
for. MLflow 3.17's UI opens in its GenAI layout unless the address says
``workflowType=machine_learning`` (or the browser's GenAI / Model training switch was
flipped); the ``mlflow.experimentKind`` tag is not read for this, so the printed
addresses say it. On the run's "Model metrics" tab the first section is ``_final``: the
final matrix and curves, logged once at the last step. On its Overview tab (kept in the
Model training layout) the description shows the final matrix above the metrics and
parameters, in view without scrolling. The page is saved as
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
from pipeline.running.runner import execute, make_specs
from pipeline.tracking.metric_keys import FINAL_IMAGES as FINAL_IMAGE_KEYS
from pipeline.tracking.tracker import RESULT_PLOTS

pytestmark = pytest.mark.ui

ROOT = Path(__file__).resolve().parents[3]
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
        printed = re.search(r"^  inflora-demo: (\S+)\n    newest run: (\S+)$", log.read_text(), re.M)
        assert printed, log.read_text()[:2000]
        yield printed.group(1), printed.group(2), run
    finally:
        stop_process_group(proc)


def _in_view(browser, element) -> bool:
    """Whether ``element`` is drawn inside the window as the page stands (no scrolling)."""
    return browser.execute_script("const r = arguments[0].getBoundingClientRect(); return r.height > 0 && r.top >= 0 && r.top < window.innerHeight;", element)


def _loaded_images(browser, fragment: str) -> list:
    from selenium.webdriver.common.by import By

    return [i for i in browser.find_elements(By.TAG_NAME, "img") if fragment in (i.get_attribute("src") or "") and i.get_attribute("naturalWidth") not in (None, "0")]


def test_run_page_opens_on_the_final_matrix(ui, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    experiment_url, run_url, run = ui
    wait = WebDriverWait(browser, WAIT_S)
    base = experiment_url.split("#")[0]
    assert experiment_url == f"{base}#/experiments/{run.info.experiment_id}/runs?workflowType=machine_learning"
    assert run_url == f"{base}#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/model-metrics?workflowType=machine_learning"
    try:
        browser.get(run_url)  # a fresh browser: its GenAI / Model training switch was never touched
        # "Model metrics": the first section holds the final matrix, logged at the last step only
        final = FINAL_IMAGE_KEYS["matrix"].replace("/", "~")  # how MLflow names an image key's files
        wait.until(lambda d: _loaded_images(d, final))
        body = browser.find_element(By.TAG_NAME, "body").text
        assert "Evaluation runs" not in body and "_final" in body  # the Model training side bar, not the GenAI one
        assert body.index("_final") < body.index("acc/test")
        # the Overview tab (the tab switch keeps workflowType): the description shows the final matrix
        wait.until(ec.element_to_be_clickable((By.XPATH, "//*[@role='tab' or self::button][normalize-space()='Overview']"))).click()
        matrix = wait.until(lambda d: _loaded_images(d, RESULT_PLOTS[0].replace("/", "%2F")))[0]
        wait.until(ec.presence_of_element_located((By.XPATH, "//*[starts-with(normalize-space(), 'Parameters (')]")))
    except Exception:
        browser.save_screenshot(str(Path(tempfile.gettempdir()) / "inflora_ui_failure.png"))  # to see what the page showed
        raise
    body = browser.find_element(By.TAG_NAME, "body").text
    assert run.info.run_name in body and "Evaluation runs" not in body
    params = browser.find_element(By.XPATH, "//*[starts-with(normalize-space(), 'Parameters (')]")
    assert _in_view(browser, matrix), "the final matrix is not in view when the run opens"
    assert matrix.location["y"] < params.location["y"], "the final matrix is below the run's parameters"
    for more in browser.find_elements(By.XPATH, "//*[self::button or @role='button'][normalize-space()='Show more']")[:1]:
        more.click()  # the description opens folded: unfold it, as a user would, to show matrix and curves
        wait.until(lambda d: _loaded_images(d, RESULT_PLOTS[1].replace("/", "%2F")))
    for close in browser.find_elements(By.XPATH, "//*[contains(., 'MLflow Assistant')]/ancestor::*[.//button][1]//button[@aria-label='Close']"):
        close.click()  # the assistant's side panel, only for a wider screenshot
        break
    time.sleep(1)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 20_000
