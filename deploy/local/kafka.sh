#!/usr/bin/env bash
# Local Apache Kafka cluster in KRaft mode: 1 or 3 nodes, each a combined
# broker+controller (process.roles=broker,controller), run straight from the jars
# fetched by fetch-kafka.sh. No Docker, no ZooKeeper.
#
# Usage: deploy/local/kafka.sh up | down | status | bootstrap | kill-broker N | stop-broker N | start-broker N
#   up            start the cluster and wait until it is ready; no-op if already running.
#                 A real start always begins from FRESH data (new cluster id, storage
#                 reformatted) so every test run sees an empty cluster; set
#                 TONGBAN_KEEP_DATA=1 to reuse the previous run's data instead.
#                 If some nodes of a running cluster are dead (kill-broker), `up` restarts
#                 just those, keeping their data.
#   down          SIGTERM all nodes, SIGKILL after KAFKA_STOP_TIMEOUT s. Data stays in .run/
#                 for post-mortems (the next `up` wipes it). Fine when nothing runs.
#   status        per-node state + whether the cluster answers metadata.
#                 Exit 0 = all nodes up, 1 = some down, 3 = stopped.
#   bootstrap     print the bootstrap list (host:port,...) of the current cluster.
#   kill-broker N kill -9 node N (fault tests); stop-broker N stops it cleanly (SIGTERM,
#                 controlled shutdown); start-broker N brings it back with its data.
#
# Env:   KAFKA_BROKERS=1|3        cluster size for `up` (default 1)
#        TONGBAN_KAFKA_PORT_BASE  (default 9092). Node n listens for clients on
#                                 BASE+2(n-1) and for the controller quorum on BASE+2(n-1)+1:
#                                   1 node : clients 9092        controller 9093
#                                   3 nodes: clients 9092,9094,9096  controllers 9093,9095,9097
#                                 Read at a real start only; later commands use the recorded value.
#        KAFKA_HEAP               JVM heap per node (default 512m for 1 node, 384m for 3)
#        KAFKA_JVM_OPTS           JVM options (default -XX:TieredStopAtLevel=1; set to ""
#                                 for the full JIT, or e.g. "-XX:+UseSerialGC ..." to choose a GC)
#        KAFKA_START_TIMEOUT      seconds to wait for readiness (default 90)
#        KAFKA_STOP_TIMEOUT       seconds between SIGTERM and SIGKILL (default 30)
#        JAVA_HOME                JDK to use (default: java on PATH; needs 17+)
# Layout: .run/kafka/{brokers,port-base,cluster-id,version,log4j2.xml}  cluster facts
#         .run/kafka-N/{server.properties,kafka.pid,data/}   one folder per node
#         .run/logs/kafka-N.log                              node's console output
# Node lists ("1 2 3") are plain words, split on purpose when passed unquoted.
# shellcheck source-path=SCRIPTDIR disable=SC2034,SC2086,SC2046  # SCRIPT_NAME is read by lib.sh
set -euo pipefail
SCRIPT_NAME=kafka
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KAFKA_DIR="$RUN_DIR/kafka"
LIBS="$CACHE_DIR/kafka/libs"
# Ports are fixed when a cluster starts (recorded in .run/kafka/port-base), so status,
# bootstrap, start-broker, ... find the cluster without the env var being set again.
PORT_BASE_WANTED=${TONGBAN_KAFKA_PORT_BASE:-9092}
PORT_BASE=$PORT_BASE_WANTED
[[ -f $KAFKA_DIR/port-base ]] && PORT_BASE=$(<"$KAFKA_DIR/port-base")
START_TIMEOUT=${KAFKA_START_TIMEOUT:-90}
STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-30}
# C1-only JIT: on 2 cores the C2 compiler competes with startup; it cuts start time by
# ~1 s (1 node) to ~3 s (3 nodes) and local test traffic never needs peak throughput.
JVM_OPTS=${KAFKA_JVM_OPTS--XX:TieredStopAtLevel=1}
PORT_HINT="move the whole cluster with TONGBAN_KAFKA_PORT_BASE (e.g. 19092: then clients 19092/19094/19096, controllers +1)"

