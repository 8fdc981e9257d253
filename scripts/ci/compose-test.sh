#!/usr/bin/env bash
# The CPU compose stack end to end, as an operator would run it, on this machine only:
#
#   1. builds the CPU images from the workspace's debug binaries (deploy/build-cpu-image.sh:
#      FROM scratch, nothing pulled),
#   2. brings up deploy/docker-compose.yml + docker-compose.cpu.yml under a fresh project name
#      (coordinator, CPU learner, box reward server, two rollout workers, Prometheus),
#   3. waits for every healthcheck (platter health: gRPC health / HTTP),
#   4. submits a tiny DAPO experiment (synthetic data, the tiny SFT policy) with `platter
#      submit` through the coordinator's published port,
#   5. stops one rollout-worker container while a step is being generated and checks that the
#      experiment still finishes every step (its lease expires and goes to the other worker, or
#      is cancelled as surplus when the other worker fills the batch first),
#   6. queries Prometheus (which scraped every service over the compose network) for the
#      services' metrics and the RolloutWorkerGone alert, and reaches it from a container on
#      the compose network,
#   7. tears everything down (containers, volumes, network, the CI image tags, temp files),
#      from a trap, also on failure or timeout.
#
# Usage: scripts/ci/compose-test.sh [--keep] [--no-cargo]
#   --keep      leave the stack up for debugging (no teardown)
#   --no-cargo  use the binaries already in target/debug instead of running `cargo build` first
# Env:   COMPOSE_TEST_TIMEOUT (seconds, default 900) bounds steps 1-6.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"

