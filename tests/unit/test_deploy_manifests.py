"""deploy/: the Dockerfile, the compose file and the Kubernetes manifests, checked offline
against the code they deploy: topics, consumer groups, ports, settings names and Kafka ACLs.

Only PyYAML and JSON Schemas written here; no network, no cluster. `kubectl kustomize` and
`docker compose config` run when those tools are installed (both work offline) and are skipped
with the reason otherwise.
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import importlib
import importlib.util
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from contracts.events import CASE_TOPICS, CATALOG_TOPIC, DLQ_TOPIC, XREGION_TOPIC
from services.common.kafka import TopicSpec, department_topic, standard_topics
from services.common.settings import CommonSettings
from tests.unit.test_department_topics import (
    MIRRORED_TOPIC_PREFIX,
    Rule,
    can_read,
    matches,
    rules,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"

SERVICES = ("intake", "routing", "approval", "delivery")
PROCESSES = (*SERVICES, "console")
IMAGE = "tongban"  # the one image (kustomization.yaml `images` points it at a registry)
MAX_MEMORY_LIMIT_MI = 200  # per process: the target is 150 MB resident

# Kafka client security the manifests pass for Strimzi's SCRAM-over-TLS listener. The services
# do not read these yet (services/common/kafka.py has no SASL/TLS options); until they do the
# pods cannot authenticate to that listener. Allowed here by name, so any other unknown
# TONGBAN_* variable (a typo) still fails.
PENDING_KAFKA_CLIENT_SETTINGS = frozenset(
    {
        "TONGBAN_KAFKA_SECURITY_PROTOCOL",
        "TONGBAN_KAFKA_SASL_MECHANISM",
        "TONGBAN_KAFKA_SASL_USERNAME",
        "TONGBAN_KAFKA_SASL_PASSWORD",
        "TONGBAN_KAFKA_SSL_CAFILE",
    }
)


# -- loading -----------------------------------------------------------------------------------


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def kustomization(directory: Path) -> dict[str, Any]:
    loaded = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


@cache
def manifests() -> tuple[dict[str, Any], ...]:
    """Every resource the base kustomization lists, in its order."""
    docs: list[dict[str, Any]] = []
    for entry in kustomization(K8S)["resources"]:
        docs.extend(load_all(K8S / entry))
    return tuple(docs)


def of_kind(kind: str, docs: Iterator[dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for doc in docs if docs is not None else iter(manifests()):
        if doc["kind"] == kind:
            name = doc["metadata"]["name"]
            assert name not in found, f"two {kind} named {name}"
            found[name] = doc
    return found


def component_docs() -> list[dict[str, Any]]:
    component = K8S / "without-keda"
    return [
        d for entry in kustomization(component)["resources"] for d in load_all(component / entry)
    ]


@cache
def settings_class(process: str) -> type[CommonSettings]:
    """The settings class a process reads: the CommonSettings subclass its app.py has that is
    defined in its own package (app.py itself, or a module beside it)."""
    module = importlib.import_module(f"services.{process}.app")
    found = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, CommonSettings)
        and value.__module__.startswith(f"services.{process}.")
    ]
    assert len(found) == 1, f"services.{process}.app defines {found}"
    return found[0]


def default_port(process: str) -> int:
    port = settings_class(process).model_fields["http_port"].default
    assert isinstance(port, int)
    return port


def is_setting(process: str, variable: str) -> bool:
    """TONGBAN_FOO is field `foo` of the process's settings (pydantic-settings, prefix)."""
    if not variable.startswith("TONGBAN_"):
        return False
    field = variable.removeprefix("TONGBAN_").lower()
    return field in settings_class(process).model_fields


@cache
def consumer_groups() -> dict[str, dict[str, tuple[str, ...]]]:
    """service -> {consumer group -> its topics}, from the consumers each app registers."""
    groups: dict[str, dict[str, tuple[str, ...]]] = {}
    for service in SERVICES:
        runtime = importlib.import_module(f"services.{service}.app").create_app().state.runtime
        groups[service] = {
            g.group_id: tuple(g.topics) or (mirrored_example(g.pattern),)
            for g in runtime.consumer_groups()
        }
    return groups


def mirrored_example(pattern: str | None) -> str:
    """A partner's topic a pattern group reads (§9), as a Kubernetes deployment names it."""
    assert pattern is not None, "a group reads topics or a pattern"
    topic = next(t for t in (XREGION_TOPIC, CATALOG_TOPIC) if pattern.endswith(re.escape(t) + "$"))
    example = f"{MIRRORED_TOPIC_PREFIX}{topic}"
    assert re.match(pattern, example), (pattern, example)
    return example


def expected_topics() -> dict[str, TopicSpec]:
    specs = {spec.name: spec for spec in standard_topics()}
    try:
        dead_letters = importlib.import_module("services.operators.dead_letters")
    except ImportError:  # no replay log in this version of the code
        return specs
    replays: TopicSpec = dead_letters.replays_topic_spec()
    specs[replays.name] = replays
    return specs


def config_map() -> dict[str, str]:
    data = of_kind("ConfigMap")["tongban-config"]["data"]
    assert all(isinstance(v, str) for v in data.values()), "ConfigMap values must be strings"
    return dict(data)


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "K": 1e3 / 2**20, "M": 1e6 / 2**20}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]i?)?", quantity)
    assert match, f"memory quantity {quantity!r}"
    return float(match.group(1)) * units.get(match.group(2) or "", 1 / 2**20)


def millicores(quantity: str) -> float:
    return float(quantity[:-1]) if quantity.endswith("m") else float(quantity) * 1000


