"""The serverless target: AWS Lambda from the model server's container image.

Each model version is a published Lambda version of one function (named after the model); callers
invoke the alias (``lambda_alias``, default ``live``). A canary is the alias's weighted routing
(``RoutingConfig.AdditionalVersionWeights``): the stable version is the alias's own, the candidate
takes the extra weight; promotion points the alias at the candidate alone; a rollback clears the
weights. Which model version runs in which logical slot is kept in the alias's description, so
the alias is the one record of a release and a later run recovers from it.

Metrics are CloudWatch's (``mlops.release.providers.cloudwatch``): ``AWS/Lambda`` Invocations,
Errors and Duration per executed version of the alias.
The image must answer Lambda's invocation API (the AWS Lambda Web Adapter in front of the model
server); Lambda has no URL per version reachable from here, so the smoke test is readiness.
"""

from __future__ import annotations

import json
import time
from typing import Any
from uuid import UUID

from mlops.core.settings import Settings
from mlops.release.guard import start_guard, stop_guard
from mlops.release.providers.cloudwatch import PERCENTILES, CloudWatchProvider, LambdaSlot
from mlops.release.router import SLOTS, Traffic
from mlops.release.targets.base import (
    Deployed,
    TargetError,
    TargetState,
    missing_settings,
    need_image,
)


