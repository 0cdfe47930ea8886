"""The `mlops` command: the local stack, the versioned data, training and the demo."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, cast

import typer

from mlops.core.errors import MlopsError
from mlops.core.settings import Settings

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


def _settings() -> Settings:
    """Settings for this command, with the stack's environment applied before Prefect is imported."""
    from mlops.stack.local import service_env

    settings = Settings()
    os.environ.update(service_env(settings))
    return settings


def _fail(exc: BaseException) -> typer.Exit:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    return typer.Exit(1)


class _WithoutTraceback(logging.Formatter):
    """Formats a copy of each record without its exception: the message line alone."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        bare = logging.makeLogRecord(record.__dict__)
        bare.exc_info, bare.exc_text, bare.stack_info = None, None, None
        return self.inner.format(bare)


def _one_line_failures() -> None:
    """Print a failed flow's reason alone (``_fail``): Prefect's console handler would print its
    traceback first. Call after Prefect is imported; the Prefect UI keeps the traceback (its API
    log handler is left as it is)."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()  # else the flow's first run configures it, after this
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter
        if isinstance(handler, PrefectConsoleHandler) and formatter is not None:
            handler.setFormatter(
                formatter
                if isinstance(formatter, _WithoutTraceback)
                else _WithoutTraceback(formatter)
            )


def _need_stack(settings: Settings) -> None:
    from mlops.stack.local import healthy

    down = [
        name
        for name, url in (
            ("Prefect server", f"{settings.prefect_api_url}/health"),
            ("MLflow server", f"{settings.mlflow_tracking_uri}/health"),
        )
        if not healthy(url)
    ]
    if down:
        raise MlopsError(
            f"{' and '.join(down)} not answering ({settings.prefect_api_url}, "
            f"{settings.mlflow_tracking_uri}); start the local stack with `mlops up`"
        )


@app.command()
def up(
    worker: Annotated[
        bool, typer.Option(help="Also start a process worker for the deployments.")
    ] = True,
) -> None:
    """Start the Prefect server, MLflow server and a worker on 127.0.0.1; wait until they answer."""
    from mlops.stack.local import LocalStack

    settings = _settings()
    try:
        LocalStack(settings).up(with_worker=worker)
    except MlopsError as exc:
        raise _fail(exc) from None
    typer.echo("")
    typer.echo(f"Prefect UI   {settings.prefect_ui_url}")
    typer.echo(f"MLflow UI    {settings.mlflow_tracking_uri}")
    typer.echo(f"work pool    {settings.work_pool} (process)")
    typer.echo(f"To use the prefect CLI here: export PREFECT_API_URL={settings.prefect_api_url}")


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

    try:
        if env == "local":  # the local stack's own pool, on its Prefect server
            settings = _settings()
            _need_stack(settings)
            stack = LocalStack(settings, out=typer.echo)
            stack.ensure_work_pool()
            stack.deploy(dict(os.environ))
            return
        for line in deploy_environment(Settings().project_dir, env, create_pool):
            typer.echo(line)
    except MlopsError as exc:
        raise _fail(exc) from None


@app.command()
def down() -> None:
    """Stop exactly the processes `mlops up` and local releases started."""
    from mlops.release.targets.local import LocalTarget
    from mlops.stack.local import LocalStack

    settings = _settings()
    try:
        for folder in sorted((settings.state_dir / "release").glob("*/")):
            LocalTarget(settings, folder.name).stop()
            typer.echo(f"release target {folder.name}: router and model servers stopped")
        LocalStack(settings).down()
    except MlopsError as exc:
        raise _fail(exc) from None


@app.command()
def status() -> None:
    """Say which local services run, where, and which are dead."""
    from mlops.stack.local import LocalStack

    try:
        rows = LocalStack(_settings()).status()
    except MlopsError as exc:
        raise _fail(exc) from None
    if not rows:
        typer.echo("the local stack is not running (start it with `mlops up`)")
        return
    for name, state, where in rows:
        typer.echo(f"{name:<8} {state:<50} {where}")
    if any(not state.startswith("running") for _, state, _ in rows):
        raise typer.Exit(1)


@data_app.command("pull")
def data_pull() -> None:
    """Materialise the DVC-tracked dataset and make sure the DVC remote holds it."""
    from mlops.core.config import load_pipeline_config
    from mlops.ml.data import configure_remote, pull_dataset

    settings = _settings()
    try:
        cfg = load_pipeline_config(settings.pipeline)
        if settings.dvc_remote_url:
            configure_remote(
                settings.project_dir, settings.dvc_remote_url, settings.dvc_remote_endpoint_url
            )
        how = pull_dataset(settings.project_dir, cfg.data.path, cfg.data.seed)
    except MlopsError as exc:
        raise _fail(exc) from None
    typer.echo(f"{cfg.data.path}: {how}")