# -- Dockerfile --------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def test_dockerfile_builds_one_non_root_image_with_a_healthcheck() -> None:
    steps = dockerfile_instructions()
    args = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)
    stages = [a for w, a in steps if w == "FROM"]
    assert stages, "no FROM"
    final = stages[-1].split()[0]
    base = args.get(final.strip("${}"), final) if final.startswith("$") else final
    assert base == "python:3.11-slim", f"the runtime image is {base}"
    final_stage = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM") :]
    users = [a for w, a in final_stage if w == "USER"]
    assert users, "the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and (not user.isdigit() or int(user) > 0), user
    healthchecks = [a for w, a in final_stage if w == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "/healthz" in healthchecks[0]
    assert "TONGBAN_HTTP_PORT" in healthchecks[0]
    runs = " ".join(a for w, a in steps if w == "RUN")
    assert re.search(r"pip install \.(\s|$)", runs), "the project is not pip-installed"
    assert "-e " not in runs and "--editable" not in runs, "an editable install needs the sources"
    envs = " ".join(a for w, a in final_stage if w == "ENV")
    assert "TONGBAN_HTTP_HOST=0.0.0.0" in envs, "a container must listen beyond localhost"
    assert any(w == "CMD" for w, _ in final_stage)


def test_the_build_context_is_the_package_and_nothing_else() -> None:
    copied = {
        a.split()[0].rstrip("/")
        for w, a in dockerfile_instructions()
        if w == "COPY" and not a.startswith("--from")
    }
    assert copied == {"pyproject.toml", "contracts", "services"}, copied
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "**", "the context must start from nothing (no .venv, .git, .run)"
    kept = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert kept == copied


def glob_matches(path: str, pattern: str) -> bool:
    """setuptools' package-data globs: `*` stays within one path segment."""
    parts, wanted = path.split("/"), pattern.split("/")
    return len(parts) == len(wanted) and all(map(fnmatch.fnmatchcase, parts, wanted))


def test_the_package_ships_every_file_the_code_reads() -> None:
    """The image installs the wheel, not the source tree: a data file outside package-data
    (templates, static pages, schemas) is missing in the container."""
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "setuptools"
    ]["package-data"]
    missing = []
    for top in ("services", "contracts"):
        for path in sorted((ROOT / top).rglob("*")):
            if not path.is_file() or path.suffix in (".py", ".pyc") or path.name == "README.md":
                continue
            if "__pycache__" in path.parts:
                continue
            inside = path.relative_to(ROOT / top).as_posix()
            globs = package_data.get(top, [])
            if not any(glob_matches(inside, g) for g in globs):
                missing.append(f"{top}/{inside}")
    assert not missing, f"not in [tool.setuptools.package-data], so not in the image: {missing}"


# -- compose -----------------------------------------------------------------------------------

COMPOSE_PROCESS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["image", "build", "command", "environment", "healthcheck", "depends_on"],
    "properties": {
        "build": {
            "type": "object",
            "required": ["context", "dockerfile"],
            "properties": {"context": {"const": ".."}, "dockerfile": {"const": "Dockerfile"}},
        },
        "command": {"type": "array", "items": {"type": "string"}, "minItems": 3},
        "environment": {
            "type": "object",
            "additionalProperties": {"type": ["string", "integer", "boolean"]},
        },
        "healthcheck": {
            "type": "object",
            "required": ["test", "interval", "timeout", "retries"],
            "properties": {"test": {"type": "array", "minItems": 2}},
        },
        "depends_on": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["condition"],
                # healthy, or (the one-shot `migrate`) completed
                "properties": {
                    "condition": {"enum": ["service_healthy", "service_completed_successfully"]}
                },
            },
        },
        "ports": {
            "type": "array",
            "items": {"type": "string", "pattern": r"^127\.0\.0\.1:\d+:\d+$"},
        },
    },
}


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def kafka_nodes() -> dict[str, dict[str, str]]:
    services = compose()["services"]
    return {
        name: {k: str(v) for k, v in service["environment"].items()}
        for name, service in services.items()
        if name.startswith("kafka-")
    }


def listener_ports(listeners: str) -> dict[str, int]:
    """`PLAINTEXT://:9092,CONTROLLER://:9093` -> {"PLAINTEXT": 9092, "CONTROLLER": 9093}."""
    out: dict[str, int] = {}
    for item in listeners.split(","):
        name, _, address = item.partition("://")
        out[name] = int(address.rsplit(":", 1)[1])
    return out


