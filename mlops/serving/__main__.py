"""``python -m mlops.serving``: the model server process, as the container image starts it.

    python -m mlops.serving --model-dir /opt/mlops/model --metadata /opt/mlops/model.json

``model.json`` holds the registered name, version and artifact sha256; the folder is refused if it
does not match. Settings from the environment: ``PORT``, ``HOST`` (default 0.0.0.0),
``MLOPS_PREDICTION_LOG`` (folder or s3:// URL), ``MLOPS_SERVING_TOKEN``, ``MLOPS_ENV``, and the
micro-batching limits ``MLOPS_SERVING_BATCH_ROWS`` and ``MLOPS_SERVING_BATCH_WAIT_MS``
(mlops.serving.batching).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import uvicorn

from mlops.adapters.prediction_log import PredictionLog
from mlops.core.errors import MlopsError
from mlops.serving.app import ServerConfig, create_app, token_from_environment
from mlops.serving.model import load_model_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlops.serving", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model-dir", type=Path, required=True, help="MLflow model folder")
    parser.add_argument("--metadata", type=Path, required=True, help="model.json beside it")
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument(
        "--log-root",
        default=os.environ.get("MLOPS_PREDICTION_LOG", "/var/lib/mlops/prediction-log"),
    )
    defaults = ServerConfig()
    parser.add_argument(
        "--batch-rows",
        type=int,
        # a string default goes through ``type`` too: a bad value in the environment is named
        default=os.environ.get("MLOPS_SERVING_BATCH_ROWS", str(defaults.batch_rows)),
        help="most rows concurrent requests send to the model in one call",
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=os.environ.get(
            "MLOPS_SERVING_BATCH_WAIT_MS", str(defaults.batch_wait_seconds * 1000)
        ),
        help="how long a batch with company waits for more (a lone request never waits)",
    )
    args = parser.parse_args(argv)
    if args.batch_rows < 1 or args.batch_wait_ms < 0:
        print(
            f"error: --batch-rows {args.batch_rows} must be >= 1 and --batch-wait-ms "
            f"{args.batch_wait_ms} >= 0",
            file=sys.stderr,
        )
        return 2
    try:
        meta = json.loads(args.metadata.read_text())
        name, version, sha256 = meta["name"], int(meta["version"]), meta["sha256"]
        token = token_from_environment(os.environ)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {args.metadata}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except MlopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app = create_app(
        lambda: load_model_folder(args.model_dir, name, version, sha256),
        PredictionLog(args.log_root),
        ServerConfig(
            token=token, batch_rows=args.batch_rows, batch_wait_seconds=args.batch_wait_ms / 1000
        ),
        model_name=name,
        model_ref=str(version),
    )
    print(f"serving {name} v{version} on {args.host}:{args.port} (prediction log {args.log_root})")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
