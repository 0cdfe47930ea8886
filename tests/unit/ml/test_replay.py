"""The replay gate (``mlops.ml.replay``): a challenger that wins on its holdout but would have
done worse than the champion's real answers to production traffic is stopped, with how many
answers would change and in which groups; what cannot be judged says why and passes."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.pipeline import Pipeline

from mlops.core.policy import Policy
from mlops.ml.gates import compare_with_champion
from mlops.ml.problems import Problem
from mlops.ml.replay import check_replay

BINARY = Problem("binary", ("no", "yes"), "y")
FEATURES = ["x", "group"]
POLICY = Policy.model_validate(
    {
        "version": 1,
        "metrics": {"roc_auc": {"min": 0.5}},
        "comparison": {"metric": "roc_auc", "bootstrap_samples": 200},
        "fairness": {"sensitive": ["group"]},
    }
)


def region(n: int, low: float, high: float, seed: int, noise: float = 0.0) -> pd.DataFrame:
    """Rows with x in [low, high): in [0, 1) the answer is yes above 0.5; in [1, 2), where the
    relation turns, yes below 1.5. ``noise`` flips that share of the labels."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(low, high, n)
    yes = np.where(x < 1, x > 0.5, x < 1.5)
    yes ^= rng.random(n) < noise
    group = np.where(rng.random(n) < 0.3, "b", "a")
    return pd.DataFrame({"x": x, "group": group, "y": np.where(yes, "yes", "no")})


def fit(frame: pd.DataFrame) -> Pipeline:
    """A tree model on x alone (the group is only a sensitive column)."""
    from sklearn.compose import ColumnTransformer

    model = Pipeline(
        [
            ("features", ColumnTransformer([("x", "passthrough", ["x"])])),
            ("model", GradientBoostingClassifier(n_estimators=30, max_depth=2, random_state=0)),
        ]
    )
    return model.fit(frame[FEATURES], (frame["y"] == "yes").astype("int64"))  # as training encodes


def logged(model: Pipeline, frame: pd.DataFrame, version: int) -> pd.DataFrame:
    """``frame`` as the prediction log holds it once ``model`` (v``version``) answered it and
    the labels came back."""
    p = model.predict_proba(frame[FEATURES])[:, 1]
    return frame[FEATURES].assign(
        prediction=np.where(p >= 0.5, "yes", "no"), probability=p, version=version, label=frame["y"]
    )


def test_a_challenger_that_wins_on_the_holdout_but_loses_on_replayed_traffic_is_stopped() -> None:
    # the champion learnt both regions (its older data's [0, 1) labels noisy); the challenger's
    # data version holds [0, 1) only, clean: it is better there and has never seen [1, 2)
    champion = fit(pd.concat([region(2000, 0, 1, 1, noise=0.3), region(2000, 1, 2, 2)]))
    challenger_rows = region(3000, 0, 1, 3)
    challenger = fit(challenger_rows)
    holdout = region(1000, 0, 1, 4).assign(y=lambda f: (f["y"] == "yes").astype("int64"))
    on_holdout = compare_with_champion(
        challenger, champion, holdout, BINARY, POLICY.comparison, "champion v1"
    )
    assert on_holdout.passed and on_holdout.details["verdict"] == "better", on_holdout.reason

    production = logged(champion, region(800, 1, 2, 5), version=1)
    gate = check_replay(challenger, production, 1, BINARY, FEATURES, POLICY, challenger_rows)
    assert not gate.passed and gate.gate == "replay", gate.reason
    assert gate.reason.startswith(
        "worse than champion v1's answers to 800 labelled production rows in the last 168 h "
        "(of 800 it answered) beyond the margin 0.005: roc_auc difference -"
    ), gate.reason
    assert gate.details["champion"] > 0.9 and gate.details["challenger"] < 0.7, gate.details
    # what it would have changed, and for whom
    assert gate.details["changed"] > 200 and "answers would change" in gate.reason
    groups = {g["group"]: g for g in gate.details["groups"]["group"]}
    assert set(groups) == {"a", "b"} and sum(g["rows"] for g in groups.values()) == 800
    assert sum(g["changed"] for g in groups.values()) == gate.details["changed"]
    assert f"most in group=a ({groups['a']['changed']} of {groups['a']['rows']})" in gate.reason

    # the same challenger against traffic like its holdout passes: the gate judges the traffic
    calm = logged(champion, region(800, 0, 1, 6), version=1)
    assert check_replay(challenger, calm, 1, BINARY, FEATURES, POLICY, challenger_rows).passed


def test_only_the_champions_labelled_answers_the_challenger_never_saw_are_replayed() -> None:
    champion = fit(region(2000, 0, 2, 1))
    challenger_rows = region(2000, 0, 2, 2)
    challenger = fit(challenger_rows)
    answered = logged(champion, region(600, 0, 2, 3), version=1)
    unlabelled = logged(champion, region(100, 0, 2, 4), version=1).assign(label=None)
    other = logged(champion, region(100, 0, 2, 5), version=7)  # another version's answers
    seen = logged(champion, challenger_rows.head(150), version=1)  # trained on by the challenger
    rows = pd.concat([answered, unlabelled, other, seen], ignore_index=True)
    gate = check_replay(challenger, rows, 1, BINARY, FEATURES, POLICY, challenger_rows)
    assert gate.passed, gate.reason
    assert gate.details["answered"] == 850 and gate.details["labelled"] == 750
    assert gate.details["trained_on"] == 150 and gate.details["replayed"] == 600
    assert "600 labelled production rows in the last 168 h (of 850 it answered; 150 the " in (
        gate.reason
    )


def test_what_cannot_be_replayed_is_reported_and_passes() -> None:
    model = fit(region(1000, 0, 1, 1))
    rows = logged(model, region(100, 0, 1, 2), version=1)
    few = check_replay(model, rows, 1, BINARY, FEATURES, POLICY)
    assert few.passed and few.reason.startswith("not judged: champion v1's answers to 100 ")
    assert few.reason.endswith("fewer than 200")
    first = check_replay(model, rows, None, BINARY, FEATURES, POLICY)
    assert first.passed and first.reason == "no champion yet: no production answers to replay"
    empty = check_replay(model, pd.DataFrame(columns=[*FEATURES, "label"]), 1, BINARY, FEATURES, POLICY)  # fmt: skip
    assert empty.passed and "answers to 0 labelled production rows" in empty.reason
    lacking = check_replay(model, rows.drop(columns="x"), 1, BINARY, FEATURES, POLICY)
    assert lacking.passed and "lacks feature column(s) ['x']" in lacking.reason
    many = logged(model, region(400, 0, 1, 3), version=1).drop(columns="probability")
    blind = check_replay(model, many, 1, BINARY, FEATURES, POLICY)
    assert blind.passed and "the log holds no class probabilities" in blind.reason
    off = POLICY.model_copy(update={"replay": POLICY.replay.model_copy(update={"enabled": False})})
    assert check_replay(model, many, 1, BINARY, FEATURES, off).reason == (
        "off (replay.enabled is false)"
    )
