"""Gates on small synthetic inputs: each verdict, and the reason a person reads."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops.adapters.gate_report import gate_report
from mlops.core.errors import ConfigError
from mlops.core.policy import ComparisonPolicy, DataPolicy, FairnessPolicy, Policy, Threshold
from mlops.ml.gates import (
    GateResult,
    check_fairness,
    check_metric_thresholds,
    check_model_contract,
    check_training_data,
    compare_with_champion,
)
from mlops.ml.problems import Problem

pytestmark = pytest.mark.unit

RNG = np.random.default_rng(0)
N = 2000
Y = RNG.integers(0, 2, N)
SIGNAL = Y + RNG.normal(0, 0.8, N)


class Scores:
    """A stand-in classifier whose P(positive) is a fixed transform of a hidden signal."""

    def __init__(self, noise: float) -> None:
        self.p = 1 / (1 + np.exp(-(SIGNAL + np.random.default_rng(1).normal(0, noise, N) - 0.5)))

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        p = self.p[X.index.to_numpy()]
        return np.column_stack([1 - p, p])


class Fixed:
    """A stand-in classifier that gives each row the probability it is told to."""

    def __init__(self, p: np.ndarray) -> None:
        self.p = p.astype(float)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        p = self.p[X.index.to_numpy()]
        return np.column_stack([1 - p, p])


HOLDOUT = pd.DataFrame({"row": range(N), "y": Y})
POLICY = ComparisonPolicy(bootstrap_samples=200, margin=0.005)
BINARY = Problem("binary", ("no", "yes"), "y")


def compare(challenger: Scores, champion: Scores | None, label: str = "champion") -> GateResult:
    return compare_with_champion(challenger, champion, HOLDOUT, BINARY, POLICY, label)


def test_a_clearly_better_challenger_is_a_win() -> None:
    r = compare(Scores(0.1), Scores(2.0))
    assert r.passed and r.details["verdict"] == "better"
    assert r.details["interval"][0] > 0


def test_a_clearly_worse_challenger_fails_with_the_interval() -> None:
    r = compare(Scores(2.0), Scores(0.1), "champion v3")
    assert not r.passed and r.details["verdict"] == "worse"
    assert "worse than champion v3 beyond the margin 0.005" in r.reason
    assert "95% interval" in r.reason


def test_the_same_model_is_a_tie_not_a_win() -> None:
    model = Scores(0.5)
    r = compare(model, model)
    assert r.passed and r.details["verdict"] == "tie"
    assert r.details["difference"] == 0


def test_no_champion_passes_with_that_reason() -> None:
    r = compare(Scores(0.5), None)
    assert r.passed and "no champion" in r.reason


def test_metric_thresholds_name_each_failure() -> None:
    policy = Policy(version=1, metrics={"roc_auc": Threshold(min=0.9), "brier": Threshold(max=0.1)})
    ok = check_metric_thresholds({"roc_auc": 0.95, "brier": 0.05}, policy)
    bad = check_metric_thresholds({"roc_auc": 0.85, "brier": 0.2}, policy)
    assert ok.passed
    assert not bad.passed
    assert bad.reason == "roc_auc 0.8500 is not >= 0.9; brier 0.2000 is not <= 0.1"


def test_fairness_names_the_gap_and_the_groups() -> None:
    groups = pd.DataFrame({"sex": ["F"] * 500 + ["M"] * 500})
    y = np.tile([0, 1], 500)
    pred = np.concatenate([np.zeros(500, int), y[500:]])  # F never selected; M perfectly
    r = check_fairness(
        Fixed(pred),
        groups.assign(y=y),
        BINARY,
        FairnessPolicy(sensitive=("sex",), min_group_size=50),
    )
    assert not r.passed
    assert (
        "demographic parity difference on sex is 0.500 > 0.2 (selection rate M 0.500 vs F 0.000)"
        in r.reason
    )
    assert "equal opportunity difference on sex is 1.000 > 0.2" in r.reason
    assert r.details["sex"]["groups"]["F"]["rows"] == 500


def test_fairness_leaves_small_groups_out_of_the_verdict() -> None:
    groups = pd.DataFrame({"race": ["A"] * 500 + ["B"] * 500 + ["C"] * 10})
    y = np.tile([0, 1], 505)
    pred = y.copy()
    pred[-10:] = 0  # the tiny group is never selected
    r = check_fairness(
        Fixed(pred),
        groups.assign(y=y),
        BINARY,
        FairnessPolicy(sensitive=("race",), min_group_size=50),
    )
    assert r.passed
    assert r.details["race"]["too_small"] == ["C"]


def test_training_data_flags_missing_values_and_drift() -> None:
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"a": rng.normal(0, 1, 800), "b": rng.choice(["x", "y"], 800)})
    cur = pd.DataFrame({"a": rng.normal(3, 1, 800), "b": rng.choice(["x", "y"], 800)})
    cur.loc[:200, "b"] = None
    r = check_training_data(
        cur, ref, DataPolicy(max_missing_share=0.1, max_drift_share=0.3, sample_rows=800)
    )
    assert not r.passed
    assert "missing values above 10%: b 25.1%" in r.reason
    assert "drifted against the champion's training data" in r.reason
    assert "a" in r.details["drifted_columns"]
    same = check_training_data(ref, ref, DataPolicy(sample_rows=800))
    assert same.passed and same.details["drift_share"] == 0


def test_the_champion_is_compared_only_on_rows_it_never_trained_on() -> None:
    from mlops.ml.gates import unseen_rows

    frame = pd.DataFrame(
        {"a": range(300), "b": [i % 7 for i in range(300)], "y": [i % 2 for i in range(300)]}
    )
    holdout, champion_training = frame.iloc[:100], frame.iloc[50:300]
    unseen = unseen_rows(holdout, champion_training)
    pd.testing.assert_frame_equal(unseen, frame.iloc[:50])
    assert unseen_rows(holdout, None) is holdout


def test_a_metric_undefined_on_the_holdout_fails_the_thresholds_by_name() -> None:
    policy = Policy(version=1, metrics={"roc_auc": Threshold(min=0.8), "f1": Threshold(min=0.5)})
    r = check_metric_thresholds({"roc_auc": float("nan"), "f1": 0.7}, policy)
    assert not r.passed
    assert r.reason == "roc_auc is undefined on the holdout (NaN), so it cannot be >= 0.8"


def test_a_fair_binary_model_passes_with_its_gaps() -> None:
    groups = pd.DataFrame({"sex": ["F"] * 500 + ["M"] * 500})
    y = np.tile([0, 1], 500)
    r = check_fairness(
        Fixed(y), groups.assign(y=y), BINARY, FairnessPolicy(sensitive=("sex",), min_group_size=50)
    )
    assert r.passed and r.reason == "sex: DP 0.000, EO 0.000"
    assert r.details["sex"]["demographic_parity_difference"] == 0


# multiclass and regression stand-ins ---------------------------------------------------------------
class Labels:
    """A stand-in classifier certain of the class index it is told to give each row."""

    def __init__(self, labels: np.ndarray, classes: int) -> None:
        self.labels, self.classes = labels, classes

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return np.eye(self.classes)[self.labels[X.index.to_numpy()]]


class Values:
    """A stand-in regressor that answers the number it is told to for each row."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values.astype(float)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return self.values[X.index.to_numpy()]


