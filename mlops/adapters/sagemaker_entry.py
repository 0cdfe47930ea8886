"""The training step inside a SageMaker training job (the container entrypoint).

SageMaker's contract: the `train` channel's files under SM_CHANNEL_TRAIN (default
/opt/ml/input/data/train), hyper-parameters as JSON at /opt/ml/input/config/hyperparameters.json,
and the model to write under SM_MODEL_DIR (/opt/ml/model), which SageMaker uploads as
model.tar.gz. Here the channel holds the training split (`train.parquet`, the label in column
`__label__`) and `config.json` (the problem type, its target and classes, and the feature and
model configs); the fit is mlops.ml.training's own. The model is written with skops, the
project's one format, so bringing it back deserializes no pickle (mlops.adapters.sagemaker).

    python -m mlops.adapters.sagemaker_entry
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

LABEL = "__label__"

MODEL_FILE = "model.skops"

#: What config.json must hold (mlops.adapters.sagemaker writes it).
CONFIG_KEYS = ("problem", "target", "classes", "features", "model")


def main() -> int:
    import pandas as pd
    import skops.io

    from mlops.core.config import FeatureConfig, ModelConfig
    from mlops.ml.problems import Problem
    from mlops.ml.split import Split
    from mlops.ml.training import train_model

    channel = Path(os.environ.get("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"))
    model_dir = Path(os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))
    config = json.loads((channel / "config.json").read_text())
    missing = [key for key in CONFIG_KEYS if key not in config]
    if missing:
        print(f"{channel / 'config.json'}: lacks {', '.join(missing)}", file=sys.stderr)
        return 2
    frame = pd.read_parquet(channel / "train.parquet")
    y = frame.pop(LABEL)
    problem = Problem(config["problem"], tuple(config["classes"]), config["target"])
    split = Split(frame, y, frame.iloc[0:0], y.iloc[0:0], problem)
    model_config = ModelConfig(**config["model"])
    print(f"training {model_config.label} on {len(frame)} rows, {frame.shape[1]} features ({problem.kind})", flush=True)  # fmt: skip
    started = time.perf_counter()
    model = train_model(split, FeatureConfig(**config["features"]), model_config)
    model_dir.mkdir(parents=True, exist_ok=True)
    skops.io.dump(model, model_dir / MODEL_FILE)
    print(f"fitted in {time.perf_counter() - started:.1f} s; wrote {model_dir / MODEL_FILE}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
