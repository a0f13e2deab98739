#!/usr/bin/env bash
# Local services for agentcluster's production adapters: PostgreSQL, Redis, Kafka (KRaft, single node)
# and an OPA server. No Docker: Debian packages, Kafka jars from Maven Central, OPA built with Go.
#
#   bash cluster/services/deps.sh up           install what is missing, start what is stopped, wait
#                                             until healthy, write .data/services.env, print endpoints
#   bash cluster/services/deps.sh down         stop what this script started (data is kept)
#   bash cluster/services/deps.sh status       one line per service; exit 1 if any is down
#   bash cluster/services/deps.sh env          print .data/services.env
#   bash cluster/services/deps.sh kafka-stop   stop only the broker (SIGTERM, SIGKILL after 30 s)
#   bash cluster/services/deps.sh kafka-start  start only the broker and wait until it is healthy
#
# All state lives under $ROOT/.data (git-ignored); pid files under .data/run. Everything binds to
# 127.0.0.1. Ports: AC_PG_PORT (55432), AC_REDIS_PORT (56379), AC_KAFKA_PORT (59092),
# AC_KAFKA_CONTROLLER_PORT (59093), AC_OPA_PORT (58181). Runs as root, non-interactively.
set -euo pipefail
# Everything this script creates under .data is private to root (dirs 0700, files 0600): the
# services' data holds every tenant's messages and events. Only apt runs with 022 (see ensure_apt).
umask 077

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
DATA="$ROOT/.data"
RUN="$DATA/run"

AC_PG_PORT="${AC_PG_PORT:-55432}"
AC_REDIS_PORT="${AC_REDIS_PORT:-56379}"
AC_KAFKA_PORT="${AC_KAFKA_PORT:-59092}"
AC_KAFKA_CONTROLLER_PORT="${AC_KAFKA_CONTROLLER_PORT:-59093}"
AC_OPA_PORT="${AC_OPA_PORT:-58181}"

HOST=127.0.0.1
APT_PACKAGES=(postgresql redis-server chromium openssh-server rsync curl bubblewrap python3)
OPA_VERSION=1.22.3
OPA_MODULE="github.com/open-policy-agent/opa@v$OPA_VERSION"
OPA_BUILD_TIMEOUT=1200   # seconds; a cold build is a few minutes on 2 cores
PG_WAIT=60
REDIS_WAIT=30
KAFKA_WAIT=90
KAFKA_STOP_WAIT=30
OPA_WAIT=30

PG_DIR="$DATA/postgres"
PG_LOG="$DATA/postgres.log"
REDIS_DIR="$DATA/redis"
REDIS_PID="$RUN/redis.pid"
KAFKA_HOME="$DATA/kafka"
KAFKA_LIBS="$KAFKA_HOME/libs"
KAFKA_POM="$ROOT/cluster/kafka/pom.xml"
KAFKA_LOG4J="$ROOT/cluster/kafka/log4j2.properties"
KAFKA_PROPS="$KAFKA_HOME/server.properties"
KAFKA_ADMIN_PROPS="$KAFKA_HOME/admin.properties"
KAFKA_OUT="$KAFKA_HOME/broker.log"
KAFKA_PID="$RUN/kafka.pid"
OPA_BIN="$DATA/bin/opa"
OPA_PID="$RUN/opa.pid"
OPA_LOG="$DATA/opa.log"
OPA_BUILD_LOG="$DATA/opa-build.log"
ENV_FILE="$DATA/services.env"

export PATH="/usr/local/go/bin:$PATH"
export DEBIAN_FRONTEND=noninteractive

