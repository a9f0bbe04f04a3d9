"""The manifests set exactly the variables in env_contract.py, and the code reads each of them."""

from __future__ import annotations

import pytest

from decoder_api import config
from decoder_api.config import Settings
from tests.test_openshift.env_contract import CONTAINERS
from tests.test_openshift.manifests import Manifests, expansions
from tests.test_openshift.sources import image_source, package_landed, package_source, settings_keys

OTHER_PACKAGES = sorted({(name, c.package) for name, c in CONTAINERS.items() if c.package != "decoder_api"})


def decoder_reads(variable: str) -> bool:
    """Whether the decoder reads the variable: a ``Settings`` field behind ``DECODER_`` or an
    unprefixed alias (``config.UNPREFIXED``), or a name its image's code (the decoder's and the
    contract's Kafka settings) reads directly."""
    fields = settings_keys(Settings)
    if variable in config.UNPREFIXED:
        return config.UNPREFIXED[variable] in fields
    if variable.startswith(config.ENV_PREFIX) and variable[len(config.ENV_PREFIX) :].lower() in fields:
        return True
    return variable in image_source("decoder_api").strings


def test_manifests_set_exactly_the_contracted_variables(rendered: Manifests) -> None:
    seen = set()
    for workload, container in rendered.our_containers():
        name = container["name"]
        assert name in CONTAINERS, (
            f"{workload['metadata']['name']}: container {name} is not in env_contract.py"
        )
        assert set(rendered.env(container)) == CONTAINERS[name].names, name
        seen.add(name)
    assert seen == set(CONTAINERS)


def test_command_only_variables_are_expanded_by_the_command(rendered: Manifests) -> None:
    for _, container in rendered.our_containers():
        contract = CONTAINERS[container["name"]]
        assert contract.command_only <= expansions(container), container["name"]


def test_commands_run_the_contracted_package(rendered: Manifests) -> None:
    for _, container in rendered.our_containers():
        contract = CONTAINERS[container["name"]]
        command = [*container.get("command", []), *container.get("args", [])]
        assert command[:3] == ["python", "-m", contract.package], container["name"]
        assert all(word in command for word in contract.command_words), container["name"]


@pytest.mark.parametrize("variable", sorted(CONTAINERS["decoder"].reads))
def test_the_decoder_reads(variable: str) -> None:
    assert decoder_reads(variable)


def test_the_decoder_check_rejects_unknown_names() -> None:
    assert not decoder_reads("DECODER_NO_SUCH_SETTING")
    assert not decoder_reads("KAFKA_NO_SUCH_SETTING")
    assert not decoder_reads("REDIS_HOST")


@pytest.mark.parametrize(("container", "package"), OTHER_PACKAGES)
def test_other_packages_read_their_variables(container: str, package: str) -> None:
    if not package_landed(package):
        pytest.skip(f"{package} has no __main__ yet")
    source = image_source(package)
    assert sorted(v for v in CONTAINERS[container].reads if not source.reads(v)) == []
    assert not source.reads("NO_SUCH_VARIABLE_ANYWHERE")


@pytest.mark.parametrize("container", sorted(c for c in CONTAINERS if CONTAINERS[c].command_words))
def test_packages_accept_the_command_words(container: str) -> None:
    contract = CONTAINERS[container]
    if not package_landed(contract.package):
        pytest.skip(f"{contract.package} has no __main__ yet")
    strings = package_source(contract.package).strings
    assert [word for word in contract.command_words if word not in strings] == []
