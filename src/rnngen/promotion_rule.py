"""The champion/challenger rule on its own: which model version should hold the alias, from
the held-out metrics of the two (:func:`decide`), and the markdown report of that decision.
No registry and no I/O here: :mod:`rnngen.promote` finds the versions, re-scores a champion
when :func:`needs_rescore` says so, and records the decision.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Literal

from rnngen.tracking import TrackingError

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


def conditioning(c: Candidate) -> str:
    """What a version's likelihood is of: ``p(x | y)`` (a conditional model) or ``p(x)``; a
    version evaluated before the test set recorded ``conditional`` (still in registries) is
    unconditional, so ``p(x)``."""
    return "p(x | y)" if c.test_set.get("conditional") == "true" else "p(x)"


#: identity keys the evaluate stage records today but older evaluations lack, with the value
#: those had: a version registered before the key still compares with new ones
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


def needs_rescore(challenger: Candidate, champion: Candidate, cfg: PromoteConfig) -> bool:
    """Whether ``champion`` must be re-scored on the challenger's test set before the two
    compare: another version with the same conditioning, a primary metric that re-scores (an
    NLL; the champion has a likelihood) and another test set or no primary metric."""
    return bool(champion.version != challenger.version and conditioning(champion) == conditioning(challenger)
                and likelihood_metric(cfg.primary) and champion.likelihood != "none"
                and (test_set_differences(challenger, champion) or cfg.primary not in champion.metrics))


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

