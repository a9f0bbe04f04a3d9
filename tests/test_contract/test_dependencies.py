"""The contract needs only what every image installs: the Pipfile's ``[packages]`` category."""

from __future__ import annotations

import sys

from devtools.processes import ROOT
from tests.test_openshift.images import imported_modules, locked_distributions, module_distributions


def test_the_contract_imports_only_the_standard_library_and_the_shared_packages() -> None:
    shared = locked_distributions("packages")
    imports = imported_modules((ROOT / "contract").rglob("*.py"))
    outside = {
        name: sorted(files)
        for name, files in imports.items()
        if name not in sys.stdlib_module_names
        and name != "contract"
        and not module_distributions().get(name, frozenset()) & shared
    }
    assert outside == {}
    assert "jsonschema" in imports  # the check sees third-party imports
