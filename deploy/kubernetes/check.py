#!/usr/bin/env python3
"""Cross-checks of the manifests that schema validation cannot make, run by .ci/run.

    python3 deploy/kubernetes/check.py OUT.toml

Checks that every file kustomization.yaml lists exists; that each Service selects the
pods of one Deployment and names ports they have; that the PodDisruptionBudget and the
ServiceMonitor select sluice's pods and ports that exist; that the probes hit /healthz
and /readyz on the admin port; that the ports match listen.address and admin.address;
that terminationGracePeriodSeconds exceeds the preStop sleep plus
shutdown.drain_timeout; that every container stays hardened; that every jwt tenant's
secret_env is set from a key of the Secret; and, for several replicas, that [cluster]
is configured, its redis URL names a Service of the kit and its port, that Service's
Redis runs as one pod without persistence, and networkpolicy.yaml (optional) lets
only sluice's pods reach it. Writes the ConfigMap's
sluice.toml to OUT.toml and prints NAME=VALUE for each environment variable the
Deployment sets (secrets as dummy values of 32 bytes), for `env … sluice check-config`.
Needs PyYAML (kubernetes-validate depends on it) and Python 3.11 (tomllib).
"""

import pathlib
import re
import sys
import tomllib
import urllib.parse

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
# Not applied by default, checked all the same.
optional = ["secret.example.yaml", "networkpolicy.yaml"]
files = list(kustomization["resources"]) + [f for f in optional if f not in kustomization["resources"]]
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

# Every Deployment (sluice, Redis) meets the namespace's "restricted" standard.
for d in by_kind.get("Deployment", []):
    dname, dspec = d["metadata"]["name"], d["spec"]["template"]["spec"]
    psc = dspec.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True, f"Deployment {dname}: pod runAsNonRoot is not true")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
          f"Deployment {dname}: seccomp is not RuntimeDefault")
    for c in dspec["containers"]:
        sc, where = c.get("securityContext", {}), f"Deployment {dname}, container {c['name']}"
        check(sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem is not true")
        check(sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation is not false")
        check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities do not drop ALL")

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

# Who selects the pods, and which ports they name. Each Service serves one Deployment:
# sluice's (proxy, admin) or Redis.


def pod_labels(d):
    return d["spec"]["template"]["metadata"]["labels"]


def pod_ports(d):
    return {p["name"]: p["containerPort"] for c in d["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])}


served = {}
for service in by_kind.get("Service", []):
    name = service["metadata"]["name"]
    chosen = [d for d in by_kind.get("Deployment", []) if selects(service["spec"]["selector"], pod_labels(d))]
    check(len(chosen) == 1, f"Service {name} selects the pods of {len(chosen)} Deployments, not 1")
    if len(chosen) == 1:
        served[name] = chosen[0]
        for p in service["spec"]["ports"]:
            check(p["targetPort"] in pod_ports(chosen[0]),
                  f"Service {name}: targetPort {p['targetPort']} is not a port of Deployment "
                  f"{chosen[0]['metadata']['name']}")
check(any(d is deployment for d in served.values()), "no Service selects sluice's pods")
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

# Several replicas: [cluster], on the Redis of redis.yaml, or every limit multiplies.
replicas = deployment["spec"].get("replicas", 1)
cluster = config.get("cluster")
check(replicas == 1 or cluster is not None,
      f"the Deployment runs {replicas} replicas without [cluster]: every limit would multiply by {replicas}")
if cluster is not None and "redis" in cluster:
    url = urllib.parse.urlsplit(cluster["redis"])
    host = url.hostname or ""
    service = next((s for s in by_kind.get("Service", [])
                    if host in (s["metadata"]["name"], f"{s['metadata']['name']}.{kustomization['namespace']}")
                    or host.startswith(f"{s['metadata']['name']}.{kustomization['namespace']}.svc")), None)
    check(service is not None, f"cluster.redis: {host} is not a Service of the kit")
    if service is not None:
        name = service["metadata"]["name"]
        check((url.port or 6379) in [p["port"] for p in service["spec"]["ports"]],
              f"cluster.redis: Service {name} has no port {url.port or 6379}")
        redis = served.get(name)
        if redis is not None:
            rname = redis["metadata"]["name"]
            check(redis["spec"].get("replicas", 1) == 1,
                  f"Deployment {rname}: more than one Redis behind {name} would split the shared state")
            check(redis["spec"].get("strategy", {}).get("type") == "Recreate",
                  f"Deployment {rname}: strategy is not Recreate (a rollout would run two Redis at once)")
            args = [a for c in redis["spec"]["template"]["spec"]["containers"]
                    for a in c.get("command", []) + c.get("args", [])]

            def option(flag):
                return args[args.index(flag) + 1] if flag in args[:-1] else None

            check(option("--save") == "" and option("--appendonly") == "no",
                  f"Deployment {rname}: persistence is not off (--save \"\" --appendonly no)")
            check(url.password is not None or option("--protected-mode") == "no",
                  f"Deployment {rname}: protected mode refuses other pods when Redis has no password")
            # networkpolicy.yaml: Redis from sluice's pods only, on the Redis port.
            policies = [p for p in by_kind.get("NetworkPolicy", [])
                        if selects(p["spec"]["podSelector"].get("matchLabels"), pod_labels(redis))]
            check(len(policies) == 1, f"{len(policies)} NetworkPolicies select the pods of {rname}, not 1")
            for policy in policies:
                rules = policy["spec"].get("ingress", [])
                check("Ingress" in policy["spec"].get("policyTypes", []) and rules,
                      f"NetworkPolicy {policy['metadata']['name']} does not restrict ingress")
                for rule in rules:
                    peers = rule.get("from", [])
                    check(peers and all(set(peer) == {"podSelector"}
                                        and selects(peer["podSelector"].get("matchLabels"), labels)
                                        for peer in peers),
                          f"NetworkPolicy {policy['metadata']['name']} admits more than sluice's pods")
                    targets = {p["targetPort"] for p in service["spec"]["ports"]}
                    targets |= {pod_ports(redis).get(t) for t in targets}
                    opened = [p.get("port") for p in rule.get("ports", [])]
                    check(opened and set(opened) <= targets,
                          f"NetworkPolicy {policy['metadata']['name']} opens more than {name}'s port")

if errors:
    print("\n".join(f"deploy/kubernetes: {e}" for e in errors), file=sys.stderr)
    sys.exit(1)
out = pathlib.Path(sys.argv[1])
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(docs[("ConfigMap", item[0])]["data"][item[1]])
print("\n".join(env_out))
