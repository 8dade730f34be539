#!/bin/bash
# Server instructions per small-file request, counted by callgrind: a noise-free meter for
# the per-request cost (wall-clock ratios on a shared 2-core machine vary by +-15%).
#
#   bash benchmarks/instructions.sh            # 200 files, 2,000-entry listing
#   FILES=500 bash benchmarks/instructions.sh
#
# sftpd (from this checkout) runs under `valgrind --tool=callgrind --instr-atstart=no`;
# instrumentation is switched on only around one measured `sftp -b` session (after a warm-up
# session), and a session doing one `ls` is subtracted, so the figures are per file (or per
# entry) of the workload alone, user-space instructions of every server thread. Kernel time
# (system calls, thread wake-ups) is not counted, and under valgrind preadv2(RWF_NOWAIT)
# fails with EAGAIN, so every READ takes the worker path (the get -r figure includes the
# failed page-cache attempt): compare like with like, and confirm with bench.py.
# Needs valgrind and the OpenSSH client. About 2 minutes.
set -euo pipefail
FILES=${FILES:-200}
ENTRIES=${ENTRIES:-2000}
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=$(python3 -c 'import sys; print(sys.executable)')  # the real binary, not a shim
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 77; }
WORK=$(mktemp -d /tmp/sftpd-instr.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/root/src" "$WORK/root/ls" "$WORK/local" "$WORK/keys"
for i in $(seq "$FILES"); do head -c 4096 /dev/urandom >"$WORK/root/src/f$i"; done
cp "$WORK"/root/src/* "$WORK/local/"
(cd "$WORK/root/ls" && for i in $(seq "$ENTRIES"); do : >"entry$i"; done)
ssh-keygen -q -t ed25519 -N '' -f "$WORK/ck"
cat >"$WORK/cfg.toml" <<CFG
[server]
listen = ["127.0.0.1:0"]
host_keys_dir = "$WORK/keys"
# Busy polling would count the loop's instructions while the client runs; the figures
# are about the work per request, so it is off here.
busy_poll_us = 0
[[users]]
name = "bench"
root = "$WORK/root"
authorized_keys_file = "$WORK/ck.pub"
CFG

# count LABEL BATCH: instructions of one measured session running BATCH
count() {
  local out="$WORK/cg.$1"
  (cd "$REPO" && exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out.%p" \
    "$PY" -m sftpd serve --config "$WORK/cfg.toml" >"$WORK/log.$1" 2>&1) &
  local vg=$! port="" pid
  for _ in $(seq 600); do
    port=$(grep -o "listening on 127.0.0.1:[0-9]*" "$WORK/log.$1" | cut -d: -f2 || true)
    [ -n "$port" ] && break
    sleep 0.2
  done
  [ -n "$port" ] || { echo "sftpd did not start under valgrind" >&2; exit 1; }
  pid=$(pgrep -f -n "callgrind-out-file=$out")
  local opts=(-F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
    -o BatchMode=yes -o IdentitiesOnly=yes -o LogLevel=ERROR -i "$WORK/ck" -P "$port")
  sftp "${opts[@]}" -b - bench@127.0.0.1 <<<"$2" >/dev/null  # warm-up: imports, caches
  rm -rf "$WORK/down" "$WORK/root/up"
  callgrind_control -i on "$pid" >/dev/null 2>&1
  sftp "${opts[@]}" -b - bench@127.0.0.1 <<<"$2" >/dev/null
  callgrind_control -i off "$pid" >/dev/null 2>&1
  kill -TERM "$pid"
  wait "$vg" || true
  cat "$out".* | awk '/^totals:/ {s += $2} END {print s}'
}

base=$(count base "ls src/f1")
get=$(count get "get -r src $WORK/down")
put=$(count put "put -r $WORK/local up")
lsl=$(count ls "ls -l ls")
echo "sftpd $(git -C "$REPO" rev-parse --short HEAD), callgrind, user-space instructions:"
echo "  session (connect, kex, auth, one ls): $((base / 1000)) k"
echo "  get -r $FILES x 4 KiB: $(((get - base) / FILES / 1000)) k per file (OPEN, READ, READ, CLOSE)"
echo "  put -r $FILES x 4 KiB: $(((put - base) / FILES / 1000)) k per file (OPEN, WRITE, CLOSE)"
echo "  ls -l of $ENTRIES entries: $(((lsl - base) / ENTRIES)) per entry"
