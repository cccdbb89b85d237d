#!/usr/bin/env bash
# Kafka MirrorMaker 2 between two tongban regions' Kafka clusters, both directions, in
# dedicated mode (org.apache.kafka.connect.mirror.MirrorMaker with an mm2.properties, run from
# the jars fetch-kafka.sh put in .cache/kafka/mirror-libs): each region's MIRROR_TOPICS arrive
# on the other as `<source alias>.<topic>` (the default replication policy, DESIGN.md §9).
# At least once: a record may arrive twice after a restart; consumers are idempotent by
# event id. Records keep their key, value and headers (the CloudEvents attributes).
#
# Usage: deploy/local/mirror.sh up | down | status | --help
#   up      write mm2.properties and start MirrorMaker in the background; wait until it has
#           started its connectors. No-op while it runs.
#   down    SIGTERM (a clean stop commits its offsets), SIGKILL after MIRROR_STOP_TIMEOUT s.
#   status  whether it runs, and the replication lag per direction and topic: records at the
#           source's end not yet at the end of its mirror (end offsets compared; a compacted
#           topic's mirror is compacted on its own, which the end offsets do not notice).
#           Exit 0 = running, 3 = stopped.
#
# Env:   MIRROR_ALIAS_1, MIRROR_ALIAS_2       cluster aliases, the prefixes of mirrored topics
#                                             (default region1, region2: deployment names only;
#                                             a region is known by its catalog's city code)
#        MIRROR_BOOTSTRAP_1, MIRROR_BOOTSTRAP_2  the two clusters (default
#                                             127.0.0.1:9092 and 127.0.0.1:19092)
#        MIRROR_TOPICS    topics mirrored each way, space or comma separated
#                         (default "catalog.v1 xregion.out.v1")
#        MIRROR_REPLICATION_1, MIRROR_REPLICATION_2  replication factor of the topics
#                         MirrorMaker creates on each cluster (default 1; 3 on a
#                         three-broker cluster, KAFKA_BROKERS=3)
#        MIRROR_HEAP      JVM heap (default 256m), MIRROR_JVM_OPTS (default -XX:TieredStopAtLevel=1)
#        MIRROR_START_TIMEOUT / MIRROR_STOP_TIMEOUT  seconds (default 90 / 30)
#        TONGBAN_RUN_DIR, TONGBAN_CACHE_DIR, JAVA_HOME
#        Read at `up` only; status and down use what up recorded in the run folder.
# Layout: .run/mirror/{mm2.properties,log4j2.xml,mirror.pid,clusters}, log .run/logs/mirror.log
# Logs: INFO without the config dumps; no record contents (errors.log.include.messages=false,
#       and nothing logs per record at INFO), like the broker's log.
# shellcheck source-path=SCRIPTDIR disable=SC2034  # SCRIPT_NAME is read by lib.sh
set -euo pipefail
SCRIPT_NAME=mirror
SCRIPT_OWN_HELP=1  # its --help says more than its header (lib.sh leaves it alone)
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MIRROR_DIR="$RUN_DIR/mirror"
LIBS="$CACHE_DIR/kafka/mirror-libs"
PID_FILE="$MIRROR_DIR/mirror.pid"
PROPS="$MIRROR_DIR/mm2.properties"
CLUSTERS_FILE="$MIRROR_DIR/clusters"
LOG="$LOG_DIR/mirror.log"
START_TIMEOUT=${MIRROR_START_TIMEOUT:-90}
STOP_TIMEOUT=${MIRROR_STOP_TIMEOUT:-30}
JVM_OPTS=${MIRROR_JVM_OPTS--XX:TieredStopAtLevel=1}
REPORT="$LOCAL_DIR/mirror_report.py"

