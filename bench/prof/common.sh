# Sourced by the scripts in bench/prof: paths and helpers shared by them.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
W=$ROOT/target/release/examples/wsbench
SLUICE=${SLUICE:-$ROOT/target/release/sluice}
[ -x "$W" ] || { echo "build first: cargo build --release --bin sluice --example wsbench" >&2; exit 1; }
# start_target sluice|nginx BASE_PORT DIR: the echo server on BASE_PORT, the target on
# BASE_PORT+1 (sluice's admin on BASE_PORT+2), configured as bench/run.sh does. Sets
# EP (echo pid), SP (sluice or NGINX master pid) and PIDS (comma-separated pids whose
# CPU counts: sluice, or NGINX's workers).
start_target() {
  local who=$1 base=$2 dir=$3
  rm -rf "$dir"; mkdir -p "$dir/nginx-tmp"
  "$W" echo --listen 127.0.0.1:$base 2>/dev/null & EP=$!
  if [ "$who" = nginx ]; then
    sed -e "s#@DIR@#$dir#g; s/@NGINX_PORT@/$((base+1))/; s/@ECHO_PORT@/$base/" "$ROOT/bench/nginx.conf" > "$dir/n.conf"
    nginx -p "$dir" -c "$dir/n.conf" 2>"$dir/err" & SP=$!
    sleep 1.5; PIDS=$(pgrep -P $SP | paste -sd,)
  else
    sed -e "s/@SLUICE_PORT@/$((base+1))/; s/@SLUICE_ADMIN_PORT@/$((base+2))/; s/@ECHO_PORT@/$base/" "$ROOT/bench/sluice.toml" > "$dir/s.toml"
    RUST_LOG=${SLUICE_LOG:-info} ${WRAP:-} "$SLUICE" run --config "$dir/s.toml" 2>"$dir/log" >/dev/null & SP=$!
    for _ in $(seq 60); do sleep 0.5; nc -z 127.0.0.1 $((base+1)) 2>/dev/null && break; done
    PIDS=$SP
  fi
  URL=ws://127.0.0.1:$((base+1))/t/bench/echo
}
stop_target() { kill $SP $EP 2>/dev/null; wait 2>/dev/null; }
