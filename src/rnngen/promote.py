"""Champion/challenger promotion in the MLflow model registry (finding and loading the models
there is :mod:`rnngen.registry`'s job).

After ``dvc repro`` trained, registered and evaluated a new model version (the challenger),
:func:`promote` compares its held-out metrics with those of the version holding the
``champion`` alias and moves the alias only when the challenger wins on the primary metric
(test NLL, IWAE bound, lower is better) by ``margin`` nats without falling behind on any
other listed metric by more than its tolerance. The very first model becomes champion.
Every decision is written on the challenger's model version (``promotion.*`` tags), into a
markdown report, and logged beside the run under ``promotion/``.

Likelihoods only compare on the same test images, binarized the same way, with the same k.
When the champion was scored on another test set (new data, another split or k) it is
re-scored on the challenger's test set before the comparison; when that is impossible the
champion stays, with the reason recorded.

Promotion changes the registry, so it is a command run after ``dvc repro``
(``rnngen promote``), never a cached DVC stage.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rnngen import checkpoint
from rnngen.evaluate import rescore_likelihood
from rnngen.files import atomic_write_text, read_json
from rnngen.models import GenerativeModel
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
#: substrings of metric names where higher is better; every other metric: lower is better
HIGHER_IS_BETTER = ("accuracy", "classifier_score", "confidence")

Outcome = Literal["first", "promoted", "kept", "already", "forced"]


@dataclass(frozen=True)
class PromoteConfig:
    #: registry alias that marks the model in service
    alias: str = "champion"
    #: the metric a challenger must win on: test NLL, IWAE bound (nats/image, lower is better)
    primary: str = "test_nll_iwae"
    #: nats/image by which the challenger's primary metric must beat the champion's; below
    #: it a difference is treated as noise and the champion stays (no churn on reruns)
    margin: float = 0.5
    #: other metrics and how far (in the metric's own units) the challenger may fall behind
    #: the champion on each; a metric either version lacks is reported as not compared
    tolerances: dict[str, float] = field(default_factory=lambda: {"test_nll_elbo": 1.0, "test_fcd": 5.0})

    def problems(self) -> list[str]:
        out = []
        if not self.alias.strip():
            out.append("alias: must not be empty")
        if not self.primary.strip():
            out.append("primary: must name a metric, e.g. test_nll_iwae")
        if not self.margin >= 0:
            out.append(f"margin: must be >= 0 (nats), got {self.margin}")
        for name, tol in self.tolerances.items():
            if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
                out.append(f"tolerances.{name}: must be a number >= 0, got {tol!r}")
        if self.primary in self.tolerances:
            out.append(f"tolerances.{self.primary}: the primary metric is judged by margin, not a tolerance")
        return out


def higher_is_better(metric: str) -> bool:
    return any(word in metric for word in HIGHER_IS_BETTER)


@dataclass(frozen=True)
class Candidate:
    """One model version as promotion sees it."""

    name: str
    version: str
    run_id: str
    metrics: dict[str, float]
    #: what identifies the test set its metrics were computed on
    test_set: dict[str, str]
    #: True when ``metrics`` come from re-scoring it on the challenger's test set
    rescored: bool = False
    #: the evaluate stage's run these metrics come from
    evaluation_run_id: str = ""
    #: exact | bound | none (a model without a likelihood: a GAN) | "" (not recorded: has one)
    likelihood: str = ""


@dataclass(frozen=True)
class MetricRow:
    """One metric of the two versions, under the rule it is judged by."""

    metric: str
    champion: float | None
    challenger: float | None
    rule: str
    #: True: passes; False: fails; None: not compared
    ok: bool | None
    note: str = ""


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str
    challenger: Candidate
    champion: Candidate | None
    rows: tuple[MetricRow, ...] = ()
    decided_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

    @property
    def moves_alias(self) -> bool:
        return self.outcome in ("first", "promoted", "forced")


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


def conditioning(c: Candidate) -> str:
    """What a version's likelihood is of: ``p(x | y)`` (a conditional model) or ``p(x)`` (also
    for evaluations from before the distinction was recorded)."""
    return "p(x | y)" if c.test_set.get("conditional") == "true" else "p(x)"


#: identity keys added later, with the value an evaluation that predates them had
_IMPLIED = {"conditional": "false"}


def test_set_differences(a: Candidate, b: Candidate) -> list[str]:
    """Keys of the test-set identity on which the two versions disagree (or one lacks)."""
    def value(c: Candidate, k: str) -> str | None:
        return c.test_set.get(k, _IMPLIED.get(k))

    return sorted(k for k in set(a.test_set) | set(b.test_set) if value(a, k) != value(b, k))


def likelihood_metric(metric: str) -> bool:
    """An NLL metric (nats or bits/dim): one a model without a likelihood lacks, and the only
    kind a champion can be re-scored on."""
    return metric.startswith(("test_nll_", "test_bpd_"))


def without_primary(version: Candidate, role: str, primary: str) -> TrackingError:
    """The refusal when ``version`` lacks the primary metric: a model without a likelihood has
    no NLL to rank by, so rank both by a metric both have."""
    if version.likelihood == "none" and likelihood_metric(primary):
        return TrackingError(
            f"{role} {version.name} v{version.version} has no likelihood (a GAN), so it has no {primary} to rank "
            f"by: compare on a metric both models have, e.g. `rnngen promote --primary test_fcd` "
            f"(promote.primary in params.yaml)"
        )
    return TrackingError(f"{role} {version.name} v{version.version} has no {primary} metric; "
                         "run the evaluate stage (dvc repro) before promoting")


def decide(challenger: Candidate, champion: Candidate | None, cfg: PromoteConfig, force: bool = False) -> Decision:
    """The promotion rule, free of side effects. A primary metric either version lacks because
    it has no likelihood is refused (:func:`without_primary`), not decided."""
    if cfg.primary not in challenger.metrics:
        raise without_primary(challenger, "challenger", cfg.primary)
    if champion is not None and champion.likelihood == "none" and cfg.primary not in champion.metrics and not force:
        raise without_primary(champion, f"champion (@{cfg.alias})", cfg.primary)
    if champion is None:
        reason = f"no version of {challenger.name!r} holds @{cfg.alias} yet: the first one evaluated takes it"
        return Decision("first", reason, challenger, None)
    if champion.version == challenger.version:
        reason = f"version {challenger.version} already holds @{cfg.alias}; nothing to decide"
        return Decision("already", reason, challenger, champion)
    rows = _rows(challenger, champion, cfg)
    if force:
        return Decision("forced", f"forced by the user over champion v{champion.version}", challenger, champion, rows)
    if conditioning(challenger) != conditioning(champion):  # no re-scoring makes these comparable
        reason = (
            f"not comparable: the challenger's likelihood is of {conditioning(challenger)} and champion "
            f"v{champion.version}'s of {conditioning(champion)} (a conditional model is scored with the labels "
            f"given); champion v{champion.version} stays (--force moves the alias anyway)"
        )
        return Decision("kept", reason, challenger, champion, rows)
    differs = [] if champion.rescored else test_set_differences(challenger, champion)
    if differs:
        reason = (
            f"not comparable: champion v{champion.version} was scored on another test set "
            f"({', '.join(differs)} differ) and could not be re-scored (only NLL metrics re-score, with the "
            f"split folder); "
            f"champion v{champion.version} stays"
        )
        return Decision("kept", reason, challenger, champion, rows)
    primary, others = rows[0], rows[1:]
    failed = [r for r in others if r.ok is False]
    if primary.ok is None:
        reason = f"champion v{champion.version} has no {cfg.primary} to compare with; it stays"
        return Decision("kept", reason, challenger, champion, rows)
    gain = primary.champion - primary.challenger  # type: ignore[operator]
    if not primary.ok:
        reason = (
            f"{cfg.primary} {primary.challenger:.3f} vs champion's {primary.champion:.3f}: "
            f"{'better' if gain > 0 else 'worse'} by {abs(gain):.3f}, needs to be lower by at least "
            f"{cfg.margin:g}; champion v{champion.version} stays"
        )
        return Decision("kept", reason, challenger, champion, rows)
    if failed:
        worse = "; ".join(f"{r.metric} {r.challenger:.3f} vs {r.champion:.3f} ({r.rule})" for r in failed)
        reason = f"wins on {cfg.primary} by {gain:.3f} but regresses beyond tolerance: {worse}; " \
                 f"champion v{champion.version} stays"
        return Decision("kept", reason, challenger, champion, rows)
    reason = (
        f"{cfg.primary} {primary.challenger:.3f} beats champion v{champion.version}'s {primary.champion:.3f} "
        f"by {gain:.3f} (margin {cfg.margin:g}) with no regression beyond tolerance"
    )
    return Decision("promoted", reason, challenger, champion, rows)


def _rows(challenger: Candidate, champion: Candidate, cfg: PromoteConfig) -> tuple[MetricRow, ...]:
    old, new = champion.metrics.get(cfg.primary), challenger.metrics.get(cfg.primary)
    rule = f"lower by >= {cfg.margin:g}"
    primary = MetricRow(cfg.primary, old, new, rule, None if old is None or new is None else new <= old - cfg.margin,
                        "" if old is not None else "champion has none")
    rows = [primary]
    for metric, tol in cfg.tolerances.items():
        old, new = champion.metrics.get(metric), challenger.metrics.get(metric)
        up = higher_is_better(metric)
        rule = f"no lower than -{tol:g}" if up else f"no higher than +{tol:g}"
        if old is None or new is None:
            who = " and ".join(side for side, v in (("champion", old), ("challenger", new)) if v is None)
            note = f"{who} has none" + (" (re-scored: NLL bounds only)" if champion.rescored and old is None else "")
            rows.append(MetricRow(metric, old, new, rule, None, note))
        else:
            rows.append(MetricRow(metric, old, new, rule, new >= old - tol if up else new <= old + tol))
    return tuple(rows)


def render_report(decision: Decision, cfg: PromoteConfig) -> str:
    """A short markdown report of one decision."""
    ch, champ = decision.challenger, decision.champion
    verdict = {
        "first": "first champion", "promoted": "promoted", "kept": "champion kept",
        "already": "no change", "forced": "promoted (forced)",
    }[decision.outcome]
    lines = [
        f"# Promotion of {ch.name} v{ch.version}",
        "",
        f"**Decision: {verdict}.** {decision.reason[:1].upper()}{decision.reason[1:]}.",
        "",
    ]
    if decision.rows:
        champ_col = f"champion v{champ.version}" if champ else "champion"
        lines += [
            f"| metric | {champ_col} | challenger v{ch.version} | change | rule | verdict |",
            "|---|---:|---:|---:|---|---|",
        ]
        for r in decision.rows:
            change = "" if r.champion is None or r.challenger is None else f"{r.challenger - r.champion:+.3f}"
            mark = {True: "pass", False: "**fail**", None: "not compared"}[r.ok]
            name = f"{r.metric} (primary)" if r.metric == cfg.primary else r.metric
            lines.append(f"| {name} | {_cell(r.champion)} | {_cell(r.challenger)} | {change} | {r.rule} | "
                         f"{mark}{' (' + r.note + ')' if r.note else ''} |")
        lines.append("")
    elif champ is None:
        lines += [f"{cfg.primary}: {ch.metrics[cfg.primary]:.3f}", ""]
    if champ is not None and champ.rescored:
        lines += [f"Champion v{champ.version} was re-scored on the challenger's test set "
                  f"({_describe_test_set(ch)}): its logged metrics came from another one.", ""]
    elif decision.rows:
        lines += [f"Test set: {_describe_test_set(ch)}.", ""]
    after = ch.version if decision.moves_alias else (champ.version if champ else "-")
    lines += [
        f"Registry: `models:/{ch.name}@{cfg.alias}` -> v{after}"
        + (f" (was v{champ.version})" if champ and decision.moves_alias else "")
        + f". Rule: primary {cfg.primary} lower by >= {cfg.margin:g}; tolerances "
        + (", ".join(f"{k} {v:g}" for k, v in cfg.tolerances.items()) or "none")
        + f". Decided {decision.decided_at}.",
        "",
    ]
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _describe_test_set(version: Candidate) -> str:
    short = {k: (v[:12] if k == "data_sha256" else v) for k, v in sorted(version.test_set.items())}
    return ", ".join(f"{k}={v}" for k, v in short.items()) or "unknown"


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
    run_json: str | Path | None = "models/run.json",
    metrics_json: str | Path | None = "reports/metrics.json",
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
        run_info, metrics = _pipeline_outputs(Path(run_json or "models/run.json"), metrics_json)
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
    aliases = mlflow_client.get_registered_model(name).aliases
    champion = None
    if cfg.alias in aliases:
        champion = candidate(mlflow_client, mlflow_client.get_model_version_by_alias(name, cfg.alias))
        needs = (champion.version != challenger.version and conditioning(champion) == conditioning(challenger)
                 and likelihood_metric(cfg.primary) and champion.likelihood != "none"  # only NLL re-scores
                 and (test_set_differences(challenger, champion) or cfg.primary not in champion.metrics))
        if needs and rescore is not None and not force:
            rescored = rescore(mlflow_client, challenger, champion)
            champion = dataclasses.replace(champion, metrics=rescored, test_set=challenger.test_set, rescored=True)
    decision = decide(challenger, champion, cfg, force=force)
    report = render_report(decision, cfg)
    record(mlflow_client, decision, cfg, report)
    atomic_write_text(report_path, report)
    return decision


def _pipeline_outputs(run_json: Path, metrics_json: str | Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    if not run_json.is_file():
        raise TrackingError(f"{run_json} not found; run `dvc repro` first (the train stage writes it)")
    run_info = read_json(run_json)
    missing = [k for k in ("run_id", "model_name", "model_version") if not run_info.get(k)]
    if missing:
        raise TrackingError(f"{run_json} lacks {', '.join(missing)}: was the model registered?")
    metrics_path = Path(metrics_json or "reports/metrics.json")
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
