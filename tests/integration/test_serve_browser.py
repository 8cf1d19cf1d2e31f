"""The annotation UI in a real browser (headless Chromium through selenium): open it with the token, see the
uncertainty on its fixed scale and why a control is off, set the class, paint a stroke (and undo another), submit
(the browser's own PNG encoding), and find the mask on disk; two annotators (two browser windows, two client ids)
read the same image, and both see their agreement; the review list of flagged pseudo-labels, one opened with its
pseudo-label as the proposal and submitted as a correction."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from medloop.loop import ExperimentConfig, Proposal, ReviewItem
from medloop.serve import Runner, create_app
from tests.serve_support import CHEST, TOKEN, LiveServer, wait_for

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists() or not CHROMEDRIVER.exists(),
                       reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver): "
                              "apt-get install chromium chromium-driver (.ci/run installs them)"),
]


def chromium(width: int = 1280, height: int = 800):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium look for a browser or driver online
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={tempfile.mkdtemp(prefix='medloop-chromium-')}",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def centre_pixel(driver) -> list[int]:
    return driver.execute_script(
        "const c = document.getElementById('canvas');"
        "return Array.from(c.getContext('2d').getImageData(c.width >> 1, c.height >> 1, 1, 1).data).slice(0, 3);")


@pytest.fixture
def served(tmp_path):
    runner = Runner(ExperimentConfig.from_dict(CHEST), tmp_path / "run").start()
    server = LiveServer(create_app(runner, TOKEN))
    yield runner, server
    server.stop()


def test_paint_a_stroke_submit_and_find_the_mask_on_disk(served):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    runner, server = served
    initial = runner.plan.method.initial_ids()
    wait_for(lambda: runner.oracle.queue(), what="the initial queue")
    flat = np.full(runner.datastore.shape(initial[0]), 0.5)  # the same uncertainty everywhere: no pixel stands out
    runner.datastore.record_proposals({initial[0]: Proposal(None, np.array([0.5, 0.5]), flat)},
                                      {initial[0]: {"model_round": 0}})
    driver = chromium()
    try:
        driver.get(f"{server.url}/?token={TOKEN}")
        wait_for(lambda: driver.find_element(By.ID, "item-title").text in initial, timeout=30, what="the first image")
        assert "token" not in driver.current_url  # traded for the cookie
        sid = driver.find_element(By.ID, "item-title").text
        assert sid == initial[0]
        assert driver.find_element(By.ID, "queue").text.count("cxr-") == len(initial)
        assert "image class" in driver.find_element(By.ID, "message").text  # the method's own hint
        assert "class" in driver.find_element(By.ID, "submit-why").text  # a disabled control says why
        assert not driver.find_element(By.ID, "submit").is_enabled()
        assert "nothing to undo" in driver.find_element(By.ID, "undo").get_attribute("title")
        canvas = driver.find_element(By.ID, "canvas")
        actions = ActionChains(driver)
        # the uncertainty overlay on its fixed 0-1 scale: a flat 0.5 map shows 0.5's colour, not the top of the scale
        assert driver.find_element(By.ID, "legend").is_displayed()
        actions.send_keys("m").perform()  # the mask off: the overlay alone over the image
        before = centre_pixel(driver)
        actions.send_keys("u").perform()
        after = centre_pixel(driver)
        alpha = 0.45 * round(0.5 ** 1.5 * 0.95 * 255) / 255  # opacity x the overlay's alpha at 0.5
        expected = [b * (1 - alpha) + c * alpha for b, c in zip(before, (242.25, 63.75, 100.0))]
        assert np.allclose(after, expected, atol=3), (before, after, expected)
        actions.send_keys("u").send_keys("m").perform()
        actions.send_keys("1").send_keys("]]]").perform()  # label 1 (lung), brush radius 3 -> 6
        # a stroke near the top, undone with Z
        actions.move_to_element_with_offset(canvas, -60, -150).click_and_hold().move_by_offset(120, 0).release().perform()
        actions.send_keys("z").perform()
        # the stroke that stays: across the middle of the image
        actions.move_to_element_with_offset(canvas, -100, 0).click_and_hold().move_by_offset(200, 0).release().perform()
        actions.send_keys(Keys.ENTER).perform()  # no class yet: refused in the page, nothing sent
        wait_for(lambda: "class" in driver.find_element(By.ID, "message").text, timeout=10, what="the class reminder")
        assert runner.datastore.answer(sid) is None
        actions.key_down(Keys.SHIFT).send_keys("2").key_up(Keys.SHIFT).perform()  # class 2 = nodule
        actions.send_keys(Keys.ENTER).perform()
        wait_for(lambda: runner.datastore.answer(sid), timeout=20, what="the submitted label")
        wait_for(lambda: driver.find_element(By.ID, "item-title").text not in ("No image", sid), timeout=20,
                 what="the next image")
        # no map for this one: the toggle is off and says why
        wait_for(lambda: "no model has seen this image" in driver.find_element(By.ID, "show-unc-why").text,
                 timeout=10, what="the reason there is no uncertainty map")
        assert not driver.find_element(By.ID, "show-unc").is_enabled()
        assert not driver.find_element(By.ID, "legend").is_displayed()
        assert "1 / " in driver.find_element(By.ID, "progress-text").text or runner.datastore.status()["completed"] >= 1
        logs = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
    assert not logs, logs
    answer = runner.datastore.answer(sid)
    assert answer["class"] == 1 and answer["info"]["client_id"].startswith("annotator-")
    mask = runner.datastore.label(sid, "final")
    height, width = mask.shape
    assert set(np.unique(mask)) == {0, 1}
    row = mask[height // 2 - 1: height // 2 + 2]
    assert row[:, width // 3: 2 * width // 3].all()  # the stroke crosses the middle
    assert not mask[: height // 4].any()  # the undone stroke near the top is gone
    assert (runner.datastore.folder / "labels" / "final" / f"{sid}.png").is_file()


def paint_and_submit(driver, dy: int, cls: int) -> None:
    """Paint label 1 with a radius-6 brush along a row ``dy`` pixels below the canvas centre, choose class
    ``cls`` (Shift+digit, 1-based) and submit."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    canvas = driver.find_element(By.ID, "canvas")
    actions = ActionChains(driver)
    actions.send_keys("1").send_keys("]]]").perform()
    actions.move_to_element_with_offset(canvas, -100, dy).click_and_hold().move_by_offset(200, 0).release().perform()
    actions.key_down(Keys.SHIFT).send_keys(str(cls)).key_up(Keys.SHIFT).perform()
    actions.send_keys(Keys.ENTER).perform()


