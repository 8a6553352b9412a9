"""Reads rendered Kubernetes YAML (stdin) and prints, as JSON, every container of every
workload: {"kind","name","container","image","command","args","env":{name: value},
"probes":{"readiness": path, "liveness": path}, "requests": {...}}, plus the kinds present."""
import json
import sys

import yaml

docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
out = {"kinds": sorted({f"{d['kind']}/{d['metadata']['name']}" for d in docs}), "containers": [], "claims": {}}
for d in docs:
    if d["kind"] not in ("Deployment", "StatefulSet"):
        continue
    spec = d["spec"]["template"]["spec"]
    out["claims"][d["metadata"]["name"]] = [c["metadata"]["name"] for c in d["spec"].get("volumeClaimTemplates", [])]
    for c in spec.get("initContainers", []) + spec["containers"]:
        probe = lambda p: (c.get(p) or {}).get("httpGet", {}).get("path")
        out["containers"].append({
            "kind": d["kind"],
            "name": d["metadata"]["name"],
            "container": c["name"],
            "image": c["image"],
            "command": c.get("command", []),
            "args": c.get("args", []),
            "env": {e["name"]: e.get("value", "") for e in c.get("env", [])},
            "probes": {"readiness": probe("readinessProbe"), "liveness": probe("livenessProbe")},
            "requests": (c.get("resources") or {}).get("requests", {}),
            "run_as_non_root": (spec.get("securityContext") or {}).get("runAsNonRoot", False),
        })
print(json.dumps(out))
