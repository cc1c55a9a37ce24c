"""``rnngen demo``: the page's functions compute what the CLI and the served model compute, bad
input becomes a sentence, and (e2e) a real ``rnngen demo`` process driven by Debian's Chromium
through every tab.

Set RNNGEN_DEMO_SCREENSHOTS=docs/images to save the e2e test's screenshots for the docs.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import rnngen
from rnngen import checkpoint, cli, data, demo, inpaint, service
from rnngen.errors import UserError
from rnngen.models.base import LabelError, NoLikelihoodError
from rnngen.server import free_port
from rnngen.walk import NoLatentError
from test_models import tiny

BIN = Path(sys.executable).parent


def served(name: str, split: Path | None = None) -> demo.Served:
    model = tiny(name).eval()
    reference = demo.reference_nlls(model, split, 50) if split else demo.Reference(None, "no split")
    return demo.Served(model, f"tiny {name}", {}, reference)


def png(path: Path, pixels: np.ndarray, mode: str = "L") -> Path:
    Image.fromarray(pixels.astype(np.uint8), mode=mode).save(path)
    return path


def test_the_page_draws_repairs_and_judges_what_the_service_does(tmp_path: Path, split_dir: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    page = served("pixelrnn", split_dir)
    drawn = demo.draw_digits(page, 4, 3, 0.8, None, None)
    assert torch.equal(drawn, service.draw(page.model, 4, 3, 0.8))
    # the page's grid is `rnngen sample`'s PNG, pixel for pixel
    ckpt = tmp_path / "model.pt"
    checkpoint.save_model(ckpt, page.model)
    assert cli.main(["sample", "--model", str(ckpt), "--n", "4", "--seed", "3", "--temperature", "0.8",
                     "--out", str(tmp_path / "cli.png")]) == 0
    page_grid = demo.grid_png(page, drawn)
    assert np.array_equal(np.asarray(Image.open(page_grid)), np.asarray(Image.open(tmp_path / "cli.png")))

    page = served("row_lstm_vae", split_dir)  # repairs and judges quicker than PixelRNN's particle filter
    x = data.to_unit(data.load_split(split_dir, "test").x[:1])
    mask = demo.named_mask("centre_square", 1)
    repaired = demo.repair_digit(page, x, mask, 2, 1, None)
    assert torch.equal(repaired, service.repair(page.model, x, inpaint.make_mask("centre_square", 1), 2, 1))
    assert torch.equal(repaired[~mask], x[~mask])  # observed pixels as given
    assert demo.repair_digit(page, x, mask, 2, 1, None, candidates=3).shape == (3, 1, 28, 28)

    judged = demo.judge(page, x, None)
    assert judged.nll == float(service.score(page.model, data.binarize(x, "fixed"))[0])
    assert 0 <= judged.percentile <= 100 and "Percentile" in judged.sentence()
    assert len(page.reference.nll) == 50 and "50 test digits" in page.reference.note


def test_a_conditional_model_draws_and_judges_the_class_asked() -> None:
    from rnngen.models import build_model, model_config

    torch.manual_seed(0)
    model = build_model("pixelrnn", model_config("pixelrnn", {"layers": 1, "hidden": 4, "out_hidden": 8,
                                                              "conditional": True})).eval()
    page = demo.Served(model, "tiny conditional", {}, demo.Reference(None, "no split"))
    y, g = demo.label_of("3"), demo.guidance_of("2")
    assert torch.equal(demo.draw_digits(page, 2, 1, 1.0, y, g), service.draw(model, 2, 1, 1.0, 3, 2.0))
    x = torch.zeros(1, 1, 28, 28)
    assert demo.judge(page, x, 3).nll == float(service.score(model, x, 3)[0])
    # no class: the mixture over classes, p(x) = mean over y of p(x | y)
    labelled = torch.tensor([service.score(model, x, c)[0] for c in range(10)], dtype=torch.float64)
    mixture = -(torch.logsumexp(-labelled, 0) - math.log(10))
    assert demo.judge(page, x, demo.label_of("none")).nll == pytest.approx(mixture.item(), abs=1e-3)
    repairing = build_model("pixelrnn", model_config("pixelrnn", {"layers": 1, "hidden": 4, "out_hidden": 8,
                                                                  "conditional": True, "repair": True})).eval()
    with pytest.raises(LabelError, match="conditional"):  # a class is needed, and the page says so
        demo.judge(demo.Served(repairing, "tiny", {}, demo.Reference(None, "no split")), x, demo.label_of("none"))


@pytest.mark.parametrize("name", ["pixelrnn", "draw", "row_lstm_vae"])
def test_generation_as_it_happened(name: str) -> None:
    """The draw seen step by step: PixelRNN's rows (the last frame is the draw at temperature 1,
    pixel for pixel), DRAW's canvases; a model that draws at once has none."""
    page = served(name)
    steps = demo.drawing_steps(page, 3, 5, None, None)
    if name == "row_lstm_vae":
        assert steps is None
        return
    assert steps.shape[1:] == (3, 1, 28, 28) and len(steps) == (28 if name == "pixelrnn" else 3)
    if name == "pixelrnn":
        drawn = page.model.generate(3, torch.Generator().manual_seed(5))[0]
        assert torch.equal(steps[-1], drawn) and (steps[0, :, :, 1:] == 0.5).all()  # rows not yet drawn: grey
    assert demo.steps_gif(page, steps).stat().st_size > 0


