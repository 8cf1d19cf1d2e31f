"""Take the README's screenshot of the annotation UI (docs/ui.png) in headless Chromium.

A method-1 run on the chest phantom: the initial images are labeled with their stored masks, round 0 trains,
and the browser opens the first image the model asked for (its proposal and uncertainty shown).

    python docs/ui_screenshot.py [--out docs/ui.png]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import threading
import time
from pathlib import Path

from medloop.loop import ExperimentConfig
from medloop.serve import Runner, create_app
from medloop.serve.app import _bind

EXPERIMENT = {
    "name": "chest-phantom",
    "data": {"source": "builtin:chest-xray", "size": 64, "options": {"n_normal": 30, "n_nodule": 30}},
    "classifier": {"model": "resnet18", "model_params": {"width": 8}, "epochs": 3, "batch_size": 8, "patience": 0},
    "segmenter": {"epochs": 20, "batch_size": 4, "patience": 0, "model_params": {"channels": [8, 16, 16, 16]}},
    "strategies": [{"name": "class_balanced", "label": "uncertainty"}],
    "initial_per_class": 4, "query_per_class": 4, "augment_copies": 2, "n_mc_samples": 8, "record_at": [0.1],
    "budget": 0.6, "max_rounds": 3, "round_patience": 0, "fsl_folds": 0, "random_subset_draws": 1,
}


def main() -> None:
    import uvicorn
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "ui.png")
    args = parser.parse_args()
    runner = Runner(ExperimentConfig.from_dict(EXPERIMENT), Path(tempfile.mkdtemp()) / "run").start()
    pool = runner.plan.images
    while runner.model_round is None or runner.phase != "waiting for labels":
        for item in runner.oracle.queue():  # the initial set, labeled as the dataset stores it
            s = pool[pool.sample_ids.index(item["id"])]
            runner.oracle.answer(item["id"], s.mask.numpy().astype("uint8"), s.label, "expert")
        time.sleep(0.2)
    token = "screenshot-token"
    sock = _bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(runner, token), log_level="warning", lifespan="off"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tempfile.mkdtemp()}", "--window-size=1280,800", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.set_window_size(1280, 800)
        driver.get(f"http://127.0.0.1:{sock.getsockname()[1]}/?token={token}")
        time.sleep(3)
        ActionChains(driver).send_keys("u").perform()  # the uncertainty map over the proposal
        driver.execute_script("document.getElementById('opacity').value = 55;"
                              "document.getElementById('opacity').dispatchEvent(new Event('input'));")
        time.sleep(0.5)
        shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    finally:
        driver.quit()
        server.should_exit = True
    shot.quantize(colors=96, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"{args.out}: {shot.size[0]}x{shot.size[1]}, {args.out.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
