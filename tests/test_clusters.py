"""The files under clusters/: the KubeRay manifests against KubeRay's CRD schemas, the AWS cluster-launcher
config through Ray's own validator, every profile through adaptune's schema, the references between them
(commands, files, images, capacity, storage), and the storage rule for clusters of more than one node.

Nothing here starts Ray or contacts a cloud: the CRD schemas are files kept in the repository
(clusters/kuberay/crds/, with the KubeRay version they came from) and Ray's launcher validator is a JSON schema
plus a few checks."""

from __future__ import annotations

import copy
import functools
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from adaptune.config import ClusterProfile, read_configs
from adaptune.driver.sweep import concurrency
from adaptune.preflight.validate import check_resources, check_run, check_storage

from .support import REPO

pytestmark = pytest.mark.unit

CLUSTERS = REPO / "clusters"
KUBERAY = CLUSTERS / "kuberay"
RAYCLUSTER, RAYJOB, PREREQUISITES = KUBERAY / "raycluster.yaml", KUBERAY / "rayjob.yaml", KUBERAY / "prerequisites.yaml"
RAYCRONJOB, CRONTAB = KUBERAY / "raycronjob-retrain.yaml", CLUSTERS / "retrain.crontab"
CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\d+(-\d+)?)(/\d+)?)*$")
DOCKERFILE = KUBERAY / "Dockerfile"
LAUNCHER = CLUSTERS / "aws" / "launcher.yaml"
K8S_PROFILE, AWS_PROFILE = CLUSTERS / "k8s-gpu.yaml", CLUSTERS / "aws-gpu.yaml"
CRD_DIR = KUBERAY / "crds"  # kept in the repository, with the KubeRay version they came from
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayCronJob": "ray.io_raycronjobs.yaml",
}
SHIPPED_FILES = sorted(p for p in CLUSTERS.rglob("*") if p.is_file() and CRD_DIR not in p.parents)  # CRDs: KubeRay's


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _header(path: Path) -> list[str]:
    """The comment the file opens with, without the `#`."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line[1:].strip() for line in lines[: next(i for i, x in enumerate(lines) if not x.startswith("#"))]]


# --------------------------------------------------------------------------------------------------
# KubeRay CRD schemas, checked the way the API server does: defaults first, unknown fields rejected
# --------------------------------------------------------------------------------------------------


def _strict(node: Any) -> Any:
    """The schema with unknown fields as errors (`kubectl apply` validates strictly; the CRD itself only prunes)."""
    if isinstance(node, list):
        return [_strict(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _with_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Fill in each absent field's `default`, as the API server does before it validates (some defaulted fields,
    like a worker group's minReplicas, are also required)."""
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                _with_defaults(value[key], sub)
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _with_defaults(item, schema["items"])
    return value


@functools.cache
def _crd_schema(kind: str, version: str) -> tuple[dict[str, Any], jsonschema.protocols.Validator]:
    path = CRD_DIR / CRD_FILES[kind]
    assert path.is_file(), f"{path} is missing: see clusters/kuberay/crds/README.md"
    crd = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    schema = next(v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == version)
    return schema, jsonschema.Draft7Validator(_strict(schema))


