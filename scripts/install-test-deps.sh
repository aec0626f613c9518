#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain; safe to run again (each step
# is skipped when its tool is already there). CI runs it before the tests.
#
#   nats-server   JetStream server for the NATS channel tests (Debian package)
#   Apache Kafka  KRaft broker for the Kafka tests: its jars from Maven Central, cached by
#                 version (scripts/install-kafka.sh; needs java 17+ and mvn)
#   gcc, g++, make, perl, python3, pkg-config
#                 librdkafka is built from source by rdkafka-sys (feature `kafka`) and linked
#                 statically, with its bundled configure script: no cmake, no system librdkafka.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        $SUDO apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@"
}

missing=()
command -v nats-server >/dev/null || missing+=(nats-server)
for tool in gcc g++ make perl python3 pkg-config; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
    pkgs=()
    for m in "${missing[@]}"; do
        case "$m" in
            g++) pkgs+=(g++) ;;
            python3) pkgs+=(python3) ;;
            *) pkgs+=("$m") ;;
        esac
    done
    echo "install-test-deps: installing ${pkgs[*]} with apt-get"
    apt_install "${pkgs[@]}"
fi

for tool in java mvn; do
    command -v "$tool" >/dev/null || missing_jvm=1
done
if [ "${missing_jvm:-0}" = 1 ]; then
    echo "install-test-deps: installing a JRE and Maven with apt-get (for Apache Kafka)"
    apt_install openjdk-17-jre-headless maven
fi
"$(dirname "$0")/install-kafka.sh"

"$(dirname "$0")/install-kube.sh"  # kube-apiserver, kubectl, etcd for the Kubernetes tests (~13 min the first time)

echo "install-test-deps: nats-server $(nats-server --version 2>&1 | head -1)"