def test_compose_runs_three_kafka_nodes_in_kraft_combined_mode() -> None:
    nodes = kafka_nodes()
    assert len(nodes) == 3, sorted(nodes)
    ids = {int(env["KAFKA_NODE_ID"]): name for name, env in nodes.items()}
    assert len(ids) == 3
    for name, env in nodes.items():
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}, name
        ports = listener_ports(env["KAFKA_LISTENERS"])
        controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
        voters = set(env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
        # every node names every node, by its compose name and controller port
        assert voters == {f"{i}@{n}:{ports[controller]}" for i, n in ids.items()}, name
        assert "KAFKA_CONTROLLER_QUORUM_BOOTSTRAP_SERVERS" not in env  # static quorum
        advertised = listener_ports(env["KAFKA_ADVERTISED_LISTENERS"])
        assert controller not in advertised
        inter = env["KAFKA_INTER_BROKER_LISTENER_NAME"]
        assert f"{inter}://{name}:{ports[inter]}" in env["KAFKA_ADVERTISED_LISTENERS"]
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
        assert env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false"
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    cluster_ids = {env["CLUSTER_ID"] for env in nodes.values()}
    assert len(cluster_ids) == 1
    (cluster_id,) = cluster_ids
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16, "a KRaft cluster id is a UUID"
    services = compose()["services"]
    volumes = [tuple(services[n]["volumes"]) for n in nodes]
    assert len(set(volumes)) == 3, "each node needs its own data volume"
    assert all(services[n]["healthcheck"]["test"] for n in nodes)


def test_compose_runs_postgres_and_every_process_from_the_one_image() -> None:
    services = compose()["services"]
    assert "postgres" in services and services["postgres"]["healthcheck"]["test"]
    nodes = kafka_nodes()
    bootstrap = {
        f"{name}:{listener_ports(env['KAFKA_LISTENERS'])[env['KAFKA_INTER_BROKER_LISTENER_NAME']]}"
        for name, env in nodes.items()
    }
    images = set()
    for process in PROCESSES:
        assert process in services, f"compose has no {process}"
        service = services[process]
        jsonschema.validate(service, COMPOSE_PROCESS_SCHEMA)
        images.add(service["image"])
        assert (COMPOSE.parent / service["build"]["context"] / "Dockerfile").resolve() == DOCKERFILE
        assert service["command"] == ["python", "-m", f"services.{process}"]
        assert importlib.util.find_spec(f"services.{process}.__main__") is not None
        env = {k: str(v) for k, v in service["environment"].items()}
        unknown = [k for k in env if not is_setting(process, k)]
        assert not unknown, f"{process}: not settings of {settings_class(process).__name__}"
        port = default_port(process)
        assert env["TONGBAN_HTTP_PORT"] == str(port), process
        assert env["TONGBAN_HTTP_HOST"] == "0.0.0.0"
        assert set(env["TONGBAN_KAFKA_BOOTSTRAP"].split(",")) == bootstrap, process
        assert env["TONGBAN_KAFKA_REPLICATION"] == "3" and env["TONGBAN_KAFKA_MIN_INSYNC"] == "2"
        if process in SERVICES:  # each service as its own run-time role; the console none
            assert f"//tongban_{process}:" in env["TONGBAN_DATABASE_URL"], process
            assert "@postgres:5432/" in env["TONGBAN_DATABASE_URL"]
            assert needs_completed(service, "migrate"), process
        assert "TONGBAN_MIGRATION_DATABASE_URL" not in env, f"{process} owns no schema"
        probe = " ".join(service["healthcheck"]["test"])
        assert re.search(rf"127\.0\.0\.1:{port}/(healthz|readyz)\b", probe), (process, probe)
        needs = set(service["depends_on"])
        assert {*nodes, "postgres"} <= needs, process
    assert len(images) == 1, f"one image for every process, not {images}"
    assert set(SERVICES) <= set(services["console"]["depends_on"])
    # the services' URLs the console calls are the compose names and ports
    for process, variable, target in [
        ("console", "TONGBAN_INTAKE_URL", "intake"),
        ("console", "TONGBAN_ROUTING_URL", "routing"),
        ("console", "TONGBAN_APPROVAL_URL", "approval"),
    ]:
        url = services[process]["environment"][variable]
        assert url == f"http://{target}:{default_port(target)}", (process, variable)


def needs_completed(service: dict[str, Any], other: str) -> bool:
    condition = service["depends_on"].get(other, {}).get("condition")
    return bool(condition == "service_completed_successfully")


def test_compose_migrates_as_the_owner_and_keeps_personal_data_out_of_postgres_log() -> None:
    services = compose()["services"]
    migrate = services["migrate"]
    assert migrate["command"] == ["tongban", "migrate"]
    assert "//tongban_owner:" in migrate["environment"]["TONGBAN_MIGRATION_DATABASE_URL"]
    assert migrate["image"] == services["intake"]["image"]
    postgres = services["postgres"]
    assert "./postgres/roles.sql:/docker-entrypoint-initdb.d/10-roles.sql:ro" in postgres["volumes"]
    assert (COMPOSE.parent / "postgres" / "roles.sql").is_file()
    settings = dict(
        arg.split("=", 1) for arg in postgres["command"] if "=" in arg and not arg.startswith("-")
    )
    assert settings["log_min_messages"] == "log"
    assert settings["log_min_error_statement"] == "panic"
    assert settings["log_parameter_max_length_on_error"] == "0"


def test_compose_config_is_valid_for_the_docker_cli() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("the docker CLI is not installed")
    version = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=30
    )
    if version.returncode != 0:
        pytest.skip(f"the docker compose plugin is missing: {version.stderr.strip()[:200]}")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


# -- kustomization -----------------------------------------------------------------------------


def listed_paths(k: dict[str, Any]) -> list[str]:
    paths = list(k.get("resources", [])) + list(k.get("components", []))
    paths += [p["path"] for p in k.get("patches", []) if "path" in p]
    return paths


def test_every_kustomization_lists_exactly_the_files_beside_it() -> None:
    directories = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
    assert directories[0] == K8S
    for directory in directories:
        k = kustomization(directory)
        listed = listed_paths(k)
        assert len(listed) == len(set(listed)), f"{directory}: listed twice"
        for entry in listed:
            target = directory / entry
            assert target.exists(), f"{directory.name}/kustomization.yaml lists missing {entry}"
            if target.is_dir():
                assert (target / "kustomization.yaml").exists(), entry
        beside = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
        assert beside == {e for e in listed if (directory / e).is_file()}, directory
        subdirectories = {p.name for p in directory.iterdir() if p.is_dir()}
        for sub in subdirectories:
            assert (directory / sub / "kustomization.yaml").exists(), (
                f"{sub}/ is not a kustomization"
            )
            referenced = sub in listed or sub in (directory / "kustomization.yaml").read_text()
            assert referenced, f"{sub}/ is neither used nor mentioned by its parent"


def test_the_base_holds_the_kafka_users_and_no_secret() -> None:
    assert "kafka-users.yaml" in kustomization(K8S)["resources"]
    kinds = {d["kind"] for d in manifests()} | {d["kind"] for d in component_docs()}
    assert "Secret" not in kinds, "credentials are created in the cluster, never committed"
    assert kustomization(K8S)["namespace"] == "tongban"
    assert "tongban" in of_kind("Namespace")


def kubectl_kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d is not None]


def test_kustomize_builds_the_base_and_the_keda_less_variant(tmp_path: Path) -> None:
    base = kubectl_kustomize(K8S)
    assert len(base) == len(manifests())
    for doc in base:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "tongban", doc["metadata"]["name"]
    for deployment in of_kind("Deployment", iter(base)).values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"].split(":")[0] == IMAGE and ":" in container["image"]
    # the documented switch: enable the component in the base kustomization
    copy = tmp_path / "kubernetes"
    shutil.copytree(K8S, copy)
    text = (copy / "kustomization.yaml").read_text()
    switched = text.replace("# components:\n#   - without-keda", "components:\n  - without-keda")
    assert switched != text, "kustomization.yaml no longer shows how to drop KEDA"
    (copy / "kustomization.yaml").write_text(switched)
    variant = kubectl_kustomize(copy)
    kinds = {d["kind"] for d in variant}
    assert not kinds & {"ScaledObject", "TriggerAuthentication"}
    assert "keda" not in of_kind("KafkaUser", iter(variant))
    hpas = of_kind("HorizontalPodAutoscaler", iter(variant))
    assert set(hpas) == set(SERVICES)
    assert all(h["metadata"]["namespace"] == "tongban" for h in hpas.values())


# -- Kafka: cluster, node pools, topics ----------------------------------------------------------


def kafka_cluster() -> dict[str, Any]:
    clusters = of_kind("Kafka")
    assert len(clusters) == 1, sorted(clusters)
    (cluster,) = clusters.values()
    return cluster


