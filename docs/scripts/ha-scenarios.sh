#!/usr/bin/env bash
# The ha-guide scenarios on the fake API server, with real leader-elect processes; times from their JSON logs.
# The figures of docs/ha-guide.md ("Scenario script, ...") come from this script; CI shellchecks it.
# Usage: docs/scripts/ha-scenarios.sh   (from the repository root, after
# cargo build --release -p leader-elect -p fake-apiserver; LE and FAKE_APISERVER name other binaries;
# needs jq and curl; uses ports 16443 and 18080-18090 on 127.0.0.1; about two minutes)
set -u
LE=${LE:-target/release/leader-elect}
FAKE_APISERVER=${FAKE_APISERVER:-target/release/fake-apiserver}
PORT=${PORT:-16443}
ADMIN=http://127.0.0.1:$PORT
FAST="--lease-duration 2s --renew-deadline 1s --retry-period 250ms"
D=$(mktemp -d)
echo "logs in $D"

now() { date +%s%N; }
ms() { echo $(( ($2 - $1) / 1000000 )); }
# ns timestamp of the first log line with fields.event == $2 (or fields.message == $2) after $3 (ns), in file $1
first_after() {
  jq -r --arg e "$2" 'select(.fields.event == $e or .fields.message == $e) | .timestamp' "$1" 2>/dev/null |
    while read -r ts; do n=$(date -d "$ts" +%s%N); if [ "$n" -gt "$3" ]; then echo "$n"; break; fi; done
}
# waits up to $1 s for first_after in any of the files given after --; prints "file ns"
wait_event() {
  local within=$1 ev=$2 since=$3; shift 3
  local end=$(( $(date +%s) + within ))
  while [ "$(date +%s)" -le "$end" ]; do
    for f in "$@"; do n=$(first_after "$f" "$ev" "$since"); [ -n "$n" ] && { echo "$f $n"; return 0; }; done
    sleep 0.1
  done
  return 1
}
# faults on the candidates' listener (the admin routes stay reachable on the first one)
# ns when process $1 is gone (no longer exists, or a zombie), polling every millisecond for up to 10 s
gone_at() {
  local end=$(( $(date +%s) + 10 ))
  while [ "$(date +%s)" -le "$end" ]; do
    st=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) || { now; return 0; }
    [ "$st" = Z ] && { now; return 0; }
    sleep 0.001
  done
  return 1
}
faults() { curl -s -X PUT -H 'content-type: application/json' -d "$1" "$ADMIN/fake/listeners/$LID/faults" >/dev/null; }
holder() { "$LE" status --server "$URL" -n default --lease-name "$1" -o json | jq -r .holder; }
# start candidate $1 of lease $2 with timings $3, then the command
cand() {
  local i=$1 lease=$2 t=$3; shift 3
  # shellcheck disable=SC2086
  "$LE" --log-format json run --server "$URL" -n default --lease-name "$lease" --identity "c$i" $t \
    --admin-listen "127.0.0.1:$((18080 + i))" "$@" 2>>"$D/$lease-c$i.log" &
  echo $! >"$D/$lease-c$i.pid"
  sleep 0.2
}
pidof_c() { cat "$D/$1-c$2.pid"; }
# the logs of lease $1's candidates other than candidate $2, into the array `others`
others_of() {
  local f; others=()
  for f in "$D/$1"-c*.log; do [ "$f" = "$D/$1-$2.log" ] || others+=("$f"); done
}
childpid() { jq -r 'select(.fields.event == "child_started") | .fields.pid' "$D/$1-$2.log" | tail -1; }
stopall() {
  for p in "$D"/*.pid; do [ -e "$p" ] && kill -TERM "$(cat "$p")" 2>/dev/null; done; sleep 1.5
  for p in "$D"/*.pid; do [ -e "$p" ] && kill -KILL "$(cat "$p")" 2>/dev/null; done; rm -f "$D"/*.pid
}

"$FAKE_APISERVER" --listen "127.0.0.1:$PORT" >"$D/apiserver.log" 2>&1 &
API=$!
trap 'stopall; kill $API 2>/dev/null' EXIT
sleep 0.5
# a second listener on the same store, for the candidates: faults on it leave the first one reachable
NEW=$(curl -s -X POST "$ADMIN/fake/listeners")
LID=$(echo "$NEW" | jq -r .id); URL=$(echo "$NEW" | jq -r .url)

echo "== metric names (candidate c0 of lease m)"
cand 0 m "$FAST" -- sleep 3600
wait_event 10 child_started 0 "$D/m-c0.log" >/dev/null
sleep 1
curl -s 127.0.0.1:18080/metrics | grep -v -E '^# (HELP|UNIT)' | grep -v '_bucket'
curl -s 127.0.0.1:18080/debug/vars; echo
stopall

echo "== crash failover, default timings 15s/10s/2s (SIGKILL to the leader's leader-elect)"
for i in 0 1 2; do cand "$i" crash "" -- sleep 3600; done
r=$(wait_event 20 child_started 0 "$D"/crash-c*.log); f=${r%% *}; L=$(basename "$f" .log); L=${L#crash-}
sleep 3
t0=$(now); kill -KILL "$(cat "$D/crash-$L.pid")"
others_of crash "$L"
r=$(wait_event 40 child_started "$t0" "${others[@]}") && echo "next child started $(ms "$t0" "${r##* }") ms after SIGKILL"
stopall

echo "== frozen leader (SIGSTOP to leader-elect and its child's group), 2s/1s/250ms"
for i in 0 1 2; do cand "$i" freeze "$FAST" -- sleep 3600; done
r=$(wait_event 20 child_started 0 "$D"/freeze-c*.log); f=${r%% *}; L=$(basename "$f" .log); L=${L#freeze-}
sleep 1
LP=$(cat "$D/freeze-$L.pid"); CP=$(childpid freeze "$L")
t0=$(now); kill -STOP "$LP"; kill -STOP -- "-$CP"
others_of freeze "$L"
r=$(wait_event 20 child_started "$t0" "${others[@]}") && echo "new leader's child started $(ms "$t0" "${r##* }") ms after the freeze"
sleep 2
t1=$(now); kill -CONT "$LP"; kill -CONT -- "-$CP" 2>/dev/null
g=$(gone_at "$CP") && echo "old child gone $(ms "$t1" "$g") ms after SIGCONT (polled)"
sleep 4
echo "holder 4 s later: $(holder freeze) (the frozen one was $L)"
stopall

echo "== API server outage (connections refused) for 6 s, 2s/1s/250ms"
for i in 0 1 2; do cand "$i" outage "$FAST" -- sleep 3600; done
r=$(wait_event 20 child_started 0 "$D"/outage-c*.log); f=${r%% *}; L=$(basename "$f" .log); L=${L#outage-}
sleep 1
t0=$(now); faults '{"refuse": true}'
r=$(wait_event 10 child_exited "$t0" "$D/outage-$L.log") && echo "leader's child stopped $(ms "$t0" "${r##* }") ms into the outage"
sleep $(( 6 - 1 ))
t1=$(now); faults '{}'
r=$(wait_event 20 child_started "$t1" "$D"/outage-c*.log) && echo "a child started $(ms "$t1" "${r##* }") ms after the API server came back ($(basename "${r%% *}" .log))"
stopall

echo "== forced release of a live leader, 2s/1s/250ms"
for i in 0 1 2; do cand "$i" force "$FAST" -- sleep 3600; done
r=$(wait_event 20 child_started 0 "$D"/force-c*.log); f=${r%% *}; L=$(basename "$f" .log); L=${L#force-}
sleep 1
CP=$(childpid force "$L")
t0=$(now); ( "$LE" release --server "$URL" -n default --lease-name force --identity "$L" --force 2>/dev/null & )
g=$(gone_at "$CP") && echo "released leader's child gone $(ms "$t0" "$g") ms after release --force started (polled)"
others_of force "$L"
r=$(wait_event 10 child_started "$t0" "${others[@]}") && echo "next child started $(ms "$t0" "${r##* }") ms after"
stopall

echo "== a child that keeps exiting, --on-child-exit restart, 2s/1s/250ms"
for i in 0 1; do cand "$i" flaky "$FAST" --on-child-exit restart -- sh -c 'exit 3'; done
r=$(wait_event 20 child_started 0 "$D"/flaky-c*.log); f=${r%% *}; t0=${r##* }; L=$(basename "$f" .log); L=${L#flaky-}
others_of flaky "$L"
r=$(wait_event 30 child_started "$t0" "${others[@]}") && {
  echo "the other candidate's child started $(ms "$t0" "${r##* }") ms after the first leader's first child"
  echo "children started by the first leader before it stepped down: $(jq -r 'select(.fields.event == "child_started") | .timestamp' "$f" | while read -r ts; do n=$(date -d "$ts" +%s%N); [ "$n" -lt "${r##* }" ] && echo x; done | wc -l)"
}
kill -0 "$(pidof_c flaky "${L#c}")" 2>/dev/null && echo "first leader still running (contends again)"
stopall

echo "== a child that exits, --on-child-exit release (default)"
cand 0 once "$FAST" -- sh -c 'exit 3'
P=$(pidof_c once 0); wait "$P"; echo "leader-elect exit code: $?"
rm -f "$D"/once-*.pid

echo "== startup while the API server refuses connections for 3 s"
faults '{"refuse": true}'
cand 0 startup "$FAST" -- sleep 3600
sleep 1
echo "readyz while waiting: $(curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:18080/readyz), healthz: $(curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:18080/healthz)"
sleep 2
t1=$(now); faults '{}'
r=$(wait_event 10 child_started "$t1" "$D/startup-c0.log") && echo "child started $(ms "$t1" "${r##* }") ms after the API server answered"
stopall

echo "== startup with 403 on every request"
faults '{"error_rate": 1.0, "error_code": 403}'
t0=$(now)
"$LE" run --server "$URL" -n default --lease-name denied --identity c0 -- sleep 3600 2>"$D/denied.log"
echo "exit code $? after $(ms "$t0" "$(now)") ms: $(tail -1 "$D/denied.log")"
faults '{}'

echo "== disabled mode"
printf 'controller:\n  leader_election:\n    enabled: false\n' >"$D/disabled.yaml"
t0=$(now)
env -u KUBECONFIG HOME=/nonexistent "$LE" --log-format json run --config "$D/disabled.yaml" --admin-listen 127.0.0.1:18090 -- sleep 3600 2>"$D/disabled.log" &
echo $! >"$D/disabled.pid"
r=$(wait_event 5 child_started "$t0" "$D/disabled.log") && echo "child started $(ms "$t0" "${r##* }") ms after start, no kubeconfig"
sleep 0.5
curl -s 127.0.0.1:18090/metrics | grep '^leader_election_is_leader'
stopall
