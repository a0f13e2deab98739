"""The cluster configs: the cloud YAMLs and cluster/local.yaml pass Ray's own checks (the ones
`ray up` runs before it talks to a cloud) and have the node types the app relies on; the KubeRay
RayService serves what configs/serve.yaml serves; the Grafana dashboard only charts metrics the
code defines.

Each checker is also shown rejecting a broken copy, so none of these tests can pass vacuously.
No network and no cloud SDK: Ray's prepare/validate steps only read its bundled defaults.
"""

from __future__ import annotations

import ast
import copy
import json
import re
import shlex
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from agentcluster.metrics import METRICS

ROOT = Path(__file__).resolve().parents[2]
CLOUD_CONFIGS = ["cluster/aws.yaml", "cluster/gcp.yaml"]
FAKE_CONFIG = ROOT / "cluster" / "fake-multinode.yaml"
RAYSERVICE = ROOT / "cluster" / "kuberay" / "rayservice.yaml"
DASHBOARD = ROOT / "configs" / "grafana" / "agentcluster.json"
BROWSER = "browser"
BROWSER_SLOTS = 4
CHECKOUT = "~/agentcluster"
# What a node needs of the checkout: to install (make install / pip) and deploy configs/serve.yaml.
NODE_NEEDS = (
    "pyproject.toml",
    "requirements.lock",
    "README.md",
    "Makefile",
    "agentcluster",
    "actors",
    "deployments",
    "configs",
    "policies",
)

Config = dict[str, Any]


class ConfigProblem(Exception):
    """A config that Ray would accept but that does not run agentcluster as intended."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigProblem(message)


def _load_yaml(path: Path) -> Config:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict), f"{path}: not a mapping"
    return loaded


def _project_version() -> str:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return str(version)


# --- cloud cluster configs ---------------------------------------------------------------------


def ray_prepare_and_validate(config: Config) -> Config:
    """What `ray up` does before the provider's bootstrap: merge Ray's defaults for the provider,
    fold setup commands, then check ray-schema.json and Ray's cross-field rules."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _custom_resources(node_type: Config) -> dict[str, int]:
    return {k: v for k, v in node_type["resources"].items() if k not in {"CPU", "GPU", "memory"}}


def _check_bounds(config: Config) -> None:
    _require(config["idle_timeout_minutes"] > 0, "idle_timeout_minutes must be > 0")
    workers = {
        name: node_type
        for name, node_type in config["available_node_types"].items()
        if name != config["head_node_type"]
    }
    for name, node_type in workers.items():
        low, high = node_type["min_workers"], node_type["max_workers"]
        _require(0 <= low <= high, f"{name}: needs 0 <= min_workers <= max_workers")
        _require(high >= 1, f"{name}: max_workers must allow at least one node")
        _require(high <= config["max_workers"], f"{name}: max_workers above the global max_workers")
    total = sum(node_type["max_workers"] for node_type in workers.values())
    _require(config["max_workers"] <= total, "global max_workers can never be reached")


def _check_node_types(config: Config, slots: int = BROWSER_SLOTS) -> None:
    node_types = config["available_node_types"]
    head = node_types[config["head_node_type"]]
    _require(head["max_workers"] == 0, "the head type must not scale")
    _require(not _custom_resources(head), "the head must not advertise custom resources")
    browsers = [n for n, t in node_types.items() if BROWSER in t["resources"]]
    _require(len(browsers) == 1, f"expected one node type with {BROWSER!r}, found {browsers}")
    _require(
        node_types[browsers[0]]["resources"][BROWSER] == slots,
        f"{browsers[0]}: expected {{{BROWSER!r}: {slots}}}",
    )
    cpu_workers = [
        name
        for name, node_type in node_types.items()
        if name != config["head_node_type"]
        and not _custom_resources(node_type)
        and node_type["resources"].get("CPU", 0) > 0
    ]
    _require(bool(cpu_workers), "no plain CPU worker type")


def _has(commands: list[str], *needles: str) -> bool:
    return any(all(needle in command for needle in needles) for command in commands)


def _check_install(commands: list[str], where: str) -> None:
    _require(
        _has(commands, f"cd {CHECKOUT}", "pip install", "-r requirements.lock"),
        f"{where}: does not install requirements.lock from {CHECKOUT}",
    )
    _require(
        _has(commands, f"cd {CHECKOUT}", "pip install", "--no-deps -e ."),
        f"{where}: does not install the project from {CHECKOUT}",
    )