SPECIES = Problem("multiclass", ("adelie", "chinstrap", "gentoo"), "species")
PRICE = Problem("regression", (), "price")

# 300 rows each of islands A and B, the same classes in the same order; C is too small to judge.
ISLANDS = pd.DataFrame({"island": ["A"] * 300 + ["B"] * 300 + ["C"] * 20})
SPECIES_Y = np.arange(620) % 3


def _multiclass_fairness(labels: np.ndarray) -> GateResult:
    policy = FairnessPolicy(sensitive=("island",), min_group_size=50)
    return check_fairness(Labels(labels, 3), ISLANDS.assign(species=SPECIES_Y), SPECIES, policy)


def test_a_fair_multiclass_model_passes_and_leaves_small_groups_out() -> None:
    labels = SPECIES_Y.copy()
    wrong = np.arange(620) % 10 == 0
    labels[wrong] = (labels[wrong] + 1) % 3  # one row in ten wrong, alike on A and B
    labels[600:] = (SPECIES_Y[600:] + 1) % 3  # C is always wrong, but too small to judge
    r = _multiclass_fairness(labels)
    assert r.passed, r.reason
    assert r.reason == "island: selection rate gap 0.000, error rate gap 0.000"
    assert r.details["island"]["too_small"] == ["C"]
    assert r.details["island"]["groups"]["C"]["error_rate"] == 1.0
    assert r.details["island"]["groups"]["A"]["error_rate"] == 0.1


