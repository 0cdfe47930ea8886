"""An EMULATION of the Kubernetes API server, for tests only: no cluster can run on these machines.

It serves what kubectl and the Kubernetes Python client need to talk to a cluster holding the
KServe and Knative CRDs: discovery (so ``kubectl apply --dry-run=client`` resolves the kinds), and
create / read / replace of custom objects with ``resourceVersion`` conflicts and ``generation``.
(kubectl's client-side schema validation reads OpenAPI v2 as protobuf, which this does not serve:
the schema check is ``mlops.release.manifests.validate_manifest`` against the same CRDs.) A small controller plays KServe:
after a delay it marks each InferenceService generation ready (a new revision per predictor
change, the canary share routed as ``canaryTrafficPercent`` says), or failed when its image is
in ``failing``. It is no KServe: nothing runs in it. A test may back revisions with real model servers: ``urls``
maps an image to the server that plays its revision (its URL is then the revision's in the
status, as KServe reports one), and ``routes`` says how an ingress would split a request among
the revisions' images right now (the test's load plays KServe's ingress by it).
"""

from __future__ import annotations

import copy
import json
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from mlops.stack.processes import free_port
from tests.helpers import ThreadedServer

KINDS = {  # (group, version) -> [(plural, kind)]
    ("serving.kserve.io", "v1beta1"): [("inferenceservices", "InferenceService")],
    ("serving.knative.dev", "v1"): [("services", "Service")],
    ("mlops.seldon.io", "v1alpha1"): [("models", "Model"), ("experiments", "Experiment")],
}


def _status(code: int, reason: str, message: str) -> JSONResponse:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure"}
    return JSONResponse(body | {"code": code, "reason": reason, "message": message}, code)