def _check_mounts(config: Config) -> None:
    """The nodes get what installing and deploying needs, and never the whole checkout: `ray up`
    hashes every file of a mounted directory, ignoring rsync_exclude (all of .venv, and the
    services' sockets under .data, which it cannot read)."""
    mounts = config["file_mounts"]
    for remote, local in mounts.items():
        if remote.startswith(CHECKOUT):
            _require(
                (ROOT / local).resolve() != ROOT, f"file_mounts: {remote} mounts the whole checkout"
            )
            _require((ROOT / local).exists(), f"file_mounts: {local} is not in the repository")
    for name in NODE_NEEDS:
        _require(
            mounts.get(f"{CHECKOUT}/{name}") == f"./{name}",
            f"file_mounts: {CHECKOUT}/{name} must come from ./{name}",
        )


def _check_commands(config: Config) -> None:
    _check_mounts(config)
    _check_install(config["head_setup_commands"], "head_setup_commands")
    _check_install(config["worker_setup_commands"], "worker_setup_commands")
    for name, node_type in config["available_node_types"].items():
        if BROWSER in node_type["resources"]:
            commands = node_type.get("worker_setup_commands", [])
            _check_install(commands, f"{name}.worker_setup_commands")
            _require(_has(commands, "apt-get install", "chrome"), f"{name}: no browser install")
    head = config["head_start_ray_commands"]
    starts = [i for i, c in enumerate(head) if "ray start --head" in c]
    deploys = [i for i, c in enumerate(head) if "serve deploy configs/serve.yaml" in c]
    _require(len(starts) == 1, "head_start_ray_commands: expected one `ray start --head`")
    _require(
        "--autoscaling-config=~/ray_bootstrap_config.yaml" in head[starts[0]],
        "the head does not start the autoscaler",
    )
    _require(bool(deploys) and deploys[0] > starts[0], "serve deploy must follow ray start")
    _require(
        _has(config["worker_start_ray_commands"], "ray start --address=$RAY_HEAD_IP:6379"),
        "workers do not join the head",
    )


def _check_docker(config: Config) -> None:
    image = config.get("docker", {}).get("image")
    if not image:
        return
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    ray_image = f"rayproject/ray:{ray.__version__}-{python}"
    ours = f"agentcluster:{_project_version()}"
    _require(
        image == ray_image or image.endswith(ours),
        f"docker.image {image!r}: expected {ray_image} or <registry>/{ours}",
    )


def check_cluster_config(config: Config) -> Config:
    """Ray's validation plus agentcluster's own expectations; returns the prepared config."""
    prepared = ray_prepare_and_validate(config)
    _check_bounds(prepared)
    _check_node_types(prepared)
    _check_commands(prepared)
    _check_docker(prepared)
    return prepared


@pytest.mark.parametrize("relative", CLOUD_CONFIGS)
def test_cloud_config_passes_ray_validation_and_our_checks(relative: str) -> None:
    prepared = check_cluster_config(_load_yaml(ROOT / relative))
    browser = prepared["available_node_types"]["browser_worker"]
    assert browser["resources"][BROWSER] == BROWSER_SLOTS
    assert browser["min_workers"] == 0  # browsers scale from zero


def _set(path: str, value: Any) -> Callable[[Config], None]:
    def mutate(config: Config) -> None:
        *parents, leaf = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[leaf] = value

    return mutate


def _drop_browser(config: Config) -> None:
    del config["available_node_types"]["browser_worker"]["resources"][BROWSER]


def _deploy_first(config: Config) -> None:
    config["head_start_ray_commands"].reverse()


def _forget_project(config: Config) -> None:
    config["setup_commands"] = [c for c in config["setup_commands"] if "-e ." not in c]


def _drop_mount(name: str) -> Callable[[Config], None]:
    def mutate(config: Config) -> None:
        del config["file_mounts"][f"{CHECKOUT}/{name}"]

    return mutate


