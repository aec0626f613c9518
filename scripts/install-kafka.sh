#!/usr/bin/env bash
# Fetches Apache Kafka (broker + KRaft controller + storage tool) for the tests: the runtime
# classpath of tests/kafka/pom.xml, resolved from Maven Central with `mvn`, copied into
#
#   ${SLUICE_CACHE_DIR:-~/.cache/sluice}/kafka-<version>/libs
#
# where the sluice-tests harness runs `java -cp 'libs/*' kafka.Kafka`. Safe to run again: a
# complete install of the same version is left alone. Usage: install-kafka.sh [version]
# (default: the version in tests/kafka/pom.xml, which is also what the harness looks for).
set -euo pipefail
cd "$(dirname "$0")/.."

pom=tests/kafka/pom.xml
version="${1:-$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom" | head -1)}"
if [ -z "$version" ]; then
    echo "install-kafka: cannot read <kafka.version> from $pom" >&2
    exit 1
fi
cache="${SLUICE_CACHE_DIR:-${HOME}/.cache/sluice}"
home="$cache/kafka-$version"

if [ -f "$home/libs/.complete" ]; then
    echo "install-kafka: Apache Kafka $version already in $home/libs"
    exit 0
fi

missing=()
command -v java >/dev/null || missing+=("java (a JDK or JRE 17+: apt-get install -y openjdk-17-jre-headless)")
command -v mvn >/dev/null || missing+=("mvn (Maven 3.8+: apt-get install -y maven)")
if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-kafka: the Kafka tests run Apache Kafka from its Maven Central jars, which needs:" >&2
    for m in "${missing[@]}"; do echo "  - $m" >&2; done
    echo "install them, then run scripts/install-kafka.sh again" >&2
    exit 1
fi

echo "install-kafka: resolving Apache Kafka $version from Maven Central into $home/libs"
mkdir -p "$home"
tmp="$(mktemp -d "$home/libs.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
mvn -q -B -Dstyle.color=never -f "$pom" -Dkafka.version="$version" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp"
if ! ls "$tmp"/kafka_2.13-"$version".jar >/dev/null 2>&1; then
    echo "install-kafka: mvn finished but kafka_2.13-$version.jar is not in $tmp" >&2
    exit 1
fi
touch "$tmp/.complete"
rm -rf "$home/libs"
mv "$tmp" "$home/libs"
trap - EXIT
echo "install-kafka: Apache Kafka $version installed in $home/libs ($(ls "$home/libs" | wc -l) jars)"