client_port()     { echo $(( PORT_BASE + 2 * ($1 - 1) )); }
controller_port() { echo $(( PORT_BASE + 2 * ($1 - 1) + 1 )); }
node_dir()        { echo "$RUN_DIR/kafka-$1"; }
pid_file()        { echo "$RUN_DIR/kafka-$1/kafka.pid"; }
log_file()        { echo "$LOG_DIR/kafka-$1.log"; }

# Size of the cluster that was last started (0 if none).
cluster_size() { if [[ -f $KAFKA_DIR/brokers ]]; then cat "$KAFKA_DIR/brokers"; else echo 0; fi; }

bootstrap_for() {  # bootstrap_for NODE...
  local n out=()
  for n in "$@"; do out+=("127.0.0.1:$(client_port "$n")"); done
  local IFS=,; echo "${out[*]}"
}

# pid of node N if it is our broker and alive; fails otherwise.
node_pid() {
  local f pid
  f=$(pid_file "$1")
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  # The properties path is unique to this node, so a recycled pid cannot match.
  pid_matches "$pid" "$(node_dir "$1")/server.properties" || return 1
  echo "$pid"
}

alive_nodes() {  # nodes 1..9 with a live pid (covers a cluster of any size we made)
  local n out=()
  for n in 1 2 3 4 5 6 7 8 9; do node_pid "$n" >/dev/null && out+=("$n"); done
  echo "${out[*]:-}"
}

find_java() {
  if [[ -n ${JAVA_HOME:-} ]]; then
    JAVA="$JAVA_HOME/bin/java"
    [[ -x $JAVA ]] || die "JAVA_HOME=$JAVA_HOME but $JAVA is not an executable"
  else
    JAVA=$(command -v java || true)
    [[ -n $JAVA ]] || die "java not found on PATH; Kafka 4.x needs JDK 17+ (set JAVA_HOME or install openjdk-17-jre-headless)"
  fi
  local major
  major=$("$JAVA" -XshowSettings:properties -version 2>&1 | awk -F' = ' '/java.specification.version/ { print $2 }')
  [[ $major =~ ^[0-9]+$ ]] || die "could not determine the version of $JAVA"
  (( major >= 17 )) || die "$JAVA is Java $major; Kafka 4.x brokers need Java 17 or newer (set JAVA_HOME)"
}

ensure_libs() {
  "$LOCAL_DIR/fetch-kafka.sh"
  ls "$LIBS"/kafka_2.13-*.jar >/dev/null 2>&1 || die "no Kafka jars in $LIBS; run deploy/local/fetch-kafka.sh"
}

# A Kafka cluster id is 16 random bytes, URL-safe base64 without padding
# (what `kafka-storage random-uuid` prints), never starting with '-'.
new_cluster_id() {
  local id
  while :; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    [[ $id != -* ]] && break
  done
  echo "$id"
}

write_log4j_config() {
  # Console only: the JVM's stdout/stderr go to .run/logs/kafka-N.log, so one file holds
  # both Kafka's log and anything the JVM itself prints (crashes, wrong Java version).
  log4j2_console_config "Written by deploy/local/kafka.sh. INFO, minus the noisiest loggers." \
    >"$KAFKA_DIR/log4j2.xml" <<'XML'
<!-- Dumps every config value (hundreds of lines) each time a component starts. -->
<Logger name="org.apache.kafka.common.config.AbstractConfig" level="WARN"/>
<Logger name="org.apache.kafka.clients.admin.AdminClientConfig" level="WARN"/>
<Logger name="state.change.logger" level="WARN"/>
<Logger name="kafka.request.logger" level="WARN"/>
<Logger name="org.apache.kafka.image.loader.MetadataLoader" level="WARN"/>
XML
}