def test_strimzi_resources_share_one_api_version_and_the_cluster() -> None:
    name = kafka_cluster()["metadata"]["name"]
    strimzi = [d for d in manifests() if d["apiVersion"].startswith("kafka.strimzi.io/")]
    versions = {d["apiVersion"] for d in strimzi}
    assert len(versions) == 1, f"mixed Strimzi API versions: {versions}"
    for doc in strimzi:
        if doc["kind"] != "Kafka":
            assert doc["metadata"]["labels"]["strimzi.io/cluster"] == name, doc["metadata"]


def test_the_kafka_cluster_is_kraft_with_replication_3_and_min_insync_2() -> None:
    cluster = kafka_cluster()
    annotations = cluster["metadata"].get("annotations", {})
    assert annotations.get("strimzi.io/kraft") == "enabled"
    assert annotations.get("strimzi.io/node-pools") == "enabled"
    spec = cluster["spec"]
    assert "zookeeper" not in spec
    config = spec["kafka"]["config"]
    assert config["default.replication.factor"] == 3
    assert config["min.insync.replicas"] == 2
    assert config["offsets.topic.replication.factor"] == 3
    assert config["transaction.state.log.replication.factor"] == 3
    assert config["transaction.state.log.min.isr"] == 2
    assert config["unclean.leader.election.enable"] is False
    assert config["auto.create.topics.enable"] is False
    assert spec["kafka"]["authorization"]["type"] == "simple"
    for listener in spec["kafka"]["listeners"]:
        assert listener["tls"] is True, f"{listener['name']}: case data is personal data"
        assert listener["authentication"]["type"] in ("scram-sha-512", "tls"), listener["name"]
    assert {"topicOperator", "userOperator"} <= set(spec["entityOperator"])
    # the services' bootstrap address is this cluster's SCRAM listener
    scram = [x for x in spec["kafka"]["listeners"] if x["authentication"]["type"] != "tls"]
    bootstrap = config_map()["TONGBAN_KAFKA_BOOTSTRAP"]
    assert bootstrap == f"{cluster['metadata']['name']}-kafka-bootstrap:{scram[0]['port']}"
    assert config_map()["TONGBAN_KAFKA_REPLICATION"] == "3"
    assert config_map()["TONGBAN_KAFKA_MIN_INSYNC"] == "2"


NODE_POOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["replicas", "roles", "storage"],
            "properties": {
                "replicas": {"type": "integer", "minimum": 1},
                "roles": {
                    "type": "array",
                    "minItems": 1,
                    "uniqueItems": True,
                    "items": {"enum": ["controller", "broker"]},
                },
                "storage": {
                    "type": "object",
                    "required": ["type", "volumes"],
                    "properties": {
                        "type": {"const": "jbod"},
                        "volumes": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["id", "type", "size"],
                                "properties": {
                                    "type": {"const": "persistent-claim"},
                                    "deleteClaim": {"const": False},
                                },
                            },
                        },
                    },
                },
            },
        }
    },
}


def test_node_pools_give_a_quorum_of_three_controllers_and_three_brokers() -> None:
    pools = of_kind("KafkaNodePool")
    assert pools
    controllers = brokers = 0
    for name, pool in pools.items():
        jsonschema.validate(pool, NODE_POOL_SCHEMA)
        roles = set(pool["spec"]["roles"])
        replicas = pool["spec"]["replicas"]
        controllers += replicas if "controller" in roles else 0
        brokers += replicas if "broker" in roles else 0
        if "controller" in roles:
            shared = [v for v in pool["spec"]["storage"]["volumes"] if v.get("kraftMetadata")]
            assert len(shared) == 1, f"{name}: one volume holds the KRaft metadata log"
    assert controllers >= 3 and controllers % 2 == 1, "a quorum of 3 (or 5) controllers"
    assert brokers >= 3, "replication factor 3 needs three brokers"


def test_every_topic_of_the_code_is_a_kafka_topic_with_rf_3_and_min_insync_2() -> None:
    topics = of_kind("KafkaTopic")
    names = {t["spec"].get("topicName", name): t for name, t in topics.items()}
    expected = expected_topics()
    assert set(names) == set(expected), (
        f"missing {sorted(set(expected) - set(names))}, extra {sorted(set(names) - set(expected))}"
    )
    default_partitions = int(config_map()["TONGBAN_KAFKA_PARTITIONS"])
    for name, topic in names.items():
        spec = expected[name]
        assert topic["spec"]["partitions"] == (spec.partitions or default_partitions), name
        assert topic["spec"]["replicas"] == 3, name
        config = {k: str(v) for k, v in topic["spec"].get("config", {}).items()}
        assert config["min.insync.replicas"] == "2", name
        assert spec.config.items() <= config.items(), f"{name}: the code asks for {spec.config}"
    assert names[CATALOG_TOPIC]["spec"]["partitions"] == 1
    assert str(names[CATALOG_TOPIC]["spec"]["config"]["cleanup.policy"]) == "compact"


# -- Deployments, Services, disruption budgets ---------------------------------------------------