def test_two_annotators_read_the_same_image_and_see_their_agreement(tmp_path):
    from selenium.webdriver.common.by import By

    from medloop.report.agreement import structure_dice

    runner = Runner(ExperimentConfig.from_dict(CHEST), tmp_path / "run", reads_per_image=2).start()
    server = LiveServer(create_app(runner, TOKEN))
    initial = runner.plan.method.initial_ids()
    driver = chromium()
    title = lambda: driver.find_element(By.ID, "item-title").text  # noqa: E731
    try:
        wait_for(lambda: runner.oracle.queue(), what="the initial queue")
        driver.get(f"{server.url}/?token={TOKEN}")
        first = driver.current_window_handle
        wait_for(lambda: title() == initial[0], timeout=30, what="the first image in the first window")
        driver.switch_to.new_window("window")  # a new session: its own client id, the same cookie
        driver.set_window_size(1280, 800)
        driver.get(f"{server.url}/")
        wait_for(lambda: title() == initial[0], timeout=30, what="the same image for the second annotator")
        paint_and_submit(driver, 0, 2)  # nodule
        wait_for(lambda: runner.datastore.reads(initial[0]), timeout=20, what="the first read")
        assert runner.datastore.answer(initial[0]) is None  # one read is not an answer
        wait_for(lambda: title() == initial[1], timeout=20, what="the next image for the second annotator")
        driver.switch_to.window(first)
        assert title() == initial[0]
        paint_and_submit(driver, 12, 1)  # normal, a stroke 12 screen pixels lower
        wait_for(lambda: runner.datastore.answer(initial[0]), timeout=20, what="the consensus of the two reads")
        reads = runner.datastore.reads(initial[0])
        masks = [runner.datastore.read_label(r) for r in reads]
        dice = structure_dice(masks[0], masks[1], {"lung": 1})["lung"]
        assert dice is not None and 0 < dice < 1  # the strokes overlap in part
        # the agreement panel: one row per annotator, their Dice, and the image they disagree on most
        assert driver.find_element(By.ID, "agreement-box").is_displayed()
        wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#agreement tbody tr")) == 2, timeout=20,
                 what="the agreement of the two annotators")
        rows = {r.get_attribute("data-annotator"): r.text
                for r in driver.find_elements(By.CSS_SELECTOR, "#agreement tbody tr")}
        most = [li.get_attribute("data-image") for li in driver.find_elements(By.CSS_SELECTOR, "#disagreement li")]
        logs = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
        server.stop()
    assert not logs, logs
    readers = [r["client_id"] for r in reads]
    assert len(set(readers)) == 2 and all(r.startswith("annotator-") for r in readers)
    assert sorted(rows) == sorted(readers) and all(f"{dice:.3f}" in text for text in rows.values())
    assert most == [initial[0]]
    final = runner.datastore.answer(initial[0])
    assert final["class"] == 0 and [r["class"] for r in reads] == [1, 0]  # a class tie: the lower class
    consensus = runner.datastore.label(initial[0], "final")
    assert np.array_equal(consensus, ((masks[0] == 1) & (masks[1] == 1)).astype(np.uint8))
    for r in reads:
        assert (runner.datastore.folder / r["file"]).is_file() and r["file"].startswith("labels/reads/annotator-")


