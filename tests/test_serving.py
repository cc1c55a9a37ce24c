"""The model in service: every model answers score, sample and inpaint through the pyfunc's
``predict`` (in process), and a real ``mlflow models serve`` on a registered model answers
them over HTTP, refuses bad requests with a 400 that says why, and keeps serving."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from rnngen import pictures, service, serving
from rnngen.models import MODELS
from rnngen.server import descendants, free_port, http_status
from rnngen.service import RequestError, answer
from test_models import binary_batch, tiny

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_scores_draws_and_repairs(name: str) -> None:
    model = tiny(name).eval()
    x = binary_batch(3)
    if model.has_likelihood:
        nll = answer(model, x.numpy())  # the default task: score, as before
        assert nll.shape == (3,) and np.isfinite(nll).all() and (nll > 0).all()
        assert np.array_equal(nll, answer(model, x.view(3, 784).numpy(), {"task": "score"}))
    else:  # a GAN: score is refused with a sentence; sample and inpaint answer as for any model
        with pytest.raises(RequestError, match="task 'score': a dcgan model has no likelihood"):
            answer(model, x.numpy())
    drawn = answer(model, [], {"task": "sample", "n": 2, "seed": 5})
    assert drawn.shape == (2, 28, 28)
    assert np.array_equal(drawn, service.draw(model, 2, 5).view(2, 28, 28).numpy())  # rnngen sample's path
    mask = np.zeros(784, dtype=np.int64)
    mask[300:400] = 1
    repaired = answer(model, x.numpy(), {"task": "inpaint", "mask_pixels": mask.tolist(), "effort": 2})
    hidden = torch.from_numpy(mask.astype(bool)).view(28, 28)
    assert np.array_equal(repaired[:, ~hidden], x[:, 0, ~hidden].numpy())  # observed pixels untouched
    named = answer(model, x.numpy(), {"task": "inpaint", "mask": "bottom_half", "effort": 2, "format": "png"})
    first = np.asarray(Image.open(io.BytesIO(base64.b64decode(named[0]))))
    assert first.shape == (28, 28) and np.array_equal(first[:14] > 127, x[0, 0, :14].numpy() > 0.5)


BAD_REQUESTS: list[tuple[Any, dict[str, Any], str]] = [
    (np.zeros((2, 5)), {}, "28x28"),
    (np.full((1, 28, 28), 0.5), {}, "binarized"),
    (np.full((1, 28, 28), 2.0), {"task": "inpaint"}, r"[0, 1]"),
    (np.zeros((1, 28, 28)), {"task": "draw"}, "unknown task 'draw'"),
    (np.zeros((1, 28, 28)), {"task": "inpaint", "mask": "left_half"}, "unknown mask 'left_half'"),
    (np.zeros((1, 28, 28)), {"task": "inpaint", "mask_pixels": [0] * 784}, "hides no pixel"),
    (np.zeros((1, 28, 28)), {"task": "inpaint", "mask_pixels": [1] * 10}, "784"),
    ([], {"task": "sample", "n": service.MAX_SAMPLES + 1}, f"n must be in [1, {service.MAX_SAMPLES}]"),
    (np.zeros((service.MAX_IMAGES + 1, 784)), {}, f"at most {service.MAX_IMAGES} images"),
    (np.zeros((service.MAX_IMAGES, 784)), {"task": "inpaint", "effort": service.MAX_EFFORT}, "images x effort"),
    ([], {}, "needs images"),
]


@pytest.mark.parametrize(("inputs", "params", "says"), BAD_REQUESTS)
def test_bad_requests_are_refused_with_a_sentence(inputs: Any, params: dict[str, Any], says: str) -> None:
    with pytest.raises(RequestError) as refused:
        answer(tiny("mlp_vae").eval(), inputs, params)
    assert says in str(refused.value)


# ------------------------------------------------------------------ over HTTP



@pytest.fixture(scope="module")
def served(trained_model: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``rnngen serve`` (``make serve``'s command: ``mlflow models serve`` with its measured
    settings) on version 1 of the tiny pipeline's registered model."""
    port, logs = free_port(), tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": trained_model["uri"], "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    uri = "models:/rnngen/1"
    with logs.open("w") as log:
        proc = subprocess.Popen([str(BIN / "rnngen"), "serve", "--model", uri, "--port", str(port)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while len(workers(proc.pid)) < serving.WORKERS or http_status(f"{url}/ping") != 200:
            assert proc.poll() is None and time.monotonic() < deadline, logs.read_text()
            time.sleep(1)
        yield {"url": url, "uri": uri, "env": env, "split": trained_model["split"], "pid": proc.pid}
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def workers(pid: int) -> list[int]:
    """The uvicorn workers below the server ``pid`` (multiprocessing's spawned children)."""
    found = []
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
    return found


def invoke(url: str, inputs: Any, **params: Any) -> requests.Response:
    body = {"inputs": np.asarray(inputs).tolist(), "params": params}
    return requests.post(f"{url}/invocations", json=body, timeout=120)


def run(cmd: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.e2e
def test_the_served_model_scores_draws_and_repairs_over_http(served: dict[str, Any], tmp_path: Path) -> None:
    url, env = served["url"], served["env"]
    x = (np.load(served["split"] / "test_x.npy")[:4] > 127).astype(np.float32)  # (4, 28, 28)
    scored = invoke(url, x)
    assert scored.status_code == 200, scored.text
    nll = np.asarray(scored.json()["predictions"])
    # the same numbers as MLflow's loader in this process and as `rnngen score`
    import mlflow

    # the registered files, located by that store's registry (not through the process-wide URI
    # other tests may have set), loaded by MLflow's own loader
    store = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
    local = mlflow.artifacts.download_artifacts(artifact_uri=store.get_model_version_download_uri("rnngen", "1"),
                                                dst_path=str(tmp_path / "model"), tracking_uri=store.tracking_uri)
    loaded = mlflow.pyfunc.load_model(local)
    assert np.allclose(nll, loaded.predict(x), rtol=1e-6)
    cli = json.loads(run([str(BIN / "rnngen"), "score", "--model", served["uri"], "--test-index", "0", "1", "2", "3",
                          "--split", str(served["split"])], env, tmp_path))
    assert np.allclose(nll, cli["nll_nats"], rtol=1e-6)

    drawn = invoke(url, [], task="sample", n=3, seed=7)
    assert drawn.status_code == 200, drawn.text
    images = torch.tensor(drawn.json()["predictions"]).view(3, 1, 28, 28)
    run([str(BIN / "rnngen"), "sample", "--model", served["uri"], "--n", "3", "--seed", "7", "--out", "s.png"],
        env, tmp_path)
    pictures.save_grid(images, tmp_path / "served.png", nrow=2)  # the CLI's layout for n = 3
    assert np.array_equal(np.asarray(Image.open(tmp_path / "s.png")), np.asarray(Image.open(tmp_path / "served.png")))

    repaired = invoke(url, x, task="inpaint", mask="centre_square", effort=2, seed=1)
    assert repaired.status_code == 200, repaired.text
    out = np.asarray(repaired.json()["predictions"])
    hidden = np.zeros((28, 28), dtype=bool)
    hidden[7:21, 7:21] = True
    assert out.shape == (4, 28, 28) and np.array_equal(out[:, ~hidden], x[:, ~hidden])


@pytest.mark.e2e
@pytest.mark.parametrize(("inputs", "params", "says"), BAD_REQUESTS)
def test_a_bad_request_gets_a_400_that_says_why_and_the_server_keeps_serving(
    served: dict[str, Any], inputs: Any, params: dict[str, Any], says: str
) -> None:
    refused = invoke(served["url"], inputs, **params)
    assert refused.status_code == 400, refused.text
    assert says in refused.json()["message"] and "Traceback" not in refused.text
    assert "stack_trace" not in refused.json()
    assert invoke(served["url"], np.zeros((1, 28, 28))).status_code == 200


@pytest.mark.e2e
def test_a_killed_worker_is_replaced_and_clients_meet_only_connection_errors_meanwhile(
    served: dict[str, Any]
) -> None:
    """Under load, one of the server's worker processes is SIGKILLed: uvicorn's supervisor starts
    another while the other worker serves. Clients meet connection errors only for requests that
    the dead worker held, no 5xx and no wrong answer, and after the replacement every request is
    answered, the same answer as before."""
    url, x = served["url"], (np.load(served["split"] / "test_x.npy")[:2] > 127).astype(np.float32)
    expected = invoke(url, x).json()["predictions"]
    events: list[tuple[float, str]] = []  # (when, "ok" | what failed)
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                answer = requests.post(f"{url}/invocations", json={"inputs": x.tolist()}, timeout=60)
                ok = answer.status_code == 200 and np.allclose(answer.json()["predictions"], expected, rtol=1e-6)
                events.append((time.monotonic(), "ok" if ok else f"HTTP {answer.status_code}: {answer.text[:300]}"))
            except requests.RequestException as exc:
                events.append((time.monotonic(), type(exc).__name__))

    clients = [threading.Thread(target=client) for _ in range(4)]
    for c in clients:
        c.start()
    try:
        time.sleep(2)
        before = workers(served["pid"])
        killed_at = time.monotonic()
        os.kill(before[0], signal.SIGKILL)
        deadline = killed_at + 120
        while not (set(now := workers(served["pid"])) - set(before) and len(now) == len(before)):
            assert time.monotonic() < deadline, "the killed worker was not replaced within 120 s"
            time.sleep(0.2)
        replaced_at = time.monotonic()
        time.sleep(5)
    finally:
        stop.set()
        for c in clients:
            c.join()
    failed = [(t, what) for t, what in events if what != "ok"]
    assert all(not what.startswith("HTTP") for _, what in failed), failed  # no 5xx, no wrong answer
    assert all(killed_at <= t <= replaced_at + 1 for t, _ in failed), (failed, killed_at, replaced_at)
    assert sum(what == "ok" and t > replaced_at + 1 for t, what in events) >= 4  # serving again
    assert sum(what == "ok" and killed_at < t < replaced_at for t, what in events) >= 1  # the other one served


def test_a_registered_model_comes_from_the_named_store_whatever_the_process_points_at(
    trained_model: dict[str, Any], tmp_path: Path
) -> None:
    """The files of models:/rnngen/1 are located through the store asked for: with MLflow's
    process-wide URI on another store (one with no such model) they are still found, never
    looked up in the wrong store."""
    import mlflow

    from rnngen import checkpoint as ckpt
    from rnngen import registry

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        client = registry.client(trained_model["uri"])
        path = registry.download_checkpoint(client, "rnngen", "1", tmp_path / "download")
    finally:
        mlflow.set_tracking_uri(before)
    assert ckpt.load(path)["model"]["name"] == "row_lstm_vae"
