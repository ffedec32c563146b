#!/usr/bin/python3
"""Derive what `podman kube play` (podman 4.3, Debian 12) can run from docker/k8s/*.yaml.

The manifests are written for a real cluster. podman 4.3 plays Pods, Deployments (one pod
each), PersistentVolumeClaims, ConfigMaps and Secrets, but not StatefulSets or Services, and a
few things it plays differently. This script turns the very same files into one kube YAML per
pod, so the test (docker/k8s/kube-test.sh) runs what a cluster would run, never a second
hand-kept copy:

  StatefulSet N  -> N Pods NAME-0..N-1, each with the PersistentVolumeClaims of its
                    volumeClaimTemplates (TEMPLATE-NAME-i, as a cluster names them)
  Deployment N   -> N Pods NAME-0..N-1 (podman 4.3 plays a Deployment as a single pod)
  Service        -> network aliases: every pod its selector matches gets the Service's name as
                    a DNS alias on the test's podman network (aardvark-dns), so the DNS names in
                    the manifests (tcp://provider-manager-primary:5555) work unchanged. A port
                    must equal its target port (an alias cannot remap ports); checked.
  Secret         -> ConfigMap with the decoded data, and secret volumes -> configMap volumes:
                    podman 4.3 mounts a Secret's data as its base64 text, not the bytes.
  probes         -> removed from the pods and written to plan.json: podman 4.3 turns a liveness
                    probe into a systemd-timer health check (no systemd here) and an httpGet
                    into curl (not in the image); the test runs each probe itself, as the
                    kubelet would (httpGet from the host to the pod's IP, exec in the container).
  emptyDir       -> renamed PREFIXPOD-VOLUME: podman 4.3 makes a named volume of the volume's
                    name, which pods would otherwise share.
  names          -> every pod, ConfigMap and claim gets PREFIX, so that runs do not collide;
                    Service names (aliases) stay as written: the network is the run's own.
  ports          -> removed from the containers (kept in plan.json): podman 4.3 publishes every
                    containerPort on the host, so two pods with port 5555 would collide; pods
                    reach each other on the network, as in a cluster.
  image          -> --image for every container.

Usage: podman-derive.py --manifests DIR --secrets FILE --image IMAGE --prefix P --out DIR
Writes OUT/POD.yaml for each pod and OUT/plan.json (pods, aliases, probes, volumes).
"""

import argparse
import base64
import copy
import glob
import json
import os
import sys

import yaml

SUPPORTED = {"ConfigMap", "Secret", "Service", "StatefulSet", "Deployment", "PersistentVolumeClaim"}


def fail(message):
    sys.exit("podman-derive: " + message)


def load(paths):
    docs = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                if doc is None:
                    continue
                kind = doc.get("kind")
                if kind not in SUPPORTED:
                    fail("%s: kind %r is not handled (handled: %s)" % (path, kind, ", ".join(sorted(SUPPORTED))))
                doc["_source"] = path
                docs.append(doc)
    return docs


def secret_as_configmap(secret, prefix):
    data = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            data[key] = base64.b64decode(value, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError) as e:
            fail("Secret %s key %s: not base64 of UTF-8 text (%s)" % (secret["metadata"]["name"], key, e))
    for key, value in (secret.get("stringData") or {}).items():
        data[key] = value
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": prefix + secret["metadata"]["name"], "labels": secret["metadata"].get("labels", {})},
        "data": data,
    }


def named_port(container, port):
    """A probe's or a Service's port: a number, or a containerPort's name."""
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    if str(port).isdigit():
        return int(port)
    fail("container %s has no port named %r" % (container["name"], port))
    return None


