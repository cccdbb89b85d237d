#!/usr/bin/env bash
# Fetch the Apache Kafka broker and command-line tools jars (plus a Log4j 2 backend) from
# Maven Central into .cache/kafka/libs/, using the throw-away Maven project in
# deploy/local/kafka/pom.xml.
#
# There is no Kafka tarball download here on purpose: Maven Central is the one artefact
# source we can rely on, and the jars it resolves are exactly the ones in the release.
#
# Usage: deploy/local/fetch-kafka.sh        (no-op when the cache already holds this version)
# Env:   KAFKA_VERSION   (default 4.4.0; 4.x needs Java 17+)
#        LOG4J_VERSION   (default 2.26.1)
#        SLF4J_VERSION   (default 2.0.17; must be 2.x for log4j-slf4j2-impl, see pom.xml)
#        FETCH_TIMEOUT   seconds before Maven is killed (default 900)
#        TONGBAN_CACHE_DIR (default <repo>/.cache)
# Output: .cache/kafka/libs/*.jar and .cache/kafka/libs/.fetched (the version marker),
#         Maven's own repository in .cache/m2, Maven log in .run/logs/fetch-kafka.log.
# shellcheck source-path=SCRIPTDIR disable=SC2034  # SCRIPT_NAME is read by lib.sh
set -euo pipefail
SCRIPT_NAME=fetch-kafka
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KAFKA_VERSION=${KAFKA_VERSION:-4.4.0}
LOG4J_VERSION=${LOG4J_VERSION:-2.26.1}
SLF4J_VERSION=${SLF4J_VERSION:-2.0.17}
FETCH_TIMEOUT=${FETCH_TIMEOUT:-900}

LIBS="$CACHE_DIR/kafka/libs"
MARKER="$LIBS/.fetched"
M2="$CACHE_DIR/m2"
POM="$LOCAL_DIR/kafka/pom.xml"
LOG="$LOG_DIR/fetch-kafka.log"
# The marker names what the folder holds; a cache fetched before the tools were added
# ("kafka=4.4.0 log4j=..." without "tools") differs from it, so it is fetched again.
WANT="kafka=$KAFKA_VERSION tools=$KAFKA_VERSION log4j=$LOG4J_VERSION slf4j=$SLF4J_VERSION"

if [[ -f $MARKER && $(<"$MARKER") == "$WANT" ]]; then
  say "Kafka jars already cached ($WANT) in $LIBS"
  exit 0
fi

# Say plainly which tool is missing before Maven produces a less obvious error.
missing=()
command -v java >/dev/null 2>&1 || [[ -x ${JAVA_HOME:-/nonexistent}/bin/java ]] || missing+=("java (JDK 17+, e.g. apt-get install openjdk-17-jdk-headless)")
command -v mvn >/dev/null 2>&1 || missing+=("mvn (Apache Maven 3.6+, e.g. apt-get install maven)")
if (( ${#missing[@]} )); then
  die "cannot fetch Kafka, missing on PATH: ${missing[*]}"
fi

take_lock
# Swapping jars under a running JVM breaks it in odd ways; refuse instead.
for pidf in "$RUN_DIR"/kafka-*/kafka.pid; do
  [[ -f $pidf ]] && pid_matches "$(<"$pidf")" kafka.Kafka \
    && die "a local Kafka broker is running from $LIBS (pid $(<"$pidf")); run 'deploy/local/kafka.sh down' before fetching another version."
done
mkdir -p "$LOG_DIR" "$CACHE_DIR/kafka" "$M2"

# Resolve into a temporary folder and swap it in at the end, so an interrupted fetch
# never leaves a half-filled libs folder that looks complete.
tmp="$CACHE_DIR/kafka/libs.tmp.$$"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT

say "fetching Kafka $KAFKA_VERSION + Log4j $LOG4J_VERSION from Maven Central (log: $LOG) ..."
t0=$(now)
rc=0
timeout --kill-after=10 "$FETCH_TIMEOUT" \
  mvn -B -q -Dstyle.color=never \
    -f "$POM" \
    -Dmaven.repo.local="$M2" \
    -Dkafka.version="$KAFKA_VERSION" \
    -Dlog4j.version="$LOG4J_VERSION" \
    -Dslf4j.version="$SLF4J_VERSION" \
    -DoutputDirectory="$tmp" \
    dependency:copy-dependencies >"$LOG" 2>&1 </dev/null || rc=$?
if (( rc == 124 || rc == 137 )); then
  show_log_tail "$LOG"
  die "Maven did not finish within ${FETCH_TIMEOUT}s (network to Maven Central?). Log: $LOG"
elif (( rc != 0 )); then
  show_log_tail "$LOG"
  die "Maven failed (exit $rc) fetching kafka_2.13:$KAFKA_VERSION. Log: $LOG"
fi

# Sanity check: the jars kafka.sh and kafka-cli.sh rely on must be there.
for jar in "kafka_2.13-$KAFKA_VERSION.jar" "kafka-clients-$KAFKA_VERSION.jar" \
           "kafka-tools-$KAFKA_VERSION.jar" \
           "log4j-core-$LOG4J_VERSION.jar" "log4j-slf4j2-impl-$LOG4J_VERSION.jar" \
           "slf4j-api-$SLF4J_VERSION.jar"; do
  [[ -f $tmp/$jar ]] || die "Maven finished but $jar is missing from the result; see $LOG"
done

rm -rf "$LIBS"
mv "$tmp" "$LIBS"
printf '%s' "$WANT" >"$MARKER"
say "fetched $(find "$LIBS" -name '*.jar' | wc -l) jars ($(du -sh "$LIBS" | cut -f1)) into $LIBS in $(since "$t0")s"