log() { echo "compose-test [$(date +%H:%M:%S)]: $*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

if docker compose version >/dev/null 2>&1; then
  compose_bin=(docker compose)
else
  compose_bin=(docker-compose)
fi

# ---------------------------------------------------------------------------------------------
# Inner part: runs under `timeout`; the outer part below owns the cleanup.
# ---------------------------------------------------------------------------------------------
if [ "${1:-}" = "--inner" ]; then
  : "${CT_PROJECT:?}" "${CT_WORK:?}" "${CT_IMAGE:?}" "${CT_PROM_IMAGE:?}"
  dc() { "${compose_bin[@]}" --env-file "$CT_WORK/ci.env" -p "$CT_PROJECT" \
      -f deploy/docker-compose.yml -f deploy/docker-compose.cpu.yml "$@"; }
  platter="${CARGO_TARGET_DIR:-$repo/target}/debug/platter"

  if [ "${CT_NO_CARGO:-0}" = 1 ]; then
    log "using the binaries in target/debug as they are (--no-cargo)"
  else
    log "building the service binaries (debug profile)"
    cargo build --quiet --bins -p platter-coordinator -p platter-reward -p platter-learner \
      -p platter-rollout -p platter
  fi

  log "building the CPU images"
  deploy/build-cpu-image.sh --profile debug --tag "$CT_IMAGE" --prometheus-tag "$CT_PROM_IMAGE"

  log "synthetic data and the experiment"
  mkdir -p "$CT_WORK/data" "$CT_WORK/checkpoints" "$CT_WORK/models"
  "$platter" data synth --seed 7 --n 48 --width 160 --height 120 --policy-size 224 \
    --out "$CT_WORK/data/synth" >/dev/null
  # The containers run as an unprivileged user.
  chmod -R a+rX "$CT_WORK/data"
  chmod 0777 "$CT_WORK/checkpoints"
  cat > "$CT_WORK/exp.toml" <<'TOML'
name = "compose-ci"
algorithm = "dapo"
steps = 4
seed = 1
[data]
manifest = "/data/synth/manifest.jsonl"
image_size = 224
[rollout]
group_size = 4
lease_timeout_seconds = 5.0
[sampling]
prompts_per_step = 8
max_generation_rounds = 20
on_round_limit = "train_partial"
[overlong]
max_response_tokens = 96
[model]
policy = "/opt/platter/assets/tiny-sft"
[learner]
ranks = 1
micro_batch_size = 8
checkpoint_dir = "/var/lib/platter/checkpoints/compose-ci"
checkpoint_every = 2
TOML

  log "starting the stack (project $CT_PROJECT)"
  dc up -d >"$CT_WORK/up.log" 2>&1 || { cat "$CT_WORK/up.log" >&2; fail "compose up"; }

  health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$1" 2>/dev/null || echo missing; }
  services=(coordinator learner-cpu reward-server-cpu rollout-worker-cpu-0 rollout-worker-cpu-1)
  for svc in "${services[@]}"; do
    cid="$(dc ps -q "$svc")"
    [ -n "$cid" ] || fail "service $svc has no container"
    for _ in $(seq 1 120); do
      state="$(health "$cid")"
      [ "$state" = healthy ] && break
      if [ "$state" = unhealthy ] || [ "$state" = exited ]; then
        dc logs --no-color --tail=50 "$svc" >&2 || true
        fail "$svc is $state"
      fi
      sleep 1
    done
    [ "$(health "$cid")" = healthy ] || { dc logs --no-color --tail=50 "$svc" >&2; fail "$svc not healthy after 120 s"; }
    log "$svc healthy"
  done

  prom="http://127.0.0.1:$CT_PROMETHEUS_PORT"
  query() { curl -fsS --get --data-urlencode "query=$1" "$prom/api/v1/query"; }
  value() { python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "none")'; }
  # RolloutWorkerGone compares with the most workers Prometheus has seen up: make sure it has
  # seen both before one goes (steps are short on the tiny setup).
  seen=none
  for _ in $(seq 1 60); do
    seen="$(query 'count(up{job="rollout-worker"} == 1)' 2>/dev/null | value 2>/dev/null)" || seen=none
    [ "${seen%%.*}" = 2 ] && break
    sleep 1
  done
  [ "${seen%%.*}" = 2 ] || fail "Prometheus never saw both rollout workers up (saw $seen)"
  sleep 11 # one 10 s step of the alert's max_over_time subquery with both up
  coordinator="http://127.0.0.1:$CT_COORDINATOR_PORT"
  out="$("$platter" submit "$CT_WORK/exp.toml" --coordinator "$coordinator" --token "$CT_TOKEN")"
  id="$(printf '%s\n' "$out" | awk '{print $1; exit}')"
  log "submitted $id"

  # `exp-00001  running    compose-ci  step 1/4  policy v1 ...`
  # (The whole output is read: closing the pipe early would break platter's stdout.)
  status_line() {
    local out
    out="$("$platter" status "$id" --coordinator "$coordinator" 2>/dev/null)" || return 0
    printf '%s\n' "${out%%$'\n'*}"
  }
  steps_done() { status_line | sed -n 's/.* step \([0-9]*\)\/[0-9]*.*/\1/p'; }
  state_of() { status_line | awk '{print $2}'; }

  # Stop a worker right after the first step finished: the second step is being generated
  # then, and both workers hold leases.
  for _ in $(seq 1 1200); do
    done_steps="$(steps_done)"
    [ "${done_steps:-0}" -ge 1 ] && break
    case "$(state_of)" in failed|cancelled) "$platter" status "$id" --coordinator "$coordinator" >&2; fail "experiment ended early" ;; esac
    sleep 0.2
  done
  [ "${done_steps:-0}" -ge 1 ] || fail "no step finished in 240 s"
  stopped_cid="$(dc ps -q rollout-worker-cpu-0)"
  # Steps are short on the tiny setup: wait until the worker really holds a lease (its own
  # /metrics, read from the host at the container's address), so stopping it loses work.
  worker_ip="$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$stopped_cid" | awk '{print $1}')"
  active_leases() {
    python3 - "http://$worker_ip:9104/metrics" <<'PY' 2>/dev/null || echo 0
import sys, urllib.request
body = urllib.request.urlopen(sys.argv[1], timeout=2).read().decode()
print(int(sum(float(l.rsplit(" ", 1)[1]) for l in body.splitlines()
              if l.startswith("platter_rollout_active_leases"))))
PY
  }
  held=0
  for _ in $(seq 1 600); do
    held="$(active_leases)"
    [ "$held" -ge 1 ] && break
    sleep 0.1
  done
  [ "$held" -ge 1 ] || fail "rollout-worker-cpu-0 held no lease within 60 s of step $done_steps"
  docker stop -t 2 "$stopped_cid" >/dev/null
  log "stopped rollout-worker-cpu-0 holding $held lease(s) after step $done_steps of 4"

  for _ in $(seq 1 300); do
    state="$(state_of)"
    case "$state" in succeeded|failed|cancelled) break ;; esac
    sleep 1
  done
  "$platter" watch "$id" --coordinator "$coordinator" >"$CT_WORK/steps.txt" 2>&1 || true
  cat "$CT_WORK/steps.txt" >&2
  [ "$state" = succeeded ] || fail "experiment ended $state"
  expired="$(sed -n 's/.* expired \([0-9]*\) .*/\1/p' "$CT_WORK/steps.txt" | awk '{s += $1} END {print s + 0}')"
  cancelled="$(sed -n 's/.* cancelled \([0-9]*\) .*/\1/p' "$CT_WORK/steps.txt" | awk '{s += $1} END {print s + 0}')"
  # The stopped worker held a lease (checked above). Either it expired and was leased again, or
  # the other worker filled the batch first and the coordinator cancelled it with the other
  # surplus leases: both end with nothing lost and nothing trained twice.
  [ $((expired + cancelled)) -ge 1 ] || fail "the stopped worker's lease was neither expired nor cancelled"
  log "all 4 steps finished after the stop; leases expired and leased again: $expired, cancelled as surplus: $cancelled"
  ls "$CT_WORK/checkpoints/compose-ci" >/dev/null 2>&1 \
    || fail "no checkpoint under the checkpoints volume"
  log "learner checkpoints on the host: $(ls "$CT_WORK/checkpoints/compose-ci" | tr '\n' ' ')"

  # Let Prometheus take a scrape after the last step.
  sleep 6
  for job in coordinator learner reward-server; do
    v="$(query "up{job=\"$job\"}" | value)"
    [ "$v" = 1 ] || fail "Prometheus: up{job=\"$job\"} is $v"
  done
  workers="$(query 'count(up{job="rollout-worker"} == 1)' | value)"
  [ "$workers" = 1 ] || fail "Prometheus sees $workers rollout workers, expected the 1 left"
  for metric in platter_steps_total platter_learner_trained_tokens_total \
      platter_reward_groups_scored_total platter_rollout_generated_tokens_total; do
    v="$(query "sum($metric)" | value)"
    python3 -c "import sys; sys.exit(0 if float('$v' if '$v' != 'none' else 0) > 0 else 1)" \
      || fail "Prometheus: sum($metric) is $v"
    log "Prometheus: sum($metric) = $v"
  done
  steps="$(query 'max(platter_steps_total)' | value)"
  [ "${steps%%.*}" = 4 ] || fail "Prometheus: platter_steps_total is $steps, expected 4"
  alert=none
  for _ in $(seq 1 30); do
    alert="$(query 'ALERTS{alertname="RolloutWorkerGone"}' | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["metric"]["alertstate"] if r else "none")')"
    [ "$alert" != none ] && break
    sleep 2
  done
  [ "$alert" != none ] || fail "the RolloutWorkerGone alert did not trigger"
  log "Prometheus: RolloutWorkerGone is $alert"
  # From inside the compose network, by service name.
  docker run --rm --network "${CT_PROJECT}_default" "$CT_IMAGE" \
    platter health --http http://prometheus:9090/-/ready \
    || fail "Prometheus is not reachable as prometheus:9090 on the compose network"
  log "Prometheus reachable on the compose network"
  log "PASSED"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# Outer part: names, ports and the cleanup trap; the test itself runs bounded by `timeout`.