@data_app.command("check")
def data_check(
    rev: Annotated[
        str | None, typer.Option(help="Git revision of the data version (default: the workspace).")
    ] = None,
) -> None:
    """Check the DVC-tracked dataset against the pipeline's data contract (CI's data test)."""
    from mlops.core.config import load_pipeline_config
    from mlops.ml.contract import check_contract
    from mlops.ml.data import load_dataset, pull_dataset, resolve_data_version

    settings = _settings()
    try:
        cfg = load_pipeline_config(settings.pipeline)
        if rev is None:
            pull_dataset(settings.project_dir, cfg.data.path, cfg.data.seed)
        version = resolve_data_version(settings.project_dir, cfg.data.path, rev)
        frame = load_dataset(settings.project_dir, version, cfg.data.na_values)
        source = f"{version.path}@{version.short}"
        check_contract(frame, cfg.contract, source, settings.reports_dir / "data-check")
    except MlopsError as exc:
        raise _fail(exc) from None
    typer.echo(f"{source}: {len(frame)} rows meet the data contract")


@app.command()
def train(
    pipeline: Annotated[
        Path | None, typer.Option(help="Pipeline config (default: MLOPS_PIPELINE).")
    ] = None,
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
    settings = _settings()
    if hand_over not in ("none", "promotion", "release"):
        raise _fail(MlopsError(f"--hand-over {hand_over!r}: use none, promotion or release"))
    from mlops.ml.gates import GateFailed  # not before _settings(): it imports Prefect

    try:
        _need_stack(settings)
        from flows.training import training

        _one_line_failures()
        result = training(
            pipeline=str(pipeline) if pipeline else None,
            data_rev=data_rev,
            trigger="cli",
            hand_over=cast(Any, hand_over),  # checked above
        )
    except (MlopsError, GateFailed) as exc:  # a failing gate of the hand-over is a reason, too
        raise _fail(exc) from None
    _print_version(result)


@app.command()
def promote(
    version: Annotated[str, typer.Option(help="Version number or alias to judge.")] = "challenger",
    pipeline: Annotated[
        Path | None, typer.Option(help="Pipeline config (default: MLOPS_PIPELINE).")
    ] = None,
) -> None:
    """Run the gates on a version and make it champion if they pass (in this process)."""
    settings = _settings()
    try:
        _need_stack(settings)
        from flows.promotion import promotion

        _one_line_failures()
        outcome = promotion(
            version=version, pipeline=str(pipeline) if pipeline else None, trigger="cli"
        )
    except Exception as exc:  # a gate, an approval or a conflict: the reason is the message
        raise _fail(exc) from None
    _print_outcome(outcome)


@policy_app.command("apply")
def policy_apply(
    pipeline: Annotated[
        Path | None, typer.Option(help="Pipeline config (default: MLOPS_PIPELINE).")
    ] = None,
) -> None:
    """Record the policy file's new version and emit mlops.policy.updated: the retraining
    automation then judges the champion against it and retrains if it fails."""
    settings = _settings()
    try:
        _need_stack(settings)
        from mlops.core.config import load_pipeline_config
        from mlops.core.policy import apply_policy
        from mlops.release.promotion import current_user

        cfg = load_pipeline_config(pipeline or settings.pipeline)
        what, event = apply_policy(
            str(settings.mlflow_tracking_uri),
            cfg.model_name,
            cfg.policy,
            set(cfg.contract.columns),
            current_user(),
        )
    except MlopsError as exc:
        raise _fail(exc) from None
    typer.echo(what + (f"; event mlops.policy.updated {event}" if event else ""))


@app.command()
def monitor(
    pipeline: Annotated[
        Path | None, typer.Option(help="Pipeline config (default: MLOPS_PIPELINE).")
    ] = None,
) -> None:
    """Judge the production window since the last one now (the monitoring flow, in this process)."""
    settings = _settings()
    try:
        _need_stack(settings)
        from flows.monitoring import monitoring

        outcome = monitoring(pipeline=str(pipeline) if pipeline else None)
    except MlopsError as exc:
        raise _fail(exc) from None
    drift, perf = outcome.verdicts()
    typer.echo(f"{outcome.model} v{outcome.version}: {outcome.rows} rows")
    typer.echo(f"  drift        {drift}")
    typer.echo(f"  performance  {perf}")
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
    model: Annotated[str, typer.Argument(help="Registered model name.")],
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
    settings = _settings()
    try:
        _need_stack(settings)
        from mlflow.exceptions import MlflowException

        from mlops.adapters.audit import AuditTrail, describe_version

        if verify:
            report = AuditTrail(str(settings.mlflow_tracking_uri)).verify(model)
            typer.echo(report.text())
            if not report.ok:
                raise typer.Exit(1)
            return
        typer.echo(describe_version(str(settings.mlflow_tracking_uri), model, version))
    except (MlopsError, MlflowException, LookupError) as exc:
        raise _fail(exc) from None


@app.command()
def reproduce(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[int, typer.Option(help="Version to retrain.")],
) -> None:
    """Retrain a version from its own data version, config and seed; say whether metrics match."""
    settings = _settings()
    try:
        _need_stack(settings)
        from flows.reproduction import reproduction

        result = reproduction(model=model, version=version)
    except MlopsError as exc:
        raise _fail(exc) from None
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
    version: Annotated[str, typer.Option(help="Version number or alias.")] = "challenger",
    strategy: Annotated[
        str | None, typer.Option(help="blue-green, canary or shadow (default: the policy's).")
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(help="local, kserve, gitops or lambda (default: the policy's, local)."),
    ] = None,
    pipeline: Annotated[
        Path | None, typer.Option(help="Pipeline config (default: MLOPS_PIPELINE).")
    ] = None,
) -> None:
    """Release a version that passed the gates: traffic moves by the strategy, or rolls back."""
    settings = _settings()
    try:
        _need_stack(settings)
        from flows.release import release

        _one_line_failures()
        outcome = release(
            version=version,
            strategy=strategy,
            target=target,
            pipeline=str(pipeline) if pipeline else None,
            trigger="cli",
        )
    except MlopsError as exc:
        raise _fail(exc) from None
    where = (
        f"callers reach it at http://{settings.host}:{settings.router_port}/predict"
        if (target or "local") == "local"
        else f"on the {target} target"
    )
    typer.echo(
        f"{outcome.model} v{outcome.version}: {outcome.reason} ({outcome.strategy}); {where}"
    )