CLUSTER_MUTATIONS: list[tuple[str, Callable[[Config], None], type[Exception]]] = [
    ("unknown top-level key", _set("head_nodes", {}), jsonschema.ValidationError),
    (
        "custom resource as text",
        _set("available_node_types.browser_worker.resources.browser", "four"),
        jsonschema.ValidationError,
    ),
    ("head type not declared", _set("head_node_type", "ray.head.default"), ValueError),
    ("min_workers above global max", _set("max_workers", 0), ValueError),
    ("browser resource dropped", _drop_browser, ConfigProblem),
    (
        "browser type min above max",
        _set("available_node_types.browser_worker.min_workers", 9),
        ConfigProblem,
    ),
    ("zero idle timeout", _set("idle_timeout_minutes", 0), ConfigProblem),
    ("serve deploy before ray start", _deploy_first, ConfigProblem),
    ("project not installed", _forget_project, ConfigProblem),
    ("whole checkout mounted", _set("file_mounts", {CHECKOUT: "."}), ConfigProblem),
    ("configs not mounted", _drop_mount("configs"), ConfigProblem),
    ("foreign docker image", _set("docker.image", "rayproject/ray:2.9.0-py310"), ConfigProblem),
]


@pytest.mark.parametrize(
    ("name", "mutate", "error"), CLUSTER_MUTATIONS, ids=[m[0] for m in CLUSTER_MUTATIONS]
)
def test_broken_cloud_config_is_rejected(
    name: str, mutate: Callable[[Config], None], error: type[Exception]
) -> None:
    config = _load_yaml(ROOT / "cluster" / "aws.yaml")
    mutate(config)
    with pytest.raises(error):
        check_cluster_config(config)


# --- the local (SSH) cluster config ------------------------------------------------------------

LOCAL_CONFIG = ROOT / "cluster" / "local.yaml"


def check_local_config(config: Config) -> Config:
    """Ray's validation plus what makes cluster/local.yaml safe on a shared machine."""
    prepared = ray_prepare_and_validate(config)
    provider = prepared["provider"]
    _require(provider["type"] == "local", "provider.type must be local")
    _require(provider["head_ip"] == "127.0.0.1", "the head must be this machine on loopback")
    _require(
        prepared["auth"]["ssh_user"] != "root",
        "ssh_user root: `ray down` would run `ray stop` as root and stop every Ray on the machine",
    )
    _check_mounts(prepared)
    _require(
        _has(prepared["setup_commands"], f"cd {CHECKOUT}", "make install"),
        "setup_commands do not install the project",
    )
    head = prepared["head_start_ray_commands"]
    starts = [i for i, c in enumerate(head) if "ray start --head" in c]
    deploys = [i for i, c in enumerate(head) if "serve deploy configs/serve.yaml" in c]
    _require(len(starts) == 1, "head_start_ray_commands: expected one `ray start --head`")
    _require(
        "--node-ip-address=127.0.0.1" in head[starts[0]]
        and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in head[starts[0]],
        "the head must stay on 127.0.0.1 (Ray swaps loopback for the network address otherwise)",
    )
    _require(bool(deploys) and deploys[0] > starts[0], "serve deploy must follow ray start")
    return prepared


def test_local_config_passes_ray_validation_and_our_checks() -> None:
    prepared = check_local_config(_load_yaml(LOCAL_CONFIG))
    assert prepared["auth"]["ssh_private_key"] == "~/.ssh/agentcluster_local"  # local-ssh.sh's key


def _start_on_network_address(config: Config) -> None:
    config["head_start_ray_commands"] = [
        c.replace("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0", "")
        for c in config["head_start_ray_commands"]
    ]


LOCAL_MUTATIONS: list[tuple[str, Callable[[Config], None], type[Exception]]] = [
    ("unknown provider key type", _set("provider.head_ip", 127), jsonschema.ValidationError),
    ("launched as root", _set("auth.ssh_user", "root"), ConfigProblem),
    ("head not on loopback", _set("provider.head_ip", "10.0.0.5"), ConfigProblem),
    ("loopback swapped for the network address", _start_on_network_address, ConfigProblem),
    ("whole checkout mounted", _set("file_mounts", {CHECKOUT: "."}), ConfigProblem),
    ("serve deploy before ray start", _deploy_first, ConfigProblem),
]


@pytest.mark.parametrize(
    ("name", "mutate", "error"), LOCAL_MUTATIONS, ids=[m[0] for m in LOCAL_MUTATIONS]
)
def test_broken_local_config_is_rejected(
    name: str, mutate: Callable[[Config], None], error: type[Exception]
) -> None:
    config = _load_yaml(LOCAL_CONFIG)
    mutate(config)
    with pytest.raises(error):
        check_local_config(config)


# --- fake multinode cluster config ------------------------------------------------------------


