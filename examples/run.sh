#!/usr/bin/env bash
# Runs the SDK examples and the robot alert burst against bin/dingproxy in
# front of bin/fakedingtalk, everything on 127.0.0.1: `make examples` (which
# builds bin/ first).
# Needs bash, Go, Node 20+ with npm, and the npm registry for `npm ci`.
# Exits non-zero if a server does not come up, an example fails, or the fake
# DingTalk counted a robot send into a block or a send executed twice.
set -euo pipefail
cd "$(dirname "$0")/.."

# The fake's credentials; dingproxy and the examples get the same.
app_key=demo-app-key
app_secret=demo-app-secret
robot_token=demo-robot-token

# A clean slate: no DINGPROXY_* setting of the caller's leaks into the proxy,
# and loopback calls never go through an HTTP proxy (axios and the Tea SDKs
# honour HTTP_PROXY).
for v in $(compgen -e); do
	if [[ $v == DINGPROXY_* ]]; then unset "$v"; fi
done
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost

work=$(mktemp -d)
fake_pid='' proxy_pid=''

log() { printf '%s\n' "$*"; }
heading() { printf '\n=== %s ===\n' "$*"; }

# stop_servers sends SIGTERM to the servers this script started (by pid) and
# waits for them; SIGKILL after 10 s. Safe to call twice.
stop_servers() {
	local pid deadline
	for pid in $proxy_pid $fake_pid; do kill -TERM "$pid" 2>/dev/null || true; done
	deadline=$((SECONDS + 10))
	for pid in $proxy_pid $fake_pid; do
		while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.05; done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	proxy_pid='' fake_pid=''
}
cleanup() {
	stop_servers
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# free_port sets REPLY to a loopback port nothing listens on, below the usual
# ephemeral range (32768-60999) where :0 listeners and outgoing connections
# take theirs, and not handed out before.
taken=' '
free_port() {
	local p i
	for ((i = 0; i < 500; i++)); do
		p=$((20000 + RANDOM % 12000))
		[[ $taken == *" $p "* ]] && continue
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			taken+="$p "
			REPLY=$p
			return 0
		fi
	done
	log "examples: no free loopback port found" >&2
	return 1
}

# http_get PORT PATH prints the raw answer (status line, headers, body) of
# GET http://127.0.0.1:PORT/PATH, giving up after 5 s.
http_get() {
	timeout 5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" &&
		printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\n\r\n" "$2" "$1" >&3 && cat <&3' _ "$1" "$2" 2>/dev/null
}

show_logs() {
	local f
	for f in fake proxy; do
		if [[ -s $work/$f.log ]]; then
			log "--- $f log (last 20 lines) ---"
			tail -n 20 "$work/$f.log"
		fi
	done
}

# wait_until WHAT SECONDS CMD... polls CMD every 0.1 s until it succeeds;
# fails at the deadline or as soon as a server has exited.
wait_until() {
	local what=$1 secs=$2 deadline=$((SECONDS + $2)) pid
	shift 2
	until "$@"; do
		for pid in $fake_pid $proxy_pid; do
			if ! kill -0 "$pid" 2>/dev/null; then
				log "examples: a server exited while waiting for $what"
				show_logs
				return 1
			fi
		done
		if ((SECONDS >= deadline)); then
			log "examples: $what not ready after ${secs}s"
			show_logs
			return 1
		fi
		sleep 0.1
	done
}

fake_up() { (exec 3<>"/dev/tcp/127.0.0.1/$fake_port") 2>/dev/null; }
# Ready, and holding a token, so the SDKs' token calls are answered from it.
proxy_ready() {
	local a
	a=$(http_get "$admin_port" /readyz) || return 1
	[[ $a =~ ^HTTP/1\.[01]\ 200 && $a == *'"held":true'* ]]
}

# metric_totals prints "name value" lines summed from dingproxy's /metrics:
# requests per status code, upstream attempts per result, retries, token
# fetches per result.
metric_totals() {
	http_get "$admin_port" /metrics | awk '
		function label(name,   i, s) {
			if (!match($0, name "=\"[^\"]*\"")) return "?"
			s = substr($0, RSTART + length(name) + 2, RLENGTH - length(name) - 3)
			return s
		}
		/^dingproxy_requests_total\{/ { t["requests " label("code")] += $NF }
		/^dingproxy_upstream_attempts_total\{/ { t["attempts " label("result")] += $NF }
		/^dingproxy_retries_total\{/ { t["retries"] += $NF }
		/^dingproxy_token_refreshes_total\{/ { t["token-fetches " label("result")] += $NF }
		END { for (k in t) print k "\t" t[k] }' | sort
}

# metrics_line BEFORE AFTER prints one line: what changed between two
# metric_totals snapshots.
metrics_line() {
	awk -F'\t' '
		NR == FNR { before[$1] = $2; next }
		{ d = $2 - before[$1]; if (d != 0) { split($1, k, " "); parts[k[1]] = parts[k[1]] (parts[k[1]] == "" ? "" : " ") (k[2] == "" ? "" : k[2] "=") d } }
		END {
			line = "dingproxy /metrics, this example:"
			n = split("requests attempts retries token-fetches", order, " ")
			for (i = 1; i <= n; i++) line = line " " order[i] " " (order[i] in parts ? parts[order[i]] : "0") ";"
			print substr(line, 1, length(line) - 1)
		}' "$1" "$2"
}

free_port
fake_port=$REPLY
free_port
proxy_port=$REPLY
free_port
admin_port=$REPLY

heading "servers"
# Every robot may post 20 messages a minute, then is blocked for 10 minutes,
# as on DingTalk.
./bin/fakedingtalk -listen "127.0.0.1:$fake_port" -app-key "$app_key" -app-secret "$app_secret" \
	-robot-token "$robot_token" -robot-per-minute 20 >"$work/fake.log" 2>&1 &
fake_pid=$!
wait_until "fakedingtalk on 127.0.0.1:$fake_port" 10 fake_up
log "fakedingtalk: http://127.0.0.1:$fake_port"

# Deferred sends on the robot webhook: an alert past the robot's minute is
# kept in the outbox (under $work) and delivered later, queued alerts merged
# into one message.
DINGPROXY_LISTEN="127.0.0.1:$proxy_port" \
	DINGPROXY_ADMIN_LISTEN="127.0.0.1:$admin_port" \
	DINGPROXY_ROUTES='[{"path":"/robot/send","defer":{"max_age":"10m","merge":true}}]' \
	DINGPROXY_OUTBOX_DIR="$work/outbox" \
	DINGPROXY_APP_KEY="$app_key" \
	DINGPROXY_APP_SECRET="$app_secret" \
	DINGPROXY_UPSTREAMS_OAPI="http://127.0.0.1:$fake_port" \
	DINGPROXY_UPSTREAMS_API="http://127.0.0.1:$fake_port" \
	./bin/dingproxy >"$work/proxy.log" 2>&1 &
proxy_pid=$!
wait_until "dingproxy on 127.0.0.1:$proxy_port (admin $admin_port)" 20 proxy_ready
log "dingproxy:    http://127.0.0.1:$proxy_port (admin http://127.0.0.1:$admin_port), token held"

# What every example reads.
export DINGPROXY_PORT=$proxy_port DINGPROXY_ADMIN_PORT=$admin_port
export DINGTALK_APP_KEY=$app_key DINGTALK_APP_SECRET=$app_secret DINGTALK_ROBOT_TOKEN=$robot_token
# The burst's robot: one of its own on the fake, so the other examples'
# robot sends do not count against its minute.
export DINGTALK_BURST_ROBOT=$robot_token-burst

failed=()

# run_example NAME DIR CMD... runs CMD in DIR under a heading, then the
# metrics line; a non-zero exit is recorded, not fatal.
run_example() {
	local name=$1 dir=$2 rc=0
	shift 2
	heading "$name"
	metric_totals >"$work/before" || true
	(cd "$dir" && "$@") || rc=$?
	metric_totals >"$work/after" || true
	metrics_line "$work/before" "$work/after"
	if ((rc != 0)); then
		log "examples: $name exited $rc"
		failed+=("$name")
	fi
}

heading "node: npm ci"
if ! (cd examples/node && npm ci --no-audit --no-fund); then
	log "examples: npm ci failed"
	failed+=("node (npm ci)")
else
	run_example "node: @alicloud/dingtalk + dingtalk-robot-sender (examples/node)" examples/node node index.js
fi

run_example "go: github.com/alibabacloud-go/dingtalk (examples/go)" examples/go env GOWORK=off "${GO:-go}" run .

run_example "go: a robot alert burst with deferred sends (examples/robotburst, about a minute)" \
	examples/robotburst env GOWORK=off "${GO:-go}" run .

heading "servers stopped"
stop_servers
grep -h '^fakedingtalk \(stopped\|robots\):' "$work/fake.log" || true

# What DingTalk saw, from the fake's own counts as it stopped: no robot send
# into a 10-minute block (nor the one past the minute that starts it), and
# no send executed twice (the same body on the same path).
fake_count() { # fake_count WORD: the number before WORD on the fake's summary lines
	sed -n 's/^fakedingtalk \(stopped\|robots\):.* \([0-9][0-9]*\) '"$1"'.*/\2/p' "$work/fake.log" | head -n 1
}
duplicates=$(fake_count 'duplicate sends')
throttled=$(fake_count 'throttled (130101)')
blocks=$(fake_count 'blocks')
if [[ -z $duplicates || -z $throttled || -z $blocks ]]; then
	log "examples: the fake's summary lines are missing or changed"
	failed+=("fake DingTalk's counts")
elif ((duplicates != 0 || throttled != 0 || blocks != 0)); then
	log "examples: the fake DingTalk counted $duplicates duplicate sends, $throttled robot sends throttled (130101), $blocks robot blocks; want 0, 0, 0"
	failed+=("fake DingTalk's counts")
else
	log "fake DingTalk: no send executed twice, no robot send throttled or blocked"
fi
if grep -q '"level":"error"' "$work/proxy.log"; then
	log "dingproxy logged errors:"
	grep '"level":"error"' "$work/proxy.log"
fi

if ((${#failed[@]} > 0)); then
	show_logs
	log ""
	log "examples: FAILED: $(printf '[%s] ' "${failed[@]}")"
	exit 1
fi
log ""
log "examples: all passed"