write_server_properties() {  # write_server_properties NODE SIZE
  local n=$1 size=$2 dir voters="" i
  dir=$(node_dir "$n")
  for (( i = 1; i <= size; i++ )); do
    voters+="${voters:+,}$i@127.0.0.1:$(controller_port "$i")"
  done
  mkdir -p "$dir/data"
  {
    cat <<EOF
# Written by deploy/local/kafka.sh for a $size-node local cluster; edit the script, not this file.
process.roles=broker,controller
node.id=$n
# Static quorum: every node is a voter; same list on all nodes.
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$(client_port "$n"),CONTROLLER://127.0.0.1:$(controller_port "$n")
advertised.listeners=PLAINTEXT://127.0.0.1:$(client_port "$n")
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data

# Topics are created explicitly (by the services / tests), never by a typo'd producer.
auto.create.topics.enable=false
# Consumers in tests join immediately instead of after the default 3 s.
group.initial.rebalance.delay.ms=0
# Smaller than the default 50: quicker first group join and failover on a 2-core box.
offsets.topic.num.partitions=10
# Fewer threads than the defaults (3 network, 8 io); plenty for local traffic.
num.network.threads=2
num.io.threads=4
EOF
    if (( size == 1 )); then
      cat <<'EOF'

# Single node: internal topics cannot have more than one replica.
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
EOF
    else
      cat <<'EOF'

# Three nodes: the durability settings the fault tests rely on.
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
unclean.leader.election.enable=false
# Notice a killed node sooner than the defaults (9 s session, 30 s replica lag), so
# partitions move and ISRs shrink within a few seconds in the fault tests.
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=6000
replica.lag.time.max.ms=10000
EOF
    fi
  } >"$dir/server.properties"
}