def test_an_unfair_multiclass_model_fails_naming_the_class_the_groups_and_the_gap() -> None:
    labels = SPECIES_Y.copy()
    gentoo_on_b = np.flatnonzero(
        (SPECIES_Y == 2) & (np.arange(620) >= 300) & (np.arange(620) < 600)
    )
    labels[gentoo_on_b[::2]], labels[gentoo_on_b[1::2]] = 0, 1  # B never gets 'gentoo'
    r = _multiclass_fairness(labels)
    assert not r.passed
    assert r.reason == (
        "selection rate difference on island is 0.333 > 0.2 "
        "(selection rate of 'gentoo' A 0.333 vs B 0.000); "
        "error rate difference on island is 0.333 > 0.15 (error rate B 0.333 vs A 0.000)"
    )
    assert r.details["island"]["groups"]["B"]["selection_rate[gentoo]"] == 0
    assert r.details["island"]["selection_rate_difference"] == pytest.approx(1 / 3, abs=1e-4)


PRICE_Y = np.tile([40.0, 60.0], 300)  # mean 50, standard deviation exactly 10
GROUPS = pd.DataFrame({"group": ["A"] * 300 + ["B"] * 300})
NOISE = np.tile([2.0, 2.0, -2.0, -2.0], 150)  # errors of mean zero in each group


def _regression_fairness(
    predictions: np.ndarray, scale: float = 1.0, **limits: float
) -> GateResult:
    policy = FairnessPolicy(sensitive=("group",), min_group_size=50, **limits)
    holdout = GROUPS.assign(price=PRICE_Y * scale)
    return check_fairness(Values(predictions * scale), holdout, PRICE, policy)


def test_a_fair_regression_model_passes_with_its_gaps_in_target_sds() -> None:
    r = _regression_fairness(PRICE_Y + NOISE)
    assert r.passed, r.reason
    assert r.reason == "group: mean error gap 0.000 SD, mean prediction gap 0.000 SD"
    assert r.details["group"]["target_std"] == 10
    assert r.details["group"]["groups"]["A"]["mean_absolute_error"] == 2


def test_an_unfair_regression_model_fails_in_units_of_the_targets_spread() -> None:
    biased = PRICE_Y + NOISE + np.where(GROUPS["group"] == "B", 8.0, 0.0)  # B overestimated
    expected = (
        "mean error difference on group is 0.800 target SDs > 0.25 "
        "(mean error B {:.3f} vs A 0.000); "
        "mean prediction difference on group is 0.800 target SDs > 0.5 "
        "(mean prediction B {:.3f} vs A {:.3f})"
    )
    r = _regression_fairness(biased)
    assert not r.passed
    assert r.reason == expected.format(8, 58, 50)
    # The same model on prices a thousand times larger reads the same against the same policy.
    thousands = _regression_fairness(biased, scale=1000)
    assert thousands.reason == expected.format(8000, 58000, 50000)
    # Limits the policy names replace the defaults.
    assert _regression_fairness(
        biased, max_mean_error_difference=0.9, max_mean_prediction_difference=0.9
    ).passed


def test_a_fairness_limit_of_another_problem_type_is_refused_by_the_gate() -> None:
    policy = FairnessPolicy(sensitive=("group",), max_equal_opportunity_difference=0.1)
    with pytest.raises(
        ConfigError,
        match=r"fairness\.max_equal_opportunity_difference: does not "
        r"apply to a regression problem \(it applies to binary\)",
    ):
        check_fairness(Values(PRICE_Y), GROUPS.assign(price=PRICE_Y), PRICE, policy)


