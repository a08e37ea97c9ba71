#!/usr/bin/env python3
"""Cross-checks of the manifests that schema validation cannot make, run by .ci/run.

    python3 deploy/kubernetes/check.py OUT.toml

Checks that every file kustomization.yaml lists exists; that the Services, the
PodDisruptionBudget and the ServiceMonitor select the Deployment's pods and name ports
that exist; that the probes hit /healthz and /readyz on the admin port; that the ports
match listen.address and admin.address; that terminationGracePeriodSeconds exceeds the
preStop sleep plus shutdown.drain_timeout; that the container stays hardened; and that
every jwt tenant's secret_env is set from a key of the Secret. Writes the ConfigMap's
sluice.toml to OUT.toml and prints NAME=VALUE for each environment variable the
Deployment sets (secrets as dummy values of 32 bytes), for `env … sluice check-config`.
Needs PyYAML (kubernetes-validate depends on it) and Python 3.11 (tomllib).
"""

import pathlib
import re
import sys
import tomllib

import yaml

HERE = pathlib.Path(__file__).resolve().parent
errors = []


def check(ok, message):
    if not ok:
        errors.append(message)


def seconds(duration):
    """ "250ms", "30s", "2m", "1h" -> seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    if not m:
        sys.exit(f"check.py: cannot read the duration {duration!r}")
    return float(m[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m[2]]


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


if len(sys.argv) != 2:
    sys.exit(__doc__)

kustomization = yaml.safe_load((HERE / "kustomization.yaml").read_text())
files = list(kustomization["resources"]) + ["secret.example.yaml"]
docs = {}
for name in files:
    path = HERE / name
    check(path.is_file(), f"kustomization.yaml lists {name}, which does not exist")
    if path.is_file():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[(doc["kind"], doc["metadata"]["name"])] = doc
by_kind = {}
for (kind, _), doc in docs.items():
    by_kind.setdefault(kind, []).append(doc)

deployment = docs[("Deployment", "sluice")]
pod = deployment["spec"]["template"]
spec = pod["spec"]
labels = pod["metadata"]["labels"]
check(selects(deployment["spec"]["selector"]["matchLabels"], labels),
      "the Deployment's selector does not match its pod labels")
container = next(c for c in spec["containers"] if c["name"] == "sluice")
ports = {p["name"]: p["containerPort"] for p in container["ports"]}

# The config file: --config PATH, served by a volume mount projecting the ConfigMap.
argv = container.get("command", []) + container.get("args", [])
config_path = argv[argv.index("--config") + 1]
mount = next(m for m in container["volumeMounts"] if config_path.startswith(m["mountPath"] + "/"))
volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
relative = config_path[len(mount["mountPath"]) + 1:]
sources = volume["projected"]["sources"] if "projected" in volume else [volume]
item = next((cm["configMap"]["name"], i["key"]) for cm in sources if "configMap" in cm
            for i in cm["configMap"].get("items", []) if i["path"] == relative)
config = tomllib.loads(docs[("ConfigMap", item[0])]["data"][item[1]])


def port_of(address):
    return int(address.rsplit(":", 1)[1])


check(ports.get("proxy") == port_of(config["listen"]["address"]),
      "container port 'proxy' is not listen.address's port")
check(ports.get("admin") == port_of(config["admin"]["address"]),
      "container port 'admin' is not admin.address's port")
for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
    get = container[probe]["httpGet"]
    check(get["path"] == path and get["port"] == "admin", f"{probe} is not GET {path} on 'admin'")

drain = seconds(config.get("shutdown", {}).get("drain_timeout", "30s"))
sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
grace = spec["terminationGracePeriodSeconds"]
check(grace > sleep + drain,
      f"terminationGracePeriodSeconds {grace} is not above preStop {sleep} s + drain_timeout {drain:g} s")

sc, psc = container["securityContext"], spec["securityContext"]
check(psc.get("runAsNonRoot") is True, "pod runAsNonRoot is not true")
check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "seccomp is not RuntimeDefault")
check(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem is not true")
check(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation is not false")
check(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities do not drop ALL")

# Environment: secrets from a Secret key that exists; every jwt secret_env provided.
env_out = []
for var in container.get("env", []):
    ref = var.get("valueFrom", {}).get("secretKeyRef")
    if ref:
        secret = docs.get(("Secret", ref["name"]), {})
        check(ref["key"] in secret.get("stringData", {}) or ref["key"] in secret.get("data", {}),
              f"env {var['name']}: Secret {ref['name']} (secret.example.yaml) has no key {ref['key']}")
        env_out.append(f"{var['name']}=ci-dummy-secret-{'x' * 16}")
    elif "value" in var:
        env_out.append(f"{var['name']}={var['value']}")
env_names = {line.split("=", 1)[0] for line in env_out}
for tenant, tconf in config.get("tenants", {}).items():
    var = tconf.get("auth", {}).get("secret_env")
    check(var is None or var in env_names, f"tenant {tenant}: secret_env {var} is not set in the Deployment")

# Who selects the pods, and which ports they name.
for service in by_kind.get("Service", []):
    name = service["metadata"]["name"]
    check(selects(service["spec"]["selector"], labels), f"Service {name} does not select the pods")
    for p in service["spec"]["ports"]:
        check(p["targetPort"] in ports, f"Service {name}: targetPort {p['targetPort']} is not a container port")
for pdb in by_kind.get("PodDisruptionBudget", []):
    check(selects(pdb["spec"]["selector"]["matchLabels"], labels), "the PodDisruptionBudget does not select the pods")
for monitor in by_kind.get("ServiceMonitor", []):
    chosen = [s for s in by_kind.get("Service", [])
              if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    check(len(chosen) == 1, f"the ServiceMonitor selects {len(chosen)} Services, not 1")
    names = {p["name"] for s in chosen for p in s["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        check(endpoint["port"] in names, f"the ServiceMonitor scrapes port {endpoint['port']}, which its Service lacks")
        check(endpoint.get("path", "/metrics") == "/metrics", "the ServiceMonitor does not scrape /metrics")

if errors:
    print("\n".join(f"deploy/kubernetes: {e}" for e in errors), file=sys.stderr)
    sys.exit(1)
out = pathlib.Path(sys.argv[1])
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(docs[("ConfigMap", item[0])]["data"][item[1]])
print("\n".join(env_out))