format_node() {  # format_node NODE CLUSTER_ID  (output goes to the node's log)
  local n=$1 cid=$2 log
  log=$(log_file "$n")
  if ! timeout 60 "$JAVA" -Xmx256m $JVM_OPTS -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.xml" \
       -cp "$LIBS/*" kafka.tools.StorageTool format -t "$cid" \
       -c "$(node_dir "$n")/server.properties" >>"$log" 2>&1 </dev/null 9>&-; then
    show_log_tail "$log"
    die "formatting storage for node $n failed. Log: $log"
  fi
}

start_node() {  # start_node NODE SIZE
  local n=$1 size=$2 heap log pid
  if (( size == 1 )); then heap=${KAFKA_HEAP:-512m}; else heap=${KAFKA_HEAP:-384m}; fi
  log=$(log_file "$n")
  printf '===== %s starting node %s (%s-node cluster) =====\n' "$(date -Is)" "$n" "$size" >>"$log"
  # setsid: own session, so Ctrl-C in the terminal that ran `make up` does not reach it.
  # </dev/null, >>log and close_extra_fds: never hold the caller's pipes (or our lock) open.
  # The subshell execs into setsid, which execs java: $! is the broker's pid.
  (
    close_extra_fds
    exec setsid "$JAVA" -Xms"$heap" -Xmx"$heap" -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.xml" \
      $JVM_OPTS \
      -cp "$LIBS/*" kafka.Kafka "$(node_dir "$n")/server.properties"
  ) </dev/null >>"$log" 2>&1 &
  pid=$!
  echo "$pid" >"$(pid_file "$n")"
  say "node $n started (pid $pid): clients 127.0.0.1:$(client_port "$n"), controller 127.0.0.1:$(controller_port "$n"), heap $heap, log $log"
}

all_ports_open() {  # all_ports_open NODE...
  local n
  for n in "$@"; do
    (exec 3<>"/dev/tcp/127.0.0.1/$(client_port "$n")") 2>/dev/null || return 1
  done
}

# Wait until every node in $2.. is alive and the cluster (asked through each live node)
# lists all of them with an active controller. On failure prints why (with log tails)
# and returns 1; the caller decides what to clean up.
wait_ready() {  # wait_ready SIZE NODE...
  local size=$1; shift
  local nodes=("$@") deadline n last_err="" t0 live
  t0=$(now)
  deadline=$(deadline_after "$START_TIMEOUT")
  local err_file="$KAFKA_DIR/probe.err"
  while :; do
    for n in "${nodes[@]}"; do
      if ! node_pid "$n" >/dev/null; then
        show_log_tail "$(log_file "$n")" 60
        warn "Kafka node $n exited during startup. Log: $(log_file "$n")"
        return 1
      fi
    done
    live=$(alive_nodes)
    # Cheap TCP check first: a Python probe costs ~0.3 s of CPU the starting JVMs need.
    if ! all_ports_open $live; then
      echo "client port of some node ($live) not accepting connections yet" >"$err_file"
    elif probe --timeout 3 kafka --bootstrap "$(bootstrap_for $live)" \
           --expect-ids "$(tr ' ' ',' <<<"$live")" >"$KAFKA_DIR/probe.out" 2>"$err_file"; then
      say "ready after $(since "$t0")s: $(<"$KAFKA_DIR/probe.out")"
      return 0
    fi
    last_err=$(tail -n1 "$err_file" 2>/dev/null || true)
    if past_deadline "$deadline"; then
      for n in "${nodes[@]}"; do show_log_tail "$(log_file "$n")" 30; done
      warn "Kafka not ready after ${START_TIMEOUT}s (last probe: ${last_err:-none}). Logs: $(for n in "${nodes[@]}"; do printf '%s ' "$(log_file "$n")"; done)"
      return 1
    fi
    sleep 0.5
  done
}

check_ports_free() {  # check_ports_free NODE...
  local n
  for n in "$@"; do
    require_port_free "$(client_port "$n")" "Kafka node $n client listener" "$PORT_HINT"
    require_port_free "$(controller_port "$n")" "Kafka node $n controller listener" "$PORT_HINT"
  done
}

# A start that did not become ready: stop the nodes it started (so ports are free and the
# next `up` starts clean), keep their logs, fail.
failed_start() {  # failed_start NODE...
  STOP_TIMEOUT=10 stop_nodes "$@"
  die "Kafka did not start (node(s) $* stopped again; logs kept in $LOG_DIR)"
}

cmd_up() {
  local size=${KAFKA_BROKERS:-1} live n missing=()
  [[ $size == 1 || $size == 3 ]] || die "KAFKA_BROKERS must be 1 or 3 (got '$size')"
  take_lock
  live=$(alive_nodes)

  if [[ -n $live ]]; then
    local running; running=$(cluster_size)
    if [[ $running != "$size" ]]; then
      die "a $running-node Kafka cluster is already running (nodes: $live); run 'deploy/local/kafka.sh down' first, or use KAFKA_BROKERS=$running"
    fi
    for (( n = 1; n <= size; n++ )); do node_pid "$n" >/dev/null || missing+=("$n"); done
    if (( ${#missing[@]} == 0 )); then
      say "already running ($size node(s), bootstrap $(bootstrap_for $live)); checking it answers ..."
      wait_ready "$size" $live || die "the running cluster does not answer; try 'deploy/local/kafka.sh down' and up again"
      return 0
    fi
    # A partially running cluster (after kill-broker): bring back only the dead nodes.
    find_java; require_venv_python aiokafka
    check_ports_free "${missing[@]}"
    for n in "${missing[@]}"; do start_node "$n" "$size"; done
    wait_ready "$size" $(seq 1 "$size") || failed_start "${missing[@]}"
    return 0
  fi

  # Nothing of ours runs: a real start, on the ports asked for now.
  local t0; t0=$(now)
  PORT_BASE=$PORT_BASE_WANTED
  ensure_libs
  find_java
  require_venv_python aiokafka
  local nodes; nodes=$(seq 1 "$size")
  check_ports_free $nodes

  mkdir -p "$KAFKA_DIR" "$LOG_DIR"
  echo "$PORT_BASE" >"$KAFKA_DIR/port-base"
  local reuse=0
  if [[ ${TONGBAN_KEEP_DATA:-0} == 1 && $(cluster_size) == "$size" ]]; then
    reuse=1
    for n in $nodes; do [[ -f $(node_dir "$n")/data/meta.properties ]] || reuse=0; done
  fi

  if (( reuse )); then
    say "TONGBAN_KEEP_DATA=1: reusing the data of cluster $(<"$KAFKA_DIR/cluster-id")"
    write_log4j_config
    for n in $nodes; do write_server_properties "$n" "$size"; done
  else
    # Fresh data: reproducible tests. Old node folders (of any cluster size) go.
    rm -rf "$RUN_DIR"/kafka-[0-9]*
    for n in $nodes; do : >"$(log_file "$n")"; done
    write_log4j_config
    local cid; cid=$(new_cluster_id)
    echo "$cid" >"$KAFKA_DIR/cluster-id"
    echo "$size" >"$KAFKA_DIR/brokers"
    cat "$LIBS/.fetched" >"$KAFKA_DIR/version" 2>/dev/null || true
    for n in $nodes; do write_server_properties "$n" "$size"; done
    # Formatting is a JVM start per node (~1.5 s); do them in parallel.
    local pids=() rc=0
    for n in $nodes; do format_node "$n" "$cid" & pids+=($!); done
    for n in "${pids[@]}"; do wait "$n" || rc=1; done
    (( rc == 0 )) || die "storage formatting failed (see the messages above)"
    say "formatted fresh storage for $size node(s), cluster id $cid"
  fi

  for n in $nodes; do start_node "$n" "$size"; done
  wait_ready "$size" $nodes || failed_start $nodes
  say "Kafka up in $(since "$t0")s. Bootstrap: $(bootstrap_for $nodes)"
}

stop_nodes() {  # stop_nodes NODE... : SIGTERM, wait, then SIGKILL stragglers
  local n pid pids=() deadline
  for n in "$@"; do
    pid=$(node_pid "$n") || continue
    kill -TERM "$pid" 2>/dev/null || true
    pids+=("$n:$pid")
  done
  (( ${#pids[@]} )) || return 0
  say "stopping node(s) $* (SIGTERM, up to ${STOP_TIMEOUT}s) ..."
  deadline=$(deadline_after "$STOP_TIMEOUT")
  local entry all_gone
  while :; do
    all_gone=1
    for entry in "${pids[@]}"; do pid_alive "${entry#*:}" && all_gone=0; done
    (( all_gone )) && break
    if past_deadline "$deadline"; then
      for entry in "${pids[@]}"; do
        if pid_alive "${entry#*:}"; then
          warn "node ${entry%%:*} (pid ${entry#*:}) ignored SIGTERM for ${STOP_TIMEOUT}s; sending SIGKILL. Log: $(log_file "${entry%%:*}")"
          kill -KILL "${entry#*:}" 2>/dev/null || true
        fi
      done
      sleep 1
      break
    fi
    sleep 0.5
  done
  for entry in "${pids[@]}"; do rm -f "$(pid_file "${entry%%:*}")"; done
}

cmd_down() {
  take_lock
  local live; live=$(alive_nodes)
  if [[ -z $live ]]; then
    rm -f "$RUN_DIR"/kafka-[0-9]*/kafka.pid
    say "not running"
    return 0
  fi
  stop_nodes $live
  rm -f "$RUN_DIR"/kafka-[0-9]*/kafka.pid
  say "stopped (data kept in $RUN_DIR/kafka-*/data until the next up)"
}

