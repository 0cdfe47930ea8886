"""The `mlops` command: the local stack, the versioned data, training and the demo."""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from mlops.cli.init import init
from mlops.cli.run import fail, need_stack, project_object, reported, run_flow, settings
from mlops.core.errors import MlopsError
from mlops.core.lineage import CHALLENGER_ALIAS, CHAMPION_ALIAS
from mlops.core.settings import Settings
from mlops.stack.deployments import MONITORING, PACKAGING, PROMOTION, RELEASE, TRAINING

app = typer.Typer(
    help="CI/CD for machine learning on Prefect: local stack, versioned data, training.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

data_app = typer.Typer(
    help="The DVC-versioned dataset of the active pipeline.", no_args_is_help=True
)

app.add_typer(data_app, name="data")

policy_app = typer.Typer(help="The versioned policy of the active pipeline.", no_args_is_help=True)

app.add_typer(policy_app, name="policy")

model_app = typer.Typer(
    help="The models of this project: one pipeline config each, with its deployments.",
    no_args_is_help=True,
)

app.add_typer(model_app, name="model")
app.command("init")(init)

# Options several commands take, declared once.
PipelineOption = Annotated[
    Path | None, typer.Option(help="Pipeline config (default: MLOPS_PIPELINE).")
]
ModelArgument = Annotated[str, typer.Argument(help="Registered model name.")]
VersionRef = Annotated[str, typer.Option(help="Version number or alias.")]

REPRODUCTION = "flows/reproduction.py:reproduction"
DEMO = "examples/adult/demo.py:closed_loop"


@app.command()
def up(
    worker: Annotated[
        bool, typer.Option(help="Also start a process worker for the deployments.")
    ] = True,
) -> None:
    """Start the Prefect server, MLflow server and a worker on MLOPS_HOST (127.0.0.1); wait until
    they answer. With MLOPS_DATABASE_URL both servers keep their state on that PostgreSQL
    server (a team's shared stack, which needs both servers' auth beyond loopback)."""
    from mlops.stack.local import LocalStack

    found = settings()
    with reported():
        LocalStack(found).up(with_worker=worker)
    typer.echo("")
    typer.echo(f"Prefect UI   {found.prefect_ui_url}")
    typer.echo(f"MLflow UI    {found.mlflow_tracking_uri}")
    typer.echo(f"work pool    {found.work_pool} (process)")
    typer.echo(f"To use the prefect CLI here: export PREFECT_API_URL={found.prefect_api_url}")


@app.command()
def deploy(
    env: Annotated[
        str, typer.Option(help="Environment: a file under deployments/environments/.")
    ] = "local",
    create_pool: Annotated[
        bool, typer.Option(help="Create the environment's work pool if it does not exist.")
    ] = False,
) -> None:
    """Register every deployment of prefect.yaml on the work pool of an environment (CI's deploy)."""
    from mlops.stack.environments import deploy_environment
    from mlops.stack.local import LocalStack

    with reported():
        if env == "local":  # the local stack's own pool, on its Prefect server
            found = settings()
            need_stack(found)
            stack = LocalStack(found, out=typer.echo)
            stack.ensure_work_pool()
            stack.deploy(dict(os.environ))
            return
        for line in deploy_environment(Settings().project_dir, env, create_pool):
            typer.echo(line)


@app.command()
def down() -> None:
    """Stop exactly the processes `mlops up` and local releases started."""
    found = settings()
    with reported():
        _down(found)


def _down(found: Settings) -> None:
    from mlops.release.targets.local import LocalTarget
    from mlops.stack.local import LocalStack

    for folder in sorted((found.state_dir / "release").glob("*/")):
        LocalTarget(found, folder.name).stop()
        typer.echo(f"release target {folder.name}: router and model servers stopped")
    LocalStack(found).down()


@app.command()
def status() -> None:
    """Say which local services run, where, and which are dead; then the project's models."""
    from mlops.stack.local import LocalStack

    found = settings()
    with reported():
        rows = LocalStack(found).status()
    if not rows:
        typer.echo("the local stack is not running (start it with `mlops up`)")
    for name, state, where in rows:
        typer.echo(f"{name:<8} {state:<50} {where}")
    typer.echo("")
    _echo_models(found)
    if any(not state.startswith("running") for _, state, _ in rows):
        raise typer.Exit(1)


@app.command()
def models() -> None:
    """One line per model prefect.yaml deploys: its pipeline, champion, where it serves and its
    last monitoring verdict (what only the stack knows is unknown while it is down)."""
    found = settings()
    if not _echo_models(found):
        raise typer.Exit(1)


def _echo_models(found: Settings) -> bool:
    """Print the models table; a prefect.yaml that cannot be read is one error line (False)."""
    from mlops.cli.models import model_table

    try:
        table = model_table(found)
    except MlopsError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        return False
    for line in table.lines():
        typer.echo(line)
    return True


@model_app.command("add")
def model_add(
    pipeline: Annotated[
        Path, typer.Argument(help="The pipeline config (YAML), inside the project folder.")
    ],
) -> None:
    """Write a pipeline's deployments and automations to prefect.yaml; register them if the
    local stack runs."""
    from mlops.stack.deployments import add_model
    from mlops.stack.local import LocalStack
    from mlops.stack.processes import healthy

    found = settings()
    with reported():
        names = add_model(found.project_dir, pipeline.resolve(), out=typer.echo)
        if not healthy(f"{found.prefect_api_url}/health"):
            typer.echo(
                f"the local stack is not running (no Prefect server at {found.prefect_api_url}): "
                "register them with `mlops up`, or `mlops deploy --env ENV` for an environment"
            )
            return
        # `mlops up` made the stack's work pool; `prefect deploy` names it if it is gone
        LocalStack(found, out=typer.echo).deploy(dict(os.environ), names)
    typer.echo(f"run one: prefect deployment run '{names[0]}'")


@data_app.command("pull")
def data_pull() -> None:
    """Materialise the DVC-tracked dataset and make sure the DVC remote holds it."""
    from mlops.adapters.dvc import configure_remote, pull_dataset
    from mlops.core.config import load_pipeline_config

    found = settings()
    with reported():
        cfg = load_pipeline_config(found.pipeline)
        if found.dvc_remote_url:
            configure_remote(found.project_dir, found.dvc_remote_url, found.dvc_remote_endpoint_url)
        how = pull_dataset(found.project_dir, cfg.data.path, cfg.data.seed)
    typer.echo(f"{cfg.data.path}: {how}")


@data_app.command("check")
def data_check(
    rev: Annotated[
        str | None, typer.Option(help="Git revision of the data version (default: the workspace).")
    ] = None,
) -> None:
    """Check the DVC-tracked dataset against the pipeline's data contract (CI's data test)."""
    from mlops.adapters.dvc import load_dataset, pull_dataset, resolve_data_version
    from mlops.core.config import load_pipeline_config
    from mlops.ml.contract import check_contract

    found = settings()
    with reported():
        cfg = load_pipeline_config(found.pipeline)
        if rev is None:
            pull_dataset(found.project_dir, cfg.data.path, cfg.data.seed)
        version = resolve_data_version(found.project_dir, cfg.data.path, rev)
        frame = load_dataset(found.project_dir, version, cfg.data.na_values)
        source = f"{version.path}@{version.short}"
        check_contract(frame, cfg.contract, source, found.reports_dir / "data-check")
    typer.echo(f"{source}: {len(frame)} rows meet the data contract")


@app.command()
def train(
    pipeline: PipelineOption = None,
    data_rev: Annotated[
        str | None, typer.Option(help="Git revision of the data (default: workspace).")
    ] = None,
    hand_over: Annotated[
        str,
        typer.Option(
            help="After registering: none, promotion (the gates, then champion) or release "
            "(the gates, then the release flow by the policy's strategy and target)."
        ),
    ] = "none",
) -> None:
    """Run the training flow in this process against the local stack."""
    found = settings()
    if hand_over not in ("none", "promotion", "release"):
        raise fail(MlopsError(f"--hand-over {hand_over!r}: use none, promotion or release"))
    # a failing gate of the hand-over is a reason too: run_flow reports it in one line
    result = run_flow(
        found, TRAINING, pipeline=pipeline, data_rev=data_rev, trigger="cli", hand_over=hand_over
    )
    _print_version(result)


@app.command()
def promote(
    version: Annotated[
        str, typer.Option(help="Version number or alias to judge.")
    ] = CHALLENGER_ALIAS,
    pipeline: PipelineOption = None,
) -> None:
    """Run the gates on a version and make it champion if they pass (in this process)."""
    # a gate, an approval or a conflict: the reason is the message, whatever its type
    outcome = run_flow(
        settings(),
        PROMOTION,
        errors=(Exception,),
        version=version,
        pipeline=pipeline,
        trigger="cli",
    )
    _print_outcome(outcome)


@policy_app.command("apply")
def policy_apply(pipeline: PipelineOption = None) -> None:
    """Record the policy file's new version and emit mlops.policy.updated: the retraining
    automation then judges the champion against it and retrains if it fails."""
    found = settings()
    with reported():
        need_stack(found)
        from mlops.adapters.policy_changes import apply_policy
        from mlops.core.config import load_pipeline_config
        from mlops.release.promotion import current_user

        cfg = load_pipeline_config(pipeline or found.pipeline)
        what, event = apply_policy(
            str(found.mlflow_tracking_uri),
            cfg.model_name,
            cfg.policy,
            set(cfg.features.columns),
            current_user(),
            cfg.target.kind,
        )
    typer.echo(what + (f"; event mlops.policy.updated {event}" if event else ""))


@app.command()
def monitor(pipeline: PipelineOption = None) -> None:
    """Judge the production window since the last one now (the monitoring flow, in this process)."""
    outcome = run_flow(settings(), MONITORING, pipeline=pipeline)
    typer.echo(f"{outcome.model} v{outcome.version}: {outcome.rows} rows")
    for objective, line in outcome.verdicts().items():
        typer.echo(f"  {objective:<12} {line}")
    for problem in outcome.problems:
        typer.echo(f"  problem      {problem}")
    for name, eid in outcome.events.items():
        typer.echo(f"  event        {name} {eid}")


def _print_outcome(outcome: Any) -> None:
    for gate in outcome.gates:
        typer.echo(f"  {gate.gate:<24} {'pass' if gate.passed else 'FAIL'}  {gate.reason}")
    if outcome.promoted:
        was = f"v{outcome.previous_champion}" if outcome.previous_champion else "none"
        typer.echo(f"{outcome.model} v{outcome.version} is champion (was {was})")
    else:
        typer.echo(f"{outcome.model} v{outcome.version}: {outcome.reason}")


@app.command()
def audit(
    model: ModelArgument,
    version: Annotated[int | None, typer.Option(help="Version (default: the champion).")] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Walk the model's audit hash chain instead; name the first broken link, exit 1 if broken.",
        ),
    ] = False,
) -> None:
    """Print a version's lineage chain: data, code, parameters, metrics, gates, approvals, aliases."""
    found = settings()
    from mlflow.exceptions import MlflowException

    with reported(MlopsError, MlflowException, LookupError):
        need_stack(found)
        from mlops.adapters.audit import AuditTrail, describe_version

        if verify:
            report = AuditTrail(str(found.mlflow_tracking_uri)).verify(model)
            typer.echo(report.text())
            if not report.ok:
                raise typer.Exit(1)
            return
        typer.echo(describe_version(str(found.mlflow_tracking_uri), model, version))


