"""Check KubeRay manifests before `kubectl apply`, without KubeRay's CRD files.

    python cluster/kuberay/validate.py cluster/kuberay/raycluster.yaml cluster/kuberay/rayjob.yaml

prints one line per problem (``file: field.path: what is wrong``) and exits 1 if there is
any. Two checks:

- the RayCluster / RayJob fields (apiVersion ray.io/v1) against ``schema.json``, a JSON
  schema this project wrote by hand from KubeRay v1.7.0's API reference: a misspelled
  field (``rayStartParam``, ``workerGroupSpec``, ``replica``) or a wrong type
  (``replicas: "2"``) is named with its path;
- every pod template (the head's and each worker group's ``template``, the RayJob's
  ``submitterPodTemplate`` and its ``rayClusterSpec``'s templates) and the resource's
  ``metadata`` against Kubernetes' own schemas, strict (unknown fields are errors), for
  Kubernetes 1.29, the version KubeRay 1.7.0's CI runs on, with ``kubernetes-validate``.

Needs ``jsonschema`` and ``kubernetes-validate`` (smotune's ``test`` extras).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

SCHEMA = Path(__file__).with_name("schema.json")
KUBERNETES_VERSION = "1.29"  # KubeRay 1.7.0's CI creates its kind clusters at v1.29.0


def _path(parts: list[Any] | Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def pod_templates(resource: dict) -> list[tuple[list[Any], dict]]:
    """``(path, template)`` of every pod template of a RayCluster or RayJob."""
    spec = resource.get("spec")
    if not isinstance(spec, dict):
        return []
    found: list[tuple[list[Any], dict]] = []

    def cluster(cluster_spec: Any, at: list[Any]) -> None:
        if not isinstance(cluster_spec, dict):
            return
        head = cluster_spec.get("headGroupSpec")
        if isinstance(head, dict) and isinstance(head.get("template"), dict):
            found.append(([*at, "headGroupSpec", "template"], head["template"]))
        groups = cluster_spec.get("workerGroupSpecs")
        for i, group in enumerate(groups if isinstance(groups, list) else []):
            if isinstance(group, dict) and isinstance(group.get("template"), dict):
                found.append(([*at, "workerGroupSpecs", i, "template"], group["template"]))

    if resource.get("kind") == "RayCluster":
        cluster(spec, ["spec"])
    elif resource.get("kind") == "RayJob":
        cluster(spec.get("rayClusterSpec"), ["spec", "rayClusterSpec"])
        if isinstance(spec.get("submitterPodTemplate"), dict):
            found.append((["spec", "submitterPodTemplate"], spec["submitterPodTemplate"]))
    return found


def _kubernetes(wrapped: dict, at: list[Any], key: str) -> list[str]:
    """Kubernetes' schema of ``wrapped`` (a v1 PodTemplate); paths under ``key`` moved to ``at``."""
    try:
        kubernetes_validate.validate(wrapped, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        inner = list(err.path)
        where = [*at, *inner[1:]] if inner[:1] == [key] else at
        return [f"{_path(where)}: {err.message} (Kubernetes {KUBERNETES_VERSION})"]
    return []


def problems(resource: Any) -> list[str]:
    """Every problem of one manifest document, one line each (``field.path: message``)."""
    if not isinstance(resource, dict):
        return ["the document is not a mapping"]
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    out = [
        f"{_path(list(err.absolute_path)) or '(top)'}: {err.message} (KubeRay ray.io/v1)"
        for err in sorted(validator.iter_errors(resource), key=lambda e: list(map(str, e.path)))
    ]
    if isinstance(resource.get("metadata"), dict):
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": resource["metadata"]}
        out += _kubernetes(wrapped, ["metadata"], "metadata")
    for at, template in pod_templates(resource):
        wrapped = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": "check"},
            "template": template,
        }
        out += _kubernetes(wrapped, at, "template")
    return out


def check_file(path: Path) -> list[str]:
    """The problems of every document in a manifest file, each line headed by the file."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return [f"{path}: {line}" for doc in docs for line in problems(doc)]


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    lines = [line for name in argv for line in check_file(Path(name))]
    for line in lines:
        print(line)
    if not lines:
        print(f"ok: {', '.join(argv)} (KubeRay ray.io/v1, Kubernetes {KUBERNETES_VERSION})")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
