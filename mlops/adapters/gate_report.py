"""What a promotion shows: the gate verdicts (Prefect artifacts, MLflow run) and the model card."""

from __future__ import annotations

from mlops.ml.gates import GateResult
from mlops.ml.problems import Problem


def gate_table(results: list[GateResult]) -> list[dict[str, str]]:
    return [
        {"gate": r.gate, "verdict": "pass" if r.passed else "FAIL", "reason": r.reason}
        for r in results
    ]


def describe_problem(problem: Problem) -> str:
    """The problem type a model was judged as, its target and (classifiers) its classes."""
    text = f"{problem.kind} on `{problem.column}`"
    if problem.kind == "binary":
        return f"{text} (positive class {problem.classes[1]!r}, negative {problem.classes[0]!r})"
    if problem.kind == "multiclass":
        return f"{text} ({len(problem.classes)} classes: {', '.join(problem.classes)})"
    return text


def gate_report(
    model: str, version: int, champion: int | None, results: list[GateResult], problem: Problem
) -> str:
    passed = all(r.passed for r in results)
    lines = [
        f"# Gates for {model} v{version}",
        "",
        f"Problem: {describe_problem(problem)}.",
        "",
        f"Against champion {'v' + str(champion) if champion else '(none)'}: "
        + ("**all gates pass**." if passed else "**rejected**."),
        "",
        "| gate | verdict | reason |",
        "|---|---|---|",
        *(f"| {r.gate} | {'pass' if r.passed else '**FAIL**'} | {r.reason} |" for r in results),
        "",
    ]
    return "\n".join(lines)
