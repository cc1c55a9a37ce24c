"""``rnngen demo``'s page: four Gradio tabs over :mod:`rnngen.demo` (Draw, Repair, Judge, Walk).

Every handler turns a :class:`~rnngen.errors.UserError` (a non-image upload, a class asked of
an unconditional model, a GAN asked to judge, ...) into a sentence in its tab's message line
and leaves the page serving; anything else is a bug and Gradio reports it as one. Requests
queue one at a time: the model's sampler already uses every core.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rnngen import demo, service
from rnngen.demo import Served
from rnngen.errors import UserError
from rnngen.inpaint import MASKS

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no calls home
import gradio as gr

#: the login a page listening beyond loopback asks for (its password lives in a 0600 file)
USER = "rnngen"
PAINTED = "painted (brush)"
#: tiny digits drawn crisp, not blurred, when the browser scales them up
CSS = ".digits img { image-rendering: pixelated; object-fit: contain; width: 100%; height: 100%; }"


def _on_page(n_outputs: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A handler whose :class:`UserError` becomes its tab's message (the last output, or the
    only one), the ``n_outputs`` others left as they were."""

    def wrap(handler: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(handler)
        def run(*args: Any) -> Any:
            try:
                return handler(*args)
            except UserError as exc:
                said = f"⚠️ {exc}"
                return (*[gr.skip()] * n_outputs, said) if n_outputs else said

        return run

    return wrap


def _digit(upload: str | None, sketch: dict[str, Any] | None) -> tuple[torch.Tensor, str]:
    """The uploaded image when there is one, else the sketch pad's drawing."""
    if upload is not None:
        return demo.read_upload(upload)
    return demo.read_sketch(sketch), "drawn on the sketch pad"


def _class_box(served: Served) -> gr.Dropdown:
    model = served.model
    classes = model.config.classes if model.conditional else 10
    info = ("the digit's class" + (", or none: the model infers it" if model.class_optional else "")
            if model.conditional else "conditional models only: this one takes none")
    return gr.Dropdown(["none", *map(str, range(classes))], value="0" if model.needs_labels else "none",
                       label="class", info=info)


def _sketch_pad(label: str) -> gr.Sketchpad:
    return gr.Sketchpad(label=label, canvas_size=(demo.CANVAS, demo.CANVAS), fixed_canvas=True, layers=False,
                        brush=gr.Brush(default_size=22, colors=["#000000"], color_mode="fixed"), format="png",
                        type="numpy")


def draw_tab(served: Served) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            n = gr.Slider(1, service.MAX_SAMPLES, value=16, step=1, label="digits")
            seed = gr.Number(0, precision=0, label="seed", elem_id="draw-seed")
            temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="temperature",
                                    info="< 1: cleaner, less varied digits")
            label = _class_box(served)
            guidance = gr.Textbox("", label="guidance", placeholder="blank: the model's own",
                                  info="a conditional PixelRNN's classifier-free guidance; 1 = exact p(x | y)")
            show_steps = gr.Checkbox(False, label="show how they were drawn (runs the sampler again, at temperature 1)")
            button = gr.Button("Draw", variant="primary", elem_id="draw-button")
        with gr.Column(scale=2):
            grid = gr.Image(label="samples", type="filepath", format="png", height=360, elem_id="draw-samples",
                            elem_classes="digits")
            steps = gr.Image(label="generation as it happened (PixelRNN: row by row; DRAW: the canvas)",
                             type="filepath", height=360, elem_id="draw-steps", elem_classes="digits")
    message = gr.Markdown(elem_id="draw-message")

    @_on_page(2)
    def on_draw(n: float, seed: float, temperature: float, choice: str, guide: str, steps_too: bool) -> tuple:
        y, g = demo.label_of(choice), demo.guidance_of(guide)
        images = demo.draw_digits(served, int(n), int(seed or 0), float(temperature), y, g)
        frames, note = None, f"{int(n)} digits, seed {int(seed or 0)}: what `rnngen sample` draws."
        if steps_too:
            frames = demo.drawing_steps(served, int(n), int(seed or 0), y, g)
            note += "" if frames is not None else f" A {served.model.name} model draws every pixel at once."
        gif = None if frames is None else str(demo.steps_gif(served, frames))
        return str(demo.grid_png(served, images)), gif, note

    button.click(on_draw, [n, seed, temperature, label, guidance, show_steps], [grid, steps, message])


