#!/usr/bin/env bash
# Loopback SSH for `ray up cluster/local.yaml`: Ray's local provider reaches its head (127.0.0.1 here)
# over SSH on port 22 and syncs the checkout with rsync.
#
#   bash cluster/local-ssh.sh up       install openssh-server/rsync if missing, create the cluster's
#                                      user, give the launcher a key for it, start sshd on
#                                      127.0.0.1:22 (only if nothing serves port 22 already), check a login
#   bash cluster/local-ssh.sh down     stop the sshd this script started
#   bash cluster/local-ssh.sh status   say whether the login works (exit 1 if not)
#
# The cluster runs as its own unprivileged user (AC_LOCAL_USER, default "agentcluster"), not root:
# `ray down` runs `ray stop` on the head, which stops every Ray process its user may signal. As that
# user it stops the local cluster and nothing else, so other Ray clusters on the machine (a
# developer's `make run`, tests) survive. The launcher's key is ~/.ssh/agentcluster_local (the path
# cluster/local.yaml names). sshd's own files and pid live under .data/ssh; it listens on loopback
# only and lets in only the cluster's user, by key. Runs as root, non-interactively.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
SSH_DATA="$ROOT/.data/ssh"
SSHD_CONFIG="$SSH_DATA/sshd_config"
SSHD_PID="$SSH_DATA/sshd.pid"
SSHD_LOG="$SSH_DATA/sshd.log"
HOST_KEY="$SSH_DATA/ssh_host_ed25519_key"
CLUSTER_USER="${AC_LOCAL_USER:-agentcluster}"
LAUNCHER_KEY="${AC_LOCAL_SSH_KEY:-$HOME/.ssh/agentcluster_local}"
HOST=127.0.0.1
PORT=22   # Ray's local provider has no port option
export DEBIAN_FRONTEND=noninteractive

log() { printf 'local-ssh: %s\n' "$*" >&2; }
die() { printf 'local-ssh: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# Our sshd: the pid in our pid file, alive, and running our config (pids are reused).
sshd_ours() {
  local pid
  [[ -s $SSHD_PID ]] || return 1
  pid=$(tr -dc '0-9' <"$SSHD_PID")
  [[ -n $pid && -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$SSHD_CONFIG"
}

login_ok() {
  ssh -i "$LAUNCHER_KEY" -p "$PORT" -o BatchMode=yes -o ConnectTimeout=5 \
    -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
    "$CLUSTER_USER@$HOST" true 2>/dev/null
}

ensure_packages() {
  local missing=()
  command -v sshd >/dev/null || [[ -x /usr/sbin/sshd ]] || missing+=(openssh-server)
  command -v rsync >/dev/null || missing+=(rsync)
  command -v make >/dev/null || missing+=(make)
  command -v bwrap >/dev/null || missing+=(bubblewrap)  # python_exec's sandbox
  /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

ensure_user() {
  if ! id -u "$CLUSTER_USER" >/dev/null 2>&1; then
    log "creating user $CLUSTER_USER"
    useradd --create-home --shell /bin/bash "$CLUSTER_USER"
  fi
  # "*": no password, but not "locked" ("!"): sshd without PAM refuses locked accounts even by key.
  usermod -p '*' "$CLUSTER_USER"
}

ensure_keys() {
  local home
  home=$(getent passwd "$CLUSTER_USER" | cut -d: -f6)
  mkdir -p "$(dirname "$LAUNCHER_KEY")" && chmod 700 "$(dirname "$LAUNCHER_KEY")"
  [[ -f $LAUNCHER_KEY ]] || ssh-keygen -q -t ed25519 -N '' -C "agentcluster local launcher" \
    -f "$LAUNCHER_KEY"
  install -d -m 700 -o "$CLUSTER_USER" -g "$CLUSTER_USER" "$home/.ssh"
  local auth="$home/.ssh/authorized_keys" pub
  pub=$(cat "$LAUNCHER_KEY.pub")
  touch "$auth"
  grep -qxF "$pub" "$auth" || printf '%s\n' "$pub" >>"$auth"
  chown "$CLUSTER_USER:$CLUSTER_USER" "$auth" && chmod 600 "$auth"
}

write_sshd_config() {
  mkdir -p "$SSH_DATA" && chmod 700 "$SSH_DATA"
  [[ -f $HOST_KEY ]] || ssh-keygen -q -t ed25519 -N '' -f "$HOST_KEY"
  cat >"$SSHD_CONFIG" <<EOF
# Written by cluster/local-ssh.sh: loopback only, key login for the local cluster's user only.
ListenAddress $HOST
Port $PORT
HostKey $HOST_KEY
PidFile $SSHD_PID
AllowUsers $CLUSTER_USER
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
X11Forwarding no
AllowTcpForwarding yes
PrintMotd no
EOF
}

start_sshd() {
  if sshd_ours; then
    return
  fi
  if port_open "$PORT"; then
    log "port $PORT on $HOST is served already (not by this script): using that SSH server"
    return
  fi
  write_sshd_config
  mkdir -p /run/sshd   # privilege separation directory
  /usr/sbin/sshd -t -f "$SSHD_CONFIG" || die "sshd rejects $SSHD_CONFIG"
  /usr/sbin/sshd -f "$SSHD_CONFIG" -E "$SSHD_LOG"
  local i
  for i in $(seq 1 50); do
    port_open "$PORT" && return
    sleep 0.1
  done
  die "sshd did not listen on $HOST:$PORT; see $SSHD_LOG"
}

cmd_up() {
  [[ $(id -u) == 0 ]] || die "run as root (it creates a user and starts sshd)"
  ensure_packages
  ensure_user
  ensure_keys
  start_sshd
  login_ok || die "key login as $CLUSTER_USER@$HOST failed; see $SSHD_LOG"
  log "ok: ssh -i $LAUNCHER_KEY $CLUSTER_USER@$HOST works"
}

cmd_down() {
  if sshd_ours; then
    kill "$(tr -dc '0-9' <"$SSHD_PID")"
    log "stopped sshd"
  else
    log "no sshd of ours is running"
  fi
}

cmd_status() {
  if login_ok; then
    echo "local-ssh: ok ($CLUSTER_USER@$HOST:$PORT with $LAUNCHER_KEY)"
  else
    echo "local-ssh: no key login as $CLUSTER_USER@$HOST:$PORT (run: make local-ssh)"
    return 1
  fi
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