def test_images_of_any_size_and_colour_are_read_as_the_cli_reads_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    colour = png(tmp_path / "big.png", rng.integers(0, 90, (56, 40, 3)), "RGB")  # dark, RGB, another size
    x, note = demo.read_upload(colour)
    assert x.shape == (1, 1, 28, 28) and note == ""
    assert torch.equal(x, data.to_unit(torch.from_numpy(data.read_image(colour))[None]))
    scan = png(tmp_path / "scan.png", np.full((28, 28), 250))  # dark ink on white paper: inverted
    x, note = demo.read_upload(scan)
    assert "inverted" in note and x.max() < 0.05
    stroke = np.zeros((demo.CANVAS, demo.CANVAS, 4), np.uint8)
    stroke[100:120, 40:240, 3] = 255  # a horizontal stroke, painted in any colour
    assert demo.read_sketch({"layers": [stroke]}).shape == (1, 1, 28, 28)
    hidden = demo.painted_mask({"layers": [stroke]})
    assert hidden[0, 0, 10:12, 4:24].all() and int(hidden.sum()) == 2 * 20  # every touched 10x10 block


@pytest.mark.parametrize(("case", "says"), [
    ("text file", "is not an image rnngen can read"),
    ("no upload", "upload an image first"),
    ("empty sketch", "draw a digit"),
    ("class of an unconditional model", "trained without labels"),
    ("guidance", "give a number >= 0"),
    ("nothing painted", "nothing to repair"),
    ("gan judged", "has no likelihood"),
    ("walk without a latent", "no latent variable"),
])
def test_bad_input_is_a_sentence(case: str, says: str, tmp_path: Path) -> None:
    page, x = served("row_lstm_vae"), torch.zeros(1, 1, 28, 28)
    calls = {
        "text file": lambda: demo.read_upload((tmp_path / "notes.txt").open("w").name),
        "no upload": lambda: demo.read_upload(None),
        "empty sketch": lambda: demo.read_sketch({"layers": [np.zeros((9, 9, 4), np.uint8)]}),
        "class of an unconditional model": lambda: demo.draw_digits(page, 2, 0, 1.0, demo.label_of("3"), None),
        "guidance": lambda: demo.guidance_of("-1"),
        "nothing painted": lambda: demo.repair_digit(page, x, torch.zeros_like(x, dtype=torch.bool), 1, 0, None),
        "gan judged": lambda: demo.judge(served("dcgan"), x, None),
        "walk without a latent": lambda: demo.walk_between(served("pixelrnn"), x, x, 3, None),
    }
    with pytest.raises(UserError, match=says) as refused:
        calls[case]()
    expected = {"class of an unconditional model": LabelError, "gan judged": NoLikelihoodError,
                "walk without a latent": NoLatentError}
    assert isinstance(refused.value, expected.get(case, UserError))


def test_page_handlers_put_errors_in_the_page_and_login_beyond_loopback(tmp_path: Path) -> None:
    pytest.importorskip("gradio")
    from rnngen import demo_page

    page = demo_page.build(served("row_lstm_vae"))
    assert page is not None
    fails = demo_page._on_page(2)(lambda: demo.read_upload(None))
    assert fails()[-1].startswith("⚠️ upload an image first")
    assert demo_page._on_page(0)(lambda: demo.read_upload(None))().startswith("⚠️ upload")  # a lone message
    assert demo_page.login_for("127.0.0.1", tmp_path / "pw") is None and not (tmp_path / "pw").exists()
    user, password = demo_page.login_for("0.0.0.0", tmp_path / "pw")
    assert user == "rnngen" and len(password) >= 32
    assert stat.S_IMODE((tmp_path / "pw").stat().st_mode) == 0o600
    assert demo_page.login_for("0.0.0.0", tmp_path / "pw")[1] == password  # kept between starts


def test_without_gradio_the_command_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio now raises ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "rnngen.demo_page", raising=False)  # imported afresh, as in a new process
    monkeypatch.delattr(rnngen, "demo_page", raising=False)
    assert cli.main(["demo", "--model", "absent.pt"]) == 2
    assert "pip install -e '.[demo]'" in capsys.readouterr().err


# ------------------------------------------------------------------------ in a browser

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")