cmd_status() {
  local size live n pid state rc
  size=$(cluster_size)
  live=$(alive_nodes)
  if [[ -z $live ]]; then
    echo "kafka: stopped"
    return 3
  fi
  echo "kafka: $size-node cluster $(cat "$KAFKA_DIR/cluster-id" 2>/dev/null), $(cat "$KAFKA_DIR/version" 2>/dev/null)"
  rc=0
  for (( n = 1; n <= size; n++ )); do
    if pid=$(node_pid "$n"); then state="up (pid $pid)"; else state="DOWN"; rc=1; fi
    printf '  node %s: %-16s clients 127.0.0.1:%s  controller 127.0.0.1:%s  log %s\n' \
      "$n" "$state" "$(client_port "$n")" "$(controller_port "$n")" "$(log_file "$n")"
  done
  if [[ -x $VENV_PY ]]; then
    local out
    if out=$(probe --timeout 3 kafka --bootstrap "$(bootstrap_for $live)" \
               --expect-ids "$(tr ' ' ',' <<<"$live")" 2>&1); then
      echo "  metadata: $out"
    else
      echo "  metadata: NOT answering ($out)"
      rc=1
    fi
  fi
  echo "  bootstrap: $(bootstrap_for $(seq 1 "$size"))"
  return "$rc"
}

