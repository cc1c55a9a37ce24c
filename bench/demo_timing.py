"""How long the demo page takes to answer, measured in Debian's headless Chromium: a Draw of 16
digits and a Repair of one digit (a brush stroke across it, default effort), from the click to
the picture in the page.

    python bench/demo_timing.py                       # the champion, models:/rnngen@champion
    python bench/demo_timing.py --model models/model.pt --split data/split
    python bench/demo_timing.py --untrained           # params.yaml's model at its size, untrained

--untrained times the default model's architecture without a trained one (the sampler's cost
does not depend on the weights). Prints one JSON line: the medians, every try, the model and
/proc/loadavg before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[1]


def untrained_checkpoint(folder: Path) -> Path:
    """params.yaml's model, built at its configured size with fresh weights."""
    from rnngen import checkpoint
    from rnngen.config import load_params
    from rnngen.models import build_model, model_choice

    choice = model_choice(load_params(ROOT / "params.yaml"))
    path = folder / "model.pt"
    checkpoint.save_model(path, build_model(choice.name, choice.config))
    return path


def start(model: str, split: Path, port: int) -> subprocess.Popen:
    cmd = [str(Path(sys.executable).parent / "rnngen"), "demo", "--model", model, "--split", str(split),
           "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/", timeout=2).ok:
                return proc
        except requests.ConnectionError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the demo did not start within 300 s")


def click_until(driver: webdriver.Chrome, button: str, message: str, says: str) -> float:
    before = driver.find_element("id", message).text
    t0 = time.perf_counter()
    driver.find_element("id", button).click()
    WebDriverWait(driver, 120, poll_frequency=0.05).until(
        lambda d: says in d.find_element("id", message).text and d.find_element("id", message).text != before)
    return time.perf_counter() - t0


def measure(url: str, digit: Path, tries: int) -> dict[str, list[float]]:
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1300"):
        options.add_argument(arg)
    options.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=webdriver.ChromeService("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(url)
        WebDriverWait(driver, 60).until(lambda d: d.find_elements("id", "draw-button"))
        draw = []
        for i in range(tries):  # a new seed each time: the same request twice would be no different
            seed = driver.find_element("css selector", "#draw-seed input")
            seed.clear()
            seed.send_keys(str(i + 1))
            draw.append(click_until(driver, "draw-button", "draw-message", f"seed {i + 1}"))
        [tab] = [b for b in driver.find_elements("css selector", "button[role=tab]") if b.text == "Repair"]
        tab.click()
        WebDriverWait(driver, 30).until(lambda d: d.find_elements("id", "repair-upload"))
        driver.find_element("css selector", "#repair-upload input[type=file]").send_keys(str(digit))
        WebDriverWait(driver, 30).until(lambda d: "Loaded" in d.find_element("id", "repair-message").text)
        canvas = driver.find_element("css selector", "#repair-damage canvas")
        ActionChains(driver).move_to_element_with_offset(canvas, -60, 0).click_and_hold().move_by_offset(120, 0) \
            .release().perform()
        repair = []
        for i in range(tries):
            seed = driver.find_element("css selector", "#repair-seed input")
            seed.clear()
            seed.send_keys(str(i + 1))
            repair.append(click_until(driver, "repair-button", "repair-message", f"seed {i + 1};"))
        return {"draw_16_s": draw, "repair_1_s": repair}
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models:/rnngen@champion")
    parser.add_argument("--untrained", action="store_true")
    parser.add_argument("--split", type=Path, default=ROOT / "data/split")
    parser.add_argument("--port", type=int, default=7869)
    parser.add_argument("--tries", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = str(untrained_checkpoint(Path(tmp))) if args.untrained else args.model
        digit = Path(tmp) / "digit.png"
        Image.fromarray(np.load(args.split / "test_x.npy")[0]).save(digit)
        load_before = Path("/proc/loadavg").read_text().split()[:3]
        proc = start(model, args.split, args.port)
        try:
            times = measure(f"http://127.0.0.1:{args.port}/", digit, args.tries)
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
    print(json.dumps({"model": "untrained " + model if args.untrained else model, "cores": os.cpu_count(),
                      **{k: round(statistics.median(v), 2) for k, v in times.items()},
                      "tries": {k: [round(t, 2) for t in v] for k, v in times.items()},
                      "loadavg_before": load_before,
                      "loadavg_after": Path("/proc/loadavg").read_text().split()[:3]}))


if __name__ == "__main__":
    main()