# champion comparison on other problem types --------------------------------------------------------
REG_Y = RNG.normal(0, 1, 1000)
REG_HOLDOUT = pd.DataFrame({"row": range(1000), "price": REG_Y})
CLOSE = Values(REG_Y + np.random.default_rng(2).normal(0, 0.3, 1000))
LOOSE = Values(REG_Y + np.random.default_rng(3).normal(0, 1.0, 1000))
RMSE = ComparisonPolicy(metric="rmse", bootstrap_samples=200)


def test_rmse_comparison_reads_lower_as_better() -> None:
    worse = compare_with_champion(LOOSE, CLOSE, REG_HOLDOUT, PRICE, RMSE, "champion v1")
    assert not worse.passed and worse.details["verdict"] == "worse"
    assert worse.details["challenger"] > worse.details["champion"]  # its rmse is higher
    assert worse.details["difference"] < 0
    assert "champion minus challenger: lower is better" in worse.reason
    better = compare_with_champion(CLOSE, LOOSE, REG_HOLDOUT, PRICE, RMSE, "champion v1")
    assert better.passed and better.details["verdict"] == "better"
    assert better.details["difference"] == pytest.approx(
        better.details["champion"] - better.details["challenger"], abs=1e-4
    )
    tie = compare_with_champion(CLOSE, CLOSE, REG_HOLDOUT, PRICE, RMSE, "champion v1")
    assert tie.passed and tie.details["verdict"] == "tie" and tie.details["difference"] == 0


def test_f1_macro_comparison_of_multiclass_models() -> None:
    y = np.arange(900) % 3
    holdout = pd.DataFrame({"row": range(900), "species": y})
    rng = np.random.default_rng(4)

    def noisy(share: float) -> Labels:
        labels = y.copy()
        flip = rng.random(900) < share
        labels[flip] = (labels[flip] + rng.integers(1, 3, int(flip.sum()))) % 3
        return Labels(labels, 3)

    good, bad = noisy(0.05), noisy(0.4)
    policy = ComparisonPolicy(metric="f1_macro", bootstrap_samples=100)
    worse = compare_with_champion(bad, good, holdout, SPECIES, policy, "champion")
    assert not worse.passed and worse.details["challenger"] < worse.details["champion"]
    better = compare_with_champion(good, bad, holdout, SPECIES, policy, "champion")
    assert better.passed and better.details["verdict"] == "better"
    assert "lower is better" not in better.reason
    assert (
        compare_with_champion(good, good, holdout, SPECIES, policy, "champion").details["verdict"]
        == "tie"
    )


# the gate report ---------------------------------------------------------------------------------
def test_the_gate_report_says_the_problem_type() -> None:
    results = [GateResult("fairness", True, "island: selection rate gap 0.000")]
    multi = gate_report("penguins", 3, 2, results, SPECIES)
    assert "Problem: multiclass on `species` (3 classes: adelie, chinstrap, gentoo)." in multi
    assert "Against champion v2: **all gates pass**." in multi
    binary = gate_report("adult", 1, None, results, Problem("binary", ("<=50K", ">50K"), "income"))
    assert "Problem: binary on `income` (positive class '>50K', negative '<=50K')." in binary
    assert "Problem: regression on `price`." in gate_report("prices", 1, None, results, PRICE)