@app.command()
def reproduce(
    model: ModelArgument,
    version: Annotated[int, typer.Option(help="Version to retrain.")],
) -> None:
    """Retrain a version from its own data version, config and seed; say whether metrics match."""
    result = run_flow(settings(), REPRODUCTION, model=model, version=version)
    typer.echo(f"{model} v{version}: data {result.data_md5} found at {result.data_rev}")
    if not result.same_code:
        typer.echo("  note: the pipeline code differs from the version's; check out its git commit")
    for key, value in sorted(result.recorded.items()):
        typer.echo(
            f"  {key:<18} recorded {value:.6f}  reproduced {result.reproduced.get(key, float('nan')):.6f}"
        )
    if not result.matches:
        typer.secho(
            f"did not reproduce: largest difference {result.max_difference:.3g}",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(1)
    typer.echo(f"reproduced: largest difference {result.max_difference:.3g}")


@app.command("release")
def release_(
    version: VersionRef = CHALLENGER_ALIAS,
    strategy: Annotated[
        str | None, typer.Option(help="blue-green, canary or shadow (default: the policy's).")
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(help="local, kserve, gitops or lambda (default: the policy's, local)."),
    ] = None,
    pipeline: PipelineOption = None,
) -> None:
    """Release a version that passed the gates: traffic moves by the strategy, or rolls back."""
    found = settings()
    outcome = run_flow(
        found,
        RELEASE,
        version=version,
        strategy=strategy,
        target=target,
        pipeline=pipeline,
        trigger="cli",
    )
    where = f"on the {target} target"
    if (target or "local") == "local":
        from mlops.release.targets.local import router_ports

        where = f"callers reach it at http://{found.host}:{router_ports(found, outcome.model)[0]}/predict"
    typer.echo(
        f"{outcome.model} v{outcome.version}: {outcome.reason} ({outcome.strategy}); {where}"
    )


@app.command()
def package(
    version: VersionRef = CHAMPION_ALIAS,
    model: Annotated[
        str | None, typer.Option(help="Registered model (default: the pipeline's).")
    ] = None,
    push: Annotated[bool, typer.Option(help="Push to MLOPS_IMAGE_REGISTRY when it is set.")] = True,
) -> None:
    """Build, smoke-test, push and record the model server image of one version (in this process)."""
    image = run_flow(settings(), PACKAGING, version=version, model=model, push=push)
    typer.echo(image.pinned)


@app.command()
def serve(
    model: ModelArgument,
    ref: Annotated[
        str, typer.Option("--version", help="Version number or alias.")
    ] = CHAMPION_ALIAS,
    port: Annotated[int, typer.Option(help="Port on MLOPS_HOST.")] = 8080,
    log_root: Annotated[
        str | None, typer.Option(help="Prediction log folder or s3:// URL.")
    ] = None,
    batch_rows: Annotated[
        int,
        typer.Option(min=1, help="Most rows concurrent requests send to the model in one call."),
    ] = 64,
    batch_wait_ms: Annotated[
        float,
        typer.Option(
            min=0, help="How long a batch with company waits for more (a lone request never waits)."
        ),
    ] = 2.0,
) -> None:
    """Serve one model version over HTTP: /predict, /feedback, /health, /ready, /metrics."""
    import uvicorn

    from mlops.adapters.prediction_log import PredictionLog
    from mlops.cli.serving import load_served_model
    from mlops.serving.app import ServerConfig, create_app, token_from_environment

    found = settings()
    with reported():
        token = token_from_environment({**os.environ, "MLOPS_ENV": found.env})
    root = log_root or found.prediction_log(model)
    workdir = found.state_dir / "serving"
    app_ = create_app(
        lambda: load_served_model(str(found.mlflow_tracking_uri), model, ref, workdir),
        PredictionLog(root),
        ServerConfig(token=token, batch_rows=batch_rows, batch_wait_seconds=batch_wait_ms / 1000),
        model_name=model,
        model_ref=ref,
    )
    typer.echo(f"serving {model}@{ref} on http://{found.host}:{port} (prediction log {root})")
    uvicorn.run(app_, host=found.host, port=port, log_level="warning")


def _print_version(result: Any) -> None:
    verb = "reused" if result.reused else "registered"
    typer.echo(f"{verb} {result.name} version {result.version}")
    for key in sorted(result.tags):
        if key.startswith("mlops."):
            typer.echo(f"  {key} = {result.tags[key]}")


@app.command()
def demo(
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh",
            help="Start from an empty state: stop the stack and move its state folder aside "
            "(to <state>-<UTC time>; nothing is deleted) first. `make demo` runs this.",
        ),
    ] = False,
) -> None:
    """The main job, the closed loop: train, judge and release a champion; send production
    traffic; shift the world; watch monitoring, an automation, retraining, the gates and a canary
    put a new champion in production by themselves."""
    from mlops.stack.local import LocalStack

    found = settings()
    started = time.monotonic()
    with reported():
        closed_loop = project_object(found, DEMO)  # the example's script, not the library's
        if fresh:
            _move_state_aside(found)
        LocalStack(found).up(with_worker=True)
        data_pull()
        result = closed_loop(found, typer.echo)
    took = result.seconds_to_new_champion
    typer.echo(
        f"\ndone in {time.monotonic() - started:.0f}s"
        + (f"; {took:.0f}s from the shift to the new champion at 100%" if took else "")
    )
    typer.echo(
        f"Prefect UI   {found.prefect_ui_url}  (flow runs, automations, events; artifacts "
        "monitoring-*, release-*, gate-report)"
    )
    typer.echo(
        f"MLflow UI    {found.mlflow_tracking_uri}  (experiments {result.model} and "
        f"{result.model}-monitoring, model {result.model})"
    )
    typer.echo(f"audit trail  mlops audit {result.model}")
    typer.echo("stop the stack with `mlops down`")