class EmulatedKubernetes:
    def __init__(self, ready_after: float = 0.3) -> None:
        self.port = free_port("127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_after = ready_after
        self.failing: set[str] = set()  # images whose revisions fail
        self.urls: dict[str, str] = {}  # image -> where its revision answers (none by default)
        self.revision_images: dict[str, str] = {}  # revision name -> its image
        self.objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.writes: list[dict[str, Any]] = []  # every accepted object, in order
        self.deleted: list[str] = []  # names of the deleted objects, in order
        self.config_path: Path | None = None  # the last kubeconfig written
        self._lock = threading.Lock()
        self._rv = 0
        self.app = self._build()
        self._serving = ThreadedServer(self.app, self.port, "the emulated Kubernetes API")

    def __enter__(self) -> EmulatedKubernetes:
        self._serving.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._serving.stop()

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig file pointing at this server."""
        self.config_path = path
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "emulated", "cluster": {"server": self.url}}],
                    "users": [{"name": "tester", "user": {"token": "emulated"}}],
                    "contexts": [
                        {"name": "emulated", "context": {"cluster": "emulated", "user": "tester"}}
                    ],
                    "current-context": "emulated",
                }
            )
        )
        return path

    # the controller ----------------------------------------------------------------------------
    def _reconcile(self, key: tuple[str, str, str, str], generation: int) -> None:
        time.sleep(self.ready_after)
        with self._lock:
            obj = self.objects.get(key)
            if obj is None or obj["metadata"]["generation"] != generation:
                return
            old = obj.get("status", {}).get("components", {}).get("predictor", {})
            predictor = obj["spec"]["predictor"]
            image = predictor["containers"][0]["image"]
            changed = image != old.get("_image")
            revision = (
                f"{obj['metadata']['name']}-predictor-{generation:05d}"
                if changed
                else old.get("latestCreatedRevision")
            )
            previous = old.get("latestReadyRevision") if changed else old.get("_previous")
            self.revision_images[revision] = image
            canary = predictor.get("canaryTrafficPercent")
            status: dict[str, Any] = {"observedGeneration": generation}
            if image in self.failing:
                status["conditions"] = [
                    {
                        "type": "PredictorReady",
                        "status": "False",
                        "reason": "RevisionFailed",
                        "message": f"Revision {revision} failed: image {image} exited",
                    },
                    {"type": "Ready", "status": "False", "reason": "RevisionFailed"},
                ]
                predictor_status = {
                    "latestCreatedRevision": revision,
                    "latestReadyRevision": old.get("latestReadyRevision"),
                }
            else:
                status["conditions"] = [
                    {"type": "PredictorReady", "status": "True"},
                    {"type": "Ready", "status": "True"},
                ]
                traffic = [
                    {
                        "revisionName": revision,
                        "tag": "latest",
                        "latestRevision": True,
                        "percent": 100 if canary is None or previous is None else canary,
                        "url": self.urls.get(image),
                    }
                ]
                if previous and canary is not None:
                    traffic.append(
                        {
                            "revisionName": previous,
                            "tag": "prev",
                            "latestRevision": False,
                            "percent": 100 - canary,
                        }
                    )
                predictor_status = {
                    "latestCreatedRevision": revision,
                    "latestReadyRevision": revision,
                    "traffic": traffic,
                }
            predictor_status |= {"_image": image, "_previous": previous}
            status["components"] = {"predictor": predictor_status}
            obj["status"] = status

    def _reconcile_seldon(self, key: tuple[str, str, str, str], generation: int) -> None:
        """Plays Seldon's scheduler: a Model is loaded (Ready) after the delay, or fails when its
        storage URI is in ``failing``; an Experiment is ready once every model it names is."""
        time.sleep(self.ready_after)
        for _ in range(100):  # an Experiment waits up to 10 s for its models
            if self._reconcile_seldon_once(key, generation):
                return
            time.sleep(0.1)

    def _reconcile_seldon_once(self, key: tuple[str, str, str, str], generation: int) -> bool:
        with self._lock:
            obj = self.objects.get(key)
            if obj is None or obj["metadata"]["generation"] != generation:
                return True
            if key[1] == "models":
                uri = obj["spec"]["storageUri"]
                ok = uri not in self.failing
                condition = {"type": "ModelReady", "status": "True"}
                if not ok:
                    condition = {
                        "type": "ModelReady",
                        "status": "False",
                        "reason": "ScheduleFailed",
                        "message": f"failed to load model from {uri}",
                    }
            else:
                names = [c["name"] for c in obj["spec"].get("candidates", [])]
                names += [obj["spec"]["mirror"]["name"]] if obj["spec"].get("mirror") else []
                loaded = {
                    n
                    for (g, pl, ns, n), m in self.objects.items()
                    if pl == "models" and ns == key[2]
                    for c in m.get("status", {}).get("conditions", [])
                    if c["type"] == "Ready" and c["status"] == "True"
                }
                ok = set(names) <= loaded
                condition = {"type": "CandidatesReady", "status": "True" if ok else "Unknown"}
            ready = {"type": "Ready", "status": "True" if ok else "False"}
            if not ok and key[1] == "models":
                ready |= {"reason": "ScheduleFailed"}
            obj["status"] = {"observedGeneration": generation, "conditions": [condition, ready]}
            return ok or key[1] == "models"

    def seldon_split(self, experiment: str) -> dict[str, Any]:
        """How Seldon's router would send a request to ``experiment`` now: ``candidates`` as
        (Model name, storage URI, weight), and ``mirror`` as (Model name, storage URI) or None."""
        with self._lock:
            models = {n: o for (_, pl, _, n), o in self.objects.items() if pl == "models"}
            exp = next(
                (
                    o
                    for (_, pl, _, n), o in self.objects.items()
                    if (pl, n) == ("experiments", experiment)
                ),
                None,
            )
            if exp is None:
                return {"candidates": [], "mirror": None}
            candidates = [
                (c["name"], models[c["name"]]["spec"]["storageUri"], int(c["weight"]))
                for c in exp["spec"]["candidates"]
                if c["name"] in models
            ]
            mirror = exp["spec"].get("mirror")
            return {
                "candidates": candidates,
                "mirror": (mirror["name"], models[mirror["name"]]["spec"]["storageUri"])
                if mirror and mirror["name"] in models
                else None,
            }

    def routes(self, name: str) -> list[tuple[str, int]]:
        """(image, percent) of each revision of InferenceService ``name`` that takes traffic, as
        its status routes it now (empty before the first ready revision)."""
        with self._lock:
            for (_, plural, _, found), obj in self.objects.items():
                if plural != "inferenceservices" or found != name:
                    continue
                predictor = obj.get("status", {}).get("components", {}).get("predictor", {})
                return [
                    (self.revision_images[t["revisionName"]], int(t["percent"]))
                    for t in predictor.get("traffic", [])
                    if t.get("percent") and t["revisionName"] in self.revision_images
                ]
        return []

    # the API -----------------------------------------------------------------------------------
    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/version")
        def version() -> dict[str, str]:
            return {"major": "1", "minor": "32", "gitVersion": "v1.32.0-emulated"}

        @app.get("/api")
        def api() -> dict[str, Any]:
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}

        @app.get("/api/v1")
        def core() -> dict[str, Any]:
            return {"kind": "APIResourceList", "groupVersion": "v1", "resources": []}

        @app.get("/apis")
        def groups() -> dict[str, Any]:
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [
                    {
                        "name": g,
                        "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                        "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v},
                    }
                    for g, v in KINDS
                ],
            }

        @app.get("/apis/{group}/{version}")
        def resources(group: str, version: str) -> Any:
            if (group, version) not in KINDS:
                return _status(404, "NotFound", f"{group}/{version}")
            verbs = ["create", "get", "list", "update", "patch", "delete"]
            return {
                "kind": "APIResourceList",
                "groupVersion": f"{group}/{version}",
                "resources": [
                    {
                        "name": plural,
                        "singularName": kind.lower(),
                        "namespaced": True,
                        "kind": kind,
                        "verbs": verbs,
                    }
                    for plural, kind in KINDS[group, version]
                ],
            }

        base = "/apis/{group}/{version}/namespaces/{ns}/{plural}"

        @app.post(base)
        async def create(group: str, version: str, ns: str, plural: str, request: Request) -> Any:
            obj = await request.json()
            key = (group, plural, ns, obj["metadata"]["name"])
            with self._lock:
                if key in self.objects:
                    return _status(409, "AlreadyExists", f"{key[3]} already exists")
                obj["metadata"] |= {"namespace": ns, "generation": 1}
                return self._store(key, obj, 201)

        @app.get(base)
        def listed(group: str, version: str, ns: str, plural: str, labelSelector: str = "") -> Any:
            wanted = dict(p.split("=", 1) for p in labelSelector.split(",") if "=" in p)
            with self._lock:
                items = [
                    copy.deepcopy(obj)
                    for (g, pl, n, _), obj in self.objects.items()
                    if (g, pl, n) == (group, plural, ns)
                    and wanted.items() <= obj["metadata"].get("labels", {}).items()
                ]
            return {"kind": "List", "apiVersion": f"{group}/{version}", "items": items}

        @app.delete(base + "/{name}")
        def delete(group: str, version: str, ns: str, plural: str, name: str) -> Any:
            with self._lock:
                obj = self.objects.pop((group, plural, ns, name), None)
            if obj is None:
                return _status(404, "NotFound", f'{plural} "{name}" not found')
            self.deleted.append(name)
            return {"kind": "Status", "apiVersion": "v1", "status": "Success"}

        @app.get(base + "/{name}")
        def read(group: str, version: str, ns: str, plural: str, name: str) -> Any:
            with self._lock:
                obj = self.objects.get((group, plural, ns, name))
                if obj is None:
                    return _status(404, "NotFound", f'{plural} "{name}" not found')
                return copy.deepcopy(obj)

        @app.put(base + "/{name}")
        async def replace(
            group: str, version: str, ns: str, plural: str, name: str, request: Request
        ) -> Any:
            obj = await request.json()
            key = (group, plural, ns, name)
            with self._lock:
                old = self.objects.get(key)
                if old is None:
                    return _status(404, "NotFound", f'{plural} "{name}" not found')
                if obj["metadata"].get("resourceVersion") != old["metadata"]["resourceVersion"]:
                    return _status(409, "Conflict", "the object has been modified")
                generation = old["metadata"]["generation"]
                if obj.get("spec") != old.get("spec"):
                    generation += 1
                obj["metadata"] |= {"namespace": ns, "generation": generation}
                obj["status"] = old.get("status", {})
                return self._store(key, obj, 200)

        return app

    def _store(self, key: tuple[str, str, str, str], obj: dict[str, Any], code: int) -> Any:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self.objects[key] = obj
        self.writes.append(json.loads(json.dumps(obj)))
        reconcile = {
            "inferenceservices": self._reconcile,
            "models": self._reconcile_seldon,
            "experiments": self._reconcile_seldon,
        }.get(key[1])
        if reconcile is not None:
            threading.Thread(
                target=reconcile, args=(key, obj["metadata"]["generation"]), daemon=True
            ).start()
        return JSONResponse(copy.deepcopy(obj), code)