def check_fake_config(config: Config) -> None:
    """cluster/fake-multinode.yaml: the checks Ray's autoscaler runs when it loads the file (it
    only logs a failure, at debug level, so a broken file would go unnoticed), and the node shape
    of the cloud configs with one browser per node, on loopback.

    `ray up`'s prepare_config cannot run on it: Ray 2.60 does not ship the provider's defaults
    file (fake_multi_node/example.yaml), so the file carries every section itself.
    """
    validate_config(config)
    _check_bounds(config)
    _check_node_types(config, slots=1)
    provider = config["provider"]
    # The fake provider tags its head with this node type name.
    _require(config["head_node_type"] == "ray.head.default", "head_node_type: ray.head.default")
    _require(provider["gcs_address"].startswith("127.0.0.1:"), "provider.gcs_address off loopback")
    _require(provider.get("use_node_id_as_ip") is True, "fake nodes share an IP: use node ids")


def test_fake_multinode_config_passes_autoscaler_validation_and_our_checks() -> None:
    check_fake_config(_load_yaml(FAKE_CONFIG))


FAKE_MUTATIONS: list[tuple[str, Callable[[Config], None], type[Exception]]] = [
    ("unknown top-level key", _set("head_nodes", {}), jsonschema.ValidationError),
    ("head type renamed", _set("head_node_type", "head"), ValueError),
    ("browser resource dropped", _drop_browser, ConfigProblem),
    ("gcs on another address", _set("provider.gcs_address", "192.0.2.2:6390"), ConfigProblem),
    (
        "more browser nodes than the cluster",
        _set("available_node_types.browser_worker.max_workers", 5),
        ConfigProblem,
    ),
]


@pytest.mark.parametrize(
    ("name", "mutate", "error"), FAKE_MUTATIONS, ids=[m[0] for m in FAKE_MUTATIONS]
)
def test_broken_fake_config_is_rejected(
    name: str, mutate: Callable[[Config], None], error: type[Exception]
) -> None:
    config = _load_yaml(FAKE_CONFIG)
    mutate(config)
    with pytest.raises(error):
        check_fake_config(config)


# --- KubeRay RayService ------------------------------------------------------------------------


def _app_summary(serve_config: Config) -> dict[str, tuple[str, str, list[str]]]:
    return {
        app["name"]: (
            app["import_path"],
            app.get("route_prefix", "/"),
            [deployment["name"] for deployment in app.get("deployments", [])],
        )
        for app in serve_config["applications"]
    }


def _containers(cluster: Config) -> Iterator[tuple[str, Config]]:
    groups = [("head", cluster["headGroupSpec"])]
    groups += [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]
    for name, group in groups:
        for container in group["template"]["spec"]["containers"]:
            yield name, container


def _group_resources(group: Config) -> dict[str, Any]:
    raw = group.get("rayStartParams", {}).get("resources")
    if raw is None:
        return {}
    # KubeRay pastes the value into `ray start --resources=...`: unquote it as the shell would.
    words = shlex.split(raw)
    _require(len(words) == 1, f"{group['groupName']}: resources is not one shell word")
    parsed = json.loads(words[0])
    assert isinstance(parsed, dict)
    return parsed


def _check_groups(cluster: Config) -> None:
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    _require({"cpu", BROWSER} <= set(groups), f"worker groups {sorted(groups)}: need cpu, browser")
    for name, group in groups.items():
        low, now, high = group["minReplicas"], group.get("replicas", 0), group["maxReplicas"]
        _require(0 <= low <= now <= high, f"{name}: needs minReplicas <= replicas <= maxReplicas")
    _require(not _group_resources(groups["cpu"]), "the cpu group must not advertise browsers")
    _require(
        _group_resources(groups[BROWSER]) == {BROWSER: BROWSER_SLOTS},
        f"the browser group must advertise {{{BROWSER!r}: {BROWSER_SLOTS}}}",
    )


def _check_containers(cluster: Config) -> None:
    for group, container in _containers(cluster):
        image = container["image"]
        _require(image.endswith(f"agentcluster:{_project_version()}"), f"{group}: image {image}")
        sources = {key for ref in container.get("envFrom", []) for key in ref}
        _require(
            {"secretRef", "configMapRef"} <= sources,
            f"{group}: settings must come from a Secret and a ConfigMap (envFrom)",
        )


