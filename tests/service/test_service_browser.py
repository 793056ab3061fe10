"""The web UI in a real browser: Playwright drives Debian's chromium (``/usr/bin/chromium``,
installed by ``.ci/run``; Playwright's own browser download is not used) against a real server.

One journey: sign in with a token, subscribe a webhook receiver on 127.0.0.1, upload an ONNX
policy, start a host int8 compile calibrated on an uploaded .npz with an accuracy criterion,
watch it finish, open the report, download the bundle and check every file's sha256, see the
webhook delivered in the feed, and compare two sessions. A screenshot of each page goes to the
test's folder (``ROBOPT_SCREENSHOTS=DIR`` keeps them there instead).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tests.service.serving import wait_for
from tests.service.test_service_api import tiny_onnx

CHROMIUM = os.environ.get("ROBOPT_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
def browser():
    if not Path(CHROMIUM).is_file() or shutil.which(CHROMIUM) is None:
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def test_the_web_ui_end_to_end(server, browser, receiver, tmp_path) -> None:
    shots = Path(os.environ.get("ROBOPT_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    def shot(name: str) -> None:
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

    page.goto(server.url + "/")
    page.fill("#token", "rbt_000000000000_" + "y" * 43)
    page.click("button:has-text('Sign in')")
    page.wait_for_selector("#signin-error:has-text('refused')")
    shot("01-signin-refused")
    page.fill("#token", server.tokens["operator"])
    page.click("button:has-text('Sign in')")
    page.wait_for_selector("h1:has-text('Jobs')")
    shot("02-jobs")

    page.click("nav >> text=Notifications")
    page.fill("#url", receiver.url)
    page.click("button:has-text('Subscribe')")
    page.wait_for_selector("#hook-msg:has-text('secret')")

    page.click("nav >> text=Models")
    policy = tiny_onnx(tmp_path / "arm-policy.onnx")
    page.set_input_files("#file", str(policy))
    page.fill("#tags", "arm, ui-test")
    page.click("button:has-text('Upload')")
    page.wait_for_selector("h1:has-text('New optimization')")
    page.select_option("#board", "host")
    page.wait_for_selector("#board-facts:has-text('backends')")
    page.select_option("#precision", "int8")
    page.select_option("#calibration", "upload")
    cal = tmp_path / "arm-obs.npz"
    np.savez(cal, obs=np.random.default_rng(1).normal(size=(20, 8)).astype(np.float32))
    page.set_input_files("#calfile", str(cal))
    page.fill("#maxdrop", "0.5")
    shot("03-new-optimization")
    page.click("button:has-text('Start')")
    page.wait_for_selector("h1:has-text('Job')")
    page.wait_for_selector(".state-finished", timeout=240_000)
    page.wait_for_selector("svg[aria-label='stage timeline']")
    shot("04-job-finished")
    job_id = page.url.rsplit("/", 1)[-1]

    page.click("text=Open report")
    page.wait_for_selector("iframe.report")
    assert "robopt" in page.frame_locator("iframe.report").locator("body").inner_text().lower()
    shot("05-report")

    with page.expect_download() as dl:
        page.click("text=Download bundle")
    path = tmp_path / "bundle.tar.gz"
    dl.value.save_as(path)
    with tarfile.open(fileobj=io.BytesIO(path.read_bytes())) as tar:
        tar.extractall(tmp_path / "dl", filter="data")
    from robopt_compile.bench.manifest import load_manifest

    assert load_manifest(tmp_path / "dl" / "bundle", verify=True)["precision"] == "int8"
    report = json.loads((tmp_path / "dl" / "bundle" / "report.json").read_text())
    assert report["quantization"]["data"]["random"] is False  # the uploaded samples calibrated it

    wait_for(lambda: "job_finished" in receiver.kinds(), 20, "the webhook")
    page.click("nav >> text=Notifications")
    page.wait_for_selector("td:has-text('job_finished')")
    assert page.locator("td:has-text('delivered')").count() > 0
    shot("06-notifications")

    page.click("nav >> text=Models")
    page.wait_for_selector("td:has-text('arm-policy')")
    shot("07-models")
    page.goto(f"{server.url}/#/compare/{job_id}/{job_id}")
    page.wait_for_selector("#sides .card")
    shot("08-compare")
    page.click("nav >> text=Boards")
    page.wait_for_selector("td:has-text('jetson')")
    shot("09-boards")
    page.click("nav >> text=Devices")
    page.wait_for_selector("h1:has-text('Devices')")
    page.fill("#dname", "arm")
    page.fill("#durl", "ftp://robot")
    page.fill("#dtoken", "t")
    page.click("button:has-text('Register')")
    page.wait_for_selector("#dev-msg:has-text('http')")  # the API's one-line refusal, shown
    shot("10-devices")
    assert errors == [], errors
