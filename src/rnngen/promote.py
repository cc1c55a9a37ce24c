"""Champion/challenger promotion in the MLflow model registry (finding and loading the models
there is :mod:`rnngen.registry`'s job).

After ``dvc repro`` trained, registered and evaluated a new model version (the challenger),
:func:`promote` compares its held-out metrics with those of the version holding the
``champion`` alias and moves the alias only when the challenger wins on the primary metric
(test NLL, IWAE bound, lower is better) by ``margin`` nats without falling behind on any
other listed metric by more than its tolerance (that rule, free of I/O, is
:mod:`rnngen.promotion_rule`). The very first model becomes champion. Every decision is
written on the challenger's model version (``promotion.*`` tags), into a markdown report, and
logged beside the run under ``promotion/``.

Likelihoods only compare on the same test images, binarized the same way, with the same k.
When the champion was scored on another test set (new data, another split or k) it is
re-scored on the challenger's test set before the comparison; when that is impossible the
champion stays, with the reason recorded.

Promotion changes the registry, so it is a command run after ``dvc repro``
(``rnngen promote``), never a cached DVC stage.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rnngen import checkpoint, layout
from rnngen.evaluate import rescore_likelihood
from rnngen.files import atomic_write_text, read_json
from rnngen.models import GenerativeModel
from rnngen.promotion_rule import (  # PromoteConfig, Candidate, decide: also imported from here
    Candidate,
    Decision,
    PromoteConfig,
    decide,
    needs_rescore,
    render_report,
    without_primary,
)
from rnngen.registry import (
    EVALUATION_TAG,
    LIKELIHOOD_TAG,
    TEST_SET_PREFIX,
    client,
    download_checkpoint,
    mlflow_errors,
    model_version,
)
from rnngen.tracking import TrackingConfig, TrackingError

#: folder of the challenger's run where each decision's report is logged (one file per decision)
REPORT_FOLDER = "promotion"

# Where `dvc repro` leaves what a promotion reads, by default (dvc.yaml's outs)
RUN_JSON, METRICS_JSON = layout.RUN_JSON, layout.METRICS_JSON

def candidate(mlflow_client: Any, registered: Any) -> Candidate:
    """The registry's model version ``registered`` with the metrics and test-set identity of its
    latest evaluation: the evaluate stage's run (named by the version's ``evaluation_run_id``
    tag), whose ``test_set.*`` params are the structured identity. Not evaluated yet: no metrics."""
    name, version, run_id = registered.name, str(registered.version), registered.run_id
    eval_id = registered.tags.get(EVALUATION_TAG)
    if not eval_id:
        return Candidate(name, version, run_id, {}, {})
    try:
        run = mlflow_client.get_run(eval_id)
    except mlflow_errors() as exc:
        raise TrackingError(f"model version {version} names evaluation run {eval_id}, which is gone") from exc
    test_set = {k.removeprefix(TEST_SET_PREFIX): v for k, v in run.data.params.items()
                if k.startswith(TEST_SET_PREFIX)}
    metrics = {k: float(v) for k, v in run.data.metrics.items()}
    return Candidate(name, version, run_id, metrics, test_set, evaluation_run_id=eval_id,
                     likelihood=run.data.tags.get(LIKELIHOOD_TAG, ""))


def with_reported_metrics(version: Candidate, metrics: Mapping[str, Any], primary: str, source: str) -> Candidate:
    """``version`` with the numbers of ``metrics`` (reports/metrics.json), after checking that
    they are its own: the evaluate stage logs the same numbers to the version's run."""
    logged, reported = version.metrics.get(primary), metrics.get(primary)
    if logged is None and reported is None:
        raise without_primary(version, "challenger", primary)
    if logged is None or not _is_number(reported) or not math.isclose(logged, reported, rel_tol=1e-9, abs_tol=1e-9):
        raise TrackingError(
            f"{source} ({primary} {reported}) does not match what run {version.run_id} of {version.name} "
            f"v{version.version} logged ({logged}): the evaluation is stale or of another model; run `dvc repro`"
        )
    numbers = {k: float(v) for k, v in metrics.items() if _is_number(v)}
    return dataclasses.replace(version, metrics={**version.metrics, **numbers})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def record(mlflow_client: Any, decision: Decision, cfg: PromoteConfig, report: str) -> None:
    """Tag the challenger's version, move the alias when the decision says so, log the report.

    A rerun on the current champion ("already") decides nothing and leaves its record alone.
    """
    ch, champ = decision.challenger, decision.champion
    if decision.outcome == "already":
        return
    artifact = f"{REPORT_FOLDER}/{decision.decided_at.replace(':', '')}.md"
    tags = {
        "promotion.decision": decision.outcome,
        "promotion.reason": decision.reason[:4000],
        "promotion.champion_before": champ.version if champ else "none",
        "promotion.decided_at": decision.decided_at,
        "promotion.report": artifact,
        "promotion.rule": f"{cfg.primary} lower by >= {cfg.margin:g}; tolerances "
        + ", ".join(f"{k}={v:g}" for k, v in cfg.tolerances.items()),
    }
    try:
        for key, value in tags.items():
            mlflow_client.set_model_version_tag(ch.name, ch.version, key, value)
        if decision.moves_alias:
            mlflow_client.set_registered_model_alias(ch.name, cfg.alias, ch.version)
            if champ is not None:
                mlflow_client.set_model_version_tag(ch.name, champ.version, "promotion.replaced_by", ch.version)
        mlflow_client.log_text(ch.run_id, report, artifact)
    except mlflow_errors() as exc:
        raise TrackingError(f"could not record the promotion in {mlflow_client.tracking_uri}: {exc}") from exc