def _move_state_aside(found: Settings) -> None:
    """Stop the stack and rename its state folder (its registry, prediction logs, Prefect's
    database, DVC remote) to one with the time in its name, so the stack starts empty. Refused
    where part of that state lives elsewhere, which a rename would not reset."""
    elsewhere = {
        "MLOPS_PREDICTION_LOG_URL": found.prediction_log_url,
        "MLOPS_MLFLOW_ARTIFACTS_URL": found.mlflow_artifacts_url,
        "MLOPS_PREFECT_DATABASE_URL": found.prefect_database_url,
    }
    if kept := [name for name, value in elsewhere.items() if value]:
        raise MlopsError(
            f"--fresh moves the state folder {found.state_dir} aside, but {', '.join(kept)} "
            "keep part of the stack's state outside it, which a fresh start would not reset; "
            "unset them for the demo or clear what they name yourself"
        )
    if not found.state_dir.exists() or not any(found.state_dir.iterdir()):
        return
    _down(found)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    moved = found.state_dir.with_name(f"{found.state_dir.name}-{stamp}")
    found.state_dir.rename(moved)
    typer.echo(f"--fresh: the earlier state is in {moved} (nothing deleted)")


def main() -> None:
    """The console script: run the command, exit 130 on Ctrl-C."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