# the model contract, on models saved through MLflow ----------------------------------------------
@pytest.fixture(scope="module")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small models saved as the project saves them (skops), each with the problem metadata it
    is given: a regressor, a three-class classifier, and mislabelled copies."""
    import mlflow.pyfunc
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LinearRegression, LogisticRegression

    from mlops.core.integrity import SERIALIZATION_FORMAT, SKOPS_TRUSTED_TYPES
    from mlops.core.lineage import PROBLEM_METADATA

    X = CONTRACT_X
    regressor = LinearRegression().fit(X, X["a"] * 2 + X["b"])
    classifier = LogisticRegression(max_iter=500).fit(X, np.arange(len(X)) % 3)
    root = tmp_path_factory.mktemp("models")
    folders = {}
    three = {"type": "multiclass", "target": "species", "classes": list(SPECIES.classes)}
    for name, model, meta in (
        ("regression", regressor, {"type": "regression", "target": "price", "classes": []}),
        ("multiclass", classifier, three),
        ("multiclass-said-binary", classifier, three | {"type": "binary", "classes": ["n", "y"]}),
        ("regression-said-multiclass", regressor, three),
        ("no-metadata", regressor, None),
    ):
        folders[name] = root / name
        mlflow.sklearn.save_model(
            model,
            str(folders[name]),
            signature=infer_signature(X, model.predict(X)),
            serialization_format=SERIALIZATION_FORMAT,
            skops_trusted_types=SKOPS_TRUSTED_TYPES,
            metadata={PROBLEM_METADATA: meta} if meta else None,
            pip_requirements=["mlflow"],  # inferring them loads the model in a subprocess: slow
        )

    class NotANumber(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
        def predict(self, context: object, model_input: pd.DataFrame) -> np.ndarray:
            return np.full(len(model_input), np.nan)

    folders["regression-nan"] = root / "regression-nan"
    with warnings.catch_warnings():  # "no input example": the signature is given
        warnings.simplefilter("ignore", UserWarning)
        mlflow.pyfunc.save_model(
            str(folders["regression-nan"]),
            python_model=NotANumber(),
            signature=infer_signature(X, np.zeros(len(X))),
            metadata={PROBLEM_METADATA: {"type": "regression", "target": "price", "classes": []}},
            pip_requirements=["mlflow"],
        )
    return folders


CONTRACT_X = pd.DataFrame({"a": np.linspace(0, 1, 60), "b": np.tile([0.0, 1.0, 2.0], 20)})


def test_the_model_contract_passes_models_answering_as_their_type(
    saved_models: dict[str, Path],
) -> None:
    regression = check_model_contract(saved_models["regression"], CONTRACT_X, PRICE)
    assert regression.passed, regression.reason
    assert "as a regression model; refuses a batch without 'a'" in regression.reason
    multi = check_model_contract(saved_models["multiclass"], CONTRACT_X, SPECIES)
    assert multi.passed, multi.reason
    assert multi.details["classes"] == list(SPECIES.classes)


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("multiclass-said-binary", "answers are not one 0/1 label per row"),
        (
            "regression-said-multiclass",
            "answers are not one class index in 0..2 per row "
            "(classes ['adelie', 'chinstrap', 'gentoo'])",
        ),
        ("regression-nan", "answers are not one finite number per row: array([nan, nan"),
        ("no-metadata", "the model's MLmodel metadata does not say its problem type"),
    ],
)
def test_the_model_contract_refuses_answers_that_do_not_fit_the_type(
    saved_models: dict[str, Path], model: str, reason: str
) -> None:
    r = check_model_contract(saved_models[model], CONTRACT_X)
    assert not r.passed
    assert reason in r.reason


def test_the_model_contract_refuses_a_model_of_another_problem_type(
    saved_models: dict[str, Path],
) -> None:
    r = check_model_contract(saved_models["regression"], CONTRACT_X, SPECIES)
    assert not r.passed
    assert r.reason == (
        "the model says it is regression with classes []; the pipeline's target 'species' is "
        "multiclass with classes ['adelie', 'chinstrap', 'gentoo']"
    )


def test_the_resampled_auc_is_roc_auc_score_on_each_resample_ties_and_one_class_included() -> None:
    from sklearn.metrics import roc_auc_score

    from mlops.ml.gates import _resampled_auc

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 12)
    score = rng.integers(0, 4, 12) / 4  # four values: ties within and across the classes
    draws = [rng.integers(0, 12, 12) for _ in range(300)]
    draws.append(np.flatnonzero(y == 1)[[0, 0, 1]])  # positives only: undefined
    got = _resampled_auc(y, score, draws)
    for idx, value in zip(draws, got, strict=True):
        if len(set(y[idx])) < 2:
            assert np.isnan(value)
        else:
            assert value == pytest.approx(roc_auc_score(y[idx], score[idx]), abs=1e-12)
    assert np.isnan(got).sum() >= 1 and np.isfinite(got).sum() > 250