PROBE: dict[str, Any] = {
    "type": "object",
    "required": ["httpGet"],
    "properties": {
        "httpGet": {
            "type": "object",
            "required": ["path", "port"],
            "properties": {"path": {"type": "string"}, "port": {"type": ["string", "integer"]}},
        }
    },
}
QUANTITIES: dict[str, Any] = {
    "type": "object",
    "required": ["cpu", "memory"],
    "properties": {"cpu": {"type": "string"}, "memory": {"type": "string"}},
}
DEPLOYMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "apps/v1"},
        "spec": {
            "type": "object",
            "required": ["selector", "template"],
            "properties": {
                "selector": {"type": "object", "required": ["matchLabels"]},
                "template": {
                    "type": "object",
                    "required": ["metadata", "spec"],
                    "properties": {
                        "spec": {
                            "type": "object",
                            "required": ["securityContext", "containers"],
                            "properties": {
                                "securityContext": {
                                    "type": "object",
                                    "required": ["runAsNonRoot", "runAsUser"],
                                    "properties": {
                                        "runAsNonRoot": {"const": True},
                                        "runAsUser": {"type": "integer", "minimum": 1},
                                    },
                                },
                                "containers": {
                                    "type": "array",
                                    "minItems": 1,
                                    "maxItems": 1,
                                    "items": {
                                        "type": "object",
                                        "required": [
                                            "name",
                                            "image",
                                            "command",
                                            "ports",
                                            "readinessProbe",
                                            "livenessProbe",
                                            "startupProbe",
                                            "resources",
                                            "securityContext",
                                        ],
                                        "properties": {
                                            "readinessProbe": PROBE,
                                            "livenessProbe": PROBE,
                                            "startupProbe": PROBE,
                                            "resources": {
                                                "type": "object",
                                                "required": ["requests", "limits"],
                                                "properties": {
                                                    "requests": QUANTITIES,
                                                    "limits": QUANTITIES,
                                                },
                                            },
                                            "securityContext": {
                                                "type": "object",
                                                "required": [
                                                    "allowPrivilegeEscalation",
                                                    "readOnlyRootFilesystem",
                                                    "capabilities",
                                                ],
                                                "properties": {
                                                    "allowPrivilegeEscalation": {"const": False},
                                                    "readOnlyRootFilesystem": {"const": True},
                                                    "capabilities": {
                                                        "type": "object",
                                                        "required": ["drop"],
                                                        "properties": {
                                                            "drop": {"contains": {"const": "ALL"}}
                                                        },
                                                    },
                                                },
                                            },
                                        },
                                    },
                                },
                            },
                        }
                    },
                },
            },
        },
    },
}


def the_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def container_port(container: dict[str, Any], port: str | int) -> int:
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    assert isinstance(found, int)
    return found


