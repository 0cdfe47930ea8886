"""What a promotion shows: the gate verdicts (Prefect artifacts, MLflow run) and the model card."""

from __future__ import annotations

from dataclasses import asdict

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.gates import GateResult
from tasks.registry import registry_client


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


@task(name="publish-gate-report", cache_policy=NO_CACHE, persist_result=False)
def publish_gate_report(
    tracking_uri: str,
    model: str,
    version: int,
    run_id: str,
    champion: int | None,
    results: list[GateResult],
) -> None:
    """The gate verdicts as Prefect artifacts and on the version's MLflow run (gates.json, gates.md)."""
    report = gate_report(model, version, champion, results)
    create_table_artifact(
        key="gate-results", table=gate_table(results), description=f"{model} v{version}: gates"
    )
    create_markdown_artifact(key="gate-report", markdown=report, description=f"{model} v{version}")
    client = registry_client(tracking_uri)
    client.log_dict(
        run_id, {"champion": champion, "gates": [asdict(r) for r in results]}, "gates.json"
    )
    client.log_text(run_id, report, "gates.md")
