#!/usr/bin/env bash
# Smoke tests of the `client` and `server` extras, each installed alone in a
# fresh venv, as a model server or a feature server host installs them:
#
#   client: FeatureClient and `featurestore get` against a live server (run by
#           the full install, .venv); commands that need more say which extra;
#   server: `featurestore serve` of a repo applied and materialized by .venv,
#           queried with .venv's client.
#
#   bash scripts/smoke_extras.sh                     # pinned versions (.ci/constraints.txt)
#   SMOKE_CONSTRAINTS= bash scripts/smoke_extras.sh  # the newest releases the extras allow
#   SMOKE_CONSTRAINTS= SMOKE_PINS="numpy==1.26.4 pandas==2.0.3" bash scripts/smoke_extras.sh
#                                                    # other versions (constraints, both venvs)
#
# CI runs it after the test suite (.ci/run). Needs .venv (scripts/setup.sh runs
# first) and redis-server; about 1-2 minutes, most of it pip.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
constraints=${SMOKE_CONSTRAINTS-.ci/constraints.txt}
bash scripts/setup.sh >&2
full=$root/.venv/bin
work=$(mktemp -d "${TMPDIR:-/tmp}/featurestore-smoke.XXXXXX")
servers=()

cleanup() {
    for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${servers[@]}"; do wait "$pid" 2>/dev/null || true; done
    "$full/featurestore" down --repo "$work/repo" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

say() { echo "smoke: $*" >&2; }
fail() { echo "smoke: FAILED: $*" >&2; exit 1; }

# ------------------------------------------------------------ the two venvs
# The package is built once, from the files the Dockerfile copies, so the
# wheel holds what an install from PyPI would.
mkdir -p "$work/src"
cp -r pyproject.toml README.md featurestore dsl serving streaming "$work/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
"$full/python" -m pip wheel -q --disable-pip-version-check --no-deps -w "$work/dist" "$work/src" \
    >"$work/wheel.log" 2>&1 || { cat "$work/wheel.log" >&2; fail "building the wheel"; }
wheel=$(ls "$work"/dist/featurestore-*.whl)
tr ' ' '\n' <<<"${SMOKE_PINS:-}" >"$work/pins.txt"

install() {  # install EXTRA: a fresh venv with featurestore[EXTRA] and nothing else
    local extra=$1 venv=$work/venv-$1
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        ${constraints:+-c "$root/$constraints"} -c "$work/pins.txt" "$wheel[$extra]"
}
say "installing the client and server extras into fresh venvs${constraints:+ (-c $constraints)}"
install client >"$work/client.log" 2>&1 & client_install=$!
install server >"$work/server.log" 2>&1 & server_install=$!
wait $client_install || { cat "$work/client.log" >&2; fail "pip install featurestore[client]"; }
wait $server_install || { cat "$work/server.log" >&2; fail "pip install featurestore[server]"; }
client=$work/venv-client/bin
server=$work/venv-server/bin
for extra in client server; do
    say "$extra: $("$work/venv-$extra/bin/python" -m pip freeze --disable-pip-version-check \
        | grep -iE '^(grpcio|protobuf|numpy|pandas|pyarrow|redis|hiredis|pydantic|pyyaml|prometheus.client)=' | tr '\n' ' ')"
done
# A model server's install stays small: no compiler, DuckDB, Feast, Flink or torch.
"$client/python" - <<'EOF' || fail "the client extra pulls in packages it does not need"
import importlib.util
extra = [m for m in ("lark", "duckdb", "feast", "pyflink", "torch", "redis", "yaml")
         if importlib.util.find_spec(m)]
assert not extra, f"installed with featurestore[client]: {extra}"
EOF
"$server/python" - <<'EOF' || fail "the server extra pulls in packages it does not need"
import importlib.util
extra = [m for m in ("lark", "duckdb", "feast", "pyflink", "torch") if importlib.util.find_spec(m)]
assert not extra, f"installed with featurestore[server]: {extra}"
EOF

# ------------------------------------------------------------ a small repo
say "a small repo, applied and materialized by .venv"
"$full/featurestore" init "$work/repo" >/dev/null
(cd "$work/repo" && "$full/python" generate_data.py --events 2000 --users 50 --days 1 >/dev/null)
"$full/featurestore" apply --repo "$work/repo" >/dev/null
"$full/featurestore" materialize --repo "$work/repo" >/dev/null

free_port() {
    "$full/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

serve() {  # serve BIN PORT LOG [ARGS]: start a server, wait until it takes connections
    local bin=$1 port=$2 log=$3
    shift 3
    "$bin/featurestore" serve --repo "$work/repo" --port "$port" --workers 1 "$@" >"$log" 2>&1 &
    servers+=($!)
    for _ in $(seq 150); do
        kill -0 "${servers[-1]}" 2>/dev/null || { cat "$log" >&2; fail "$bin/featurestore serve exited"; }
        "$full/python" -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2).close()" \
            2>/dev/null && return 0
        sleep 0.2
    done
    cat "$log" >&2
    fail "$bin/featurestore serve did not listen on $port within 30 s"
}

# One lookup through the Python client: a known user has values, an unknown
# one is NOT_FOUND (its counts 0), and the conversions the extra promises work.
read -r -d '' lookup <<'EOF' || true
import sys
from serving.client import FeatureClient, FieldStatus
with FeatureClient(sys.argv[1], timeout=10) as client:
    got = client.get_online_features(service="fraud_v1",
                                     entities={"user_id": ["user_000000", "nobody"]})
status = got.statuses
assert status["country"][0] == FieldStatus.PRESENT and status["purchases_1d"][0] == FieldStatus.PRESENT, status
counts = ("purchases_1h", "purchases_1d", "big_1d")   # 0 for an entity never seen
assert all(status[n][1] == (FieldStatus.PRESENT if n in counts else FieldStatus.NOT_FOUND)
           for n in got.feature_names), status
values = got.to_dict()
assert values["purchases_1d"][0] > 0 and values["purchases_1d"][1] == 0, values
assert values["country"][1] is None, values
if sys.argv[2:] == ["pandas"]:
    frame = got.to_pandas()
    assert list(frame["user_id"]) == ["user_000000", "nobody"], frame
print(f"user_000000: purchases_1d={values['purchases_1d'][0]} country={values['country'][0]}")
EOF

expect_extra_hint() {  # expect_extra_hint WHAT CMD...: exit 1, one line naming `pip install`, no traceback
    local what=$1 out rc
    shift
    set +e
    out=$("$@" 2>&1 </dev/null)
    rc=$?
    set -e
    if [ "$rc" -ne 1 ] || ! grep -q "pip install" <<<"$out" || grep -q "Traceback" <<<"$out"; then
        fail "$what: expected exit 1 and a 'pip install' hint without a traceback; got exit $rc:
$out"
    fi
    say "$what: exit 1, $(head -1 <<<"$out")"
}

# ------------------------------------------------------------ client alone
port=$(free_port)
serve "$full" "$port" "$work/serve-full.log"
say "client: FeatureClient against .venv's server on port $port"
"$client/python" -c "$lookup" "127.0.0.1:$port" pandas >&2 || fail "client: FeatureClient lookup"
out=$("$client/featurestore" get --target "127.0.0.1:$port" --service fraud_v1 \
      --entity user_id=user_000000,nobody 2>&1) || { echo "$out" >&2; fail "client: featurestore get"; }
grep -q user_000000 <<<"$out" || { echo "$out" >&2; fail "client: featurestore get printed no row"; }
say "client: featurestore get --target: ok"
(cd "$work/repo" && expect_extra_hint "client: featurestore get (no --target)" \
    "$client/featurestore" get --service fraud_v1 --entity user_id=user_000000)
expect_extra_hint "client: featurestore check" "$client/featurestore" check --repo "$work/repo"

# ------------------------------------------------------------ server alone
port2=$(free_port)
metrics=$(free_port)
serve "$server" "$port2" "$work/serve-server.log" --metrics-port "$metrics"
say "server: .venv's client against the server-only install on port $port2"
"$full/python" -c "$lookup" "127.0.0.1:$port2" >&2 || fail "server: lookup through the server extra's server"
"$full/python" - "127.0.0.1:$port2" "$metrics" <<'EOF' >&2 || fail "server: health or /metrics"
import sys, urllib.request
from serving.client import FeatureClient
with FeatureClient(sys.argv[1]) as client:
    assert client.health() == "SERVING"
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[2]}/metrics", timeout=10).read().decode()
assert "featurestore_grpc_requests" in text, text[:2000]
print("health SERVING; /metrics counts the calls")
EOF
"$full/featurestore" get --target "127.0.0.1:$port2" --service fraud_v1 \
    --entity user_id=user_000000 >/dev/null || fail "server: featurestore get"
expect_extra_hint "server: featurestore check" "$server/featurestore" check --repo "$work/repo"
say "ok: the client and server extras work alone"