def check_rayservice(doc: Config, serve_config: Config) -> None:
    """The RayService runs the app of configs/serve.yaml on the image of the Dockerfile."""
    _require(doc.get("apiVersion") == "ray.io/v1", "apiVersion must be ray.io/v1")
    _require(doc.get("kind") == "RayService", "kind must be RayService")
    spec = doc["spec"]
    _require(isinstance(spec.get("serveConfigV2"), str), "serveConfigV2 must be a YAML string")
    embedded = yaml.safe_load(spec["serveConfigV2"])
    _require(
        _app_summary(embedded) == _app_summary(serve_config),
        "serveConfigV2 applications differ from configs/serve.yaml "
        "(name, import_path, route_prefix, deployment names)",
    )
    _require(
        embedded.get("logging_config") == serve_config.get("logging_config"),
        "serveConfigV2 logging_config differs from configs/serve.yaml",
    )
    cluster = spec["rayClusterConfig"]
    _require(cluster.get("rayVersion") == ray.__version__, f"rayVersion must be {ray.__version__}")
    _require(cluster.get("enableInTreeAutoscaling") is True, "the Ray autoscaler must be on")
    _check_groups(cluster)
    _check_containers(cluster)
    head_ports = {
        port["containerPort"]
        for _, container in _containers(cluster)
        for port in container.get("ports", [])
        if port.get("name") == "serve"
    }
    _require(embedded["http_options"]["port"] in head_ports, "no container port for the proxy")


def test_rayservice_mirrors_serve_yaml() -> None:
    check_rayservice(_load_yaml(RAYSERVICE), _load_yaml(ROOT / "configs" / "serve.yaml"))


def _edit_serve(edit: Callable[[Config], None]) -> Callable[[Config], None]:
    def mutate(doc: Config) -> None:
        serve_config = yaml.safe_load(doc["spec"]["serveConfigV2"])
        edit(serve_config)
        doc["spec"]["serveConfigV2"] = yaml.safe_dump(serve_config)

    return mutate


def _rename_deployment(serve_config: Config) -> None:
    serve_config["applications"][0]["deployments"][0]["name"] = "Gateway2"


def _move_import(serve_config: Config) -> None:
    serve_config["applications"][0]["import_path"] = "deployments.gateway:build_gateway"


def _access_log_on(serve_config: Config) -> None:
    serve_config["logging_config"] = {"enable_access_log": True}


