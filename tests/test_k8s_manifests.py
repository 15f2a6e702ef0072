"""The Kubernetes manifests cannot run here; check they agree with the pipeline and infra."""
import os
import re

import yaml
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.options import TapFollowOptions
from pipelines.run import config_from

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S = os.path.join(ROOT, "infra", "k8s")


def _load(name):
    with open(os.path.join(K8S, name), encoding="utf-8") as handle:
        return list(yaml.safe_load_all(handle))


def _infra_env(name):
    text = open(os.path.join(ROOT, "infra", "env.sh"), encoding="utf-8").read()
    return re.search(rf'{name}="\$\{{{name}:-([^}}]+)\}}"', text).group(1)


def _submit_args():
    (job,) = _load("flink-submit-job.yaml")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "pipelines.run"]
    return container["args"]


def test_submitted_options_are_a_valid_streaming_kafka_configuration():
    options = PipelineOptions(_submit_args())
    cfg = config_from(options)  # raises on any invalid project option
    assert cfg.streaming and cfg.source == "kafka" and cfg.results_sink == "kafka"
    assert options.view_as(StandardOptions).runner == "FlinkRunner"
    project = options.view_as(TapFollowOptions)
    assert project.kafka_bootstrap_servers.endswith(":9092")
    # A Java-side FlinkPipelineOptions field: Beam's portable runner forwards it as an unknown option.
    all_options = options.get_all_options(retain_unknown_options=True)
    assert int(all_options["checkpointing_interval"]) > 0
    assert all_options["environment_type"] == "EXTERNAL"


def test_flink_version_matches_infra_and_the_job_server_jar():
    (deployment,) = _load("flink-deployment.yaml")
    flink = _infra_env("FLINK_VERSION")  # e.g. 2.2.1
    major_minor = ".".join(flink.split(".")[:2])
    assert deployment["kind"] == "FlinkDeployment"
    assert deployment["spec"]["flinkVersion"] == "v" + major_minor.replace(".", "_")
    assert deployment["spec"]["image"].startswith(f"flink:{flink}")
    all_options = PipelineOptions(_submit_args()).get_all_options()
    assert all_options["flink_version"] == major_minor
    beam = _infra_env("BEAM_VERSION")
    assert all_options["flink_job_server_jar"].endswith(f"beam-runners-flink-{major_minor}-job-server-{beam}.jar")
    setup = open(os.path.join(ROOT, "setup.py"), encoding="utf-8").read()
    assert f'"apache-beam=={beam}"' in setup


def test_worker_pool_sidecar_serves_the_environment_the_job_asks_for():
    (deployment,) = _load("flink-deployment.yaml")
    containers = deployment["spec"]["taskManager"]["podTemplate"]["spec"]["containers"]
    (pool,) = [c for c in containers if c["name"] == "beam-worker-pool"]
    assert pool["command"][-1] == "apache_beam.runners.worker.worker_pool_main"
    port = int(pool["args"][0].split("=")[1])
    assert port in [p["containerPort"] for p in pool["ports"]]
    all_options = PipelineOptions(_submit_args()).get_all_options()
    assert all_options["environment_config"] == f"localhost:{port}"
    # The sidecar writes the file sinks, so it mounts the job's --output.
    output = PipelineOptions(_submit_args()).view_as(TapFollowOptions).output
    assert output in [m["mountPath"] for m in pool["volumeMounts"]]


def test_parallelism_fits_the_slots():
    (deployment,) = _load("flink-deployment.yaml")
    spec = deployment["spec"]
    slots = int(spec["flinkConfiguration"]["taskmanager.numberOfTaskSlots"]) * spec["taskManager"]["replicas"]
    assert PipelineOptions(_submit_args()).get_all_options()["parallelism"] <= slots
    assert spec["flinkConfiguration"]["execution.checkpointing.mode"] == "EXACTLY_ONCE"


# ---- the native PyFlink job (infra/k8s/pyflink-job.yaml and its image) ----------------------

def _pyflink_deployment():
    docs = {doc["kind"]: doc for doc in _load("pyflink-job.yaml")}
    return docs["FlinkDeployment"], docs


def _dockerfile():
    with open(os.path.join(K8S, "flink-job", "Dockerfile"), encoding="utf-8") as handle:
        return handle.read()


def test_pyflink_deployment_runs_the_flink_job_module_with_its_config():
    deployment, docs = _pyflink_deployment()
    flink = _infra_env("FLINK_VERSION")
    spec = deployment["spec"]
    assert spec["flinkVersion"] == "v" + "_".join(flink.split(".")[:2])
    job = spec["job"]
    # the operator's PythonDriver pattern: the flink-python jar of this very Flink version
    assert job["jarURI"] == f"local:///opt/flink/opt/flink-python-{flink}.jar"
    assert job["entryClass"] == "org.apache.flink.client.python.PythonDriver"
    args = job["args"]
    assert args[args.index("-pym") + 1] == "flink_job"
    config = args[args.index("--config") + 1]
    # the config file comes from the ConfigMap mounted where --config points
    (container,) = spec["podTemplate"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert config.startswith(mounts["job-config"] + "/")
    volumes = {v["name"]: v for v in spec["podTemplate"]["spec"]["volumes"]}
    assert "configMap" in volumes["job-config"]
    claim = volumes["data"]["persistentVolumeClaim"]["claimName"]
    assert docs["PersistentVolumeClaim"]["metadata"]["name"] == claim
    assert job["upgradeMode"] == "savepoint"


def test_pyflink_image_matches_the_deployment_and_the_local_venv():
    deployment, _ = _pyflink_deployment()
    dockerfile = _dockerfile()
    flink = _infra_env("FLINK_VERSION")
    assert re.search(rf"^FROM flink:{re.escape(flink)}-java17\s*$", dockerfile, re.M)
    # the same requirements as the local PyFlink venv (infra/install.sh), with Flink's version pinned
    assert "infra/pyflink-requirements.txt" in dockerfile
    requirements = open(os.path.join(ROOT, "infra", "pyflink-requirements.txt"), encoding="utf-8").read()
    assert f"apache-flink=={flink}" in requirements
    pinned = [line.split("==")[0].split(">")[0].strip().lower() for line in requirements.splitlines()
              if line.strip() and not line.lstrip().startswith("#")]
    assert "pipeline-dp" not in pinned
    venv = re.search(r"PYFLINK_VENV=(\S+)", dockerfile).group(1)
    conf = deployment["spec"]["flinkConfiguration"]
    assert conf["python.executable"] == conf["python.client.executable"] == f"{venv}/bin/python"
    args = deployment["spec"]["job"]["args"]
    assert args[args.index("-pyexec") + 1] == args[args.index("-pyclientexec") + 1] == f"{venv}/bin/python"
    # every package the job imports is in the image, on PYTHONPATH
    from pipelines.flink_engine import JOB_PACKAGES
    home = re.search(r"^ENV PYTHONPATH=(\S+)", dockerfile, re.M).group(1)
    for package in JOB_PACKAGES:
        assert re.search(rf"^COPY {package}/ {re.escape(home)}/{package}/", dockerfile, re.M), package
