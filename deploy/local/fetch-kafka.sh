#!/usr/bin/env bash
# Fetch the Apache Kafka broker and command-line tools jars (plus a Log4j 2 backend) from
# Maven Central into .cache/kafka/libs/, using the throw-away Maven project in
# deploy/local/kafka/pom.xml; and MirrorMaker 2 (connect-mirror with the Connect runtime it
# needs, deploy/local/kafka/mirror/pom.xml) into .cache/kafka/mirror-libs/, a folder of its
# own so the broker's classpath stays without Connect, Jetty and Jersey.
#
# There is no Kafka tarball download here on purpose: Maven Central is the one artefact
# source we can rely on, and the jars it resolves are exactly the ones in the release.
#
# Usage: deploy/local/fetch-kafka.sh        (no-op when the cache already holds these versions)
#        deploy/local/fetch-kafka.sh --help
# Env:   KAFKA_VERSION   (default 4.4.0; 4.x needs Java 17+)
#        MIRROR_VERSION  connect-mirror's version (default 4.3.1: Maven Central has no
#                        connect-mirror 4.4.0; a 4.x MirrorMaker is a client of any 4.x broker)
#        LOG4J_VERSION   (default 2.26.1)
#        SLF4J_VERSION   (default 2.0.17; must be 2.x for log4j-slf4j2-impl, see pom.xml)
#        FETCH_TIMEOUT   seconds before Maven is killed (default 900)
#        TONGBAN_CACHE_DIR (default <repo>/.cache)
# Output: .cache/kafka/libs/*.jar and .cache/kafka/libs/.fetched (the version marker),
#         .cache/kafka/mirror-libs/*.jar and its .fetched, Maven's own repository in
#         .cache/m2, Maven logs in .run/logs/fetch-kafka.log and fetch-mirror.log.
# shellcheck source-path=SCRIPTDIR disable=SC2034  # SCRIPT_NAME is read by lib.sh
set -euo pipefail
SCRIPT_NAME=fetch-kafka
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KAFKA_VERSION=${KAFKA_VERSION:-4.4.0}
MIRROR_VERSION=${MIRROR_VERSION:-4.3.1}
LOG4J_VERSION=${LOG4J_VERSION:-2.26.1}
SLF4J_VERSION=${SLF4J_VERSION:-2.0.17}
FETCH_TIMEOUT=${FETCH_TIMEOUT:-900}

LIBS="$CACHE_DIR/kafka/libs"
MIRROR_LIBS="$CACHE_DIR/kafka/mirror-libs"
M2="$CACHE_DIR/m2"
# Each marker names what its folder holds; a cache fetched before the tools were added
# ("kafka=4.4.0 log4j=..." without "tools") differs from it, so it is fetched again. The
# MirrorMaker jars have a marker of their own: a cache from before them gets them without
# its broker jars being swapped under a broker that may be running from them.
WANT="kafka=$KAFKA_VERSION tools=$KAFKA_VERSION log4j=$LOG4J_VERSION slf4j=$SLF4J_VERSION"
MIRROR_WANT="connect-mirror=$MIRROR_VERSION log4j=$LOG4J_VERSION slf4j=$SLF4J_VERSION"

fetched() { [[ -f $1/.fetched && $(<"$1/.fetched") == "$2" ]]; }

if fetched "$LIBS" "$WANT" && fetched "$MIRROR_LIBS" "$MIRROR_WANT"; then
  say "Kafka jars already cached ($WANT; $MIRROR_WANT) in $CACHE_DIR/kafka"
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
mkdir -p "$LOG_DIR" "$CACHE_DIR/kafka" "$M2"