log() { printf 'deps: %s\n' "$*" >&2; }
die() { printf 'deps: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- helpers

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# pid_matches PIDFILE WORD: the pid in PIDFILE is alive and its command line contains WORD
# (guards against pid reuse: we never signal a process we did not start).
pid_matches() {
  local file=$1 word=$2 pid
  [[ -s $file ]] || return 1
  pid=$(tr -dc '0-9' <"$file")
  [[ -n $pid && -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$word"
}

pid_of() { tr -dc '0-9' <"$1"; }

# stop_pid NAME PIDFILE WORD TIMEOUT: SIGTERM, wait, SIGKILL. No-op if not ours/not running.
stop_pid() {
  local name=$1 file=$2 word=$3 timeout=$4 pid i
  if ! pid_matches "$file" "$word"; then
    rm -f "$file"
    return 0
  fi
  pid=$(pid_of "$file")
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < timeout * 5; i++)); do
    [[ -d /proc/$pid ]] || break
    # a zombie is gone for our purposes
    [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" == Z ]] && break
    sleep 0.2
  done
  if [[ -d /proc/$pid ]] && pid_matches "$file" "$word"; then
    log "$name did not exit within ${timeout}s after SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
  fi
  rm -f "$file"
}

# wait_for NAME SECONDS HINT CMD...: run CMD every second until it succeeds; fail after SECONDS.
wait_for() {
  local name=$1 secs=$2 hint=$3 deadline
  shift 3
  deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "$name did not become healthy within ${secs}s; see $hint"
    sleep 1
  done
}

require_free_port() { # NAME PORT
  if port_open "$2"; then
    die "$1: port $2 on $HOST is already in use by a process this script did not start (set AC_*_PORT to move it)"
  fi
}

# The lock is fd 9; every long-running child is started with 9>&- so it does not inherit it.
lock() {
  mkdir -p "$RUN"
  exec 9>"$RUN/deps.lock"
  flock -w 1500 9 || die "another deps.sh is still running (lock $RUN/deps.lock)"
}

# ---------------------------------------------------------------- installs

pkg_installed() { [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]; }

ensure_apt() {
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do pkg_installed "$p" || missing+=("$p"); done
  command -v java >/dev/null || missing+=(openjdk-17-jdk-headless)
  command -v mvn >/dev/null || missing+=(maven)
  ((${#missing[@]} == 0)) && return 0
  log "apt: installing ${missing[*]}"
  local apt=(apt-get -q -y -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  # Packages' maintainer scripts create system files other users must read: the usual umask.
  (umask 022 && "${apt[@]}" update) >"$DATA/apt.log" 2>&1 || die "apt: apt-get update failed; see $DATA/apt.log"
  (umask 022 && "${apt[@]}" install "${missing[@]}") >>"$DATA/apt.log" 2>&1 \
    || die "apt: installing ${missing[*]} failed; see $DATA/apt.log"
}

# OPA build runs in the background while the other services start (it is the slow part).
# It installs into .data/opa-build/ and is moved into place only once it succeeded.
OPA_BUILD_PID=""
# Capture first: with pipefail, `grep -q` closing the pipe early can fail opa with SIGPIPE.
opa_ok() {
  local out
  [[ -x $OPA_BIN ]] && out=$("$OPA_BIN" version 2>/dev/null) || return 1
  grep -qx "Version: $OPA_VERSION" <<<"$out"
}

opa_build_start() {
  opa_ok && return 0
  command -v go >/dev/null || die "opa: go not found (expected /usr/local/go/bin/go) and $OPA_BIN is missing"
  log "opa: building $OPA_MODULE in the background (log $OPA_BUILD_LOG)"
  rm -rf "$DATA/opa-build"
  mkdir -p "$DATA/bin" "$DATA/opa-build"
  GOBIN="$DATA/opa-build" GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0 \
    timeout "$OPA_BUILD_TIMEOUT" go install "$OPA_MODULE" >"$OPA_BUILD_LOG" 2>&1 </dev/null 9>&- &
  OPA_BUILD_PID=$!
  trap opa_build_abort EXIT
}

# If up fails before the build is collected, do not leave the build running behind us.
opa_build_abort() {
  if [[ -n $OPA_BUILD_PID ]]; then kill -TERM "$OPA_BUILD_PID" 2>/dev/null || true; fi
}

opa_build_wait() {
  [[ -n $OPA_BUILD_PID ]] || return 0
  local rc=0
  wait "$OPA_BUILD_PID" || rc=$?
  OPA_BUILD_PID=""
  if ((rc != 0)) || [[ ! -x $DATA/opa-build/opa ]]; then
    die "opa: go install failed (exit $rc, timeout ${OPA_BUILD_TIMEOUT}s); see $OPA_BUILD_LOG"
  fi
  mv -f "$DATA/opa-build/opa" "$OPA_BIN"
  rmdir "$DATA/opa-build"
}

# ---------------------------------------------------------------- PostgreSQL

pg_bindir() {
  local ver
  if [[ -s $PG_DIR/PG_VERSION ]]; then
    ver=$(<"$PG_DIR/PG_VERSION")
  else
    ver=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1)
  fi
  [[ -n $ver && -x /usr/lib/postgresql/$ver/bin/postgres ]] \
    || die "postgres: no server binaries in /usr/lib/postgresql/${ver:-?}/bin"
  printf '%s' "/usr/lib/postgresql/$ver/bin"
}

as_postgres() { runuser -u postgres -- "$@"; }

# The socket path must fit in sun_path (108 bytes); fall back to /tmp for very deep checkouts.
pg_sockdir() {
  local d="$RUN/pg"
  if ((${#d} + 20 > 100)); then
    d="/tmp/agentcluster-pg-$(printf '%s' "$ROOT" | md5sum | cut -c1-10)"
  fi
  printf '%s' "$d"
}

# postgres must be able to reach .data/postgres and its socket directory: give "others" search
# permission on the ancestors that lack it (only the x bit, never read/write: nothing is listed,
# and every other entry of .data is 0700/0600).
pg_make_traversable() {
  local d
  for d in "$DATA" "$(dirname "$(pg_sockdir)")"; do
    while [[ $d != / ]]; do
      if ! as_postgres test -x "$d" 2>/dev/null; then
        log "postgres: adding o+x to $d so the postgres user can reach $PG_DIR"
        chmod o+x "$d"
      fi
      d=$(dirname "$d")
    done
  done
}

# Data left by a run under a looser umask: take group and others' permissions away from what root
# owns under .data (postgres's files are its own, 0700/0600; pg_make_traversable puts back the
# search bit postgres needs).
private_data() {
  find "$DATA" -xdev -user 0 -perm /077 ! -type l -exec chmod go-rwx {} +
}

pg_running() { [[ -d $PG_DIR ]] && as_postgres "$(pg_bindir)/pg_ctl" -D "$PG_DIR" status >/dev/null 2>&1; }

pg_query_ok() {
  PGPASSWORD=agentcluster PGCONNECT_TIMEOUT=3 psql -h "$HOST" -p "$AC_PG_PORT" -U agentcluster \
    -d agentcluster -tAc 'select 1' 2>/dev/null | grep -qx 1
}

pg_healthy() { pg_isready -q -h "$HOST" -p "$AC_PG_PORT" -t 3 && pg_query_ok; }

pg_psql_super() { as_postgres psql -X -q -v ON_ERROR_STOP=1 -h "$(pg_sockdir)" -p "$AC_PG_PORT" -d postgres "$@"; }

ensure_postgres() {
  local bin sock
  bin=$(pg_bindir)
  sock=$(pg_sockdir)
  pg_make_traversable
  mkdir -p "$sock"
  chown postgres:postgres "$sock"
  chmod 0755 "$sock"
  if [[ ! -s $PG_DIR/PG_VERSION ]]; then
    log "postgres: initdb $PG_DIR"
    rm -rf "$PG_DIR"
    install -d -o postgres -g postgres -m 0700 "$PG_DIR"
    as_postgres "$bin/initdb" -D "$PG_DIR" -U postgres -E UTF8 --locale=C.UTF-8 \
      --auth-local=peer --auth-host=scram-sha-256 >"$DATA/postgres-initdb.log" 2>&1 \
      || die "postgres: initdb failed; see $DATA/postgres-initdb.log"
  fi
  touch "$PG_LOG" && chown postgres:postgres "$PG_LOG" && chmod 0600 "$PG_LOG"
  if ! pg_running; then
    require_free_port postgres "$AC_PG_PORT"
    log "postgres: starting on $HOST:$AC_PG_PORT"
    as_postgres "$bin/pg_ctl" -D "$PG_DIR" -l "$PG_LOG" -w -t "$PG_WAIT" \
      -o "-c listen_addresses=$HOST -p $AC_PG_PORT -c unix_socket_directories='$sock'" start >/dev/null 9>&- \
      || die "postgres: did not start within ${PG_WAIT}s; see $PG_LOG"
  fi
  wait_for postgres "$PG_WAIT" "$PG_LOG" pg_isready -q -h "$HOST" -p "$AC_PG_PORT" -t 2
  if ! pg_query_ok; then
    log "postgres: creating role and database agentcluster"
    pg_psql_super >/dev/null <<'SQL' || die "postgres: creating role agentcluster failed; see $PG_LOG"
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'agentcluster') THEN
    CREATE ROLE agentcluster LOGIN CREATEDB PASSWORD 'agentcluster';
  ELSE
    ALTER ROLE agentcluster LOGIN CREATEDB PASSWORD 'agentcluster';
  END IF;
END
$$;
SQL
    if [[ "$(pg_psql_super -tAc "SELECT 1 FROM pg_database WHERE datname = 'agentcluster'")" != 1 ]]; then
      pg_psql_super -c 'CREATE DATABASE agentcluster OWNER agentcluster' >/dev/null \
        || die "postgres: creating database agentcluster failed; see $PG_LOG"
    fi
  fi
  wait_for postgres "$PG_WAIT" "$PG_LOG" pg_healthy
}

stop_postgres() {
  [[ -s $PG_DIR/PG_VERSION ]] || return 0
  pg_running || return 0
  log "postgres: stopping"
  as_postgres "$(pg_bindir)/pg_ctl" -D "$PG_DIR" -m fast -w -t 60 stop >/dev/null \
    || die "postgres: pg_ctl stop failed; see $PG_LOG"
}

# ---------------------------------------------------------------- Redis

redis_healthy() { [[ "$(redis-cli -h "$HOST" -p "$AC_REDIS_PORT" ping 2>/dev/null)" == PONG ]]; }
redis_running() { pid_matches "$REDIS_PID" redis-server; }

ensure_redis() {
  mkdir -p "$REDIS_DIR"
  if ! redis_running; then
    require_free_port redis "$AC_REDIS_PORT"
    log "redis: starting on $HOST:$AC_REDIS_PORT"
    redis-server --bind "$HOST" --port "$AC_REDIS_PORT" --dir "$REDIS_DIR" --daemonize yes \
      --pidfile "$REDIS_PID" --logfile "$DATA/redis.log" --save '' --appendonly yes \
      --protected-mode yes </dev/null 9>&- || die "redis: redis-server failed to start; see $DATA/redis.log"
  fi
  wait_for redis "$REDIS_WAIT" "$DATA/redis.log" redis_healthy
}

stop_redis() {
  redis_running || { rm -f "$REDIS_PID"; return 0; }
  log "redis: stopping"
  stop_pid redis "$REDIS_PID" redis-server 30
}

# ---------------------------------------------------------------- Kafka

kafka_java() { # CLASS ARGS...: run a Kafka CLI class with the fetched jars, logging to tools.log
  java -Xms64m -Xmx256m -cp "$KAFKA_LIBS/*" -Dlog4j2.configurationFile="$KAFKA_LOG4J" \
    -Dkafka.logs.dir="$KAFKA_HOME/logs" -Dkafka.log.file=tools.log -Dkafka.root.level=WARN "$@"
}

kafka_fetch_jars() {
  local want have=""
  want=$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)
  [[ -s $KAFKA_LIBS/.pom.sha256 ]] && have=$(<"$KAFKA_LIBS/.pom.sha256")
  [[ $want == "$have" ]] && return 0
  command -v mvn >/dev/null || die "kafka: mvn not found"
  log "kafka: fetching jars with Maven (log $KAFKA_HOME/maven.log)"
  local tmp="$KAFKA_HOME/libs.tmp"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  timeout 900 mvn -B -q -Dstyle.color=never -f "$KAFKA_POM" dependency:copy-dependencies \
    -DoutputDirectory="$tmp" >"$KAFKA_HOME/maven.log" 2>&1 </dev/null \
    || die "kafka: Maven could not fetch the Kafka jars; see $KAFKA_HOME/maven.log"
  ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || die "kafka: Maven finished but no kafka_2.13 jar; see $KAFKA_HOME/maven.log"
  printf '%s\n' "$want" >"$tmp/.pom.sha256"
  rm -rf "$KAFKA_LIBS"
  mv "$tmp" "$KAFKA_LIBS"
}

kafka_write_config() {
  mkdir -p "$KAFKA_HOME/data" "$KAFKA_HOME/logs"
  cat >"$KAFKA_PROPS.tmp" <<EOF
# Generated by cluster/services/deps.sh; rewritten on every start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$AC_KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$AC_KAFKA_PORT,CONTROLLER://$HOST:$AC_KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$AC_KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_HOME/data
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=168
EOF
  mv "$KAFKA_PROPS.tmp" "$KAFKA_PROPS"
  cat >"$KAFKA_ADMIN_PROPS" <<EOF
request.timeout.ms=5000
default.api.timeout.ms=8000
EOF
}

kafka_format() {
  [[ -s $KAFKA_HOME/data/meta.properties ]] && return 0
  local id
  if [[ ! -s $KAFKA_HOME/cluster.id ]]; then
    id=$(kafka_java kafka.tools.StorageTool random-uuid) || die "kafka: StorageTool random-uuid failed"
    printf '%s\n' "$id" >"$KAFKA_HOME/cluster.id"
  fi
  id=$(<"$KAFKA_HOME/cluster.id")
  log "kafka: formatting storage (cluster id $id)"
  kafka_java kafka.tools.StorageTool format -t "$id" -c "$KAFKA_PROPS" >"$KAFKA_HOME/format.log" 2>&1 \
    || die "kafka: storage format failed; see $KAFKA_HOME/format.log"
}

kafka_running() { pid_matches "$KAFKA_PID" "$KAFKA_PROPS"; }

kafka_healthy() {
  port_open "$AC_KAFKA_PORT" || return 1
  timeout 30 java -Xms32m -Xmx128m -cp "$KAFKA_LIBS/*" -Dlog4j2.configurationFile="$KAFKA_LOG4J" \
    -Dkafka.logs.dir="$KAFKA_HOME/logs" -Dkafka.log.file=tools.log -Dkafka.root.level=WARN \
    org.apache.kafka.tools.TopicCommand --bootstrap-server "$HOST:$AC_KAFKA_PORT" \
    --command-config "$KAFKA_ADMIN_PROPS" --list >/dev/null 2>&1
}

kafka_wait_healthy() {
  local deadline=$((SECONDS + KAFKA_WAIT))
  until kafka_healthy; do
    kafka_running || die "kafka: broker exited during startup; see $KAFKA_OUT and $KAFKA_HOME/logs/server.log"
    ((SECONDS < deadline)) || die "kafka did not become healthy within ${KAFKA_WAIT}s; see $KAFKA_OUT and $KAFKA_HOME/logs/server.log"
    sleep 1
  done
}

kafka_start() {
  command -v java >/dev/null || die "kafka: java not found"
  kafka_fetch_jars
  # A broker restarted right after a stop can exit at once on a loaded machine (its old
  # listeners not yet released): try again a few times before giving up, keeping each attempt's
  # output for the error message.
  local attempt
  for attempt in 1 2 3; do
    if (kafka_start_once); then
      return 0
    fi
    kafka_running && break
    log "kafka: the broker exited during startup (attempt $attempt): $(tail -c 400 "$KAFKA_OUT" 2>/dev/null | tr '\n' ' ')"
    sleep 3
  done
  die "kafka: could not start the broker; see $KAFKA_OUT and $KAFKA_HOME/logs/server.log"
}

kafka_start_once() {
  if ! kafka_running; then
    require_free_port kafka "$AC_KAFKA_PORT"
    require_free_port kafka-controller "$AC_KAFKA_CONTROLLER_PORT"
    kafka_write_config
    kafka_format
    log "kafka: starting broker on $HOST:$AC_KAFKA_PORT (controller $AC_KAFKA_CONTROLLER_PORT)"
    (
      cd "$KAFKA_HOME"
      exec setsid nohup java -Xms256m -Xmx512m -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$KAFKA_LOG4J" -Dkafka.logs.dir="$KAFKA_HOME/logs" \
        -Dkafka.log.file=server.log -Dkafka.root.level=INFO \
        -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_PROPS"
    ) >"$KAFKA_OUT" 2>&1 </dev/null 9>&- &
    printf '%s\n' "$!" >"$KAFKA_PID"
    sleep 0.5
  fi
  kafka_wait_healthy
}

kafka_stop() {
  kafka_running || { rm -f "$KAFKA_PID"; return 0; }
  log "kafka: stopping broker (pid $(pid_of "$KAFKA_PID"))"
  stop_pid kafka "$KAFKA_PID" "$KAFKA_PROPS" "$KAFKA_STOP_WAIT"
}

# ---------------------------------------------------------------- OPA

opa_healthy() { curl -sf -m 3 "http://$HOST:$AC_OPA_PORT/health" >/dev/null; }
opa_running() { pid_matches "$OPA_PID" "$OPA_BIN"; }

ensure_opa() {
  opa_build_wait
  opa_ok || die "opa: $OPA_BIN is missing or not version $OPA_VERSION"
  if ! opa_running; then
    require_free_port opa "$AC_OPA_PORT"
    log "opa: starting on $HOST:$AC_OPA_PORT with policies from $ROOT/policies"
    setsid nohup "$OPA_BIN" run --server --watch --addr "$HOST:$AC_OPA_PORT" --log-level error \
      --skip-version-check "$ROOT/policies" >"$OPA_LOG" 2>&1 </dev/null 9>&- &
    printf '%s\n' "$!" >"$OPA_PID"
  fi
  local deadline=$((SECONDS + OPA_WAIT))
  until opa_healthy; do
    opa_running || die "opa: server exited during startup; see $OPA_LOG"
    ((SECONDS < deadline)) || die "opa did not become healthy within ${OPA_WAIT}s; see $OPA_LOG"
    sleep 0.5
  done
}

stop_opa() {
  opa_running || { rm -f "$OPA_PID"; return 0; }
  log "opa: stopping"
  stop_pid opa "$OPA_PID" "$OPA_BIN" 15
}

# ---------------------------------------------------------------- env + report

# exp NAME VALUE: one single-quoted export line (sourceable by sh and readable by dotenv parsers)
exp() { printf "export %s='%s'\n" "$1" "${2//\'/\'\\\'\'}"; }

write_env() {
  local deps="$SCRIPT_DIR/deps.sh"
  {
    echo "# Generated by cluster/services/deps.sh up; source it to use the local services."
    exp SA01_DB_DSN "postgresql+asyncpg://agentcluster:agentcluster@$HOST:$AC_PG_PORT/agentcluster"
    exp SA01_KAFKA_BOOTSTRAP_SERVERS "$HOST:$AC_KAFKA_PORT"
    exp SA01_REDIS_URL "redis://$HOST:$AC_REDIS_PORT/0"
    exp SA01_POLICY_URL "http://$HOST:$AC_OPA_PORT"
    exp AC_OPA_BIN "$OPA_BIN"
    exp AC_KAFKA_HOME "$KAFKA_HOME"
    exp AC_KAFKA_STOP_CMD "bash $deps kafka-stop"
    exp AC_KAFKA_START_CMD "bash $deps kafka-start"
    exp AC_PG_PORT "$AC_PG_PORT"
    exp AC_REDIS_PORT "$AC_REDIS_PORT"
    exp AC_KAFKA_PORT "$AC_KAFKA_PORT"
    exp AC_KAFKA_CONTROLLER_PORT "$AC_KAFKA_CONTROLLER_PORT"
    exp AC_OPA_PORT "$AC_OPA_PORT"
  } >"$ENV_FILE.tmp"
  mv "$ENV_FILE.tmp" "$ENV_FILE"
}

print_endpoints() {
  printf '%-10s %s\n' service endpoint
  printf '%-10s %s\n' postgres "postgresql://agentcluster:agentcluster@$HOST:$AC_PG_PORT/agentcluster"
  printf '%-10s %s\n' redis "redis://$HOST:$AC_REDIS_PORT/0"
  printf '%-10s %s\n' kafka "$HOST:$AC_KAFKA_PORT (controller $HOST:$AC_KAFKA_CONTROLLER_PORT)"
  printf '%-10s %s\n' opa "http://$HOST:$AC_OPA_PORT"
  printf 'env file:  %s\n' "$ENV_FILE"
}

# ---------------------------------------------------------------- commands

cmd_up() {
  [[ $EUID -eq 0 ]] || die "run as root (installs packages and runs postgres as the postgres user)"
  local t0=$SECONDS
  ensure_apt
  private_data
  pg_make_traversable
  opa_build_start
  ensure_postgres
  ensure_redis
  kafka_start
  ensure_opa
  write_env
  log "all services healthy ($((SECONDS - t0))s)"
  print_endpoints
}

cmd_down() {
  local rc=0
  (stop_opa) || rc=1
  (kafka_stop) || rc=1
  (stop_redis) || rc=1
  (stop_postgres) || rc=1
  ((rc == 0)) && log "stopped (data kept in $DATA)"
  return "$rc"
}

cmd_status() {
  local down=0
  line() { # NAME ENDPOINT CHECK...
    local name=$1 ep=$2
    shift 2
    if "$@" >/dev/null 2>&1; then printf '%-10s up    %s\n' "$name" "$ep"; else printf '%-10s down  %s\n' "$name" "$ep"; down=1; fi
  }
  line postgres "$HOST:$AC_PG_PORT" pg_healthy
  line redis "$HOST:$AC_REDIS_PORT" redis_healthy
  line kafka "$HOST:$AC_KAFKA_PORT" kafka_healthy
  line opa "$HOST:$AC_OPA_PORT" opa_healthy
  return "$down"
}

cmd_env() {
  [[ -s $ENV_FILE ]] || die "no $ENV_FILE yet; run: bash cluster/services/deps.sh up"
  cat "$ENV_FILE"
}

usage() { sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

main() {
  local cmd=${1:-}
  mkdir -p "$DATA" "$RUN"
  case $cmd in
    up) lock; cmd_up ;;
    down) lock; cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    kafka-start) lock; kafka_start ;;
    kafka-stop) lock; kafka_stop ;;
    -h | --help | help) usage ;;
    *) usage >&2; die "unknown command '${cmd}' (expected up, down, status, env, kafka-start, kafka-stop)" ;;
  esac
}

main "$@"