#: ``rescore(mlflow_client, challenger, champion)`` -> the champion's metrics on the challenger's test set
Rescorer = Callable[[Any, Candidate, Candidate], dict[str, float]]


def promote(
    cfg: PromoteConfig,
    report_path: str | Path,
    *,
    run_json: str | Path | None = RUN_JSON,
    metrics_json: str | Path | None = METRICS_JSON,
    version: str | None = None,
    name: str | None = None,
    rescore: Rescorer | None = None,
    force: bool = False,
    uri: str | None = None,
    default_name: str = TrackingConfig.model_name,
) -> Decision:
    """Decide on the challenger and record the decision (registry tags, alias, report).

    The challenger is ``version`` of ``name`` when given (its run's metrics), else the version
    ``run_json`` names with the metrics ``metrics_json`` holds: what ``dvc repro`` just made.
    ``rescore`` gives the champion's metrics on the challenger's test set; it is called only
    when the two were scored on different test sets (or the champion has no primary metric).
    """
    run_info: dict[str, Any] = {}
    metrics: dict[str, Any] | None = None
    if version is None:
        run_info, metrics = _pipeline_outputs(Path(run_json or RUN_JSON), metrics_json)
        name, version = run_info["model_name"], str(run_info["model_version"])
    name = name or default_name
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or run_info.get("tracking_uri") or None
    mlflow_client = client(uri)
    registered = model_version(mlflow_client, name, version)
    if run_info and registered.run_id != run_info["run_id"]:
        raise TrackingError(
            f"{run_json} says {name} v{version} comes from run {run_info['run_id']}, but in "
            f"{mlflow_client.tracking_uri} it comes from run {registered.run_id}: wrong tracking store?"
        )
    challenger = candidate(mlflow_client, registered)
    if metrics is not None:
        challenger = with_reported_metrics(challenger, metrics, cfg.primary, str(metrics_json))
    champion = _champion(mlflow_client, name, challenger, cfg, None if force else rescore)
    decision = decide(challenger, champion, cfg, force=force)
    report = render_report(decision, cfg)
    record(mlflow_client, decision, cfg, report)
    atomic_write_text(report_path, report)
    return decision


def _champion(mlflow_client: Any, name: str, challenger: Candidate, cfg: PromoteConfig,
              rescore: Rescorer | None) -> Candidate | None:
    """The version of ``name`` holding ``cfg.alias`` (None: none does yet), re-scored on the
    challenger's test set by ``rescore`` when :func:`needs_rescore` says so."""
    if cfg.alias not in mlflow_client.get_registered_model(name).aliases:
        return None
    champion = candidate(mlflow_client, mlflow_client.get_model_version_by_alias(name, cfg.alias))
    if rescore is None or not needs_rescore(challenger, champion, cfg):
        return champion
    rescored = rescore(mlflow_client, challenger, champion)
    return dataclasses.replace(champion, metrics=rescored, test_set=challenger.test_set, rescored=True)


def _pipeline_outputs(run_json: Path, metrics_json: str | Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    if not run_json.is_file():
        raise TrackingError(f"{run_json} not found; run `dvc repro` first (the train stage writes it)")
    run_info = read_json(run_json)
    missing = [k for k in ("run_id", "model_name", "model_version") if not run_info.get(k)]
    if missing:
        raise TrackingError(f"{run_json} lacks {', '.join(missing)}: was the model registered?")
    metrics_path = Path(metrics_json or METRICS_JSON)
    if not metrics_path.is_file():
        raise TrackingError(f"{metrics_path} not found; run `dvc repro` first (the evaluate stage writes it)")
    return run_info, read_json(metrics_path)


def likelihood_rescorer(split_dir: str | Path, batch_size: int = 100) -> Rescorer:
    """Score the champion's NLL bounds on the challenger's test set exactly as the evaluate
    stage scored the challenger (:func:`rnngen.evaluate.rescore_likelihood`), on the test
    images of ``split_dir`` (which must be the challenger's: same ``data_sha256``)."""

    def rescore(mlflow_client: Any, challenger: Candidate, champion: Candidate) -> dict[str, float]:
        with tempfile.TemporaryDirectory() as folder:
            def champion_model() -> GenerativeModel:
                return checkpoint.load_model(download_checkpoint(mlflow_client, champion.name, champion.version,
                                                                 folder))

            return rescore_likelihood(challenger.test_set, split_dir, champion_model, batch_size)

    return rescore