def crd_errors(manifest: dict[str, Any]) -> list[str]:
    """Every way `manifest` breaks its KubeRay CRD schema, one line each (`spec.path: message`)."""
    group, _, version = manifest["apiVersion"].partition("/")
    assert group == "ray.io", manifest["apiVersion"]
    schema, validator = _crd_schema(manifest["kind"], version)
    errors = validator.iter_errors(_with_defaults(copy.deepcopy(manifest), schema))
    return sorted(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_kuberay_manifests_match_the_crd_schemas():
    for path, kind in ((RAYCLUSTER, "RayCluster"), (RAYJOB, "RayJob"), (RAYCRONJOB, "RayCronJob")):
        manifest = _load(path)
        assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", kind)
        assert crd_errors(manifest) == [], path


def _rename(key: str, new: str) -> Callable[[dict[str, Any]], None]:
    def breaks(node: dict[str, Any]) -> None:
        node[new] = node.pop(key)

    return breaks


def _cluster_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["rayClusterSpec"] if manifest["kind"] == "RayJob" else manifest["spec"]


def _head(spec: dict[str, Any]) -> dict[str, Any]:
    return spec["headGroupSpec"]


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    return spec["workerGroupSpecs"][0]


def _container(group: dict[str, Any]) -> dict[str, Any]:
    return group["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(
    "path, where, breaks, expected",
    [
        # A misspelled key whose real name has a default: only the strict check catches it.
        (RAYCLUSTER, _worker, _rename("maxReplicas", "maxReplica"), "('maxReplica' was unexpected)"),
        (RAYCLUSTER, _worker, lambda g: g.update(minReplicas="0"), "minReplicas: '0' is not of type 'integer'"),
        (RAYCLUSTER, _head, lambda g: g.pop("template"), "'template' is a required property"),
        (RAYCLUSTER, lambda s: _container(_worker(s)), _rename("volumeMounts", "volumeMount"), "'volumeMount' was"),
        (
            RAYCLUSTER,
            lambda s: _container(_head(s))["resources"]["limits"],
            lambda r: r.update(cpu="8 cores"),
            "limits.cpu: '8 cores' does not match",
        ),
        (RAYJOB, None, _rename("shutdownAfterJobFinishes", "shutdownAfterJobFinish"), "'shutdownAfterJobFinish' was"),
        (RAYJOB, None, lambda s: s.update(entrypointNumGpus="0"), "entrypointNumGpus: '0' is not of type 'number'"),
        (RAYJOB, _worker, lambda g: g.update(rayStartParams={"num-gpus": 8}), "8 is not of type 'string'"),
    ],
)
def test_the_crd_check_rejects_a_broken_manifest(path, where, breaks, expected):
    manifest = copy.deepcopy(_load(path))
    breaks(where(_cluster_spec(manifest)) if where else manifest["spec"])
    errors = crd_errors(manifest)
    assert any(expected in e for e in errors), errors


# --------------------------------------------------------------------------------------------------
# The AWS cluster-launcher config, through what `ray up` runs before it contacts the cloud
# --------------------------------------------------------------------------------------------------


def launcher_errors(config: dict[str, Any]) -> str | None:
    """What `ray up` would reject in `config` before contacting AWS: Ray's defaults are filled in first (its
    validator needs fields, such as cluster_synced_files, that only the defaults carry), then its JSON schema and
    cross-field checks run."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except (jsonschema.ValidationError, ValueError) as e:
        return str(e).splitlines()[0]
    return None


def test_the_launcher_passes_rays_own_validator():
    config = _load(LAUNCHER)
    assert config["provider"]["type"] == "aws"
    assert launcher_errors(config) is None


@pytest.mark.parametrize(
    "breaks, expected",
    [
        (_rename("max_workers", "max_worker"), "('max_worker' was unexpected)"),
        (lambda c: _rename("min_workers", "min_worker")(c["available_node_types"]["gpu-8x-a100"]), "'min_worker'"),
        (lambda c: c["available_node_types"]["gpu-8x-a100"]["resources"].update(GPU="8"), "'8' is not of type"),
        (lambda c: c.update(head_node_type="cpu-head"), "`head_node_type` must be one of `available_node_types`"),
        (lambda c: c["available_node_types"]["gpu-8x-a100"].update(min_workers=5), "sum of `min_workers`"),
    ],
)
def test_rays_validator_rejects_a_broken_launcher(breaks, expected):
    config = copy.deepcopy(_load(LAUNCHER))
    breaks(config)
    error = launcher_errors(config)
    assert error is not None and expected in error, error


# --------------------------------------------------------------------------------------------------
# Profiles through adaptune's schema; the commands each file opens with
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", sorted(CLUSTERS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_profile_loads_with_every_sweep(profile):
    for sweep in sorted((REPO / "search_spaces").glob("*.yaml")):
        _, cluster, problems = read_configs(sweep, profile)
        assert problems == [] and cluster is not None, [str(p) for p in problems]
        assert check_resources(cluster, str(profile)) == check_storage(cluster, str(profile)) == []


def test_a_broken_profile_is_rejected(tmp_path):
    broken = tmp_path / "k8s-gpu.yaml"
    broken.write_text(K8S_PROFILE.read_text().replace("  gpus: 32", "  gpu: 32"), encoding="utf-8")
    _, cluster, problems = read_configs(REPO / "search_spaces" / "quickstart.yaml", broken)
    assert cluster is None
    assert [str(p) for p in problems] == [f"{broken}: capacity.gpu: unknown key. Did you mean `capacity.gpus`?"]


REPO_PATH = re.compile(r"\b((?:clusters|search_spaces)/[\w./-]*\w)")


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=lambda p: str(p.relative_to(CLUSTERS)))
def test_every_file_opens_with_the_commands_that_use_it(path):
    """The header names the file itself in a command, and every repository file and adaptune command it names
    exists and validates (schema and overrides; the model and data are checked by test_cli's shipped test)."""
    header = _header(path)
    rel = str(path.relative_to(REPO))
    assert any(rel in line and ("adaptune " in line or " -f " in line or "ray " in line) for line in header), (
        f"{rel} must open with a comment giving the commands that use it"
    )
    for line in header:
        for named in REPO_PATH.findall(line):
            assert (REPO / named).exists(), f"{rel}: the header names {named}, which does not exist"
        for command in re.findall(r"\badaptune (?:sweep|validate|train|retrain) \S+\.yaml\b[^#>]*", line):
            sweep, cluster, overrides = _adaptune_args(command)
            _, _, problems = read_configs(REPO / sweep, REPO / cluster if cluster else None, overrides)
            assert problems == [], f"{rel}: `{command.strip()}`: {[str(p) for p in problems]}"


def _adaptune_args(command: str) -> tuple[str, str | None, list[str]]:
    """(sweep file, cluster profile, overrides) of an `adaptune sweep|validate|train ...` command line."""
    args = shlex.split(command)[2:]
    cluster = args[args.index("--cluster") + 1] if "--cluster" in args else None
    return args[0], cluster, [a for a in args[1:] if "=" in a and not a.startswith("-")]


# --------------------------------------------------------------------------------------------------
# KubeRay manifests and the k8s profile agree
# --------------------------------------------------------------------------------------------------


def _quantity(value: Any) -> float:
    """A Kubernetes CPU/GPU quantity ("8", 8, "500m") as a number."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _ray_resources(group: dict[str, Any]) -> tuple[float, float]:
    """(CPUs, GPUs) a KubeRay pod offers Ray: rayStartParams if set, else the container's limits (or requests)."""
    params = group.get("rayStartParams") or {}
    resources = _container(group).get("resources", {})
    limits = {**resources.get("requests", {}), **resources.get("limits", {})}
    cpus = _quantity(params["num-cpus"]) if "num-cpus" in params else _quantity(limits.get("cpu", 0))
    gpus = _quantity(params["num-gpus"]) if "num-gpus" in params else _quantity(limits.get("nvidia.com/gpu", 0))
    return cpus, gpus


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_the_rayjob_runs_the_raycluster_spec_with_one_image():
    cluster, job = _load(RAYCLUSTER), _load(RAYJOB)
    assert job["spec"]["rayClusterSpec"] == cluster["spec"], "rayjob.yaml's rayClusterSpec differs from raycluster.yaml"
    images = {c["image"] for c in _containers(cluster["spec"])}
    assert len(images) == 1, f"the head and workers run different images: {images}"
    base = re.search(r"^FROM rayproject/ray:(\S+?)-", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert base and base.group(1) == cluster["spec"]["rayVersion"], "the image's Ray is not the manifests' rayVersion"
    image = images.pop()
    assert f"-t {image} " in " ".join(_header(DOCKERFILE)) + " ", f"the Dockerfile's header does not build {image}"


def test_the_rayjob_entrypoint_runs_a_shipped_sweep_on_the_k8s_profile():
    spec = _load(RAYJOB)["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["adaptune", "sweep"]
    sweep, cluster, overrides = _adaptune_args(spec["entrypoint"])
    assert (REPO / sweep).is_file() and sweep.startswith("search_spaces/"), sweep
    assert cluster == str(K8S_PROFILE.relative_to(REPO))
    plan, profile, problems = read_configs(REPO / sweep, REPO / cluster, overrides)
    assert problems == [] and plan is not None and profile is not None, [str(p) for p in problems]
    assert overrides == []  # nothing the files do not say
    # Trials at once = what the cluster holds at full size, though the autoscaler may start it with no GPUs.
    per_trial = profile.trial.num_workers * profile.trial.gpus_per_worker
    assert concurrency(plan.search, profile, {"CPU": 4.0}) == profile.capacity.gpus // per_trial == 16
    # It runs in the image's copy of the repository, which holds the files it names.
    workdir = yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"]
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    assert f"WORKDIR {workdir}\n" in dockerfile
    for top in {Path(sweep).parts[0], Path(cluster).parts[0]}:
        assert re.search(rf"^COPY .*\b{top} {top}$", dockerfile, re.MULTILINE), f"the image lacks {top}/"
    # The driver takes no GPU and fits on the head, the cluster goes when the sweep ends.
    head_cpus, head_gpus = _ray_resources(_head(spec["rayClusterSpec"]))
    assert spec.get("entrypointNumGpus", 0) == 0 and head_gpus == 0
    assert spec.get("entrypointNumCpus", 0) <= head_cpus and not spec.get("entrypointResources")
    assert spec["shutdownAfterJobFinishes"] is True


def test_the_k8s_profile_matches_the_raycluster():
    spec = _load(RAYCLUSTER)["spec"]
    _, profile, problems = read_configs(REPO / "search_spaces" / "quickstart.yaml", K8S_PROFILE)
    assert problems == [] and profile is not None
    cap, trial = profile.capacity, profile.trial
    head_cpus, head_gpus = _ray_resources(_head(spec))
    workers = [(g, *_ray_resources(g)) for g in spec["workerGroupSpecs"]]
    assert head_gpus == 0, "the head has a GPU"
    for group, _, _ in workers:
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], group["groupName"]
    # Capacity is what Ray sees at max replicas; nodes count the head too (it runs the driver).
    assert cap.nodes == 1 + sum(g["maxReplicas"] for g, _, _ in workers)
    assert cap.cpus == head_cpus + sum(g["maxReplicas"] * cpus for g, cpus, _ in workers)
    assert cap.gpus == sum(g["maxReplicas"] * gpus for g, _, gpus in workers)
    # A trial's workers fit on one GPU pod (NVLink), and so on the cluster.
    assert trial.use_gpu
    assert any(
        trial.num_workers * trial.gpus_per_worker <= gpus and trial.num_workers * trial.cpus_per_worker <= cpus
        for _, cpus, gpus in workers
    )
    # Storage: under the mount of one ReadWriteMany claim, in every container.
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for v in g["template"]["spec"].get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    prerequisites = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(PREREQUISITES.read_text())}
    for container in _containers(spec):
        mounts = [m for m in container["volumeMounts"] if m["name"] in claims]
        assert any(Path(profile.storage_path).is_relative_to(m["mountPath"]) for m in mounts), container["name"]
        for m in mounts:
            pvc = prerequisites.get(("PersistentVolumeClaim", claims[m["name"]]))
            assert pvc and "ReadWriteMany" in pvc["spec"]["accessModes"], f"{claims[m['name']]}: no ReadWriteMany PVC"
    # Environment: the start timeout on every pod; MLflow's URI from the ConfigMap; secrets only by reference.
    assert profile.mlflow.tracking_uri is None
    for container in _containers(spec):
        env = _env(container)
        assert env["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"]["value"] == "600", container["name"]
        ref = env["MLFLOW_TRACKING_URI"]["valueFrom"]["configMapKeyRef"]
        configmap = prerequisites.get(("ConfigMap", ref["name"]))
        assert configmap and ref["key"] in configmap["data"], f"prerequisites.yaml lacks {ref['name']}/{ref['key']}"
        for name, e in env.items():
            if re.search(r"TOKEN|SECRET|PASSWORD|KEY", name):
                assert "value" not in e and "secretKeyRef" in e["valueFrom"], f"{name} must come from a Secret"
        for name in ("HF_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # credentials reach every pod
            assert env[name]["valueFrom"]["secretKeyRef"]["optional"] is True, (container["name"], name)


# --------------------------------------------------------------------------------------------------
# The AWS launcher and its profile agree
# --------------------------------------------------------------------------------------------------


def test_the_aws_profile_matches_the_launcher():
    config = _load(LAUNCHER)
    _, profile, problems = read_configs(REPO / "search_spaces" / "quickstart.yaml", AWS_PROFILE)
    assert problems == [] and profile is not None
    cap, trial = profile.capacity, profile.trial
    types = config["available_node_types"]
    head = types[config["head_node_type"]]["resources"]
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert head.get("GPU", 0) == 0, "the head has a GPU"
    assert sum(t["max_workers"] for t in workers) <= config["max_workers"], "max_workers caps the node types"
    assert cap.nodes == 1 + sum(t["max_workers"] for t in workers)
    assert cap.gpus == sum(t["max_workers"] * t["resources"].get("GPU", 0) for t in workers)
    assert cap.cpus == head.get("CPU", 0) + sum(t["max_workers"] * t["resources"]["CPU"] for t in workers)
    assert any(
        trial.num_workers * trial.gpus_per_worker <= t["resources"].get("GPU", 0)
        and trial.num_workers * trial.cpus_per_worker <= t["resources"]["CPU"]
        for t in workers
    )
    # Storage: under the file system every node mounts in its setup.
    setup = " ".join(config["setup_commands"])
    mounts = re.findall(r"\bmount -t \S+ (?:-o \S+ )?\S+ (/[^\s)]+)", setup)
    assert any(Path(profile.storage_path).is_relative_to(m) for m in mounts), mounts
    # Every node starts Ray with the longer worker start timeout, and the Ray the manifests use.
    for command in config["head_start_ray_commands"][-1:] + config["worker_start_ray_commands"][-1:]:
        assert "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S=600 ray start" in command
    assert f'"ray[default,tune,train]=={_load(RAYCLUSTER)["spec"]["rayVersion"]}"' in setup


# --------------------------------------------------------------------------------------------------
# validate: a multi-node cluster's storage must be shared
# --------------------------------------------------------------------------------------------------


def _profile(nodes: int, storage_path: str) -> ClusterProfile:
    return ClusterProfile.model_validate({"capacity": {"nodes": nodes, "cpus": 4}, "storage_path": storage_path})


@pytest.mark.parametrize(
    "path, why",
    [
        ("./adaptune-runs", "a relative path"),
        ("adaptune-runs", "a relative path"),
        ("/tmp/adaptune-runs", "a path under /tmp"),
        ("/mnt/shared/../../tmp/runs", "a path under /tmp"),
        ("~/adaptune-runs", "a path under the home directory"),
        ("/home/alice/adaptune-runs", "a path under the home directory"),
    ],
)
def test_multi_node_clusters_reject_local_storage(monkeypatch, path, why):
    monkeypatch.setenv("HOME", "/home/alice")
    assert [str(p) for p in check_storage(_profile(3, path), "c.yaml")] == [
        f"c.yaml: storage_path: {why} is local to one machine, but capacity.nodes is 3: every node must reach the "
        f"checkpoints and the tokenized data, and Ray refuses a head-local path for multi-node Train (got {path!r}). "
        "Use a shared filesystem mount present on every node (an absolute path such as /mnt/shared/adaptune-runs)"
    ]


def test_object_storage_uris_are_refused_until_the_driver_supports_them():
    assert [str(p) for p in check_storage(_profile(1, "s3://bucket/prefix"), "c.yaml")] == [
        "c.yaml: storage_path: object-storage URIs are not supported yet (got 's3://bucket/prefix'): the tokenized "
        "data and the embedded MLflow store are written to a filesystem path. Mount the bucket or a shared "
        "filesystem (NFS, EFS, a ReadWriteMany volume) at the same path on every node and give that path"
    ]


@pytest.mark.parametrize(
    "nodes, path",
    [(4, "/mnt/shared/adaptune-runs"), (4, "/tmpfs/runs")] + [(1, "./adaptune-runs"), (1, "/tmp/adaptune-runs")],
)
def test_shared_storage_or_one_node_is_accepted(monkeypatch, nodes, path):
    monkeypatch.setenv("HOME", "/home/alice")
    assert check_storage(_profile(nodes, path), "c.yaml") == []


def test_validate_runs_the_storage_check(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    problems = check_run(None, _profile(2, "./adaptune-runs"), "s.yaml", "c.yaml")
    assert [(p.key, p.message.split(" is local")[0]) for p in problems] == [("storage_path", "a relative path")]


# --------------------------------------------------------------------------------------------------
# The retraining schedules: RayCronJob and crontab
# --------------------------------------------------------------------------------------------------


def _check_retrain_command(command: str, profile: Path) -> list[str]:
    """An `adaptune retrain` of a shipped sweep on `profile`, reading the newest dated drop on shared storage,
    whose sweep names a frozen evaluation set. Returns its arguments."""
    argv = shlex.split(command)
    assert argv[:2] == ["adaptune", "retrain"], command
    sweep, cluster, overrides = _adaptune_args(command)
    assert (REPO / sweep).is_file() and sweep.startswith("search_spaces/") and cluster == str(profile.relative_to(REPO))
    plan, prof, problems = read_configs(REPO / sweep, REPO / cluster, overrides)
    assert problems == [] and plan is not None and prof is not None, [str(p) for p in problems]
    assert plan.retrain.frozen_eval_path, f"{sweep} has no retrain.frozen_eval_path"
    data = argv[argv.index("--data") + 1]
    assert "--newest-drop" in argv and data.startswith("/mnt/shared/") and prof.storage_path.startswith("/mnt/shared/")
    assert not plan.retrain.frozen_eval_path.startswith(data), "the frozen set must not be among the drops"
    return argv


def test_the_raycronjob_retrains_nightly_on_the_raycluster():
    cron = _load(RAYCRONJOB)
    assert crd_errors(cron) == []
    spec = cron["spec"]
    fields = spec["schedule"].split()
    assert len(fields) == 5 and all(CRON_FIELD.match(f) for f in fields), spec["schedule"]
    job = spec["jobTemplate"]
    assert job["clusterSelector"] == {"ray.io/cluster": _load(RAYCLUSTER)["metadata"]["name"]}
    assert "rayClusterSpec" not in job  # it runs on the long-lived cluster, not a cluster of its own
    assert job.get("entrypointNumGpus", 0) == 0 and job.get("entrypointNumCpus", 0) == 0
    assert yaml.safe_load(job["runtimeEnvYAML"]) == yaml.safe_load(_load(RAYJOB)["spec"]["runtimeEnvYAML"])
    _check_retrain_command(job["entrypoint"], K8S_PROFILE)


def test_the_crontab_line_submits_the_retrain_as_a_ray_job():
    lines = [line for line in CRONTAB.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    assert len(lines) == 1, lines
    fields = lines[0].split(None, 5)
    assert all(CRON_FIELD.match(f) for f in fields[:5]), fields[:5]
    command = fields[5]
    submit, _, entrypoint = command.partition(" -- ")
    assert "ray job submit" in submit and "--working-dir ." in submit and "--entrypoint-num-cpus 0" in submit
    entrypoint = entrypoint.split(">>")[0]
    _check_retrain_command(entrypoint, CLUSTERS / "gpu-node.yaml")