# ---------------------------------------------------------------------------------------------
keep=0
export CT_NO_CARGO=0
for arg in "$@"; do
  case "$arg" in
    --keep) keep=1 ;;
    --no-cargo) CT_NO_CARGO=1 ;;
    *) log "FAILED: unknown argument '$arg'"; exit 2 ;;
  esac
done
command -v docker >/dev/null 2>&1 || { log "FAILED: docker is not installed"; exit 1; }
docker info >/dev/null 2>&1 || { log "FAILED: the Docker daemon is not reachable"; exit 1; }

suffix="$(date +%s)-$$"
export CT_PROJECT="platter-ci-$suffix"
export CT_IMAGE="platter:cpu-ci-$suffix"
export CT_PROM_IMAGE="platter-prometheus:cpu-ci-$suffix"
export CT_WORK
CT_WORK="$(mktemp -d "${TMPDIR:-/tmp}/platter-compose-test.XXXXXX")"
chmod 0755 "$CT_WORK"
export CT_TOKEN
CT_TOKEN="ci-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
export CT_COORDINATOR_PORT CT_PROMETHEUS_PORT
CT_COORDINATOR_PORT="$(free_port)"
CT_PROMETHEUS_PORT="$(free_port)"
cat > "$CT_WORK/ci.env" <<EOF
PLATTER_TOKEN=$CT_TOKEN
GF_SECURITY_ADMIN_PASSWORD=unused-in-ci
PLATTER_CPU_IMAGE=$CT_IMAGE
PLATTER_CPU_PROMETHEUS_IMAGE=$CT_PROM_IMAGE
PLATTER_DATA_DIR=$CT_WORK/data
PLATTER_CHECKPOINTS_DIR=$CT_WORK/checkpoints
PLATTER_MODELS_DIR=$CT_WORK/models
PLATTER_COORDINATOR_PORT=$CT_COORDINATOR_PORT
PLATTER_PROMETHEUS_PORT=$CT_PROMETHEUS_PORT
RUST_LOG=info
EOF