@app.command()
def package(
    version: Annotated[str, typer.Option(help="Version number or alias.")] = "champion",
    model: Annotated[
        str | None, typer.Option(help="Registered model (default: the pipeline's).")
    ] = None,
    push: Annotated[bool, typer.Option(help="Push to MLOPS_IMAGE_REGISTRY when it is set.")] = True,
) -> None:
    """Build, smoke-test, push and record the model server image of one version (in this process)."""
    settings = _settings()
    try:
        _need_stack(settings)
        from flows.packaging import packaging

        image = packaging(version=version, model=model, push=push)
    except MlopsError as exc:
        raise _fail(exc) from None
    typer.echo(image.pinned)


@app.command()
def serve(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    ref: Annotated[str, typer.Option("--version", help="Version number or alias.")] = "champion",
    port: Annotated[int, typer.Option(help="Port on MLOPS_HOST.")] = 8080,
    log_root: Annotated[
        str | None, typer.Option(help="Prediction log folder or s3:// URL.")
    ] = None,
) -> None:
    """Serve one model version over HTTP: /predict, /feedback, /health, /ready, /metrics."""
    import uvicorn

    from mlops.adapters.prediction_log import PredictionLog
    from mlops.serving.app import ServerConfig, create_app, token_from_environment
    from mlops.serving.model import load_served_model

    settings = _settings()
    try:
        token = token_from_environment({**os.environ, "MLOPS_ENV": settings.env})
    except MlopsError as exc:
        raise _fail(exc) from None
    root = log_root or settings.prediction_log(model)
    workdir = settings.state_dir / "serving"
    app_ = create_app(
        lambda: load_served_model(str(settings.mlflow_tracking_uri), model, ref, workdir),
        PredictionLog(root),
        ServerConfig(token=token),
        model_name=model,
        model_ref=ref,
    )
    typer.echo(f"serving {model}@{ref} on http://{settings.host}:{port} (prediction log {root})")
    uvicorn.run(app_, host=settings.host, port=port, log_level="warning")


def _print_version(result: Any) -> None:
    verb = "reused" if result.reused else "registered"
    typer.echo(f"{verb} {result.name} version {result.version}")
    for key in sorted(result.tags):
        if key.startswith("mlops."):
            typer.echo(f"  {key} = {result.tags[key]}")


@app.command()
def demo() -> None:
    """The main job, the closed loop: train, judge and release a champion; send production
    traffic; shift the world; watch monitoring, an automation, retraining, the gates and a canary
    put a new champion in production by themselves."""
    from mlops.demo import closed_loop
    from mlops.stack.local import LocalStack

    settings = _settings()
    started = time.monotonic()
    try:
        LocalStack(settings).up(with_worker=True)
        data_pull()
        result = closed_loop(settings, typer.echo)
    except MlopsError as exc:
        raise _fail(exc) from None
    took = result.seconds_to_new_champion
    typer.echo(
        f"\ndone in {time.monotonic() - started:.0f}s"
        + (f"; {took:.0f}s from the shift to the new champion at 100%" if took else "")
    )
    typer.echo(
        f"Prefect UI   {settings.prefect_ui_url}  (flow runs, automations, events; artifacts "
        "monitoring-*, release-*, gate-report)"
    )
    typer.echo(
        f"MLflow UI    {settings.mlflow_tracking_uri}  (experiments {result.model} and "
        f"{result.model}-monitoring, model {result.model})"
    )
    typer.echo(f"audit trail  mlops audit {result.model}")
    typer.echo("stop the stack with `mlops down`")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
