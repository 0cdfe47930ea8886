"""What a promotion shows: the gate verdicts (Prefect artifacts, MLflow run) and the model card."""

from __future__ import annotations

from mlops.ml.gates import GateResult


def gate_table(results: list[GateResult]) -> list[dict[str, str]]:
    return [
        {"gate": r.gate, "verdict": "pass" if r.passed else "FAIL", "reason": r.reason}
        for r in results
    ]


def gate_report(model: str, version: int, champion: int | None, results: list[GateResult]) -> str:
    passed = all(r.passed for r in results)
    lines = [
        f"# Gates for {model} v{version}",
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