def environment(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Variable -> its entry (`value` or `valueFrom`), ConfigMap ones included as values."""
    env: dict[str, dict[str, Any]] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        env.update({k: {"value": v} for k, v in of_kind("ConfigMap")[name]["data"].items()})
    for entry in container.get("env", []):
        env[entry["name"]] = entry
    return env


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_every_process_runs_as_a_deployment_with_probes_resources_and_no_root() -> None:
    deployments = of_kind("Deployment")
    assert set(deployments) == set(PROCESSES)
    images = set()
    for name, deployment in deployments.items():
        jsonschema.validate(deployment, DEPLOYMENT_SCHEMA)
        pod = deployment["spec"]["template"]
        assert selects(deployment["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
        container = the_container(deployment)
        images.add(container["image"])
        assert container["command"] == ["python", "-m", f"services.{name}"]
        port = default_port(name)
        assert [p["containerPort"] for p in container["ports"]] == [port], name
        for probe, path in [
            ("readinessProbe", "/readyz"),
            ("livenessProbe", "/healthz"),
            ("startupProbe", "/healthz"),
        ]:
            get = container[probe]["httpGet"]
            assert get["path"] == path, (name, probe)
            assert container_port(container, get["port"]) == port, (name, probe)
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert mebibytes(limits["memory"]) <= MAX_MEMORY_LIMIT_MI, name
        assert mebibytes(requests["memory"]) <= mebibytes(limits["memory"]), name
        assert millicores(requests["cpu"]) <= millicores(limits["cpu"]), name
        env = environment(container)
        unknown = [
            k for k in env if not is_setting(name, k) and k not in PENDING_KAFKA_CLIENT_SETTINGS
        ]
        assert not unknown, f"{name}: not settings of {settings_class(name).__name__}: {unknown}"
        assert env["TONGBAN_HTTP_PORT"]["value"] == str(port)
        assert env["TONGBAN_HTTP_HOST"]["value"] == "0.0.0.0"
        assert env["TONGBAN_ENVIRONMENT"]["value"] == "production"
        # a writable /tmp on a read-only root
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/tmp" in mounts
    assert images == {IMAGE}, f"one image for every process, not {images}"


def test_each_service_migrates_as_the_owner_before_it_starts_as_its_own_role() -> None:
    deployments = of_kind("Deployment")
    for name in SERVICES:
        pod = deployments[name]["spec"]["template"]["spec"]
        (init,) = pod["initContainers"]
        assert init["image"] == IMAGE
        assert init["command"] == ["tongban", "migrate", name]
        env = environment(init)
        owner = env["TONGBAN_MIGRATION_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert owner == {"name": "tongban-database", "key": "owner"}
        assert init["securityContext"]["readOnlyRootFilesystem"] is True
        assert "/tmp" in {m["mountPath"] for m in init["volumeMounts"]}
        # the service itself holds only its run-time role's URL
        env = environment(the_container(deployments[name]))
        assert "TONGBAN_MIGRATION_DATABASE_URL" not in env, name
        runtime = env["TONGBAN_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert runtime == {"name": "tongban-database", "key": name}


def test_secrets_reach_the_processes_that_need_them() -> None:
    deployments = of_kind("Deployment")
    for name in SERVICES:
        env = environment(the_container(deployments[name]))
        for variable in ("TONGBAN_DATABASE_URL", "TONGBAN_AUTH_JWT_SECRET"):
            assert "secretKeyRef" in env[variable].get("valueFrom", {}), (name, variable)
    console = environment(the_container(deployments["console"]))
    assert "secretKeyRef" in console["TONGBAN_CONSOLE_TOKEN"]["valueFrom"]
    # the handover keys are files from Secrets, where the settings point
    for name, variable in [
        ("intake", "TONGBAN_HANDOVER_KEY_DIR"),
        ("intake", "TONGBAN_HANDOVER_TRUST_DIR"),  # partner regions' handovers (§9)
        ("approval", "TONGBAN_HANDOVER_TRUST_DIR"),
    ]:
        container = the_container(deployments[name])
        directory = environment(container)[variable]["value"]
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
        assert mount.get("readOnly") is True
        volumes = deployments[name]["spec"]["template"]["spec"]["volumes"]
        (volume,) = [v for v in volumes if v["name"] == mount["name"]]
        assert "secret" in volume, f"{name}: {variable} is not a Secret volume"
    # no secret value is written into a manifest
    for deployment in deployments.values():
        for variable, entry in environment(the_container(deployment)).items():
            if re.search(r"SECRET|PASSWORD|TOKEN|DATABASE_URL", variable):
                assert "value" not in entry, f"{variable} must come from a Secret"


def test_every_process_has_its_kafka_user_and_the_cluster_ca() -> None:
    users = of_kind("KafkaUser")
    for name, deployment in of_kind("Deployment").items():
        container = the_container(deployment)
        env = environment(container)
        assert env["TONGBAN_KAFKA_SASL_USERNAME"]["value"] == name
        secret = env["TONGBAN_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert secret == {"name": name, "key": "password"}, "the User Operator's Secret"
        assert users[name]["spec"]["authentication"]["type"] == "scram-sha-512"
        cafile = Path(env["TONGBAN_KAFKA_SSL_CAFILE"]["value"])
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(cafile.parent)]
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        (volume,) = [v for v in volumes if v["name"] == mount["name"]]
        cluster = kafka_cluster()["metadata"]["name"]
        assert volume["secret"]["secretName"] == f"{cluster}-cluster-ca-cert"


def test_services_and_disruption_budgets_match_the_deployments() -> None:
    deployments = of_kind("Deployment")
    services = of_kind("Service")
    budgets = of_kind("PodDisruptionBudget")
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        container = the_container(deployment)
        service = services[name]
        assert selects(service["spec"]["selector"], labels)
        (port,) = service["spec"]["ports"]
        assert container_port(container, port["targetPort"]) == default_port(name)
        assert port["port"] == default_port(name), "the URLs in config use the dev ports"
        budget = budgets[name]
        assert selects(budget["spec"]["selector"]["matchLabels"], labels)
        floor = deployment["spec"].get("replicas") or min_replicas(name)
        assert budget["spec"]["minAvailable"] < floor, f"{name}: a drain could never proceed"
    # the URLs one process calls another by are Services
    for name, variable, target in [
        ("console", "TONGBAN_INTAKE_URL", "intake"),
        ("console", "TONGBAN_ROUTING_URL", "routing"),
        ("console", "TONGBAN_APPROVAL_URL", "approval"),
    ]:
        url = environment(the_container(deployments[name]))[variable]["value"]
        assert url == f"http://{target}:{services[target]['spec']['ports'][0]['port']}"


def test_the_shared_config_names_only_settings() -> None:
    unknown = [
        k
        for k in config_map()
        if not all(is_setting(p, k) for p in PROCESSES) and k not in PENDING_KAFKA_CLIENT_SETTINGS
    ]
    assert not unknown, f"not settings of every process: {unknown}"


# -- autoscaling -------------------------------------------------------------------------------


def min_replicas(deployment: str) -> int:
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in of_kind("ScaledObject").values()}
    if deployment in scaled:
        count = scaled[deployment]["spec"]["minReplicaCount"]
        assert isinstance(count, int)
        return count
    replicas = of_kind("Deployment")[deployment]["spec"]["replicas"]
    assert isinstance(replicas, int)
    return replicas


def test_every_scaled_object_targets_a_deployment_and_the_groups_its_code_runs() -> None:
    deployments = of_kind("Deployment")
    scaled = of_kind("ScaledObject")
    authentications = of_kind("TriggerAuthentication")
    partitions = {
        t["spec"].get("topicName", n): t["spec"]["partitions"]
        for n, t in of_kind("KafkaTopic").items()
    }
    groups = consumer_groups()
    targets = [s["spec"]["scaleTargetRef"] for s in scaled.values()]
    assert len({t["name"] for t in targets}) == len(targets), "one ScaledObject per Deployment"
    assert {t["name"] for t in targets} == set(SERVICES)
    for name, obj in scaled.items():
        target = obj["spec"]["scaleTargetRef"]
        assert target.get("kind", "Deployment") == "Deployment"
        assert target["name"] in deployments, f"{name} scales a missing Deployment"
        service = target["name"]
        triggers = obj["spec"]["triggers"]
        kafka = [t for t in triggers if t["type"] == "kafka"]
        seen = {t["metadata"]["consumerGroup"] for t in kafka}
        assert seen == set(groups[service]), f"{name}: triggers {seen}, code {set(groups[service])}"
        for trigger in kafka:
            meta = trigger["metadata"]
            topics = groups[service][meta["consumerGroup"]]
            if any(t.startswith(MIRRORED_TOPIC_PREFIX) for t in topics):
                # a pattern (the partners' mirrored topics, §9): no topic, the lag of each
                assert "topic" not in meta, meta
                topics = tuple(t for t in topics if t in partitions)
            elif len(topics) == 1:
                assert meta.get("topic") == topics[0], meta
            else:  # no topic: the lag of every topic the group consumes (or matches, §9)
                assert "topic" not in meta, meta
            assert meta["bootstrapServers"] == config_map()["TONGBAN_KAFKA_BOOTSTRAP"]
            assert meta["offsetResetPolicy"] == "earliest", "as make_consumer starts a new group"
            assert int(meta["lagThreshold"]) > 0
            assert trigger["authenticationRef"]["name"] in authentications
            # A partner group subscribes by pattern to the mirrored `<alias>.xregion.out.v1`
            # (DESIGN.md §9): MirrorMaker makes them with xregion.out.v1's partitions.
            bounded_by = topics or (XREGION_TOPIC,)
            assert obj["spec"]["maxReplicaCount"] <= min(partitions[t] for t in bounded_by), (
                f"{name}: replicas beyond the partitions of {bounded_by} sit idle"
            )
        assert any(t["type"] == "cpu" for t in triggers), f"{name}: no CPU trigger"
        requests = the_container(deployments[service])["resources"]["requests"]
        assert "cpu" in requests, "a CPU utilization target needs a CPU request"
        assert 2 <= obj["spec"]["minReplicaCount"] <= obj["spec"]["maxReplicaCount"]
        assert "replicas" not in deployments[service]["spec"], (
            f"{service}: `replicas` would reset the autoscaler on every apply"
        )


def test_the_cpu_fallback_scales_the_same_deployments_within_the_same_bounds() -> None:
    scaled = {
        s["spec"]["scaleTargetRef"]["name"]: s["spec"] for s in of_kind("ScaledObject").values()
    }
    hpas = [d for d in component_docs() if d["kind"] == "HorizontalPodAutoscaler"]
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas} == set(scaled)
    for hpa in hpas:
        spec = hpa["spec"]
        keda = scaled[spec["scaleTargetRef"]["name"]]
        assert (spec["minReplicas"], spec["maxReplicas"]) == (
            keda["minReplicaCount"],
            keda["maxReplicaCount"],
        )
        assert [m["resource"]["name"] for m in spec["metrics"]] == ["cpu"]
    deleted = {
        (p["kind"], p["metadata"]["name"])
        for entry in kustomization(K8S / "without-keda")["patches"]
        for p in [yaml.safe_load(entry["patch"])]
        if p.get("$patch") == "delete"
    }
    keda_resources = {
        (d["kind"], d["metadata"]["name"])
        for d in manifests()
        if d["apiVersion"].startswith("keda.sh/")
    }
    assert keda_resources | {("KafkaUser", "keda")} == deleted


# -- Kafka users of the operations side (kafka-users-ops.yaml) ----------------------------------


def operations_users() -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d
        for d in load_all(K8S / "kafka-users-ops.yaml")
        if d["kind"] == "KafkaUser"
    }


def group_rule_covers(rule: Rule, group: str, operations: set[str]) -> bool:
    kind, name, pattern, op = rule
    if kind != "group" or op not in operations:
        return False
    return group.startswith(name) if pattern == "prefix" else name == group


def test_every_service_user_may_join_the_groups_its_code_runs() -> None:
    users = of_kind("KafkaUser")
    for service, groups in consumer_groups().items():
        granted = rules(users[service])
        for group, topics in groups.items():
            assert any(group_rule_covers(r, group, {"Read", "All"}) for r in granted), group
            for topic in topics:
                if topic.startswith(MIRRORED_TOPIC_PREFIX):
                    continue  # a partner's, granted by the federation component (§9)
                assert can_read(users[service], topic), (service, topic)


def test_the_console_reads_what_it_shows_and_writes_nothing() -> None:
    from services.console.kafka_views import STREAM_TOPICS

    console = operations_users()["console"]
    granted = rules(console)
    for topic in (*STREAM_TOPICS, CATALOG_TOPIC):
        assert can_read(console, topic), topic
    assert {op for *_, op in granted} <= {"Describe", "Read"}
    assert all(kind in ("topic", "group") for kind, *_ in granted)
    assert all(pattern == "literal" for kind, _, pattern, _ in granted if kind == "topic")
    assert not can_read(console, department_topic("YZ01-MKT"))
    for group in (g for groups in consumer_groups().values() for g in groups):
        assert any(group_rule_covers(r, group, {"Describe"}) for r in granted), group


def test_keda_sees_offsets_of_every_scaled_group_and_reads_no_record() -> None:
    keda = operations_users()["keda"]
    granted = rules(keda)
    assert {op for *_, op in granted} == {"Describe"}
    for topic in (*CASE_TOPICS, DLQ_TOPIC, CATALOG_TOPIC, department_topic("YZ01-MKT")):
        assert not can_read(keda, topic)
    described = {name for kind, name, _, _ in granted if kind == "topic"}
    for obj in of_kind("ScaledObject").values():
        service = obj["spec"]["scaleTargetRef"]["name"]
        for trigger in (t for t in obj["spec"]["triggers"] if t["type"] == "kafka"):
            group = trigger["metadata"]["consumerGroup"]
            assert any(group_rule_covers(r, group, {"Describe"}) for r in granted), group
            for topic in consumer_groups()[service][group]:
                if topic.startswith(MIRRORED_TOPIC_PREFIX):
                    continue  # a partner's, described under the federation component (§9)
                assert topic in described or any(
                    matches(r, topic) for r in granted if r[2] == "prefix"
                ), (group, topic)
    # the password KEDA presents is the one the KafkaUser is given
    password = keda["spec"]["authentication"]["password"]["valueFrom"]["secretKeyRef"]
    (auth,) = of_kind("TriggerAuthentication").values()
    refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    assert (refs["password"]["name"], refs["password"]["key"]) == (
        password["name"],
        password["key"],
    )
    assert refs["username"]["name"] == password["name"]


# -- across regions: MirrorMaker 2 between two regions (federation/) ----------------------------

FEDERATION = K8S / "federation"
REGIONS = ("region1", "region2")  # each the other's partner
CROSSING = (CATALOG_TOPIC, XREGION_TOPIC)  # what a region's MirrorMaker pulls (DESIGN.md §9)
HEARTBEATS = "heartbeats"  # MirrorMaker's own, mirrored whatever the topic pattern says
FOLLOW_PARTNERS = ("intake", "routing", "delivery", "console")  # read `<partner>.` topics


def partner_of(region: str) -> str:
    (partner,) = set(REGIONS) - {region}
    return partner


def component_resources(directory: Path) -> list[dict[str, Any]]:
    entries = kustomization(directory).get("resources", [])
    return [d for entry in entries for d in load_all(directory / entry)]


def mirror_maker(region: str) -> dict[str, Any]:
    (mm2,) = [
        d for d in component_resources(FEDERATION / region) if d["kind"] == "KafkaMirrorMaker2"
    ]
    return mm2


def region_users(region: str) -> dict[str, dict[str, Any]]:
    return of_kind("KafkaUser", iter(component_resources(FEDERATION / region)))


def json_patches(directory: Path) -> list[tuple[dict[str, str], list[dict[str, Any]]]]:
    """(target, operations) of each JSON 6902 patch a component lists."""
    found = []
    for entry in kustomization(directory).get("patches", []):
        text = (directory / entry["path"]).read_text() if "path" in entry else entry["patch"]
        found.append((entry["target"], yaml.safe_load(text)))
    return found


def with_component(docs: list[dict[str, Any]], directory: Path) -> list[dict[str, Any]]:
    """`docs` with a component's resources added and its patches applied, as Kustomize does for
    the patches used here: `add` to the end of a list, on targets chosen by kind and name
    (a regular expression). test_each_region_builds_with_kustomize compares kubectl's build."""
    docs = copy.deepcopy(docs) + component_resources(directory)
    for target, operations in json_patches(directory):
        chosen = [
            d
            for d in docs
            if d["kind"] == target["kind"]
            and re.fullmatch(target.get("name", ".*"), d["metadata"]["name"])
        ]
        assert chosen, f"{directory.name}: a patch for {target} changes nothing"
        for doc in chosen:
            for operation in operations:
                assert operation["op"] == "add" and operation["path"].endswith("/-"), operation
                node: Any = doc
                for part in operation["path"].strip("/").split("/")[:-1]:
                    node = node[part]
                node.append(copy.deepcopy(operation["value"]))
    return docs


def region_manifests(region: str) -> list[dict[str, Any]]:
    return with_component(with_component(list(manifests()), FEDERATION), FEDERATION / region)


def can(user: dict[str, Any], operation: str, topic: str) -> bool:
    return any(matches(r, topic) and r[3] in (operation, "All") for r in rules(user))


def test_each_region_mirrors_its_partner_and_only_what_crosses() -> None:
    for region in REGIONS:
        partner = partner_of(region)
        mm2 = mirror_maker(region)
        spec = mm2["spec"]
        assert mm2["apiVersion"] == kafka_cluster()["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert spec["version"] == kafka_cluster()["spec"]["kafka"]["version"]
        target = spec["target"]
        # Connect runs in this region, on this region's cluster, as its own user
        assert target["alias"] == region
        assert target["bootstrapServers"] == config_map()["TONGBAN_KAFKA_BOOTSTRAP"]
        users = region_users(region)
        auth = target["authentication"]
        assert auth["type"] == "scram-sha-512" and auth["username"] in users
        assert auth["passwordSecret"]["secretName"] == auth["username"], "the User Operator's"
        assert target["tls"]["trustedCertificates"][0]["secretName"] == "tongban-cluster-ca-cert"
        (mirror,) = spec["mirrors"]
        source = mirror["source"]
        assert source["alias"] == partner
        assert source["authentication"]["type"] == "scram-sha-512" and source["tls"]
        # the partner's user for this region is the one the partner's component defines
        assert source["authentication"]["username"] in region_users(partner)
        assert source["authentication"]["username"] == f"mirror-{region}"
        pattern = re.compile(mirror["topicsPattern"])
        topics = [*expected_topics(), department_topic("YZ01-MKT"), HEARTBEATS, "catalog_v1"]
        assert {t for t in topics if pattern.fullmatch(t)} == set(CROSSING), mirror["topicsPattern"]
        connector = mirror["sourceConnector"]["config"]
        assert connector["offset-syncs.topic.location"] == "target", "read-only on the partner"
        assert connector["sync.topic.acls.enabled"] is False
        assert "checkpointConnector" not in mirror, "consumer groups never cross"
        assert "heartbeatConnector" in mirror, "the link's lag (GET /api/links)"
        # one Connect cluster per region: its group and storage topics are its user's
        writer = users[auth["username"]]
        for storage in ("configStorageTopic", "offsetStorageTopic", "statusStorageTopic"):
            assert can(writer, "Read", target[storage]) and can(writer, "Write", target[storage])
        assert any(group_rule_covers(r, target["groupId"], {"Read"}) for r in rules(writer))


def test_the_link_users_read_only_what_crosses_and_write_only_the_mirrors() -> None:
    never = [*CASE_TOPICS, DLQ_TOPIC, "license.v1", "bundle.v1", department_topic("YZ01-MKT")]
    for region in REGIONS:
        partner = partner_of(region)
        users = region_users(region)
        reader = users[f"mirror-{partner}"]  # the partner's MirrorMaker, reading this region
        assert reader["metadata"]["labels"]["strimzi.io/cluster"] == "tongban"
        for topic in (*CROSSING, HEARTBEATS):
            assert can_read(reader, topic) and can(reader, "DescribeConfigs", topic), topic
        for topic in never:
            assert not can_read(reader, topic), f"{topic} never crosses the link"
        assert {op for *_, op in rules(reader)} <= {"Describe", "DescribeConfigs", "Read"}
        assert all(
            kind == "topic" and pattern == "literal" for kind, _, pattern, _ in rules(reader)
        )
        writer = users["mirror-maker"]  # this region's MirrorMaker, writing here
        for topic in (*CROSSING, HEARTBEATS):
            mirrored = f"{partner}.{topic}"
            for operation in ("Create", "Write", "AlterConfigs"):
                assert can(writer, operation, mirrored), (mirrored, operation)
        assert can(writer, "Write", HEARTBEATS), "its heartbeats, mirrored to the partner"
        for topic in (*CROSSING, *never):
            assert not can_read(writer, topic) and not can(writer, "Write", topic), topic


def test_the_processes_that_follow_a_partner_read_its_mirrored_topics_and_nothing_more() -> None:
    for region in REGIONS:
        partner = partner_of(region)
        docs = region_manifests(region)
        users = of_kind("KafkaUser", iter(docs))
        for name in FOLLOW_PARTNERS:
            for topic in (*CROSSING, HEARTBEATS):
                assert can_read(users[name], f"{partner}.{topic}"), (region, name, topic)
        assert not can_read(users["approval"], f"{partner}.{XREGION_TOPIC}")
        keda = users["keda"]
        assert can(keda, "Describe", f"{partner}.{XREGION_TOPIC}")
        assert not can_read(keda, f"{partner}.{XREGION_TOPIC}")
        # the listener the partner's MirrorMaker reads this region over: TLS and SCRAM
        (kafka,) = [d for d in docs if d["kind"] == "Kafka"]
        (link,) = [x for x in kafka["spec"]["kafka"]["listeners"] if x["name"] == "link"]
        assert link["tls"] is True and link["authentication"]["type"] == "scram-sha-512"
        # nothing of this region's is readable under the partner's prefix
        assert not any(t.startswith(f"{partner}.") for t in expected_topics())


def test_each_region_builds_with_kustomize(tmp_path: Path) -> None:
    """The documented switch (federation/kustomization.yaml): the base with `federation` and
    the region's own component; what kubectl builds is what the checks above assume."""
    for region in REGIONS:
        copy_dir = tmp_path / region / "kubernetes"
        shutil.copytree(K8S, copy_dir)
        with (copy_dir / "kustomization.yaml").open("a") as k:
            k.write(f"components:\n  - federation\n  - federation/{region}\n")
        built = kubectl_kustomize(copy_dir)
        assert all(
            d["metadata"].get("namespace") == "tongban" for d in built if d["kind"] != "Namespace"
        )
        expected = region_manifests(region)
        assert sorted((d["kind"], d["metadata"]["name"]) for d in built) == sorted(
            (d["kind"], d["metadata"]["name"]) for d in expected
        )
        built_users = of_kind("KafkaUser", iter(built))
        for name, user in of_kind("KafkaUser", iter(expected)).items():
            assert rules(built_users[name]) == rules(user), (region, name)