def repair_tab(served: Served) -> None:
    digit = gr.State(None)
    with gr.Row():
        upload = gr.File(label="upload a digit (PNG, JPEG; any size or colour)", elem_id="repair-upload")
        with gr.Column():
            sketch = _sketch_pad("or draw one")
            use_sketch = gr.Button("Use this drawing", elem_id="repair-use-sketch")
        damage = gr.ImageEditor(label="paint the damage", canvas_size=(demo.CANVAS, demo.CANVAS), fixed_canvas=True,
                                sources=(), transforms=(), layers=False, format="png", type="numpy",
                                brush=gr.Brush(default_size=20, colors=["#ff3030"], color_mode="fixed"),
                                elem_id="repair-damage")
    with gr.Row():
        hole = gr.Dropdown([PAINTED, *MASKS], value=PAINTED, label="hole", elem_id="repair-hole")
        effort = gr.Slider(1, service.MAX_EFFORT, value=32, step=1, label="effort",
                           info="Gibbs rounds (VAEs, DRAW) or particles (PixelRNN)")
        seed = gr.Number(0, precision=0, label="seed", elem_id="repair-seed")
        candidates = gr.Slider(1, demo.MAX_CANDIDATES, value=1, step=1, label="candidates")
        label = _class_box(served)
    button = gr.Button("Repair", variant="primary", elem_id="repair-button")
    panel = gr.Image(label="input | damaged | completions", type="filepath", format="png", height=200,
                     elem_id="repair-panel", elem_classes="digits")
    message = gr.Markdown(elem_id="repair-message")

    @_on_page(2)
    def on_image(path: str | None, drawn: dict[str, Any] | None) -> tuple:
        x, note = _digit(path, drawn)
        background = demo.editor_background(x)
        loaded = f"Loaded ({note})." if note else "Loaded."
        return x, {"background": background, "layers": [], "composite": background}, \
            f"{loaded} Paint the damage, or pick a named hole."

    @_on_page(1)
    def on_repair(x: torch.Tensor | None, painted: dict[str, Any] | None, kind: str, work: float, seed: float,
                  choice: str, k: float) -> tuple:
        if x is None:
            raise demo.NoImageError("upload a digit or draw one first")
        mask = demo.named_mask(kind, int(seed or 0)) if kind != PAINTED else demo.painted_mask(painted)
        if mask is None:
            raise UserError("paint over the damaged part first, or pick a named hole")
        completed = demo.repair_digit(served, x, mask, int(work), int(seed or 0), demo.label_of(choice), int(k))
        return str(demo.repair_png(served, x, mask, completed)), \
            f"{int(mask.sum())} pixels hidden, {int(k)} completion(s), seed {int(seed or 0)}; observed pixels " \
            "are kept as given."

    upload.upload(on_image, [upload, sketch], [digit, damage, message])
    use_sketch.click(lambda drawn: on_image(None, drawn), [sketch], [digit, damage, message])
    button.click(on_repair, [digit, damage, hole, effort, seed, label, candidates], [panel, message])


def judge_tab(served: Served) -> None:
    with gr.Row():
        upload = gr.File(label="upload a digit (used when given)", elem_id="judge-upload")
        sketch = _sketch_pad("or draw one")
        label = _class_box(served)
    button = gr.Button("Judge", variant="primary", elem_id="judge-button")
    message = gr.Markdown(elem_id="judge-message")

    @_on_page(0)
    def on_judge(path: str | None, drawn: dict[str, Any] | None, choice: str) -> str:
        x, note = _digit(path, drawn)
        judged = demo.judge(served, x, demo.label_of(choice))
        return judged.sentence() + (f" The image was {note}." if note else "")

    button.click(on_judge, [upload, sketch, label], [message])


def walk_tab(served: Served) -> None:
    with gr.Row():
        start = gr.File(label="from this digit", elem_id="walk-a")
        end = gr.File(label="to this one", elem_id="walk-b")
        with gr.Column():
            steps = gr.Slider(2, 24, value=10, step=1, label="steps")
            label = _class_box(served)
            button = gr.Button("Walk", variant="primary", elem_id="walk-button")
    with gr.Row():
        gif = gr.Image(label="there and back", type="filepath", height=200, elem_id="walk-gif", elem_classes="digits")
        strip = gr.Image(label="the path", type="filepath", format="png", height=200, elem_id="walk-strip",
                         elem_classes="digits")
    message = gr.Markdown(elem_id="walk-message")

    @_on_page(2)
    def on_walk(a: str | None, b: str | None, n: float, choice: str) -> tuple:
        (x_a, _), (x_b, _) = demo.read_upload(a), demo.read_upload(b)
        frames = demo.walk_between(served, x_a, x_b, int(n), demo.label_of(choice))
        path, loop = demo.walk_files(served, frames)
        return str(loop), str(path), f"{int(n)} steps through the latent space (spherical interpolation)."

    button.click(on_walk, [start, end, steps, label], [gif, strip, message])


def build(served: Served) -> gr.Blocks:
    """The page: the model it serves, then one tab per use."""
    # Gradio's copies of the pictures it served are dropped after an hour, checked every ten minutes
    with gr.Blocks(title="rnngen demo", analytics_enabled=False, delete_cache=(600, 3600)) as page:
        gr.Markdown(f"# rnngen\n{served.headline()}\n\nJudge compares with {served.reference.note}.",
                    elem_id="headline")
        with gr.Tabs():
            for name, tab in (("Draw", draw_tab), ("Repair", repair_tab), ("Judge", judge_tab), ("Walk", walk_tab)):
                with gr.Tab(name, id=name.lower()):
                    tab(served)
    return page


def launch(served: Served, host: str, port: int, login: tuple[str, str] | None) -> None:
    """Serve the page on ``host:port`` until Ctrl-C (asking for ``login`` when given)."""
    page = build(served).queue(default_concurrency_limit=1)
    try:
        page.launch(server_name=host, server_port=port, auth=login, share=False, footer_links=[], ssr_mode=False,
                    allowed_paths=[str(served.out)], quiet=True, css=CSS, mcp_server=False)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc}); choose another --port") from None
    finally:
        shutil.rmtree(served.out, ignore_errors=True)


def login_for(host: str, password_file: Path) -> tuple[str, str] | None:
    """None on loopback; beyond it, the login the page asks for, its password generated into
    ``password_file`` (0600) the first time, as the team server keeps its passwords."""
    from rnngen import credentials
    from rnngen.postgres import LOOPBACK

    if host in LOOPBACK:
        return None
    return USER, credentials.ensure_secret(password_file)