def take_probes(container):
    probes = {}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.pop(kind, None)
        if probe is None:
            continue
        entry = {
            "initialDelaySeconds": probe.get("initialDelaySeconds", 0),
            "periodSeconds": probe.get("periodSeconds", 10),
            "timeoutSeconds": probe.get("timeoutSeconds", 1),
            "failureThreshold": probe.get("failureThreshold", 3),
        }
        if "exec" in probe:
            entry["exec"] = list(probe["exec"]["command"])
        elif "httpGet" in probe:
            get = probe["httpGet"]
            entry["httpGet"] = {
                "path": get.get("path", "/"),
                "port": named_port(container, get["port"]),
                "scheme": get.get("scheme", "HTTP"),
            }
        elif "tcpSocket" in probe:
            entry["tcpSocket"] = {"port": named_port(container, probe["tcpSocket"]["port"])}
        else:
            fail("container %s: %s of an unknown type" % (container["name"], kind))
        probes[kind[: -len("Probe")]] = entry
    return probes


def derive_pod(name, labels, template_spec, claims, args, volumes_made):
    spec = copy.deepcopy(template_spec)
    pod_name = args.prefix + name
    plan = {"name": pod_name, "labels": labels, "containers": [], "aliases": []}
    renamed = {}
    volumes = []
    for vol in spec.get("volumes", []):
        vol = dict(vol)
        if "secret" in vol:
            src = vol.pop("secret")
            cm = {"name": args.prefix + src["secretName"]}
            if "items" in src:
                cm["items"] = src["items"]
            if "optional" in src:
                cm["optional"] = src["optional"]
            vol["configMap"] = cm
            volumes_made.add(cm["name"])
        elif "configMap" in vol:
            vol["configMap"] = dict(vol["configMap"])
            vol["configMap"].pop("defaultMode", None)
            vol["configMap"]["name"] = args.prefix + vol["configMap"]["name"]
            volumes_made.add(vol["configMap"]["name"])
        elif "emptyDir" in vol:
            new = "%s-%s" % (pod_name, vol["name"])
            renamed[vol["name"]] = new
            vol["name"] = new
            vol["emptyDir"] = {}
            volumes_made.add(new)
        elif "persistentVolumeClaim" in vol:
            claim = args.prefix + vol["persistentVolumeClaim"]["claimName"]
            vol["persistentVolumeClaim"] = {"claimName": claim}
            volumes_made.add(claim)
        volumes.append(vol)
    for template_name, claim in claims:
        volumes.append({"name": template_name, "persistentVolumeClaim": {"claimName": claim}})
    spec["volumes"] = volumes
    for container in spec["containers"]:
        container["image"] = args.image
        probes = take_probes(container)
        for mount in container.get("volumeMounts", []):
            mount["name"] = renamed.get(mount["name"], mount["name"])
        for env in container.get("env", []):
            ref = (env.get("valueFrom") or {}).pop("secretKeyRef", None)
            if ref is not None:
                env["valueFrom"]["configMapKeyRef"] = dict(ref, name=args.prefix + ref["name"])
            ref = (env.get("valueFrom") or {}).get("configMapKeyRef")
            if ref is not None and not ref["name"].startswith(args.prefix):
                ref["name"] = args.prefix + ref["name"]
        for env_from in container.get("envFrom", []):
            for key in ("secretRef", "configMapRef"):
                if key in env_from:
                    env_from["configMapRef"] = {"name": args.prefix + env_from.pop(key)["name"]}
        security = dict(spec.get("securityContext", {}))
        security.update(container.get("securityContext", {}))
        ports = container.pop("ports", [])
        plan["containers"].append(
            {
                "name": container["name"],
                "podman_name": "%s-%s" % (pod_name, container["name"]),
                "ports": {p.get("name", str(p["containerPort"])): p["containerPort"] for p in ports},
                "env": {e["name"]: e["value"] for e in container.get("env", []) if "value" in e},
                "probes": probes,
                "securityContext": security,
                "resources": container.get("resources", {}),
            }
        )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod_name, "labels": labels},
        "spec": spec,
    }
    return pod, plan


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--manifests", required=True)
    parser.add_argument("--secrets", action="append", default=[])
    parser.add_argument("--image", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    paths = sorted(glob.glob(os.path.join(args.manifests, "*.yaml")) + glob.glob(os.path.join(args.manifests, "*.yml")))
    if not paths:
        fail("no *.yaml in " + args.manifests)
    docs = load(paths + args.secrets)

    configmaps = []
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            cm = {k: v for k, v in doc.items() if not k.startswith("_")}
            cm = copy.deepcopy(cm)
            cm["metadata"]["name"] = args.prefix + cm["metadata"]["name"]
            configmaps.append(cm)
        elif doc["kind"] == "Secret":
            configmaps.append(secret_as_configmap(doc, args.prefix))

    pods = []  # (pod document, plan entry, [claim documents])
    volumes_made = set()
    for doc in docs:
        kind = doc["kind"]
        if kind not in ("StatefulSet", "Deployment"):
            continue
        name = doc["metadata"]["name"]
        spec = doc["spec"]
        template = spec["template"]
        labels = dict(template["metadata"].get("labels", {}))
        selector = spec.get("selector", {}).get("matchLabels", {})
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            fail("%s %s: its selector %s does not match its template's labels %s" % (kind, name, selector, labels))
        for i in range(spec.get("replicas", 1)):
            claims, claim_docs = [], []
            for tmpl in spec.get("volumeClaimTemplates", []) if kind == "StatefulSet" else []:
                claim = "%s%s-%s-%d" % (args.prefix, tmpl["metadata"]["name"], name, i)
                claims.append((tmpl["metadata"]["name"], claim))
                claim_docs.append(
                    {
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "metadata": {"name": claim},
                        "spec": copy.deepcopy(tmpl["spec"]),
                    }
                )
                volumes_made.add(claim)
            pod, plan = derive_pod("%s-%d" % (name, i), labels, template["spec"], claims, args, volumes_made)
            plan["source"] = "%s/%s" % (kind, name)
            plan["claims"] = [c for _, c in claims]
            pods.append((pod, plan, claim_docs))

    services = {}
    for doc in docs:
        if doc["kind"] != "Service":
            continue
        name = doc["metadata"]["name"]
        selector = doc["spec"].get("selector", {})
        matched = [p for p in pods if selector and all(p[1]["labels"].get(k) == v for k, v in selector.items())]
        if not matched:
            fail("Service %s selects no pod (selector %s)" % (name, selector))
        ports = {}
        for port in doc["spec"].get("ports", []):
            for _, plan, _ in matched:
                container = next(c for c in plan["containers"])
                target = port.get("targetPort", port["port"])
                if not isinstance(target, int):
                    target = container["ports"].get(target)
                if target != port["port"]:
                    fail("Service %s port %s: target %r differs; a network alias cannot remap it" % (name, port["port"], target))
            ports[port.get("name", str(port["port"]))] = port["port"]
        for _, plan, _ in matched:
            plan["aliases"].append(name)
        services[name] = {"pods": [p[1]["name"] for p in matched], "ports": ports}

    os.makedirs(args.out, exist_ok=True)
    plan_pods = []
    for pod, plan, claim_docs in pods:
        used = {v["configMap"]["name"] for v in pod["spec"]["volumes"] if "configMap" in v}
        for container in pod["spec"]["containers"]:
            for env in container.get("env", []):
                ref = (env.get("valueFrom") or {}).get("configMapKeyRef")
                if ref:
                    used.add(ref["name"])
            for env_from in container.get("envFrom", []):
                used.add(env_from["configMapRef"]["name"])
        missing = used - {cm["metadata"]["name"] for cm in configmaps}
        if missing:
            fail("pod %s needs %s, found in no ConfigMap or Secret (generate the Secrets first)" % (pod["metadata"]["name"], sorted(missing)))
        stream = [cm for cm in configmaps if cm["metadata"]["name"] in used] + claim_docs + [pod]
        path = os.path.join(args.out, pod["metadata"]["name"] + ".yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write("# Derived by docker/k8s/podman-derive.py from %s for podman kube play.\n" % plan["source"])
            yaml.safe_dump_all(stream, f, sort_keys=False)
        os.chmod(path, 0o600)
        plan["file"] = path
        plan_pods.append(plan)

    with open(os.path.join(args.out, "plan.json"), "w", encoding="utf-8") as f:
        json.dump({"pods": plan_pods, "services": services, "volumes": sorted(volumes_made)}, f, indent=1)


if __name__ == "__main__":
    main()