def _group(name: str, edit: Callable[[Config], None]) -> Callable[[Config], None]:
    def mutate(doc: Config) -> None:
        for group in doc["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
            if group["groupName"] == name:
                edit(group)

    return mutate


def _no_env(group: Config) -> None:
    group["template"]["spec"]["containers"][0].pop("envFrom")


def _no_browsers(group: Config) -> None:
    group["rayStartParams"].pop("resources")


def _inverted(group: Config) -> None:
    group["minReplicas"] = group["maxReplicas"] + 1


def _old_ray(doc: Config) -> None:
    doc["spec"]["rayClusterConfig"]["rayVersion"] = "2.9.0"


RAYSERVICE_MUTATIONS: list[tuple[str, Callable[[Config], None]]] = [
    ("deployment renamed", _edit_serve(_rename_deployment)),
    ("import path moved", _edit_serve(_move_import)),
    ("access log differs", _edit_serve(_access_log_on)),
    ("browser group without browsers", _group(BROWSER, _no_browsers)),
    ("cpu group without settings", _group("cpu", _no_env)),
    ("min above max", _group(BROWSER, _inverted)),
    ("other Ray version", _old_ray),
]


@pytest.mark.parametrize(
    ("name", "mutate"), RAYSERVICE_MUTATIONS, ids=[m[0] for m in RAYSERVICE_MUTATIONS]
)
def test_broken_rayservice_is_rejected(name: str, mutate: Callable[[Config], None]) -> None:
    doc = _load_yaml(RAYSERVICE)
    mutate(doc)
    with pytest.raises(ConfigProblem):
        check_rayservice(doc, _load_yaml(ROOT / "configs" / "serve.yaml"))


# --- Grafana dashboard -------------------------------------------------------------------------

_METRIC_CLASSES = {"Counter", "Gauge", "Histogram", "Summary"}
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{")
_LABEL_VALUES = re.compile(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)")


def _metric_origin(tree: ast.Module) -> dict[str, str]:
    """Which library each metric class name in a module comes from (prometheus or ray)."""
    origin: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            library = "prometheus" if node.module.startswith("prometheus_client") else "ray"
            for alias in node.names:
                if alias.name in _METRIC_CLASSES or alias.name == "metrics":
                    origin[alias.asname or alias.name] = library
    return origin


def _defined_metrics(path: Path, default_library: str | None) -> Iterator[tuple[str, str, str]]:
    """(name, class, library) of each Counter/Gauge/Histogram/Summary("name", ...) in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    origin = _metric_origin(tree)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        first = node.args[0]
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in _METRIC_CLASSES:
            library = default_library or origin.get(func.id)
        elif isinstance(func, ast.Attribute) and func.attr in _METRIC_CLASSES:
            base = func.value.id if isinstance(func.value, ast.Name) else ""
            library = default_library or origin.get(base)
        else:
            continue
        if library is not None:
            yield first.value, getattr(func, "id", getattr(func, "attr", "")), library


def _exported(name: str, kind: str, library: str) -> set[str]:
    """The series names Prometheus sees for one metric definition."""
    prefix = "ray_" if library == "ray" else ""
    base = prefix + name.removesuffix("_total")
    if kind == "Counter":
        return {base + "_total"} | ({base} if library == "ray" else set())
    if kind in {"Histogram", "Summary"}:
        return {base + suffix for suffix in ("_bucket", "_sum", "_count")}
    return {prefix + name}


def _known_series() -> set[str]:
    """Series exported by our metric definitions and by the Ray metrics the dashboard uses
    (Serve's controller and replicas, the reporter agent's cluster gauges)."""
    sources: list[tuple[Path, str | None]] = [
        (p, None)
        for d in ("agentcluster", "actors", "deployments")
        for p in (ROOT / d).rglob("*.py")
    ]
    ray_root = Path(ray.__file__).parent
    sources += [(p, "ray") for p in (ray_root / "serve" / "_private").glob("*.py")]
    sources += [(ray_root / "dashboard" / "modules" / "reporter" / "reporter_agent.py", "ray")]
    series: set[str] = set()
    for path, library in sources:
        for name, kind, lib in _defined_metrics(path, library):
            series |= _exported(name, kind, lib)
    # The catalogue in agentcluster.metrics is data (names in MetricSpec), recorded as Ray metrics.
    kinds = {"counter": "Counter", "gauge": "Gauge", "histogram": "Histogram"}
    for spec in METRICS.values():
        series |= _exported(spec.name, kinds[spec.kind], "ray")
    return series


def _dashboard_metrics(dashboard: Config) -> Iterator[tuple[str, str]]:
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        for target in panel["targets"]:
            names = _SELECTOR.findall(target["expr"])
            _require(bool(names), f"{panel['title']}: a query without a metric selector")
            for name in names:
                yield panel["title"], name
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            for name in _LABEL_VALUES.findall(variable["definition"]):
                yield f"variable {variable['name']}", name


def check_dashboard(dashboard: Config, known: set[str]) -> None:
    """Every panel queries the Prometheus datasource variable and only series the code exports."""
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    datasource = variables.get("datasource", {})
    _require(
        datasource.get("type") == "datasource" and datasource.get("query") == "prometheus",
        "needs a Prometheus datasource variable named datasource",
    )
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            _require(panel["datasource"]["uid"] == "${datasource}", f"{panel['title']}: datasource")
    for where, name in _dashboard_metrics(dashboard):
        _require(name in known, f"{where}: {name} is not a series any metric in the code exports")


@pytest.fixture(scope="module")
def known_series() -> set[str]:
    return _known_series()


def test_dashboard_charts_only_existing_metrics(known_series: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    check_dashboard(dashboard, known_series)
    charted = {name for _, name in _dashboard_metrics(dashboard)}
    expected = {
        "ray_agentcluster_http_requests_total",
        "ray_agentcluster_pool_size",
        "ray_agentcluster_turns_total",
        "ray_agentcluster_llm_tokens_total",
        "ray_agentcluster_tool_calls_total",
        "ray_agentcluster_sessions_active",
        "ray_agentcluster_llm_breaker_state",
        "ray_agentcluster_outbox_unpublished",
    }
    assert expected <= charted


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("ray_agentcluster_http_requests_total", "ray_agentcluster_http_request_total"),  # typo
        ("ray_agentcluster_pool_size", "agentcluster_pool_size"),  # Ray metric without ray_
        ('"uid": "${datasource}"', '"uid": "prometheus"'),  # a hard-wired datasource
    ],
)
def test_broken_dashboard_is_rejected(old: str, new: str, known_series: set[str]) -> None:
    text = DASHBOARD.read_text()
    assert old in text
    with pytest.raises(ConfigProblem):
        check_dashboard(json.loads(text.replace(old, new)), known_series)
