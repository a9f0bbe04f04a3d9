"""openshift/Containerfile, read with BuildKit's own parser (the ``dockerfile`` package): its
stages, what each copies from the build context, the environment and the command it sets."""

from __future__ import annotations

from dataclasses import dataclass, field

import dockerfile

from tests.test_openshift.kustomize import OPENSHIFT

CONTAINERFILE = OPENSHIFT / "Containerfile"
IGNOREFILE = OPENSHIFT / "Containerfile.dockerignore"
# Component (stage and image name) -> the Pipfile categories its image installs.
COMPONENTS = {"decoder": "packages decoder", "recorder": "packages recorder", "nlp": "packages nlp"}
# Python package each component's image runs (COPY sources that may not exist yet).
PACKAGES = {"decoder": "decoder_api", "recorder": "recorder", "nlp": "nlp_consumer"}


@dataclass
class Stage:
    name: str
    base: str
    commands: list[dockerfile.Command] = field(default_factory=list)

    def of(self, instruction: str) -> list[dockerfile.Command]:
        return [c for c in self.commands if c.cmd == instruction]


@dataclass(frozen=True)
class ContextCopy:
    """A ``COPY`` from the build context: ``sources`` (paths in the repository) to ``destination``
    (relative to the stage's working directory when it does not start with ``/``)."""

    sources: tuple[str, ...]
    destination: str


def stages() -> dict[str, Stage]:
    found: dict[str, Stage] = {}
    current: Stage | None = None
    for command in dockerfile.parse_file(str(CONTAINERFILE)):
        if command.cmd == "FROM":
            words = command.value
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else f"<stage {len(found)}>"
            current = found[name] = Stage(name, words[0])
        elif current is not None:
            current.commands.append(command)
    return found


def global_args() -> dict[str, str]:
    args = {}
    for command in dockerfile.parse_file(str(CONTAINERFILE)):
        if command.cmd == "FROM":
            break
        if command.cmd == "ARG":
            name, _, default = command.value[0].partition("=")
            args[name] = default
    return args


def run_text(stage: Stage) -> str:
    return "\n".join(c.value[0] for c in stage.of("RUN"))


def context_copies(stage: Stage) -> list[ContextCopy]:
    """The stage's ``COPY`` instructions that read the build context (not ``--from`` a stage)."""
    return [
        ContextCopy(tuple(copy.value[:-1]), copy.value[-1])
        for copy in stage.of("COPY")
        if not any(flag.startswith("--from=") for flag in copy.flags)
    ]


def lineage(name: str) -> list[Stage]:
    """The stage and the stages it is built on, the oldest first (ENV and WORKDIR carry over)."""
    found = stages()
    chain = [found[name]]
    while chain[0].base in found:
        chain.insert(0, found[chain[0].base])
    return chain


def stage_env(name: str) -> dict[str, str]:
    """The environment the stage's image sets (``ENV`` of it and of its base stages)."""
    env: dict[str, str] = {}
    for stage in lineage(name):
        for command in stage.of("ENV"):
            words = command.value
            env |= dict(zip(words[::2], words[1::2], strict=True))
    return env


def default_command(name: str) -> list[str]:
    """The image's ``CMD`` (exec form)."""
    [command] = stages()[name].of("CMD")
    assert command.json, f"{name}: CMD is not in exec (JSON) form"
    return list(command.value)