@pytest.fixture(scope="module")
def app(trained_model: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``rnngen demo`` serving version 1 of the tiny pipeline's registered model."""
    pytest.importorskip("gradio")
    base, port = tmp_path_factory.mktemp("demo"), free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": trained_model["uri"]}
    log = (base / "demo.log").open("w")
    proc = subprocess.Popen([str(BIN / "rnngen"), "demo", "--model", "models:/rnngen/1", "--split",
                             str(trained_model["split"]), "--reference", "100", "--port", str(port)],
                            cwd=base, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        import requests

        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(url, timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (base / "demo.log").read_text()
            time.sleep(0.5)
        x = data.load_split(trained_model["split"], "test").x
        yield {"url": url, "digits": [png(base / f"d{i}.png", x[i].numpy()) for i in range(2)],
               "text": base / "notes.txt", "log": base / "demo.log"}
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[Any]:
    if not (CHROMIUM and DRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1300"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=webdriver.ChromeService(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The demo in a browser: tabs, uploads, buttons, and what comes back."""

    def __init__(self, driver: Any, url: str, shots: Path) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.wait, self.shots = driver, WebDriverWait(driver, 60), shots
        driver.get(url)
        self.wait.until(lambda d: d.find_elements("css selector", "button[role=tab]"))

    def text(self, elem_id: str) -> str:
        return self.driver.find_element("id", elem_id).text

    def tab(self, name: str) -> None:
        [button] = [b for b in self.driver.find_elements("css selector", "button[role=tab]") if b.text == name]
        button.click()
        self.wait.until(lambda d: d.find_elements("css selector", f"[id^={name.lower()}-]"))

    def upload(self, elem_id: str, path: Path) -> None:
        self.driver.find_element("css selector", f"#{elem_id} input[type=file]").send_keys(str(path))
        self.wait.until(lambda d: path.stem in self.text(elem_id))  # uploaded, not only chosen

    def press(self, elem_id: str, message: str, says: str) -> str:
        """Click ``elem_id`` and wait until ``message`` says ``says``."""
        before = self.text(message)
        self.driver.find_element("id", elem_id).click()
        try:
            self.wait.until(lambda d: says in self.text(message) and self.text(message) != before)
        except Exception as exc:
            raise AssertionError(f"{message} says {self.text(message)!r}, not {says!r}") from exc
        return self.text(message)

    def image(self, elem_id: str) -> np.ndarray:
        import requests

        src = self.driver.find_element("css selector", f"#{elem_id} img").get_attribute("src")
        return np.asarray(Image.open(io.BytesIO(requests.get(src, timeout=10).content)).convert("L"))

    def shot(self, name: str) -> None:
        self.shots.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(self.shots / f"demo_{name}.png"))


def tile(grid: np.ndarray, i: int) -> np.ndarray:
    return grid[2:30, 2 + 30 * i : 30 + 30 * i]  # torchvision's layout: 28-pixel tiles, 2-pixel padding


@pytest.mark.e2e
def test_every_tab_in_chromium(app: dict[str, Any], browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    page = Page(browser, app["url"], Path(os.environ.get("RNNGEN_DEMO_SCREENSHOTS") or tmp_path))
    assert "models:/rnngen/1 (version 1" in page.text("headline") and "test_nll_iwae" in page.text("headline")
    assert "100 test digits" in page.text("headline")

    page.press("draw-button", "draw-message", "16 digits")
    assert page.image("draw-samples").shape == (4 * 30 + 2, 4 * 30 + 2)  # `rnngen sample`'s grid of 16
    page.shot("draw")

    page.tab("Repair")
    digit = np.asarray(Image.open(app["digits"][0]))
    page.upload("repair-upload", app["digits"][0])
    page.wait.until(lambda d: "Loaded" in page.text("repair-message"))
    canvas = browser.find_element("css selector", "#repair-damage canvas")
    ActionChains(browser).move_to_element_with_offset(canvas, -60, 0).click_and_hold().move_by_offset(60, 0) \
        .move_by_offset(60, 0).release().perform()  # a brush stroke across the middle
    said = page.press("repair-button", "repair-message", "pixels hidden")
    assert int(said.split()[0]) > 0
    panel = page.image("repair-panel")
    observed = tile(panel, 1) != 128  # the damaged input shows hidden pixels grey
    assert np.array_equal(tile(panel, 0), digit) and (~observed).sum() >= int(said.split()[0])
    assert np.array_equal(tile(panel, 2)[observed], digit[observed])  # the completion keeps what was seen
    page.shot("repair")

    page.tab("Judge")
    page.upload("judge-upload", app["digits"][1])
    said = page.press("judge-button", "judge-message", "NLL")
    assert "nats" in said and "bits/dim" in said and "Percentile" in said
    page.shot("judge")

    page.tab("Walk")
    page.upload("walk-a", app["digits"][0])
    page.upload("walk-b", app["digits"][1])
    page.press("walk-button", "walk-message", "steps through the latent space")
    assert page.image("walk-strip").shape == (30 + 2, 10 * 30 + 2)
    page.shot("walk")

    page.tab("Judge")  # a text file: a sentence in the page, and the page still answers
    app["text"].write_text("not a digit")
    browser.find_element("css selector", "#judge-upload button[aria-label='Clear']").click()
    page.upload("judge-upload", app["text"])
    assert "is not an image" in page.press("judge-button", "judge-message", "not an image")
    page.tab("Draw")
    browser.find_element("css selector", "#draw-button").click()
    page.wait.until(lambda d: "16 digits" in page.text("draw-message"))
    assert "Traceback" not in app["log"].read_text()
