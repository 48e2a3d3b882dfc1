#!/usr/bin/env bash
# A throwaway GNU Mailman 3 on loopback ports, for the real-Mailman tests (tests/mailman3.rs).
#
#   tools/mailman3.sh install [VENV]        venv + pip install mailman==3.3.10 (SQLAlchemy < 2.1)
#   tools/mailman3.sh start STATE [VENV]    capture sink + Mailman (SQLite, LMTP, REST), list
#                                           test@example.com (member member@example.org, owner
#                                           owner@example.org); writes STATE/env
#   tools/mailman3.sh stop STATE            stops both, by the PIDs recorded at start
#   tools/mailman3.sh test [VENV]           install if needed, start, run the ignored tests in
#                                           tests/mailman3.rs, stop (also on failure)
#
# VENV defaults to target/mailman3-venv. Mailman's outgoing MTA is the capture sink: every mail
# Mailman sends lands in STATE/sink as one JSON file. Nothing listens beyond 127.0.0.1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
default_venv="$root/target/mailman3-venv"
helper="$here/mailman3_helper.py"
cmd=${1:-}

as_root=()
[ "$(id -u)" = 0 ] && as_root=(--run-as-root)

install() {
  local venv=$1
  python3 -m venv "$venv"
  # Unpinned, pip picks SQLAlchemy 2.1, with which Mailman 3.3.10's REST pagination fails.
  "$venv/bin/pip" install -q --disable-pip-version-check \
    -c "$here/mailman3-constraints.txt" "mailman==3.3.10" "sqlalchemy>=2.0,<2.1"
  "$venv/bin/python" -c "import mailman, aiosmtpd, sqlalchemy; assert sqlalchemy.__version__ < '2.1'"
}

start() {
  local state=$1 venv=$2
  [ -x "$venv/bin/mailman" ] || { echo "no Mailman in $venv: run $0 install $venv" >&2; exit 1; }
  rm -rf "$state"
  mkdir -p "$state/var" "$state/sink"
  state=$(cd "$state" && pwd)
  read -r lmtp rest sink < <(python3 "$helper" ports 3)
  cat > "$state/mailman.cfg" <<CFG
[mailman]
site_owner: siteowner@example.com
layout: testenv

[paths.testenv]
var_dir: $state/var

[database]
class: mailman.database.sqlite.SQLiteDatabase
url: sqlite:///\$DATA_DIR/mailman.db

[mta]
incoming: mailman.mta.null.NullMTA
outgoing: mailman.mta.deliver.deliver
smtp_host: 127.0.0.1
smtp_port: $sink
lmtp_host: 127.0.0.1
lmtp_port: $lmtp

[webservice]
hostname: 127.0.0.1
port: $rest
admin_user: restadmin
admin_pass: restpass
workers: 1

[runner.in]
sleep_time: 0.1s
[runner.pipeline]
sleep_time: 0.1s
[runner.out]
sleep_time: 0.1s
[runner.command]
sleep_time: 0.1s
[runner.virgin]
sleep_time: 0.1s
[runner.bounces]
sleep_time: 0.1s
[runner.archive]
start: no
[runner.digest]
start: no
[runner.retry]
start: no
[runner.task]
start: no
[runner.nntp]
start: no
CFG
  "$venv/bin/python" "$helper" sink "$sink" "$state/sink" >"$state/sink.log" 2>&1 &
  echo $! >"$state/sink.pid"
  (cd "$state" && HOME="$state" "$venv/bin/mailman" "${as_root[@]}" -C "$state/mailman.cfg" start --force) \
    >"$state/start.log" 2>&1 || { cat "$state/start.log" >&2; stop "$state"; exit 1; }
  if ! python3 "$helper" wait "$lmtp" "$rest" 90; then
    tail -n 30 "$state/var/logs/mailman.log" >&2 2>/dev/null || true
    stop "$state"
    exit 1
  fi
  python3 "$helper" setup "$rest" || { stop "$state"; exit 1; }
  cat >"$state/env" <<ENV
LMTP_PORT=$lmtp
REST_PORT=$rest
SINK_PORT=$sink
SINK_DIR=$state/sink
MM3_CFG=$state/mailman.cfg
ENV
  echo "Mailman 3 up: LMTP 127.0.0.1:$lmtp, REST 127.0.0.1:$rest, sink 127.0.0.1:$sink ($state/env)"
}

# Waits (bounded) for a PID to exit; returns 1 if it is still there.
wait_pid() {
  local pid=$1 tries=${2:-100}
  while [ "$tries" -gt 0 ] && kill -0 "$pid" 2>/dev/null; do
    sleep 0.1
    tries=$((tries - 1))
  done
  ! kill -0 "$pid" 2>/dev/null
}

stop() {
  local state=$1 venv=${2:-$default_venv}
  local master="$state/var/master.pid"
  if [ -f "$master" ]; then
    local pid
    pid=$(cat "$master")
    (cd "$state" && HOME="$state" "$venv/bin/mailman" "${as_root[@]}" -C "$state/mailman.cfg" stop) \
      >>"$state/stop.log" 2>&1 || kill -TERM "$pid" 2>/dev/null || true
    wait_pid "$pid" 300 || { echo "Mailman master $pid did not stop: SIGKILL" >&2; kill -KILL "$pid" 2>/dev/null || true; }
  fi
  if [ -f "$state/sink.pid" ]; then
    local pid
    pid=$(cat "$state/sink.pid")
    kill -TERM "$pid" 2>/dev/null || true
    wait_pid "$pid" 50 || kill -KILL "$pid" 2>/dev/null || true
    rm -f "$state/sink.pid"
  fi
}

case $cmd in
  install) install "${2:-$default_venv}" ;;
  start) start "${2:?state dir}" "${3:-$default_venv}" ;;
  stop) stop "${2:?state dir}" "${3:-$default_venv}" ;;
  test)
    venv=${2:-$default_venv}
    if ! "$venv/bin/python" -c "import mailman" 2>/dev/null; then
      install "$venv"
    fi
    state="$root/target/mailman3-state"
    trap 'stop "$state" "$venv"' EXIT
    start "$state" "$venv"
    cd "$root"
    MAILMAN3_ENV="$state/env" cargo test --release --test mailman3 -- --ignored
    ;;
  *)
    sed -n '2,13p' "$0" >&2
    exit 2
    ;;
esac
