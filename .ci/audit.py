"""Known vulnerabilities in the pins of ``Pipfile.lock``: ``make audit`` (part of ``make test``).

Runs ``pip-audit`` (locked in ``dev-packages``) over every pin of every category, asking PyPI's
advisory data. Where PyPI's per-release JSON cannot be read for a pin (some networks and mirrors
only serve the per-project JSON), the pin is checked against the per-project JSON instead when it
is the project's latest release, whose ``vulnerabilities`` then describe exactly that release.

Exit status 1 when any pin has a known vulnerability (each is printed with the versions that fix
it). Pins that could not be checked at all are listed, and fail the audit only with
``AUDIT_STRICT=1``: a network without advisory data must not look like a clean bill of health,
nor stop the tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "Pipfile.lock"
PROJECT_JSON = "https://pypi.org/pypi/{name}/json"
TIMEOUT_S = 30


def canonical(name: str) -> str:
    """PEP 503 name: ``boolean.py`` and ``Boolean_Py`` are ``boolean-py``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_pins(lock: Path) -> dict[str, str]:
    """``name → version`` over every category of the lock, local versions (``+cpu``) dropped."""
    pins: dict[str, str] = {}
    for category, packages in json.loads(lock.read_text(encoding="utf-8")).items():
        if category == "_meta":
            continue
        for name, spec in packages.items():
            version = str(spec.get("version", "")).removeprefix("==")
            if version:
                pins[canonical(name)] = re.sub(r"\+.*$", "", version)
    return pins


def pip_audit(pins: dict[str, str]) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())), encoding="utf-8")
        result = subprocess.run(
            [
                *(sys.executable, "-m", "pip_audit", "--format", "json", "--progress-spinner", "off"),
                *("--vulnerability-service", "pypi", "--disable-pip", "--no-deps"),
                *("--requirement", str(requirements)),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    try:
        return list(json.loads(result.stdout)["dependencies"])
    except (ValueError, KeyError):
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"audit: pip-audit failed: {last}") from None


def latest_release_vulns(name: str, version: str) -> list[dict[str, Any]] | None:
    """The advisories of ``name==version`` when it is the latest release, else ``None``."""
    try:
        with urllib.request.urlopen(PROJECT_JSON.format(name=name), timeout=TIMEOUT_S) as reply:
            project = json.load(reply)
    except (urllib.error.URLError, TimeoutError, ValueError):
        return None
    if project.get("info", {}).get("version") != version:
        return None
    return [
        {"id": v.get("id", "?"), "fix_versions": v.get("fixed_in", []), "aliases": v.get("aliases", [])}
        for v in project.get("vulnerabilities", [])
        if not v.get("withdrawn")
    ]


def main() -> int:
    pins = locked_pins(LOCK)
    vulnerable: list[tuple[str, str, dict[str, Any]]] = []
    unchecked: list[str] = []
    checked = 0
    for dependency in pip_audit(pins):
        name, version = (
            dependency["name"],
            dependency.get("version") or pins.get(canonical(dependency["name"]), ""),
        )
        vulns = dependency.get("vulns")
        if vulns is None:
            vulns = latest_release_vulns(name, version)
        if vulns is None:
            unchecked.append(f"{name}=={version}")
            continue
        checked += 1
        vulnerable += [(name, version, v) for v in vulns]
    for name, version, vuln in vulnerable:
        fixes = ", ".join(vuln.get("fix_versions") or []) or "no fixed release"
        aliases = ", ".join(vuln.get("aliases") or [])
        print(f"VULNERABLE {name}=={version}: {vuln['id']} ({aliases}); fixed in {fixes}")
    print(
        f"audit: {checked} of {len(pins)} locked pins checked, {len(vulnerable)} known vulnerabilities"
        + (f", {len(unchecked)} not checkable here (no advisory data reachable)" if unchecked else "")
    )
    if unchecked:
        print("  not checked: " + " ".join(sorted(unchecked)))
    strict = os.environ.get("AUDIT_STRICT", "") not in ("", "0")
    return 1 if vulnerable or (strict and unchecked) else 0


if __name__ == "__main__":
    sys.exit(main())