class LambdaTarget:
    name = "lambda"
    # Duration's percentiles read for the latency check (moto's emulation computes none)
    percentiles: tuple[float, ...] = PERCENTILES

    def __init__(self, settings: Settings, model: str) -> None:
        missing = [
            n
            for n, v in (
                ("MLOPS_AWS_REGION", settings.aws_region),
                ("MLOPS_LAMBDA_ROLE_ARN", settings.lambda_role_arn),
            )
            if not v
        ]
        if missing:
            raise missing_settings("lambda", missing)
        import boto3

        self.settings = settings
        self.model = model
        self.function = model
        self.alias = settings.lambda_alias
        self.dir = settings.state_dir / "release" / model
        kwargs = {"region_name": settings.aws_region, "endpoint_url": settings.aws_endpoint_url}
        self.aws = boto3.client("lambda", **kwargs)
        self.cloudwatch = boto3.client("cloudwatch", **kwargs)

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "ResourceNotFoundException" and what.startswith("read"):
                return None
            raise TargetError(f"Lambda refused to {what} {self.function}: {exc}") from None
        except BotoCoreError as exc:
            raise TargetError(f"Lambda cannot be reached to {what}: {exc}") from None

    # the alias is the record ------------------------------------------------------------------
    def _alias(self) -> dict[str, Any] | None:
        alias: dict[str, Any] | None = self._call(
            "read alias", self.aws.get_alias, FunctionName=self.function, Name=self.alias
        )
        return alias

    @staticmethod
    def _record(alias: dict[str, Any] | None) -> dict[str, Any]:
        try:
            record: dict[str, Any] = json.loads((alias or {}).get("Description") or "{}")
        except json.JSONDecodeError:
            record = {}
        record.setdefault("slots", {})  # slot -> [model version, lambda version]
        record.setdefault("stable", None)
        return record

    def _traffic(self, alias: dict[str, Any], record: dict[str, Any]) -> Traffic | None:
        by_lambda = {lv: slot for slot, (_, lv) in record["slots"].items()}
        primary = by_lambda.get(alias["FunctionVersion"])
        if primary is None:
            return None
        extra = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
        weights = {by_lambda[lv]: round(w * 100) for lv, w in extra.items() if lv in by_lambda}
        weights[primary] = 100 - sum(weights.values())
        return Traffic(weights)

    def _deployed(self, record: dict[str, Any], slot: str | None) -> Deployed | None:
        if slot is None or slot not in record["slots"]:
            return None
        return Deployed(slot, int(record["slots"][slot][0]), None)

    def state(self) -> TargetState:
        alias = self._alias()
        record = self._record(alias)
        stable = record["stable"]
        idle = next((s for s in SLOTS if s != stable), None) if stable else None
        return TargetState(
            self._deployed(record, stable),
            self._deployed(record, idle),
            self._traffic(alias, record) if alias else None,
        )

    def _update_alias(self, record: dict[str, Any], traffic: Traffic | None = None) -> None:
        kwargs: dict[str, Any] = {
            "FunctionName": self.function,
            "Name": self.alias,
            "Description": json.dumps(record, separators=(",", ":")),
        }
        if traffic is not None:
            if traffic.mirror:
                raise TargetError("Lambda cannot mirror traffic (shadow): use canary or blue-green")
            serving = traffic.serving
            primary = record["stable"] if record["stable"] in serving else serving[0]
            kwargs["FunctionVersion"] = record["slots"][primary][1]
            kwargs["RoutingConfig"] = {
                "AdditionalVersionWeights": {
                    record["slots"][s][1]: w / 100
                    for s, w in traffic.weights.items()
                    if w and s != primary
                }
            }
        self._call("update alias", self.aws.update_alias, **kwargs)

    # the release interface ---------------------------------------------------------------------
    def recover(self) -> str | None:
        alias = self._alias()
        record = self._record(alias)
        stable = record["stable"]
        if alias is None or stable is None:
            return None
        now = self._traffic(alias, record)
        if now == Traffic.only(stable):
            return None
        self.set_traffic(Traffic.only(stable))
        return (
            f"found {now.describe() if now else alias['FunctionVersion']} left by an unfinished "
            f"release; restored {stable} (v{record['slots'][stable][0]}) to 100%"
        )

    def deploy(self, version: int, image: str | None) -> Deployed:
        image = need_image(self.model, version, image, self.name)
        alias = self._alias()
        record = self._record(alias)
        slot = next(s for s in SLOTS if s != record["stable"])
        existing = self._call(
            "read function", self.aws.get_function_configuration, FunctionName=self.function
        )
        if existing is None:
            published = self._call(
                "create function",
                self.aws.create_function,
                FunctionName=self.function,
                PackageType="Image",
                Code={"ImageUri": image},
                Role=self.settings.lambda_role_arn,
                Description=f"{self.model} v{version}",
                Timeout=30,
                MemorySize=2048,
                Environment={"Variables": {"MLOPS_ENV": "prod"}},
                Publish=True,
            )
        else:
            self._wait_updated(None, 120)
            self._call(
                "update function code",
                self.aws.update_function_code,
                FunctionName=self.function,
                ImageUri=image,
            )
            self._wait_updated(None, 300)
            published = self._call(
                "publish version",
                self.aws.publish_version,
                FunctionName=self.function,
                Description=f"{self.model} v{version}",
            )
        record["slots"][slot] = [version, published["Version"]]
        if alias is None:  # the first version: the alias starts on it
            self._call(
                "create alias",
                self.aws.create_alias,
                FunctionName=self.function,
                Name=self.alias,
                FunctionVersion=published["Version"],
                Description=json.dumps(record, separators=(",", ":")),
            )
        else:
            self._update_alias(record)
        return Deployed(slot, version, None)

    def _wait_updated(self, qualifier: str | None, timeout: float) -> None:
        """Until the function (or one version) is Active and its last update done."""
        deadline = time.monotonic() + timeout
        kwargs: dict[str, Any] = {"FunctionName": self.function}
        if qualifier:
            kwargs["Qualifier"] = qualifier
        while True:
            conf = self._call("read function", self.aws.get_function_configuration, **kwargs)
            if conf is None:
                raise TargetError(f"Lambda function {self.function}:{qualifier} does not exist")
            state, update = conf.get("State"), conf.get("LastUpdateStatus")
            if state == "Failed" or update == "Failed":
                reason = conf.get("StateReason") or conf.get("LastUpdateStatusReason")
                raise TargetError(f"Lambda {self.function}:{qualifier} failed: {reason}")
            if state == "Active" and update in (None, "Successful"):
                return
            if time.monotonic() > deadline:
                raise TargetError(
                    f"Lambda {self.function}:{qualifier} not ready within {timeout:.0f} s "
                    f"(state {state}, last update {update})"
                )
            time.sleep(1)

    def wait_ready(self, deployed: Deployed, timeout: float) -> None:
        record = self._record(self._alias())
        self._wait_updated(record["slots"][deployed.slot][1], timeout)

    def set_traffic(self, traffic: Traffic) -> None:
        record = self._record(self._alias())
        missing = set(traffic.serving) - set(record["slots"])
        if missing:
            raise TargetError(f"{self.model}: slot(s) {sorted(missing)} run no Lambda version")
        self._update_alias(record, traffic)

    def mark_stable(self, slot: str) -> None:
        record = self._record(self._alias())
        record["stable"] = slot
        self._update_alias(record)

    def retire(self, slot: str) -> None:
        alias = self._alias()
        record = self._record(alias)
        traffic = self._traffic(alias, record) if alias else None
        if traffic and slot in traffic.serving:
            raise TargetError(f"{self.model}: slot {slot} still takes traffic; not retiring it")
        if record["slots"].pop(slot, None) is not None:
            self._update_alias(record)

    def guard(self, lease: UUID | None = None) -> None:
        start_guard(self.settings, self.model, self.name, self.dir / "guard-lambda.json", lease)

    def unguard(self) -> None:
        stop_guard(self.dir / "guard-lambda.json")

    def metrics(self) -> CloudWatchProvider:
        """CloudWatch's figures of each slot's published version behind the alias."""
        record = self._record(self._alias())
        slots = {
            slot: LambdaSlot(self.function, self.alias, str(lv), self.model, int(version))
            for slot, (version, lv) in record["slots"].items()
        }
        return CloudWatchProvider(self.cloudwatch, slots, self.percentiles)

    def health(self) -> str | None:
        """A slot's Lambda version that Lambda reports Failed or Inactive is a breach."""
        record = self._record(self._alias())
        for slot, (version, lv) in sorted(record["slots"].items()):
            conf = self._call(
                "read function",
                self.aws.get_function_configuration,
                FunctionName=self.function,
                Qualifier=str(lv),
            )
            if conf is None:
                return f"Lambda version {lv} of {self.function} ({slot}, v{version}) is gone"
            state, update = conf.get("State"), conf.get("LastUpdateStatus")
            if state in ("Failed", "Inactive") or update == "Failed":
                reason = conf.get("StateReason") or conf.get("LastUpdateStatusReason") or ""
                return (
                    f"Lambda reports version {lv} of {self.function} ({slot}, v{version}) "
                    f"{state if state != 'Active' else 'update Failed'}: {reason}".rstrip(": ")
                )
        return None
