"""What the rendered chart does: mounts, privileges, probes, the agent's configuration as the agent
itself parses it, the Service/monitor wiring and the cadvisorCompat relabelings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pulse.config import OPTIONS, Config, config_from_argv
from tests.deploy.chart_support import (
    ALL_ON_POD_MONITOR,
    ALL_ON_SERVICE_MONITOR,
    NAMESPACE,
    REPO,
    Helm,
    Manifest,
    kinds,
    only,
)


def pod_spec(manifests: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = only(manifests, "DaemonSet")["spec"]["template"]["spec"]
    return spec


def container(manifests: list[Manifest]) -> dict[str, Any]:
    containers = pod_spec(manifests)["containers"]
    assert len(containers) == 1
    first: dict[str, Any] = containers[0]
    return first


def agent_config(manifests: list[Manifest]) -> Config:
    """The Config the agent builds from the rendered env and args, through its own parser."""
    main = container(manifests)
    env = {item["name"]: item["value"] for item in main["env"] if "value" in item}
    return config_from_argv(main.get("args", []), env)


def load_values(path: Path) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(path.read_text())
    return values


def test_defaults_render_only_the_daemonset_and_its_account(helm: Helm) -> None:
    assert kinds(helm.template()) == ["DaemonSet", "ServiceAccount"]


def test_a_node_agent_tolerates_every_taint_by_default(helm: Helm) -> None:
    manifests = helm.template()
    assert pod_spec(manifests)["tolerations"] == [{"operator": "Exists"}]
    assert "nodeSelector" not in pod_spec(manifests)
    assert only(manifests, "DaemonSet")["spec"]["updateStrategy"]["type"] == "RollingUpdate"


@pytest.mark.parametrize("values_file", [None, ALL_ON_SERVICE_MONITOR])
def test_host_directories_are_mounted_read_only_where_the_agent_looks(
    helm: Helm, values_file: Path | None
) -> None:
    manifests = helm.template([values_file] if values_file else [])
    config = agent_config(manifests)
    volumes = {v["name"]: v for v in pod_spec(manifests)["volumes"]}
    mounts = container(manifests)["volumeMounts"]
    host_mounts = {}
    for mount in mounts:
        volume = volumes[mount["name"]]
        if "hostPath" in volume:
            # Same path inside as outside, so socket paths need no translation.
            assert volume["hostPath"]["path"] == mount["mountPath"]
            assert mount["readOnly"] is True, mount
            assert mount["mountPropagation"] == "HostToContainer", mount
            host_mounts[mount["mountPath"]] = volume["hostPath"]["type"]
    socket_dir = str(config.runtime_endpoint.parent)
    expected = {str(d): "DirectoryOrCreate" for d in config.sandbox_dirs}
    expected[socket_dir] = "Directory"
    assert host_mounts == expected
    # Nothing else of the host is visible, and the only writable path is an in-memory /tmp.
    writable = [m["mountPath"] for m in mounts if not m.get("readOnly")]
    assert writable == ["/tmp"]
    assert volumes["tmp"]["emptyDir"]["medium"] == "Memory"


@pytest.mark.parametrize("values_file", [None, ALL_ON_SERVICE_MONITOR, ALL_ON_POD_MONITOR])
def test_least_privilege_security_context(helm: Helm, values_file: Path | None) -> None:
    manifests = helm.template([values_file] if values_file else [])
    spec = pod_spec(manifests)
    assert container(manifests)["securityContext"] == {
        "privileged": False,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["securityContext"]["runAsUser"] == 0
    assert spec["securityContext"]["runAsNonRoot"] is False
    for namespace in ("hostPID", "hostIPC"):
        assert namespace not in spec
    assert spec["automountServiceAccountToken"] is False
    assert only(manifests, "ServiceAccount")["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False


def test_a_non_root_user_turns_run_as_non_root_on(helm: Helm) -> None:
    sets = ["runAsUser=2001", "runAsGroup=2001", "supplementalGroups={2002}"]
    context = pod_spec(helm.template(sets=sets))["securityContext"]
    assert context["runAsUser"] == 2001
    assert context["runAsGroup"] == 2001
    assert context["runAsNonRoot"] is True
    assert context["supplementalGroups"] == [2002]


def test_default_configuration_as_the_agent_parses_it(helm: Helm) -> None:
    config = agent_config(helm.template())
    # Reachable from outside the pod, unlike the agent's own loopback default.
    assert (config.listen_host, config.listen_port) == ("0.0.0.0", 8090)
    assert config.runtime_endpoint == Path("/run/containerd/containerd.sock")
    assert config.sandbox_dirs == (Path("/run/vc/sbs"), Path("/run/kata"))
    # Every other option keeps the agent's own default.
    defaults = config_from_argv([], {})
    for field in ("metrics_interval", "shim_timeout", "shim_max_body", "rescan_interval"):
        assert getattr(config, field) == getattr(defaults, field), field
    for field in ("cri_timeout", "cri_sync_interval", "guest_cpu_time_unit", "vm_container_name"):
        assert getattr(config, field) == getattr(defaults, field), field
    assert config.disk_exclude.pattern == defaults.disk_exclude.pattern
    assert config.exclude_runtime_handler is None
    assert (config.log_level, config.log_json, config.ws_max_clients) == ("info", False, 64)


@pytest.mark.parametrize("values_file", [ALL_ON_SERVICE_MONITOR, ALL_ON_POD_MONITOR])
def test_every_agent_value_reaches_the_agent(helm: Helm, values_file: Path) -> None:
    agent = load_values(values_file)["agent"]
    config = agent_config(helm.template([values_file]))
    assert config.listen_address == f"[{agent['listenHost']}]:{agent['port']}"
    assert config.runtime_endpoint == Path(agent["criSocket"])
    assert config.sandbox_dirs == tuple(Path(d) for d in agent["sandboxDirs"])
    assert config.metrics_interval == agent["metricsIntervalSeconds"]
    assert config.shim_timeout == agent["shimTimeoutSeconds"]
    assert config.shim_max_body == agent["shimMaxBodyBytes"]
    assert config.rescan_interval == agent["rescanIntervalSeconds"]
    assert config.cri_timeout == agent["criTimeoutSeconds"]
    assert config.cri_sync_interval == agent["criSyncIntervalSeconds"]
    assert config.exclude_runtime_handler is not None
    assert config.exclude_runtime_handler.pattern == agent["excludeRuntimeHandler"]
    assert config.guest_cpu_time_unit == agent["guestCpuTimeUnit"]
    assert config.disk_exclude.pattern == agent["diskExclude"]
    assert config.vm_container_name == agent["vmContainerName"]
    assert config.ws_max_clients == agent["wsMaxClients"]
    assert config.ws_allowed_origins == tuple(agent["wsAllowedOrigins"])
    assert config.log_level == agent["logLevel"]
    assert config.log_json is agent["logJson"]
    extra = {e["name"]: e["value"] for e in container(helm.template([values_file]))["env"]}
    for entry in agent["extraEnv"]:
        assert extra[entry["name"]] == entry["value"]


def test_large_numbers_are_not_rendered_in_exponent_form(helm: Helm) -> None:
    # Helm reads YAML numbers as floats: 33554432 must not become "3.3554432e+07".
    env = {e["name"]: e["value"] for e in container(helm.template())["env"]}
    assert env["KATA_PULSE_SHIM_MAX_BODY"] == "33554432"


def test_every_variable_set_is_one_the_agent_reads(helm: Helm) -> None:
    known = {option.env for option in OPTIONS if option.env}
    names = [e["name"] for e in container(helm.template([ALL_ON_SERVICE_MONITOR]))["env"]]
    extra = {e["name"] for e in load_values(ALL_ON_SERVICE_MONITOR)["agent"]["extraEnv"]}
    unknown = [n for n in names if n not in known and n not in extra]
    assert not unknown
    assert len(names) == len(set(names))


def test_probes_hit_the_health_endpoints_on_the_served_port(helm: Helm) -> None:
    for values in ([], [ALL_ON_SERVICE_MONITOR]):
        manifests = helm.template(values)
        main = container(manifests)
        ports = {p["name"]: p["containerPort"] for p in main["ports"]}
        assert ports == {"http-metrics": agent_config(manifests).listen_port}
        assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
        assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}


def test_all_on_scheduling_and_image_options(helm: Helm) -> None:
    values = load_values(ALL_ON_SERVICE_MONITOR)
    manifests = helm.template([ALL_ON_SERVICE_MONITOR])
    spec = pod_spec(manifests)
    assert spec["nodeSelector"] == {"katacontainers.io/kata-runtime": "true"}
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["tolerations"] == values["tolerations"]
    assert spec["affinity"] == values["affinity"]
    assert spec["imagePullSecrets"] == values["imagePullSecrets"]
    assert spec["serviceAccountName"] == values["serviceAccount"]["name"]
    assert spec["terminationGracePeriodSeconds"] == values["terminationGracePeriodSeconds"]
    image = values["image"]
    expected_image = f"{image['repository']}:{image['tag']}@{image['digest']}"
    assert container(manifests)["image"] == expected_image
    assert container(manifests)["resources"] == values["resources"]
    assert container(manifests)["args"] == values["agent"]["extraArgs"]
    daemonset = only(manifests, "DaemonSet")
    assert daemonset["metadata"]["name"] == values["fullnameOverride"]
    assert daemonset["spec"]["updateStrategy"] == values["updateStrategy"]
    assert daemonset["spec"]["template"]["metadata"]["labels"]["team"] == "platform"


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_service_monitor_reaches_the_pods_through_the_service(helm: Helm) -> None:
    # service.enabled stays false: the ServiceMonitor brings its Service.
    manifests = helm.template(sets=["serviceMonitor.enabled=true"])
    assert kinds(manifests) == ["DaemonSet", "Service", "ServiceAccount", "ServiceMonitor"]
    service, monitor = only(manifests, "Service"), only(manifests, "ServiceMonitor")
    pod_labels = only(manifests, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert matches(service["spec"]["selector"], pod_labels)
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert service["spec"]["clusterIP"] == "None"
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert service["spec"]["ports"][0]["targetPort"] == "http-metrics"
    assert endpoint["path"] == "/metrics"
    assert endpoint["honorLabels"] is True
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
    assert service["metadata"]["labels"]["app.kubernetes.io/name"] == "kata-pulse"
    assert "relabelings" not in endpoint
    assert "metricRelabelings" not in endpoint


def test_pod_monitor_selects_the_agent_pods(helm: Helm) -> None:
    manifests = helm.template(sets=["podMonitor.enabled=true"])
    assert kinds(manifests) == ["DaemonSet", "PodMonitor", "ServiceAccount"]
    monitor = only(manifests, "PodMonitor")
    pod_labels = only(manifests, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert matches(monitor["spec"]["selector"]["matchLabels"], pod_labels)
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == container(manifests)["ports"][0]["name"]
    assert endpoint["honorLabels"] is True
    assert endpoint["path"] == "/metrics"


def scrape_endpoint(manifests: list[Manifest]) -> dict[str, Any]:
    monitors = [m for m in manifests if m["kind"] in ("ServiceMonitor", "PodMonitor")]
    assert len(monitors) == 1
    spec = monitors[0]["spec"]
    endpoints: list[dict[str, Any]] = spec.get("endpoints") or spec["podMetricsEndpoints"]
    assert len(endpoints) == 1
    return endpoints[0]


COMPAT_RELABELINGS = [
    {"action": "replace", "sourceLabels": ["__metrics_path__"], "targetLabel": "metrics_path"},
    {"action": "replace", "targetLabel": "job", "replacement": "kubelet"},
]


@pytest.mark.parametrize("monitor", ["serviceMonitor", "podMonitor"])
def test_cadvisor_compat_relabels_to_the_kubelet_selector(helm: Helm, monitor: str) -> None:
    sets = [f"{monitor}.enabled=true", "cadvisorCompat.enabled=true"]
    endpoint = scrape_endpoint(helm.template(sets=sets))
    # metrics_path is copied from __metrics_path__: the scraped path itself must be the kubelet's.
    assert endpoint["path"] == "/metrics/cadvisor"
    assert endpoint["relabelings"] == COMPAT_RELABELINGS
    assert endpoint["metricRelabelings"] == [
        {
            "action": "replace",
            "sourceLabels": ["__name__"],
            "regex": "kata_pulse_.+",
            "targetLabel": "job",
            "replacement": "kata-pulse",
        }
    ]
    assert endpoint["honorLabels"] is True


def test_own_metrics_rule_catches_the_agent_families_only(helm: Helm) -> None:
    sets = ["serviceMonitor.enabled=true", "cadvisorCompat.enabled=true"]
    rule = scrape_endpoint(helm.template(sets=sets))["metricRelabelings"][0]
    regex = re.compile(f"^(?:{rule['regex']})$")  # Prometheus anchors relabel regexes
    source = (REPO / "pulse" / "selfmetrics.py").read_text()
    own = set(re.findall(r"\bkata_pulse_[a-z_]+[a-z]", source))
    assert own, "no kata_pulse_* family found in pulse/selfmetrics.py"
    for name in own:
        assert regex.match(name), name
    for name in ("container_cpu_usage_seconds_total", "machine_cpu_cores", "kata_guest_cpu_time"):
        assert not regex.match(name), name


def test_cadvisor_compat_puts_user_relabelings_after_its_own(helm: Helm) -> None:
    endpoint = scrape_endpoint(helm.template([ALL_ON_SERVICE_MONITOR]))
    values = load_values(ALL_ON_SERVICE_MONITOR)["serviceMonitor"]
    assert endpoint["relabelings"] == COMPAT_RELABELINGS + values["relabelings"]
    assert endpoint["metricRelabelings"][0]["replacement"] == "kata-pulse-self"
    assert endpoint["metricRelabelings"][1:] == values["metricRelabelings"]
    assert endpoint["interval"] == values["interval"]
    assert endpoint["scrapeTimeout"] == values["scrapeTimeout"]
    assert endpoint["honorTimestamps"] is values["honorTimestamps"]


def test_cadvisor_compat_can_leave_own_metrics_under_kubelet(helm: Helm) -> None:
    sets = [
        "podMonitor.enabled=true",
        "cadvisorCompat.enabled=true",
        "cadvisorCompat.ownMetricsJob=",
    ]
    endpoint = scrape_endpoint(helm.template(sets=sets))
    assert endpoint["relabelings"] == COMPAT_RELABELINGS
    assert "metricRelabelings" not in endpoint


def test_monitor_namespace_and_labels(helm: Helm) -> None:
    manifests = helm.template([ALL_ON_SERVICE_MONITOR])
    monitor = only(manifests, "ServiceMonitor")
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # Still selects the Service in the release namespace.
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


NOTES_WRAPPER = '{{- define "test.notes" }}\n%s\n{{- end }}\n'
NOTES_RENDER = 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n{{ include "test.notes" . | indent 4 }}\n'  # noqa: E501


def render_notes(helm: Helm, chart: Path, sets: list[str]) -> str:
    """NOTES.txt rendered by helm's engine (helm template does not print it, so wrap it)."""
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_test_notes.tpl").write_text(NOTES_WRAPPER % notes)
    (chart / "templates" / "test-notes.yaml").write_text(NOTES_RENDER)
    text = helm.template_text(sets=sets, chart=chart)
    for manifest in yaml.safe_load_all(text):
        if manifest and manifest["kind"] == "ConfigMap":
            rendered: str = manifest["data"]["notes"]
            return rendered
    raise AssertionError("notes not rendered")


def test_notes_explain_access_and_missing_monitor_labels(helm: Helm, chart_copy: Path) -> None:
    notes = render_notes(helm, chart_copy, ["serviceMonitor.enabled=true", "agent.port=9300"])
    assert f"kubectl -n {NAMESPACE} port-forward daemonset/pulse-kata-pulse 9300" in notes
    assert "ServiceMonitor" in notes
    assert "serviceMonitor.labels" in notes
    labelled = render_notes(
        helm, chart_copy, ["serviceMonitor.enabled=true", "serviceMonitor.labels.release=kps"]
    )
    assert "serviceMonitor.labels" not in labelled
    compat = render_notes(
        helm, chart_copy, ["podMonitor.enabled=true", "cadvisorCompat.enabled=true"]
    )
    assert 'job="kubelet"' in compat
    assert "PodMonitor" in compat