def test_the_review_list_opens_a_flagged_pseudo_label_as_the_proposal(served):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    runner, server = served
    initial = runner.plan.method.initial_ids()
    wait_for(lambda: runner.oracle.queue(), what="the initial queue")
    pool = [s for s in runner.plan.images.sample_ids if s not in initial]
    shape = runner.datastore.shape(pool[0])
    # what a method's quality control hands the runner (collaborative segmentation's: test_serve_review), unsorted
    runner.offer_review([ReviewItem(pool[0], 0.55, 0.7, 0, Proposal(np.zeros(shape, np.uint8))),
                         ReviewItem(pool[1], 0.31, 0.7, 0, Proposal(np.ones(shape, np.uint8)))], 0)
    driver = chromium()
    try:
        driver.get(f"{server.url}/?token={TOKEN}")
        wait_for(lambda: driver.find_element(By.ID, "item-title").text == initial[0], timeout=30,
                 what="the first image of the queue")
        title = driver.find_element(By.ID, "review-title").text
        assert title == "Review: flagged pseudo-labels (predicted Dice < 0.7)"
        rows = driver.execute_script(  # read in one step: the list re-renders when the status refreshes
            "return [...document.querySelectorAll('#review li')].map(li => [li.dataset.image, li.textContent])")
        assert [image for image, _ in rows] == [pool[1], pool[0]]  # lowest predicted Dice first
        assert "0.31" in rows[0][1]
        driver.execute_script("document.querySelector('#review li').click()")
        wait_for(lambda: driver.find_element(By.ID, "item-title").text == pool[1], timeout=10, what="the review item")
        assert "predicted Dice 0.31 < 0.7" in driver.find_element(By.ID, "item-meta").text
        assert "Flagged pseudo-label" in driver.find_element(By.ID, "message").text
        with_mask = centre_pixel(driver)  # the pseudo-label (all 1) is loaded as the proposal: the mask shows
        ActionChains(driver).send_keys("m").perform()
        assert centre_pixel(driver) != with_mask
        ActionChains(driver).send_keys("m").key_down(Keys.SHIFT).send_keys("1").key_up(Keys.SHIFT).perform()
        ActionChains(driver).send_keys(Keys.ENTER).perform()  # accept it as it is (class normal)
        wait_for(lambda: runner.datastore.answer(pool[1]), timeout=20, what="the correction")
        ticked = f"return document.querySelector(\"#review li[data-image='{pool[1]}']\")?.textContent || ''"
        wait_for(lambda: "✓" in driver.execute_script(ticked),  # read in one step: the list re-renders as it updates
                 timeout=10, what="the corrected item ticked")
        wait_for(lambda: driver.find_element(By.ID, "item-title").text == initial[0], timeout=10,
                 what="back to the queue")
        logs = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
    assert not logs, logs
    answer = runner.datastore.answer(pool[1])
    assert answer["info"]["review"] == {"predicted_dice": 0.31, "threshold": 0.7, "round": 0}
    assert answer["class"] == 0 and runner.datastore.label(pool[1], "final").all()
    assert runner.oracle.reviewed() == [pool[1]] and runner.datastore.answer(initial[0]) is None
