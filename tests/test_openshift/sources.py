"""What a Python package's source says, read with ``ast`` (nothing is imported): its string
constants and identifiers, to tell whether it reads an environment variable. An image holds its
component's package and the contract (``contract.kafka`` reads the Kafka variables for all)."""

from __future__ import annotations

import ast
import dataclasses
import functools
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.test_openshift.kustomize import REPO

SHARED_PACKAGE = "contract"  # copied into every image, next to its component


@dataclass(frozen=True)
class PackageSource:
    strings: frozenset[str]
    identifiers: frozenset[str]  # names, attributes, arguments, keywords (lower case)

    def reads(self, variable: str) -> bool:
        """The variable's name is in the source, or a prefix of it (``"KAFKA_"``) is and the rest
        is a field or name (``bootstrap_servers``), as prefixed settings loaders spell it."""
        if variable in self.strings:
            return True
        parts = variable.split("_")
        for cut in range(1, len(parts)):
            prefix, rest = "_".join(parts[:cut]) + "_", "_".join(parts[cut:]).lower()
            if prefix in self.strings and rest in self.identifiers:
                return True
        return False

    def mentions_family(self, prefix: str) -> bool:
        return any(text.startswith(prefix) for text in self.strings)


def package_dir(package: str) -> Path:
    return REPO / package


def package_landed(package: str) -> bool:
    """Whether the package runs as the containers run it (``python -m package``): until then it
    is work in progress and the checks against its source wait."""
    return (package_dir(package) / "__main__.py").is_file()


@functools.cache
def package_source(package: str) -> PackageSource:
    strings: set[str] = set()
    identifiers: set[str] = set()
    for path in sorted(package_dir(package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                strings.add(node.value)
                identifiers.add(node.value.lower())
            elif isinstance(node, ast.Name):
                identifiers.add(node.id.lower())
            elif isinstance(node, ast.Attribute):
                identifiers.add(node.attr.lower())
            elif isinstance(node, ast.arg | ast.keyword):
                identifiers.add((node.arg or "").lower())
    return PackageSource(frozenset(strings), frozenset(identifiers))


@functools.cache
def image_source(package: str) -> PackageSource:
    """The source of the image that runs ``package``: the package and the contract."""
    own, shared = package_source(package), package_source(SHARED_PACKAGE)
    return PackageSource(own.strings | shared.strings, own.identifiers | shared.identifiers)


def settings_keys(cls: type, prefix: str = "") -> set[str]:
    """Flat keys of a (nested) settings dataclass, as ``decoder_api.config.build`` reads them."""
    hints = typing.get_type_hints(cls)
    keys: set[str] = set()
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            keys |= settings_keys(typing.cast(type, hint), f"{prefix}{field.name}_")
        else:
            keys.add(f"{prefix}{field.name}")
    return keys


def settings_default(cls: type, name: str) -> Any:
    """A settings dataclass field's default (class attributes of slotted dataclasses are not it)."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default
