#!/usr/bin/env bash
# Apache Kafka's own command-line tools (kafka-topics, kafka-consumer-groups, ...), run from
# the jars fetch-kafka.sh put in .cache/kafka/libs (kafka-tools, the same version as the
# broker), pointed at the running local stack unless told otherwise.
#
# Usage: deploy/local/kafka-cli.sh TOOL [ARGS...]      (--help: this text and the tools)
#        deploy/local/kafka-cli.sh kafka-topics --list
#        deploy/local/kafka-cli.sh kafka-topics --describe --topic case.routing.v1
#        deploy/local/kafka-cli.sh kafka-consumer-groups --list
#        deploy/local/kafka-cli.sh kafka-consumer-groups --describe --all-groups
#        deploy/local/kafka-cli.sh kafka-consumer-groups --describe --group routing-events
#        deploy/local/kafka-cli.sh kafka-get-offsets --topic case.dlq.v1
#        deploy/local/kafka-cli.sh kafka-topics --help           (the tool's own options)
# TOOL is a script name of the Kafka distribution's bin/, with or without ".sh".
# --bootstrap-server is added unless given: TONGBAN_KAFKA_BOOTSTRAP if set (source
# .run/env), else the cluster that deploy/local/kafka.sh started (its recorded ports).
# Env:   TONGBAN_KAFKA_BOOTSTRAP, TONGBAN_CACHE_DIR, TONGBAN_RUN_DIR, JAVA_HOME
#        KAFKA_CLI_HEAP  JVM heap of the tool (default 256m)
# Exit code: the tool's own; 2 when the tool is unknown or the jars are missing.
# shellcheck source-path=SCRIPTDIR disable=SC2034  # SCRIPT_NAME is read by lib.sh
set -euo pipefail
SCRIPT_NAME=kafka-cli
SCRIPT_OWN_HELP=1  # its --help says more than its header (lib.sh leaves it alone)
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

LIBS="$CACHE_DIR/kafka/libs"

# Tool name -> main class, as in the bin/ scripts of the Kafka release (all in kafka-tools).
declare -A MAIN=(
  [kafka-topics]=org.apache.kafka.tools.TopicCommand
  [kafka-consumer-groups]=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand
  [kafka-configs]=org.apache.kafka.tools.ConfigCommand
  [kafka-get-offsets]=org.apache.kafka.tools.GetOffsetShell
  [kafka-console-consumer]=org.apache.kafka.tools.consumer.ConsoleConsumer
  [kafka-console-producer]=org.apache.kafka.tools.ConsoleProducer
  [kafka-log-dirs]=org.apache.kafka.tools.LogDirsCommand
  [kafka-acls]=org.apache.kafka.tools.AclCommand
  [kafka-delete-records]=org.apache.kafka.tools.DeleteRecordsCommand
  [kafka-reassign-partitions]=org.apache.kafka.tools.reassign.ReassignPartitionsCommand
  [kafka-leader-election]=org.apache.kafka.tools.LeaderElectionCommand
  [kafka-transactions]=org.apache.kafka.tools.TransactionsCommand
  [kafka-features]=org.apache.kafka.tools.FeatureCommand
  [kafka-metadata-quorum]=org.apache.kafka.tools.MetadataQuorumCommand
  [kafka-broker-api-versions]=org.apache.kafka.tools.BrokerApiVersionsCommand
)

usage() {
  sed -n '2,/^# shellcheck/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
  echo "Tools:"
  local tool
  for tool in $(printf '%s\n' "${!MAIN[@]}" | sort); do
    printf '  %-27s %s\n' "$tool" "${MAIN[$tool]}"
  done
}

if (( $# == 0 )) || [[ $1 == -h || $1 == --help || $1 == help ]]; then
  usage
  exit 0
fi
tool=${1%.sh}
shift
if [[ -z ${MAIN[$tool]:-} ]]; then
  printf '[%s] ERROR: unknown tool %s; deploy/local/kafka-cli.sh --help lists them\n' \
    "$SCRIPT_NAME" "$tool" >&2
  exit 2
fi
if ! ls "$LIBS"/kafka-tools-*.jar >/dev/null 2>&1; then
  printf '[%s] ERROR: no kafka-tools jar in %s; run deploy/local/fetch-kafka.sh (make install)\n' \
    "$SCRIPT_NAME" "$LIBS" >&2
  exit 2
fi

JAVA=java
[[ -n ${JAVA_HOME:-} ]] && JAVA="$JAVA_HOME/bin/java"

args=("$@")
given=0
for arg in "$@"; do
  case $arg in
    --bootstrap-server | --bootstrap-server=* | --bootstrap-controller | --bootstrap-controller=* | \
      --help | -h | --version) given=1 ;;
  esac
done
if (( ! given )); then
  bootstrap=${TONGBAN_KAFKA_BOOTSTRAP:-}
  if [[ -z $bootstrap ]]; then
    bootstrap=$("$LOCAL_DIR/kafka.sh" bootstrap 2>/dev/null) \
      || die "no bootstrap: start the stack (make up), source .run/env, or pass --bootstrap-server"
  fi
  # First: the tools with sub-commands (kafka-features, kafka-transactions, ...) take it there.
  args=(--bootstrap-server "$bootstrap" "$@")
fi

# The tools log WARN and above to stderr, so their stdout is only their answer.
exec "$JAVA" -Xmx"${KAFKA_CLI_HEAP:-256m}" -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
  -Djava.awt.headless=true \
  -Dlog4j2.configurationFile="$LOCAL_DIR/kafka/tools-log4j2.xml" \
  -cp "$LIBS/*" "${MAIN[$tool]}" "${args[@]}"