usage() { sed -n '2,/^# shellcheck/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

mirror_pid() {
  [[ -f $PID_FILE ]] || return 1
  local pid; pid=$(<"$PID_FILE")
  # The properties path is unique to this run folder, so a recycled pid cannot match.
  pid_matches "$pid" "$PROPS" || return 1
  echo "$pid"
}

# The recorded clusters: one "alias bootstrap" line each, then "topics t1,t2".
read_clusters() {
  [[ -f $CLUSTERS_FILE ]] || die "MirrorMaker has not been started from $RUN_DIR (no $CLUSTERS_FILE)"
  { read -r ALIAS_1 BOOTSTRAP_1; read -r ALIAS_2 BOOTSTRAP_2; read -r _ TOPICS; } <"$CLUSTERS_FILE"
}

write_log4j_config() {
  log4j2_console_config \
    "Written by deploy/local/mirror.sh. INFO, minus config dumps; nothing here logs records." \
    >"$MIRROR_DIR/log4j2.xml" <<'XML'
<!-- Every client and worker dumps its whole configuration (hundreds of lines) at start. -->
<Logger name="org.apache.kafka.common.config.AbstractConfig" level="WARN"/>
<Logger name="org.apache.kafka.clients.admin.AdminClientConfig" level="WARN"/>
<Logger name="org.apache.kafka.clients.producer.ProducerConfig" level="WARN"/>
<Logger name="org.apache.kafka.clients.consumer.ConsumerConfig" level="WARN"/>
<Logger name="org.apache.kafka.connect.runtime.WorkerConfig" level="WARN"/>
<Logger name="org.apache.kafka.connect.runtime.ConnectorConfig" level="WARN"/>
<Logger name="org.apache.kafka.connect.runtime.SourceConnectorConfig" level="WARN"/>
<Logger name="org.apache.kafka.connect.runtime.TaskConfig" level="WARN"/>
<Logger name="org.apache.kafka.connect.mirror.MirrorMakerConfig" level="WARN"/>
<Logger name="org.apache.kafka.connect.mirror.MirrorConnectorConfig" level="WARN"/>
<Logger name="org.apache.kafka.connect.mirror.MirrorSourceConfig" level="WARN"/>
<Logger name="org.apache.kafka.connect.mirror.MirrorCheckpointConfig" level="WARN"/>
<Logger name="org.apache.kafka.connect.mirror.MirrorHeartbeatConfig" level="WARN"/>
<Logger name="org.apache.kafka.connect.mirror.MirrorSourceTaskConfig" level="WARN"/>
<Logger name="org.apache.kafka.connect.mirror.MirrorCheckpointTaskConfig" level="WARN"/>
<Logger name="org.apache.kafka.connect.runtime.distributed.DistributedConfig" level="WARN"/>
<!-- Every few seconds per direction: topics refreshed, configs synced, offsets committed. -->
<Logger name="org.apache.kafka.connect.mirror.Scheduler" level="WARN"/>
<Logger name="org.apache.kafka.connect.runtime.WorkerSourceTask" level="WARN"/>
<!-- One line per plugin found, and a banner per consumer: noise, not news. -->
<Logger name="org.apache.kafka.connect.runtime.isolation" level="WARN"/>
<Logger name="org.apache.kafka.clients.consumer.internals.ClassicKafkaConsumer" level="WARN"/>
XML
}

# The topics as a MirrorMaker `topics` list of regular expressions: dots matched literally.
topics_regex() {
  local out=() t
  for t in ${1//,/ }; do out+=("${t//./\\\\.}"); done
  local IFS=,; echo "${out[*]}"
}

write_properties() {
  local a1=$1 b1=$2 a2=$3 b2=$4 topics=$5 r1=$6 r2=$7
  cat >"$PROPS" <<EOF
# Written by deploy/local/mirror.sh; edit the script, not this file.
# Dedicated MirrorMaker 2 between two tongban regions, both directions.
clusters=$a1, $a2
$a1.bootstrap.servers=$b1
$a2.bootstrap.servers=$b2
$a1->$a2.enabled=true
$a2->$a1.enabled=true

# What crosses the link (DESIGN.md §9). Regular expressions: the dots are escaped.
topics=$(topics_regex "$topics")
# Consumer groups stay each region's own: no committed offsets are written across (the
# checkpoints MirrorMaker still emits are for consumers failing over to the other cluster,
# which tongban's never do; the checkpoint connector refuses to run without them).
sync.group.offsets.enabled=false
# A topic created after the start (a region's first forwarded case) is mirrored within
# seconds, not the default ten minutes.
refresh.topics.interval.seconds=5
# The mirrors take their source's topic configs (catalog.v1's cleanup.policy=compact), and
# the source's partition count.
sync.topic.configs.enabled=true
sync.topic.configs.interval.seconds=10
# Each region grants its own services their own ACLs; none are copied across.
sync.topic.acls.enabled=false
# The link's lag: each flow writes a heartbeat a second into its target's heartbeats topic,
# and heartbeats topics cross whatever topics lists (the defaults, stated because a region's
# console reads the age of the newest <partner alias>.heartbeats: GET /api/links).
emit.heartbeats.enabled=true
emit.heartbeats.interval.seconds=1
heartbeats.replication.enabled=true
tasks.max=1
replication.policy.class=org.apache.kafka.connect.mirror.DefaultReplicationPolicy

# Every topic MirrorMaker creates takes the replication factor of the cluster it is created
# on (MIRROR_REPLICATION_1/2: 1 on a single-broker dev cluster, 3 on a three-broker one whose
# min.insync.replicas=2 would refuse writes to a one-replica topic). Flow a->b creates the
# mirrors, heartbeats and checkpoints on b, its offset-syncs on a (the default location) and
# b's herder keeps Connect's configs, offsets and status on b.
$a1->$a2.replication.factor=$r2
$a1->$a2.heartbeats.topic.replication.factor=$r2
$a1->$a2.checkpoints.topic.replication.factor=$r2
$a1->$a2.offset-syncs.topic.replication.factor=$r1
$a2->$a1.replication.factor=$r1
$a2->$a1.heartbeats.topic.replication.factor=$r1
$a2->$a1.checkpoints.topic.replication.factor=$r1
$a2->$a1.offset-syncs.topic.replication.factor=$r2
$a1.config.storage.replication.factor=$r1
$a1.offset.storage.replication.factor=$r1
$a1.status.storage.replication.factor=$r1
$a2.config.storage.replication.factor=$r2
$a2.offset.storage.replication.factor=$r2
$a2.status.storage.replication.factor=$r2

# Offsets of the mirroring consumers are stored every 5 s (default 60): a restart re-sends
# at most that much (at least once; consumers drop copies by event id).
offset.flush.interval.ms=5000
# A record that fails is never written into the log with its contents (personal data).
errors.log.include.messages=false
EOF
}

wait_started() {  # wait_started PID LOG-BYTE-WHERE-THIS-START-BEGINS
  local pid=$1 from=$2 deadline t0; t0=$(now)
  deadline=$(deadline_after "$START_TIMEOUT")
  # MirrorMaker logs this once every herder (one per direction) has started; the log is
  # appended to, so only this start's part counts.
  until tail -c +"$from" "$LOG" 2>/dev/null | grep -q "Kafka MirrorMaker started"; do
    if ! pid_alive "$pid"; then
      show_log_tail "$LOG" 60
      die "MirrorMaker exited during start-up. Log: $LOG"
    fi
    if past_deadline "$deadline"; then
      show_log_tail "$LOG" 40
      kill -TERM "$pid" 2>/dev/null || true
      die "MirrorMaker did not start within ${START_TIMEOUT}s (stopped again). Log: $LOG"
    fi
    sleep 0.5
  done
  say "started in $(since "$t0")s"
}

cmd_up() {
  local pid
  take_lock
  if pid=$(mirror_pid); then
    say "already running (pid $pid, $(head -c 200 "$CLUSTERS_FILE" | tr '\n' ' '))"
    return 0
  fi
  local a1=${MIRROR_ALIAS_1:-region1} a2=${MIRROR_ALIAS_2:-region2}
  local b1=${MIRROR_BOOTSTRAP_1:-127.0.0.1:9092} b2=${MIRROR_BOOTSTRAP_2:-127.0.0.1:19092}
  local topics=${MIRROR_TOPICS:-catalog.v1 xregion.out.v1}
  local r1=${MIRROR_REPLICATION_1:-1} r2=${MIRROR_REPLICATION_2:-1}
  [[ $r1 =~ ^[1-9]$ && $r2 =~ ^[1-9]$ ]] \
    || die "MIRROR_REPLICATION_1 and MIRROR_REPLICATION_2 must be a replication factor 1-9 (got '$r1', '$r2')"
  topics=$(tr ' ' ',' <<<"$topics" | tr -s ,)
  [[ $a1 =~ ^[A-Za-z0-9_-]+$ && $a2 =~ ^[A-Za-z0-9_-]+$ && $a1 != "$a2" ]] \
    || die "MIRROR_ALIAS_1 and MIRROR_ALIAS_2 must be two different names of letters, digits, _ or - (got '$a1', '$a2')"

  "$LOCAL_DIR/fetch-kafka.sh"
  [[ -f $LIBS/connect-mirror-$(sed -n 's/^connect-mirror=\([^ ]*\).*/\1/p' "$LIBS/.fetched").jar ]] \
    || die "no MirrorMaker jars in $LIBS; run deploy/local/fetch-kafka.sh"
  local java=java
  [[ -n ${JAVA_HOME:-} ]] && java="$JAVA_HOME/bin/java"
  command -v "$java" >/dev/null || die "java not found (JDK 17+; set JAVA_HOME)"
  require_venv_python aiokafka
  # Both clusters must answer before MirrorMaker starts: it would otherwise retry quietly.
  local bootstrap
  for bootstrap in "$b1" "$b2"; do
    probe --timeout 5 kafka --bootstrap "$bootstrap" --expect-ids "" >/dev/null \
      || die "the Kafka cluster at $bootstrap does not answer; start both regions first"
  done

  mkdir -p "$MIRROR_DIR" "$LOG_DIR"
  printf '%s %s\n%s %s\ntopics %s\n' "$a1" "$b1" "$a2" "$b2" "$topics" >"$CLUSTERS_FILE"
  write_log4j_config
  write_properties "$a1" "$b1" "$a2" "$b2" "$topics" "$r1" "$r2"
  local from; from=$(( $(stat -c %s "$LOG" 2>/dev/null || echo 0) + 1 ))
  printf '===== %s starting MirrorMaker 2: %s (%s) <-> %s (%s), topics %s =====\n' \
    "$(date -Is)" "$a1" "$b1" "$a2" "$b2" "$topics" >>"$LOG"
  (
    close_extra_fds
    exec setsid "$java" -Xms"${MIRROR_HEAP:-256m}" -Xmx"${MIRROR_HEAP:-256m}" \
      -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$MIRROR_DIR/log4j2.xml" \
      $JVM_OPTS \
      -cp "$LIBS/*" org.apache.kafka.connect.mirror.MirrorMaker "$PROPS"
  ) </dev/null >>"$LOG" 2>&1 &
  pid=$!
  echo "$pid" >"$PID_FILE"
  say "MirrorMaker 2 started (pid $pid): $a1 ($b1) <-> $a2 ($b2), topics $topics, log $LOG"
  wait_started "$pid" "$from"
}

cmd_down() {
  take_lock
  local pid
  if ! pid=$(mirror_pid); then
    rm -f "$PID_FILE"
    say "not running"
    return 0
  fi
  stop_process "$pid" "$STOP_TIMEOUT" MirrorMaker "$LOG"
  rm -f "$PID_FILE"
  say "stopped"
}

cmd_status() {
  local pid
  if ! pid=$(mirror_pid); then
    echo "mirror: stopped"
    return 3
  fi
  read_clusters
  echo "mirror: MirrorMaker 2 running (pid $pid), log $LOG"
  echo "  $ALIAS_1 $BOOTSTRAP_1 <-> $ALIAS_2 $BOOTSTRAP_2, topics $TOPICS"
  if [[ -x $VENV_PY ]]; then
    timeout --kill-after=2 30 "$VENV_PY" "$REPORT" lag \
      --cluster "$ALIAS_1=$BOOTSTRAP_1" --cluster "$ALIAS_2=$BOOTSTRAP_2" --topics "$TOPICS" \
      || echo "  lag: not known (the clusters did not answer)"
  fi
}

case "${1:-}" in
  up)     cmd_up ;;
  down)   cmd_down ;;
  status) cmd_status ;;
  -h|--help) usage ;;
  *) echo "usage: $0 up|down|status|--help   (env MIRROR_ALIAS_1/2, MIRROR_BOOTSTRAP_1/2, MIRROR_TOPICS)" >&2; exit 2 ;;
esac
