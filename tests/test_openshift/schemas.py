"""Validate manifests against real schemas, offline.

- Kubernetes kinds: the strict JSON schemas bundled in the PyPI package ``kubernetes-validate``
  (unknown fields rejected, as ``kubectl apply``'s default server-side validation does).
- OpenShift (Route, BuildConfig, ImageStream) and Strimzi (Kafka, KafkaNodePool, KafkaTopic,
  KafkaUser): the schemas in ``shared/schemas/`` beside the checkout. Those list their fields
  but do not close them, so every object schema that lists its properties is closed here
  (``additionalProperties: false``) unless it keeps unknown fields on purpose
  (``x-kubernetes-preserve-unknown-fields``); custom resources' ``metadata`` is checked as
  Kubernetes' strict ObjectMeta, which the API server applies to every object.

A kind with no schema is an error, never a silent pass.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate.utils
from referencing import Registry, Resource

from tests.test_openshift.kustomize import REPO, Manifest

SHARED_SCHEMAS = REPO.parent / "shared" / "schemas"
SHARED_GROUPS = frozenset(
    {"route.openshift.io", "build.openshift.io", "image.openshift.io", "kafka.strimzi.io"}
)
# OpenShift 4.16 (Kubernetes 1.29, the oldest release still supported) and the newest schemas
# kubernetes-validate bundles.
K8S_VERSIONS = ("1.29", kubernetes_validate.utils.major_minor(kubernetes_validate.utils.latest_version()))
DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"
OBJECT_META = {"$ref": f"{DEFINITIONS_ID}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
_SCHEMA_MAPS = ("properties", "patternProperties", "definitions", "$defs", "dependentSchemas")
_SCHEMA_VALUES = ("items", "additionalProperties", "not", "contains", "if", "then", "else")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")


class SchemaNotFound(LookupError):
    """No schema is known for an object's apiVersion and kind."""


def api_group_version(manifest: Mapping[str, Any]) -> tuple[str, str]:
    """``("apps", "v1")`` for ``apps/v1``; the core group is ``""``."""
    group, _, version = str(manifest.get("apiVersion", "")).rpartition("/")
    return group, version


def shared_schema_dir() -> Path:
    if not SHARED_SCHEMAS.is_dir():
        raise FileNotFoundError(
            f"{SHARED_SCHEMAS} is missing: OpenShift and Strimzi schemas are read from shared/schemas "
            "beside the checkout (as CI lays it out)"
        )
    return SHARED_SCHEMAS


def validation_errors(manifest: Manifest, k8s_version: str) -> list[str]:
    """Every schema violation of one object, as ``path: message`` lines (empty when valid)."""
    validator = validator_for(manifest.get("apiVersion", ""), manifest.get("kind", ""), k8s_version)
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


@functools.cache
def validator_for(api_version: str, kind: str, k8s_version: str) -> jsonschema.Draft202012Validator:
    group, version = api_group_version({"apiVersion": api_version})
    if group in SHARED_GROUPS:
        schema = shared_schema(kind, group, version)
    else:
        schema = kubernetes_schema(kind, api_version, k8s_version)
    registry: Registry = Resource.from_contents(kubernetes_definitions(k8s_version)) @ Registry()
    return jsonschema.Draft202012Validator(schema, registry=registry)


def shared_schema(kind: str, group: str, version: str) -> dict[str, Any]:
    path = shared_schema_dir() / f"{kind.lower()}-{group}-{version}.json"
    if not path.is_file():
        raise SchemaNotFound(f"no schema for {kind} {group}/{version} (looked for {path.name})")
    schema = closed(json.loads(path.read_text(encoding="utf-8")))
    if "definitions" not in schema:  # a CRD schema: its metadata is only `type: object`
        schema["properties"]["metadata"] = OBJECT_META
    return schema


def kubernetes_schema(kind: str, api_version: str, k8s_version: str) -> dict[str, Any]:
    group, version = api_group_version({"apiVersion": api_version})
    suffix = f"{group.split('.')[0]}-{version}" if group else version
    path = _bundle(k8s_version) / f"{kind.lower()}-{suffix}.json"
    if not path.is_file():
        raise SchemaNotFound(f"no Kubernetes {k8s_version} schema for {kind} {api_version}")
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


@functools.cache
def kubernetes_definitions(k8s_version: str) -> dict[str, Any]:
    definitions: dict[str, Any] = json.loads((_bundle(k8s_version) / "_definitions.json").read_text())
    if definitions.get("$id") != DEFINITIONS_ID:
        raise SchemaNotFound(f"unexpected kubernetes-validate bundle layout for {k8s_version}")
    return definitions


def _bundle(k8s_version: str) -> Path:
    root = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    path = Path(str(root)) / f"v{k8s_version}.0-local-strict"
    if not path.is_dir():
        raise SchemaNotFound(f"kubernetes-validate has no schemas for Kubernetes {k8s_version}")
    return path


def closed(schema: Any, close: bool = True) -> Any:
    """A copy of ``schema`` whose object schemas reject properties they do not list.

    Branches of ``allOf``/``anyOf``/``oneOf`` are partial views of one object, so they are not
    closed themselves (their properties' schemas are).
    """
    if not isinstance(schema, dict):
        return schema
    copy: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            copy[key] = {name: closed(sub) for name, sub in value.items()}
        elif key in _SCHEMA_VALUES:
            copy[key] = closed(value)
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            copy[key] = [closed(sub, close=False) for sub in value]
        else:
            copy[key] = value
    keeps_unknown = copy.get("x-kubernetes-preserve-unknown-fields") is True
    if close and "properties" in copy and "additionalProperties" not in copy and not keeps_unknown:
        copy["additionalProperties"] = False
    return copy