cmd_bootstrap() {
  local size; size=$(cluster_size)
  (( size > 0 )) || die "no Kafka cluster has been started (run 'deploy/local/kafka.sh up')"
  bootstrap_for $(seq 1 "$size")
}

cmd_kill_broker() {
  local n=${1:-} pid
  [[ $n =~ ^[0-9]+$ ]] || die "usage: kafka.sh kill-broker N"
  take_lock
  pid=$(node_pid "$n") || die "node $n is not running"
  kill -KILL "$pid"
  local deadline; deadline=$(deadline_after 10)
  while pid_alive "$pid"; do
    past_deadline "$deadline" && die "node $n (pid $pid) still alive 10s after SIGKILL"
    sleep 0.2
  done
  rm -f "$(pid_file "$n")"
  printf '===== %s node %s killed with SIGKILL by kafka.sh kill-broker =====\n' "$(date -Is)" "$n" >>"$(log_file "$n")"
  say "node $n (pid $pid) killed with SIGKILL"
}

cmd_stop_broker() {
  local n=${1:-} pid
  [[ $n =~ ^[0-9]+$ ]] || die "usage: kafka.sh stop-broker N"
  take_lock
  pid=$(node_pid "$n") || die "node $n is not running"
  # SIGTERM is Kafka's controlled shutdown: leadership moves away before the node exits.
  kill -TERM "$pid"
  local deadline; deadline=$(deadline_after 60)
  while pid_alive "$pid"; do
    if past_deadline "$deadline"; then
      warn "node $n (pid $pid) did not stop within 60s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    sleep 0.2
  done
  rm -f "$(pid_file "$n")"
  printf '===== %s node %s stopped cleanly by kafka.sh stop-broker =====\n' "$(date -Is)" "$n" >>"$(log_file "$n")"
  say "node $n (pid $pid) stopped (controlled shutdown)"
}

cmd_start_broker() {
  local n=${1:-} size
  [[ $n =~ ^[0-9]+$ ]] || die "usage: kafka.sh start-broker N"
  take_lock
  size=$(cluster_size)
  (( n >= 1 && n <= size )) || die "node $n is not part of the current ${size}-node cluster"
  [[ -f $(node_dir "$n")/server.properties ]] || die "node $n has no configuration; run 'kafka.sh up' instead"
  if node_pid "$n" >/dev/null; then say "node $n is already running"; return 0; fi
  find_java
  require_venv_python aiokafka
  check_ports_free "$n"
  start_node "$n" "$size"
  # Wait for this node plus whoever else is alive (others may be down on purpose).
  wait_ready "$size" $(alive_nodes) || failed_start "$n"
}

case "${1:-}" in
  up)           cmd_up ;;
  down)         cmd_down ;;
  status)       cmd_status ;;
  bootstrap)    cmd_bootstrap ;;
  kill-broker)  cmd_kill_broker "${2:-}" ;;
  stop-broker)  cmd_stop_broker "${2:-}" ;;
  start-broker) cmd_start_broker "${2:-}" ;;
  *) echo "usage: $0 up|down|status|bootstrap|kill-broker N|stop-broker N|start-broker N   (env KAFKA_BROKERS=1|3)" >&2; exit 2 ;;
esac
