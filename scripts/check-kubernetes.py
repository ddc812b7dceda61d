#!/usr/bin/env python3
"""Checks deploy/kubernetes: every document against the Kubernetes schemas (kubernetes-validate,
strict: unknown fields are errors; its schemas ship with it, so this runs offline), then what
the schemas cannot say: every ConfigMap, Secret and key a pod uses exists, probes name declared
ports and hit /healthz and /readyz, the StatefulSet's Service is headless, the PodDisruptionBudget
selects the coordinators, one agent DaemonSet per architecture with resource requests, the
coordinators' fixed Service IPs are the Raft peers and the agents' hosts.

Writes every ConfigMap key to OUT/<configmap>/<key>, so that the kiln config files inside can
be parsed by kiln itself, the coordinators' start script to OUT/coordinator-command.sh and
the members' Service IPs to OUT/member-ips (tests/tests/deploy.rs uses them). Usage: check-kubernetes.py DIR OUT
Run it with the Python of the venv scripts/setup-host.sh makes (/opt/kiln-kubernetes-validate).
"""
import os
import sys

import kubernetes_validate
import yaml


def fail(msg):
    print(f"check-kubernetes: {msg}", file=sys.stderr)
    sys.exit(1)


def main(src, out):
    docs = []
    for name in sorted(os.listdir(src)):
        if not name.endswith(".yaml"):
            continue
        path = os.path.join(src, name)
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if doc is None:
                    continue
                try:
                    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
                except kubernetes_validate.ValidationError as e:
                    fail(f"{name}: {doc.get('kind')}/{doc['metadata'].get('name')}: {'.'.join(map(str, e.path))}: {e.message}")
                except Exception as e:
                    fail(f"{name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {e}")
                docs.append((name, doc))
    by_kind = {}
    for name, doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    for kind in ["Namespace", "ConfigMap", "Secret", "Service", "StatefulSet", "PodDisruptionBudget", "DaemonSet"]:
        if kind not in by_kind:
            fail(f"no {kind}")
    configmaps, secrets = by_kind["ConfigMap"], by_kind["Secret"]
    for name, doc in docs:
        ns = doc["metadata"].get("namespace")
        if doc["kind"] != "Namespace" and ns not in by_kind["Namespace"]:
            fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} is in namespace {ns!r}, which no manifest makes")

    def secret_keys(s):
        return set(s.get("data", {})) | set(s.get("stringData", {}))

    workloads = list(by_kind["StatefulSet"].values()) + list(by_kind["DaemonSet"].values())
    for w in workloads:
        wname = f"{w['kind']}/{w['metadata']['name']}"
        pod = w["spec"]["template"]["spec"]
        labels = w["spec"]["template"]["metadata"]["labels"]
        for k, v in w["spec"]["selector"]["matchLabels"].items():
            if labels.get(k) != v:
                fail(f"{wname}: the selector {k}={v} does not match the pod template's labels")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in w["spec"].get("volumeClaimTemplates", [])}
        for v in volumes.values():
            if "configMap" in v and v["configMap"]["name"] not in configmaps:
                fail(f"{wname}: volume {v['name']} names ConfigMap {v['configMap']['name']}, which no manifest makes")
            if "secret" in v:
                s = secrets.get(v["secret"]["secretName"])
                if s is None:
                    fail(f"{wname}: volume {v['name']} names Secret {v['secret']['secretName']}, which no manifest makes")
                for item in v["secret"].get("items", []):
                    if item["key"] not in secret_keys(s):
                        fail(f"{wname}: Secret {v['secret']['secretName']} has no key {item['key']}")
        for c in pod.get("initContainers", []) + pod["containers"]:
            cname = f"{wname} container {c['name']}"
            ports = {p["name"]: p for p in c.get("ports", []) if "name" in p}
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes and m["name"] not in claims:
                    fail(f"{cname}: mounts {m['name']}, which is not a volume of the pod")
                v = volumes.get(m["name"], {})
                if "subPath" in m and "configMap" in v and m["subPath"] not in configmaps[v["configMap"]["name"]]["data"]:
                    fail(f"{cname}: ConfigMap {v['configMap']['name']} has no key {m['subPath']}")
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and (ref["name"] not in secrets or ref["key"] not in secret_keys(secrets[ref["name"]])):
                    fail(f"{cname}: env {e['name']} names {ref['name']}/{ref['key']}, which no Secret has")
            if c in pod["containers"]:
                for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
                    p = c.get(probe, {}).get("httpGet")
                    if p is None or p["path"] != path:
                        fail(f"{cname}: {probe} must GET {path}")
                    if isinstance(p["port"], str) and p["port"] not in ports:
                        fail(f"{cname}: {probe} names port {p['port']}, which the container does not declare")
                if not c.get("resources", {}).get("requests"):
                    fail(f"{cname}: no resource requests")

    sts = next(iter(by_kind["StatefulSet"].values()))
    svc = by_kind["Service"].get(sts["spec"]["serviceName"])
    if svc is None or svc["spec"].get("clusterIP") != "None":
        fail(f"StatefulSet {sts['metadata']['name']}: its serviceName must be a headless Service")
    sts_labels = sts["spec"]["template"]["metadata"]["labels"]
    for pdb in by_kind["PodDisruptionBudget"].values():
        if not all(sts_labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items()):
            fail(f"PodDisruptionBudget {pdb['metadata']['name']} does not select the coordinators")
        if pdb["spec"].get("minAvailable", 0) * 2 <= sts["spec"]["replicas"]:
            fail(f"PodDisruptionBudget {pdb['metadata']['name']}: minAvailable must keep a Raft majority")
    archs = [d["spec"]["template"]["spec"].get("nodeSelector", {}).get("kubernetes.io/arch") for d in by_kind["DaemonSet"].values()]
    if None in archs or len(set(archs)) != len(archs) or not {"amd64", "arm64"} <= set(archs):
        fail(f"expected one agent DaemonSet per architecture (amd64, arm64), got {archs}")
    # Each member's own Service: a fixed IP, selecting exactly one pod of the StatefulSet.
    member_ips = []
    for s in by_kind["Service"].values():
        pod_name = s["spec"].get("selector", {}).get("statefulset.kubernetes.io/pod-name")
        if pod_name:
            ordinal = int(pod_name.rsplit("-", 1)[1])
            if not pod_name.startswith(sts["metadata"]["name"] + "-") or ordinal >= sts["spec"]["replicas"]:
                fail(f"Service {s['metadata']['name']} selects {pod_name}, which is not a coordinator pod")
            member_ips.append((ordinal + 1, s["spec"]["clusterIP"]))
    if sorted(i for i, _ in member_ips) != list(range(1, sts["spec"]["replicas"] + 1)):
        fail(f"expected one Service per coordinator, got {member_ips}")
    container = sts["spec"]["template"]["spec"]["containers"][0]
    if container.get("command") != ["/bin/sh", "-c"] or len(container.get("args", [])) != 1:
        fail("the coordinators' container must run its script with /bin/sh -c")
    with open(os.path.join(out, "coordinator-command.sh"), "w") as f:
        f.write(container["args"][0])
    with open(os.path.join(out, "member-ips"), "w") as f:
        for i, ip in sorted(member_ips):
            f.write(f"{i} {ip}\n")
    for name, cm in configmaps.items():
        os.makedirs(os.path.join(out, name), exist_ok=True)
        for key, text in cm.get("data", {}).items():
            with open(os.path.join(out, name, key), "w") as f:
                f.write(text)
    print(f"check-kubernetes: {len(docs)} resources valid")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        fail("usage: check-kubernetes.py DIR OUT")
    main(sys.argv[1], sys.argv[2])
