#!/usr/bin/env bash
# Builds the Kubernetes API server, kubectl and etcd that the Kubernetes-mode tests run (the way
# controller-runtime's envtest runs a real control plane without a kubelet), from the Go modules
# pinned in tests/kube/apiserver/go.mod and tests/kube/etcd/go.mod. Building from modules instead
# of downloading release binaries is what works here: the Go module proxy is reachable, release
# downloads are not.
#
# The binaries are cached by version, so this is a no-op once they are there:
#
#   ${XDG_CACHE_HOME:-~/.cache}/sluice/kube-<k8s version>/kube-apiserver
#                                                        /kubectl
#                                                        /etcd
#
# (the directory is printed at the end; SLUICE_KUBE_CACHE overrides it, and the test harness
# looks in the same place unless SLUICE_KUBE_APISERVER / SLUICE_KUBECTL / SLUICE_ETCD are set).
#
# The first build is slow. Measured on the project's 2-core machine (shared with other builds),
# -p=2, empty Go build cache: etcd 100 s, kube-apiserver 625 s, kubectl 64 s (it reuses most of
# the API server's packages): 13 min 10 s in all, plus ~20 s to download the modules (~1.1 GB
# module cache, ~2.6 GB build cache). Later runs only check the binaries' versions (0.3 s).
# Set GOFLAGS=-p=1 to build on one core.
#
# Needs Go >= the `go` line of those go.mod files (1.26). GOTOOLCHAIN=local keeps Go from
# trying to download another toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
    export PATH="/usr/local/go/bin:$PATH"
fi
if ! command -v go >/dev/null; then
    echo "install-kube: Go is not installed, and kube-apiserver, kubectl and etcd are built from" >&2
    echo "  Go modules. Install Go 1.26 or newer (the go.mod files in tests/kube need it) and put" >&2
    echo "  it on PATH, then run scripts/install-kube.sh again." >&2
    exit 1
fi

export GOTOOLCHAIN=local
# Two compile jobs at most: the machine is shared and has two cores.
case " ${GOFLAGS:-} " in
    *" -p="*) ;;
    *) export GOFLAGS="${GOFLAGS:-} -p=2" ;;
esac
# The wrappers live inside this repository; stamping its git state into them would be noise.
export GOFLAGS="$GOFLAGS -buildvcs=false"

mod_version() { # module go.mod -> the version that go.mod requires
    awk -v m="$1" '$1 == "require" { $1 = ""; $0 = $0 } $1 == m && $2 ~ /^v/ { print $2; exit }' "$2"
}
kube_version=$(mod_version k8s.io/kubernetes tests/kube/apiserver/go.mod)
etcd_version=$(mod_version go.etcd.io/etcd/server/v3 tests/kube/etcd/go.mod)
if [ -z "$kube_version" ] || [ -z "$etcd_version" ]; then
    echo "install-kube: cannot read the pinned versions from tests/kube/*/go.mod" >&2
    exit 1
fi
major=${kube_version#v}; major=${major%%.*}
minor=${kube_version#v*.}; minor=${minor%%.*}

dest=${SLUICE_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/kube-$kube_version}
mkdir -p "$dest"

# Without these, discovery (/version) and `kubectl version` report v0.0.0-master, and kubectl
# warns about a client/server version skew.
build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags="$ldflags -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=$major"
    ldflags="$ldflags -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
    ldflags="$ldflags -X $pkg.buildDate=$build_date"
done

# build NAME MODULE_DIR PACKAGE EXPECTED_VERSION_TEXT VERSION_COMMAND...
# Rebuilds when the binary is missing or reports another version than the one pinned.
build() {
    local name=$1 dir=$2 pkg=$3 want=$4
    shift 4
    if [ -x "$dest/$name" ] && "$dest/$name" "$@" 2>/dev/null | grep -qF "$want"; then
        return
    fi
    echo "install-kube: building $name ($want) into $dest (slow the first time; see the timings in this script)"
    local start=$SECONDS
    (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$dest/.$name.$$" "$pkg")
    mv -f "$dest/.$name.$$" "$dest/$name"
    echo "install-kube: built $name in $((SECONDS - start)) s"
}

build etcd tests/kube/etcd . "${etcd_version#v}" --version
build kube-apiserver tests/kube/apiserver . "$kube_version" --version
build kubectl tests/kube/apiserver ./kubectl "$kube_version" version --client

echo "install-kube: $("$dest/kube-apiserver" --version), $("$dest/kubectl" version --client | head -1), $("$dest/etcd" --version | head -1) in $dest"

# Helm, to render deploy/helm/sluice in the tests (`helm template` → server-side dry run on
# the test API server). Built from its module like the rest: about 10 minutes the first time on
# the 2-core machine (most of it compiling client-go), then cached by version.
helm_version=v4.3.2
helm_dest=${SLUICE_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/helm-$helm_version}
if ! [ -x "$helm_dest/helm" ] || ! "$helm_dest/helm" version --short 2>/dev/null | grep -qF "${helm_version%.*}"; then
    echo "install-kube: building helm $helm_version into $helm_dest (slow the first time)"
    start=$SECONDS
    mkdir -p "$helm_dest"
    GOBIN="$helm_dest" go install "helm.sh/helm/v4/cmd/helm@$helm_version"
    echo "install-kube: built helm in $((SECONDS - start)) s"
fi
echo "install-kube: helm $("$helm_dest/helm" version --short) in $helm_dest"