cleanup() {
  local rc=$?
  if [ "$keep" = 1 ]; then
    log "--keep: leaving project $CT_PROJECT up (work dir $CT_WORK)"
    exit "$rc"
  fi
  if [ "$rc" != 0 ]; then
    log "logs of the stack (last 40 lines per service):"
    "${compose_bin[@]}" --env-file "$CT_WORK/ci.env" -p "$CT_PROJECT" -f deploy/docker-compose.yml \
      -f deploy/docker-compose.cpu.yml logs --no-color --tail=40 >&2 2>/dev/null || true
  fi
  log "tearing down $CT_PROJECT"
  "${compose_bin[@]}" --env-file "$CT_WORK/ci.env" -p "$CT_PROJECT" -f deploy/docker-compose.yml \
    -f deploy/docker-compose.cpu.yml down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
  # Anything the project left behind (a failed `up` can leave containers without the network).
  docker ps -aq --filter "label=com.docker.compose.project=$CT_PROJECT" | xargs -r docker rm -f >/dev/null 2>&1 || true
  docker rmi "$CT_IMAGE" "$CT_PROM_IMAGE" >/dev/null 2>&1 || true
  # Files the containers wrote belong to their user; we are root in CI or own the directory.
  rm -rf "$CT_WORK" 2>/dev/null || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

limit="${COMPOSE_TEST_TIMEOUT:-900}"
rc=0
timeout --kill-after=20 "$limit" "$0" --inner || rc=$?
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
  log "FAILED: timed out after $limit s"
fi
exit "$rc"
