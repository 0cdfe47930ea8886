"""The local stack's Prefect worker: Prefect's process worker whose flow runs are forked from a
zygote that already imported Prefect and the pipeline (`mlops.stack.zygote`).

A drift event's retraining waited seconds for a fresh ``python -m prefect.engine`` to import
Prefect, scikit-learn, pandas, MLflow and the flows. This worker is still the ``process`` worker
the UI shows on the ``process`` pool (a subclass of `ProcessWorker`); it replaces only `run`, the
method every Prefect worker implements, and there only the starter: the child gets the
environment and working folder Prefect's `EngineCommandStarter` would give
``python -m prefect.engine``, and its pid is the flow run's infrastructure pid, so cancellation
(SIGTERM then SIGKILL by pid, and Prefect's control channel), crash reports (a non-zero exit or a
signal is proposed Crashed by Prefect's executor) and logs (the engine's API log handler) are
Prefect's own. Deployments with a ``command`` of their own, and every run while the zygote is not
ready (exited, refused, or still importing after `IMPORT_WAIT`), start as plain subprocesses, and
the worker log says so; a run that finds the zygote importing waits for it, since a plain
subprocess would import the same modules. A Python file of the project that changed (edited, added
or removed) replaces the zygote by one that imports the new code: its modules are the code it
imported.

    python -m mlops.stack.worker --pool POOL --name NAME
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream
from prefect.flows import load_flow_from_flow_run
from prefect.runner._flow_run_executor import FlowRunExecutionResult, FlowRunExecutorContext
from prefect.runner._process_manager import ProcessHandle
from prefect.settings import get_current_settings
from prefect.utilities.processutils import (
    command_to_string,
    get_sys_executable,
    sanitize_subprocess_env,
    setup_signal_handlers_worker,
)
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker, ProcessWorkerResult

from mlops.stack.zygote import REFUSED

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.runner._control_channel import ControlChannel

# the command ProcessJobConfiguration gives a deployment that configures none
ENGINE_COMMAND = command_to_string([get_sys_executable(), "-m", "prefect.engine"])
# how long a flow run waits for a zygote still importing before it starts as a plain subprocess
IMPORT_WAIT = 60.0


class ZygoteUnavailable(RuntimeError):
    """The zygote closed the connection before it said what became of the flow run's child."""


