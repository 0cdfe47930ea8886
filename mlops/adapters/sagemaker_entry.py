"""The training step inside a SageMaker training job (the container entrypoint).

SageMaker's contract: the `train` channel's files under SM_CHANNEL_TRAIN (default
/opt/ml/input/data/train), hyper-parameters as JSON at /opt/ml/input/config/hyperparameters.json,
and the model to write under SM_MODEL_DIR (/opt/ml/model), which SageMaker uploads as
model.tar.gz. Here the channel holds the training split (`train.parquet`, the label in column
`__label__`) and `config.json` (the feature and model configs); the fit is mlops.ml.training's own.

    python -m mlops.adapters.sagemaker_entry
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

LABEL = "__label__"

MODEL_FILE = "model.joblib"


def main() -> int:
    import joblib
    import pandas as pd

    from mlops.core.config import FeatureConfig, ModelConfig
    from mlops.ml.problems import Problem
    from mlops.ml.split import Split
    from mlops.ml.training import train_model

    channel = Path(os.environ.get("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"))
    model_dir = Path(os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))
    config = json.loads((channel / "config.json").read_text())
    frame = pd.read_parquet(channel / "train.parquet")
    y = frame.pop(LABEL)
    problem = Problem(config.get("problem", "binary"), tuple(config.get("classes", ())))
    split = Split(frame, y, frame.iloc[0:0], y.iloc[0:0], problem)
    print(f"training {config['model']['family']} on {len(frame)} rows, {frame.shape[1]} features", flush=True)  # fmt: skip
    started = time.perf_counter()
    model = train_model(split, FeatureConfig(**config["features"]), ModelConfig(**config["model"]))
    model_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, model_dir / MODEL_FILE)
    print(f"fitted in {time.perf_counter() - started:.1f} s; wrote {model_dir / MODEL_FILE}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