# fetch_jars WHAT POM DEST WANT LOG -- MAVEN-PROPERTY... -- REQUIRED-JAR...
# Resolves POM into a temporary folder and swaps it in as DEST at the end, so an
# interrupted fetch never leaves a half-filled folder that looks complete.
fetch_jars() {
  local what=$1 pom=$2 dest=$3 want=$4 log=$5; shift 5
  local props=() jar
  [[ ${1:-} == -- ]] && shift
  while (( $# )) && [[ $1 != -- ]]; do props+=("$1"); shift; done
  [[ ${1:-} == -- ]] && shift
  local tmp="$dest.tmp.$$"
  rm -rf "$tmp"
  # shellcheck disable=SC2064  # expand now: the folder of this call
  trap "rm -rf '$tmp'" EXIT
  say "fetching $what from Maven Central (log: $log) ..."
  local t0 rc=0; t0=$(now)
  timeout --kill-after=10 "$FETCH_TIMEOUT" \
    mvn -B -q -Dstyle.color=never -f "$pom" -Dmaven.repo.local="$M2" "${props[@]}" \
      -DoutputDirectory="$tmp" dependency:copy-dependencies >"$log" 2>&1 </dev/null || rc=$?
  if (( rc == 124 || rc == 137 )); then
    show_log_tail "$log"
    die "Maven did not finish within ${FETCH_TIMEOUT}s (network to Maven Central?). Log: $log"
  elif (( rc != 0 )); then
    show_log_tail "$log"
    die "Maven failed (exit $rc) fetching $what. Log: $log"
  fi
  # Sanity check: the jars the scripts rely on must be there.
  for jar in "$@"; do
    [[ -f $tmp/$jar ]] || die "Maven finished but $jar is missing from the result; see $log"
  done
  rm -rf "$dest"
  mv "$tmp" "$dest"
  printf '%s' "$want" >"$dest/.fetched"
  trap - EXIT
  say "fetched $(find "$dest" -name '*.jar' | wc -l) jars ($(du -sh "$dest" | cut -f1)) into $dest in $(since "$t0")s"
}

LOG4J_JARS=("log4j-core-$LOG4J_VERSION.jar" "log4j-slf4j2-impl-$LOG4J_VERSION.jar" "slf4j-api-$SLF4J_VERSION.jar")

if ! fetched "$LIBS" "$WANT"; then
  # Swapping jars under a running JVM breaks it in odd ways; refuse instead.
  for pidf in "$RUN_DIR"/kafka-*/kafka.pid; do
    [[ -f $pidf ]] && pid_matches "$(<"$pidf")" kafka.Kafka \
      && die "a local Kafka broker is running from $LIBS (pid $(<"$pidf")); run 'deploy/local/kafka.sh down' before fetching another version."
  done
  fetch_jars "Kafka $KAFKA_VERSION + Log4j $LOG4J_VERSION" "$LOCAL_DIR/kafka/pom.xml" "$LIBS" "$WANT" \
    "$LOG_DIR/fetch-kafka.log" \
    -- -Dkafka.version="$KAFKA_VERSION" -Dlog4j.version="$LOG4J_VERSION" -Dslf4j.version="$SLF4J_VERSION" \
    -- "kafka_2.13-$KAFKA_VERSION.jar" "kafka-clients-$KAFKA_VERSION.jar" "kafka-tools-$KAFKA_VERSION.jar" \
       "${LOG4J_JARS[@]}"
fi

if ! fetched "$MIRROR_LIBS" "$MIRROR_WANT"; then
  [[ -f $RUN_DIR/mirror/mirror.pid ]] && pid_matches "$(<"$RUN_DIR/mirror/mirror.pid")" connect.mirror.MirrorMaker \
    && die "MirrorMaker 2 is running from $MIRROR_LIBS (pid $(<"$RUN_DIR/mirror/mirror.pid")); run 'deploy/local/mirror.sh down' first."
  fetch_jars "MirrorMaker 2 (connect-mirror $MIRROR_VERSION)" "$LOCAL_DIR/kafka/mirror/pom.xml" \
    "$MIRROR_LIBS" "$MIRROR_WANT" "$LOG_DIR/fetch-mirror.log" \
    -- -Dmirror.version="$MIRROR_VERSION" -Dlog4j.version="$LOG4J_VERSION" -Dslf4j.version="$SLF4J_VERSION" \
    -- "connect-mirror-$MIRROR_VERSION.jar" "connect-mirror-client-$MIRROR_VERSION.jar" \
       "connect-runtime-$MIRROR_VERSION.jar" "connect-json-$MIRROR_VERSION.jar" \
       "kafka-clients-$MIRROR_VERSION.jar" "${LOG4J_JARS[@]}"
fi