class ForkedChild:
    """A flow-run process forked by the zygote, as `ProcessHandle` reads a process: its pid and,
    once the zygote reaped it, its return code (negative for a signal, as `subprocess` says)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None


class ZygoteProcess:
    """The worker's zygote: started beside the worker, listening on a socket in a private folder."""

    def __init__(self, project_dir: Path) -> None:
        self.project_dir = project_dir
        self.folder = Path(tempfile.mkdtemp(prefix="mlops-zygote-"))
        self.socket_path = self.folder / "zygote.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.sources: dict[str, tuple[int, int]] = {}

    def start(self) -> None:
        self.socket_path.unlink(missing_ok=True)  # a killed zygote's, which nobody accepts on
        # taken before it imports: a file changed from here on may not be what it imported
        self.sources = project_sources(self.project_dir)
        # Popen from the threaded worker is safe (fork then exec); the zygote forks, the worker not
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlops.stack.zygote", str(self.socket_path)],
            cwd=self.project_dir,
            env=os.environ | {"MLOPS_PROJECT_DIR": str(self.project_dir)},
        )

    def unready_reason(self) -> str | None:
        """None when listening; else why not. A zygote that exited is started again, for the
        runs after this one."""
        if self.proc is not None and self.proc.poll() is not None:
            code = self.proc.returncode
            if code == REFUSED:  # it would refuse again: its imports start threads
                return "it refused to fork, see its message above in this log"
            self.start()
            return f"it exited with {code}, a new one is importing"
        if self.proc is not None and project_sources(self.project_dir) != self.sources:
            # a fresh interpreter would import the edited code; the zygote holds the old modules
            self._terminate()
            self.start()
            return (
                "the project's Python files changed since it imported them, a new one is importing"
            )
        if self.proc is None or not self.socket_path.exists():
            return "it is still importing"
        return None

    def importing(self) -> bool:
        """Started, alive, not yet listening."""
        return self.proc is not None and self.proc.poll() is None and not self.socket_path.exists()

    async def wait_importing(self, wait: float = IMPORT_WAIT) -> str | None:
        """Wait up to ``wait`` seconds while the zygote is importing; then `unready_reason`."""
        deadline = time.monotonic() + wait
        while self.importing() and time.monotonic() < deadline:
            await anyio.sleep(0.05)
        return self.unready_reason()

    def stop(self) -> None:
        self._terminate()
        self.socket_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.folder.rmdir()

    def _terminate(self) -> None:
        """Stop the zygote; the children it forked run on (the worker waits for them as orphans)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def project_sources(project_dir: Path) -> dict[str, tuple[int, int]]:
    """Each Python file under ``project_dir`` (symlinked folders followed, as the project's
    ``flows`` and ``tasks`` may be; hidden folders, such as a virtual environment or the stack's
    state, skipped) with its modification time and size: what tells the worker that its
    zygote's modules are no longer the project's code."""
    found: dict[str, tuple[int, int]] = {}
    seen: set[str] = set()
    for folder, dirs, files in os.walk(project_dir, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a symlink cycle, or one folder linked twice
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with contextlib.suppress(OSError):  # removed meanwhile: the next look tells
                    st = os.stat(path)
                    found[path] = (st.st_mtime_ns, st.st_size)
    return found


class ZygoteStarter:
    """A Prefect process starter (`prefect.runner._flow_run_executor.ProcessStarter`) that asks
    the zygote to fork the flow run's engine instead of spawning ``python -m prefect.engine``."""

    def __init__(
        self,
        *,
        stream: anyio.abc.SocketStream,
        cwd: Path,
        env: dict[str, str | None],
        stream_output: bool,
        control_channel: ControlChannel | None,
    ) -> None:
        self._stream = stream  # connected before the run is handed to Prefect's executor
        self._cwd = cwd
        self._env = env
        self._stream_output = stream_output
        self._control_channel = control_channel

    def child_env(self, flow_run: FlowRun) -> tuple[dict[str, str], bool]:
        """The environment `EngineCommandStarter` gives the engine (the job configuration's env,
        Prefect's current settings, the flow run id and the control channel's port and token),
        and whether the flow run was registered with the control channel."""
        control_env: dict[str, str] = {}
        if self._control_channel is not None:
            try:
                port, token = self._control_channel.register(flow_run.id)
                control_env = {
                    "PREFECT__CONTROL_PORT": str(port),
                    "PREFECT__CONTROL_TOKEN": token,
                }
            except RuntimeError:  # no loopback listener: Prefect falls back to kill-only
                pass
        env: dict[str, str | None] = dict(os.environ)
        env.update(self._env)
        env.update(get_current_settings().to_environment_variables(exclude_unset=True))
        env.update(
            {
                "PREFECT__FLOW_RUN_ID": str(flow_run.id),
                "PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS": "false",
                "PREFECT__DEPLOYMENT_NAME": self._env.get("PREFECT__DEPLOYMENT_NAME"),
                **control_env,
            }
        )
        return cast(dict[str, str], sanitize_subprocess_env(env)), bool(control_env)

    async def start(
        self,
        flow_run: FlowRun,
        task_status: anyio.abc.TaskStatus[ProcessHandle] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        async with self._stream as stream:
            env, registered = self.child_env(flow_run)
            handed_off = False
            try:
                request = {"env": env, "cwd": str(self._cwd), "stream_output": self._stream_output}
                await stream.send(json.dumps(request).encode() + b"\n")
                replies = BufferedByteReceiveStream(stream)
                child = ForkedChild(int(await _reply(replies, "pid")))
                task_status.started(ProcessHandle(cast(Any, child)))
                handed_off = True
                try:
                    child.returncode = int(await _reply(replies, "returncode"))
                except ZygoteUnavailable:  # it died: the child, reparented, runs on unreaped
                    child.returncode = await _orphan_exit(child.pid)
            except BaseException:
                if registered and not handed_off:
                    assert self._control_channel is not None
                    self._control_channel.unregister(flow_run.id)
                raise


async def _orphan_exit(pid: int) -> int:
    """Wait for a child whose zygote died (nobody can tell its exit status any more); 1, so
    Prefect's executor reports it Crashed unless its engine had recorded a final state. Not
    ZygoteUnavailable: the run started, it must not be started again as a plain subprocess."""
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return 1
        await anyio.sleep(0.5)


async def _reply(replies: BufferedByteReceiveStream, key: str) -> int:
    try:
        line = await replies.receive_until(b"\n", 1024)
    except (anyio.EndOfStream, anyio.IncompleteRead) as exc:
        raise ZygoteUnavailable(f"the zygote closed the connection before sending {key}") from exc
    return int(json.loads(line)[key])


# the subclass keeps the dispatch key "process" so the UI and the pool see Prefect's process worker;
# Prefect warns that it overrides the registered type in this process, which is the intent
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)

    class ForkingProcessWorker(ProcessWorker):
        """Prefect's process worker, its flow runs forked from a zygote when one is ready."""

        def __init__(self, *args: Any, project_dir: Path | None = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.zygote = ZygoteProcess(project_dir or Path(os.getcwd()))

        async def setup(self) -> None:
            await super().setup()
            self.zygote.start()

        async def teardown(self, *exc_info: Any) -> None:
            try:
                await super().teardown(*exc_info)
            finally:
                self.zygote.stop()

        async def run(
            self,
            flow_run: FlowRun,
            configuration: ProcessJobConfiguration,
            task_status: anyio.abc.TaskStatus[int] | None = None,
        ) -> ProcessWorkerResult:
            logger = self.get_flow_run_logger(flow_run)
            if configuration.command != ENGINE_COMMAND:
                return await super().run(flow_run, configuration, task_status)
            reason = self.zygote.unready_reason()
            if reason is not None and self.zygote.importing():
                # a plain subprocess would import the same modules beside the zygote on the same
                # cores: waiting never starts the run later than falling back (the first run
                # after the worker started fell back and took 11 s; a fork takes 0.4 s)
                began, waited_for = time.monotonic(), reason
                reason = await self.zygote.wait_importing()
                logger.info(
                    "The zygote was not ready (%s): waited %.1f s for it",
                    waited_for,
                    time.monotonic() - began,
                )
            if reason is not None:
                logger.warning(
                    "The zygote is not ready (%s): the flow run starts as a plain subprocess",
                    reason,
                )
                return await super().run(flow_run, configuration, task_status)
            try:
                stream = await anyio.connect_unix(self.zygote.socket_path)
            except OSError as exc:
                logger.warning("The zygote did not fork the flow run (%s): plain subprocess", exc)
                return await super().run(flow_run, configuration, task_status)
            return await self._run_forked(flow_run, configuration, stream, task_status)

        async def _run_forked(
            self,
            flow_run: FlowRun,
            configuration: ProcessJobConfiguration,
            stream: anyio.abc.SocketStream,
            task_status: anyio.abc.TaskStatus[int] | None,
        ) -> ProcessWorkerResult:
            """`ProcessWorker.run` with the zygote's starter: the same working folder, executor
            (state proposals, crash reports, cancellation) and task status (the child's pid)."""
            status = task_status if task_status is not None else anyio.TASK_STATUS_IGNORED
            working_dir_ctx = (
                tempfile.TemporaryDirectory(suffix="prefect")
                if not configuration.working_dir
                else contextlib.nullcontext(configuration.working_dir)
            )
            execution: FlowRunExecutionResult | None = None
            # closed here too: an executor that skips the run (cancelled first) never starts it
            async with stream:
                with working_dir_ctx as working_dir, warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    async with FlowRunExecutorContext() as ctx:
                        starter = ZygoteStarter(
                            stream=stream,
                            cwd=Path(working_dir).resolve(),
                            env=configuration.env,
                            stream_output=configuration.stream_output,
                            control_channel=ctx.control_channel,
                        )
                        executor = ctx.create_executor(
                            flow_run,
                            starter,
                            resolve_flow=load_flow_from_flow_run,
                            propose_submitting=False,
                        )

                        async def execute(
                            *,
                            task_status: anyio.abc.TaskStatus[
                                ProcessHandle
                            ] = anyio.TASK_STATUS_IGNORED,
                        ) -> None:
                            nonlocal execution
                            execution = await executor.submit(task_status=task_status)

                        async with anyio.create_task_group() as group:
                            handle = await group.start(execute)
                            status.started(handle.pid)
            if execution is None or execution.status_code is None:  # as ProcessWorker says it
                raise RuntimeError("Failed to start flow run process.")
            return ProcessWorkerResult(
                status_code=execution.status_code, identifier=str(execution.handle.pid)
            )


def main() -> None:
    from prefect.settings import PREFECT_WORKER_HEARTBEAT_SECONDS, PREFECT_WORKER_PREFETCH_SECONDS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", required=True, help="the process work pool to poll")
    parser.add_argument("--name", required=True, help="the worker's name in the Prefect UI")
    parser.add_argument("--project-dir", type=Path, default=Path(os.getcwd()), help="flows' root")
    args = parser.parse_args()
    setup_signal_handlers_worker(os.getpid(), "the forking process worker", print)
    worker = ForkingProcessWorker(
        work_pool_name=args.pool,
        name=args.name,
        prefetch_seconds=PREFECT_WORKER_PREFETCH_SECONDS.value(),
        heartbeat_interval_seconds=int(PREFECT_WORKER_HEARTBEAT_SECONDS.value()),
        project_dir=args.project_dir,
    )
    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(worker.start(printer=lambda *a, **_k: print(*a, flush=True)))


if __name__ == "__main__":
    main()
