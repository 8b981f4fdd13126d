# Shared by scripts/demo and the benchmarks: build the binaries and run the
# test rig (`airgap-testbed serve`: a real docker-registry and a k3s release
# server on loopback, seeded with generated images, and with --containerd a
# private containerd) until the script exits.

repo_root() { cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd; }

# build_binaries PROFILE: builds airgap and airgap-testbed; sets AIRGAP, TESTBED.
build_binaries() {
  local profile=${1:-dev} dir=debug
  [ "$profile" = release ] && dir=release
  cargo build --quiet --profile "$profile" -p airgap -p airgap-testbed
  AIRGAP="$ROOT/target/$dir/airgap"
  TESTBED="$ROOT/target/$dir/airgap-testbed"
  K3S_STANDIN="$ROOT/target/$dir/k3s-standin"
}

# start_testbed DIR [serve args...]: starts the rig in the background, waits
# for DIR/testbed.env and sources it (REGISTRY, RELEASE_URL, K3S_VERSION).
start_testbed() {
  local dir=$1; shift
  mkdir -p "$dir"
  "$TESTBED" serve --dir "$dir" "$@" >"$dir/serve.out" 2>"$dir/serve.err" &
  TESTBED_PID=$!
  for _ in $(seq 1 600); do
    [ -f "$dir/testbed.env" ] && break
    if ! kill -0 "$TESTBED_PID" 2>/dev/null; then
      cat "$dir/serve.err" >&2
      echo "airgap-testbed exited early" >&2
      return 1
    fi
    sleep 0.2
  done
  [ -f "$dir/testbed.env" ] || { echo "airgap-testbed did not come up" >&2; return 1; }
  # shellcheck disable=SC1091
  . "$dir/testbed.env"
}

stop_testbed() {
  if [ -n "${TESTBED_PID:-}" ]; then
    kill "$TESTBED_PID" 2>/dev/null || true
    wait "$TESTBED_PID" 2>/dev/null || true
    TESTBED_PID=
  fi
}
