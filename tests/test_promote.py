"""Champion/challenger promotion: the rule on its own, then on a real registry.

Registry tests work on a copy of the ``trained_model`` store. Challengers are new versions of
the same logged model, from new runs that carry the trained run's params and tags, with an
evaluation run whose metrics are shifted by a known amount: the rule only reads metrics, and
shifting them makes "worse" and "better" exact instead of depending on what a second tiny
training run happens to reach.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rnngen import promote
from rnngen.files import read_json, write_json
from rnngen.promote import Candidate, PromoteConfig, decide
from rnngen.tracking import TrackingError

SAME_TEST_SET = {"data_sha256": "abc", "k": "4", "n_test": "100", "n_quality": "50"}


def cand(version: str, test_set: dict[str, str] | None = None, **metrics: float) -> Candidate:
    return Candidate("rnngen", version, f"run{version}", metrics, dict(SAME_TEST_SET if test_set is None else test_set))


# --------------------------------------------------------------------------- the rule


def test_rule_first_margin_tolerance_and_test_set() -> None:
    cfg = PromoteConfig(margin=0.5, tolerances={"test_nll_elbo": 1.0, "test_accuracy_completed": 0.02})
    champ = cand("1", test_nll_iwae=90.0, test_nll_elbo=95.0, test_accuracy_completed=0.80)

    assert decide(champ, None, cfg).outcome == "first"
    assert decide(champ, champ, cfg).outcome == "already"
    # better, but within the margin: noise, the champion stays
    small = decide(cand("2", test_nll_iwae=89.8, test_nll_elbo=95.0), champ, cfg)
    assert (small.outcome, small.moves_alias) == ("kept", False)
    assert "lower by at least 0.5" in small.reason
    # wins on the primary metric but the ELBO regresses beyond tolerance
    regress = decide(cand("3", test_nll_iwae=88.0, test_nll_elbo=96.5), champ, cfg)
    assert regress.outcome == "kept" and "test_nll_elbo" in regress.reason
    # accuracy is higher-is-better: a drop beyond 0.02 fails, a rise passes
    assert decide(cand("4", test_nll_iwae=88.0, test_nll_elbo=95.0, test_accuracy_completed=0.70),
                  champ, cfg).outcome == "kept"
    win = decide(cand("5", test_nll_iwae=88.0, test_nll_elbo=95.5, test_accuracy_completed=0.90), champ, cfg)
    assert (win.outcome, win.moves_alias) == ("promoted", True)
    # a metric only one side has is shown, not judged
    partial = decide(cand("6", test_nll_iwae=88.0, test_nll_elbo=95.0), champ, cfg)
    assert partial.outcome == "promoted"
    assert [r.ok for r in partial.rows] == [True, True, None]
    # a champion scored on other test images is no yardstick
    other = decide(cand("7", {**SAME_TEST_SET, "n_test": "500"}, test_nll_iwae=80.0, test_nll_elbo=85.0), champ, cfg)
    assert other.outcome == "kept" and "n_test" in other.reason
    assert decide(cand("8", test_nll_iwae=99.0), champ, cfg, force=True).outcome == "forced"
    with pytest.raises(TrackingError, match="test_nll_iwae"):
        decide(cand("9", test_nll_elbo=80.0), champ, cfg)


def test_a_conditional_likelihood_is_never_ranked_against_an_unconditional_one() -> None:
    cfg = PromoteConfig()
    champ = cand("1", test_nll_iwae=90.0)  # evaluated before "conditional" was recorded: p(x)
    conditional = cand("2", {**SAME_TEST_SET, "conditional": "true"}, test_nll_iwae=70.0)
    kept = decide(conditional, champ, cfg)
    assert (kept.outcome, kept.moves_alias) == ("kept", False)
    assert "p(x | y)" in kept.reason and "p(x)" in kept.reason
    assert decide(conditional, champ, cfg, force=True).outcome == "forced"
    # and the other way round; an explicit "false" equals a missing one
    back = decide(cand("3", {**SAME_TEST_SET, "conditional": "false"}, test_nll_iwae=60.0),
                  cand("2", {**SAME_TEST_SET, "conditional": "true"}, test_nll_iwae=70.0), cfg)
    assert back.outcome == "kept" and "p(x | y)" in back.reason
    plain = decide(cand("4", {**SAME_TEST_SET, "conditional": "false"}, test_nll_iwae=80.0), champ, cfg)
    assert plain.outcome == "promoted"


def test_config_problems() -> None:
    from rnngen.config import ConfigError, from_dict

    with pytest.raises(ConfigError) as err:
        from_dict(PromoteConfig, {"margin": -1, "tolerances": {"test_nll_elbo": "x"}, "margn": 1}, "promote")
    text = str(err.value)
    assert "promote.margn: unknown key; did you mean 'promote.margin'?" in text
    cfg = from_dict(PromoteConfig, {"margin": 0.2, "tolerances": {"test_fcd": 2}}, "promote")
    assert (cfg.margin, cfg.tolerances) == (0.2, {"test_fcd": 2})
    assert PromoteConfig(margin=-1, tolerances={"test_nll_elbo": -2}).problems() == [
        "margin: must be >= 0 (nats), got -1",
        "tolerances.test_nll_elbo: must be a number >= 0, got -2",
    ]


# ------------------------------------------------------------------------ the registry


@pytest.fixture()
def store(trained_model: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A private copy of the trained model's store, with the pipeline outputs beside it. MLflow's
    registry resolves a version's ``models:/m-...`` source through the process-wide tracking URI,
    which an earlier test in this process may have pointed at its own store: point it here."""
    import mlflow

    shutil.copy(trained_model["dir"] / "mlflow.db", tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    yield {"uri": uri, "dir": tmp_path, "run_json": trained_model["models"] / "run.json",
           "metrics": trained_model["metrics"], "split": trained_model["split"]}
    mlflow.set_tracking_uri(before)


def register_challenger(store: dict[str, Any], shift: float, test_set: dict[str, str] | None = None
                        ) -> dict[str, Path]:
    """A new version of the trained model (same logged model, a copied run) whose evaluation
    run holds every test NLL metric shifted by ``shift`` nats and ``test_set`` replacing parts
    of the identity; returns its run.json and metrics.json."""
    import mlflow

    from rnngen.registry import EVALUATION_TAG, TEST_SET_PREFIX

    client = mlflow.MlflowClient(tracking_uri=store["uri"])
    base = read_json(store["run_json"])
    run = client.get_run(base["run_id"])
    base_version = client.get_model_version(base["model_name"], base["model_version"])
    evaluation = client.get_run(base_version.tags[EVALUATION_TAG])
    copied = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
    new = client.create_run(run.info.experiment_id, tags=copied, run_name=f"challenger{shift:+g}")
    rid = new.info.run_id
    for key, value in run.data.params.items():
        client.log_param(rid, key, value)
    client.set_terminated(rid)
    ev = client.create_run(run.info.experiment_id, tags={"mlflow.parentRunId": rid}, run_name="evaluate")
    identity = {**{k.removeprefix(TEST_SET_PREFIX): v for k, v in evaluation.data.params.items()},
                **(test_set or {})}
    for key, value in identity.items():
        client.log_param(ev.info.run_id, TEST_SET_PREFIX + key, value)
    metrics = {k: v + shift if k.startswith("test_nll") else v for k, v in evaluation.data.metrics.items()}
    for key, value in metrics.items():
        client.log_metric(ev.info.run_id, key, value)
    client.set_terminated(ev.info.run_id)
    mv = client.create_model_version(base["model_name"], base_version.source, run_id=rid)
    client.set_model_version_tag(base["model_name"], mv.version, EVALUATION_TAG, ev.info.run_id)
    folder = store["dir"] / f"v{mv.version}"
    write_json(folder / "run.json", {**base, "run_id": rid, "model_version": mv.version})
    write_json(folder / "metrics.json", {**read_json(store["metrics"]), **metrics})
    return {"run_json": folder / "run.json", "metrics": folder / "metrics.json"}


def run_promote(store: dict[str, Any], paths: dict[str, Path], **kwargs: Any) -> tuple[promote.Decision, str]:
    report = store["dir"] / "promotion.md"
    decision = promote.promote(PromoteConfig(margin=0.5), report, run_json=paths["run_json"],
                               metrics_json=paths["metrics"], **kwargs)
    return decision, report.read_text()


def registry(store: dict[str, Any]) -> tuple[Any, str]:
    client = promote.client(store["uri"])
    champion = client.get_registered_model("rnngen").aliases.get("champion")
    return client, None if champion is None else str(champion)


def test_first_retrain_promotes_then_worse_stays_then_better_moves(store: dict[str, Any]) -> None:
    first, report = run_promote(store, store)
    client, champion = registry(store)
    v1 = read_json(store["run_json"])["model_version"]
    assert (first.outcome, champion) == ("first", v1)
    assert client.get_model_version("rnngen", v1).tags["promotion.decision"] == "first"
    assert "first champion" in report

    worse = register_challenger(store, +2.0)
    decision, report = run_promote(store, worse)
    client, champion = registry(store)
    v2 = decision.challenger.version
    assert (decision.outcome, champion) == ("kept", v1)
    tags = client.get_model_version("rnngen", v2).tags
    assert tags["promotion.decision"] == "kept"
    assert "test_nll_iwae" in tags["promotion.reason"] and "worse by 2.000" in tags["promotion.reason"]
    assert tags["promotion.champion_before"] == v1
    assert "champion kept" in report and "| test_nll_iwae (primary) |" in report and "**fail**" in report
    logged = client.download_artifacts(decision.challenger.run_id, tags["promotion.report"], str(store["dir"]))
    assert Path(logged).read_text() == report

    better = register_challenger(store, -2.0)
    decision, report = run_promote(store, better)
    client, champion = registry(store)
    v3 = decision.challenger.version
    assert (decision.outcome, champion) == ("promoted", v3)
    assert client.get_model_version("rnngen", v3).tags["promotion.decision"] == "promoted"
    assert client.get_model_version("rnngen", v1).tags["promotion.replaced_by"] == v3
    assert f"-> v{v3} (was v{v1})" in report

    again, report = run_promote(store, better)  # rerunning `make retrain` without changes
    client, champion = registry(store)
    assert (again.outcome, champion) == ("already", v3) and "no change" in report
    assert client.get_model_version("rnngen", v3).tags["promotion.decision"] == "promoted"  # record kept


def test_champion_from_other_data_is_rescored(store: dict[str, Any]) -> None:
    run_promote(store, store)
    # the champion was scored with another k: no way to re-score given, so not comparable
    champion_k = read_json(store["metrics"])["test_set"]["k"]
    other_k = {"k": str(int(champion_k) + 2)}
    challenger = register_challenger(store, -1.0, test_set=other_k)
    decision, _ = run_promote(store, challenger)
    assert decision.outcome == "kept" and "k differ" in decision.reason

    challenger = register_challenger(store, -1.0, test_set={"n_quality": "7"})  # FCD from other n: no yardstick
    assert run_promote(store, challenger)[0].outcome == "kept"

    challenger = register_challenger(store, -1.0)
    rescore = promote.likelihood_rescorer(store["split"])
    decision, _ = run_promote(store, challenger, rescore=rescore)
    assert decision.outcome == "promoted" and decision.champion is not None and not decision.champion.rescored

    # re-scoring from the structured identity: same checkpoint, images, seed and k as the
    # evaluate stage gives the numbers it logged
    base = read_json(store["run_json"])
    client = promote.client(store["uri"])
    champ = promote.candidate(client, client.get_model_version("rnngen", base["model_version"]))
    rescored = rescore(client, champ, champ)
    original = read_json(store["metrics"])
    assert rescored["test_nll_iwae"] == pytest.approx(original["test_nll_iwae"], abs=1e-6)
    assert rescored["test_nll_elbo"] == pytest.approx(original["test_nll_elbo"], abs=1e-6)


def test_a_champion_judged_by_another_classifier_is_compared_on_likelihood_alone(store: dict[str, Any]) -> None:
    """A retrained judge gives other accuracies and FCDs: the champion is re-scored on the NLL,
    and its FCD, by the other judge, is shown but never compared."""
    run_promote(store, store)
    assert len(read_json(store["metrics"])["test_set"]["judge_sha256"]) == 64  # the evaluate stage records it
    challenger = register_challenger(store, -1.0, test_set={"judge_sha256": "0" * 64})
    assert run_promote(store, challenger)[0].outcome == "kept"  # no re-scoring: no yardstick at all
    decision, _ = run_promote(store, challenger, rescore=promote.likelihood_rescorer(store["split"]))
    assert decision.outcome == "promoted" and decision.champion is not None and decision.champion.rescored
    fcd = [row for row in decision.rows if row.metric == "test_fcd"]
    assert fcd and fcd[0].ok is None, decision.rows


def test_bad_inputs_change_nothing(store: dict[str, Any], tmp_path: Path) -> None:
    report = tmp_path / "out" / "promotion.md"
    cfg = PromoteConfig()
    with pytest.raises(TrackingError, match="run `dvc repro` first"):
        promote.promote(cfg, report, run_json=tmp_path / "missing.json", metrics_json=store["metrics"])
    stale = tmp_path / "stale.json"
    metrics = read_json(store["metrics"])
    write_json(stale, {**metrics, "test_nll_iwae": metrics["test_nll_iwae"] + 1})  # another model's numbers
    with pytest.raises(TrackingError, match="stale"):
        promote.promote(cfg, report, run_json=store["run_json"], metrics_json=stale)
    with pytest.raises(TrackingError, match="no version 99"):
        promote.promote(cfg, report, version="99")
    with pytest.raises(TrackingError, match="no registered model 'nope'"):
        promote.promote(cfg, report, version="1", name="nope")
    assert not report.parent.exists()
    assert registry(store)[1] is None
