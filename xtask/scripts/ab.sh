#!/bin/bash
# A/B of two aoe-ctl binaries on the hot path: the same client (NEW's bench), the same lab,
# the same image, alternating ABBA so drift and page-cache state hit both alike.
#   xtask/scripts/ab.sh OLD_BIN NEW_BIN [ROUNDS] [PATTERNS] [SECONDS]
# The veth peer program comes from the aoe-lab beside NEW_BIN ($AOE_LAB overrides).
# e.g. git worktree add /tmp/old REV && (cd /tmp/old && cp -r ../main/.tools . && cargo build --release -p aoe-ctl)
#      xtask/scripts/ab.sh /tmp/old/target/release/aoe-ctl target/release/aoe-ctl 12 "randread randwrite" 3
# AB_EXPORT_ARGS adds export options to both (e.g. "--direct", "--write-back").
# Prints one line per run (round, old|new, pattern, IOPS, CPU us/IO) and the medians.
set -eu
OLD=$1; NEW=$2; ROUNDS=${3:-8}; PATTERNS=${4:-"randread randwrite"}; SECS=${5:-3}
LAB=${AOE_LAB:-$(dirname "$NEW")/aoe-lab}
ID=ab$$
T=${ID}t; I=${ID}i; IMG=$(mktemp /tmp/aoe-ab-XXXXXX.img)
cleanup() { kill $PEER 2>/dev/null || true; ip netns del $T 2>/dev/null; ip netns del $I 2>/dev/null; rm -f $IMG; }
ip netns add $T; ip netns add $I
trap cleanup EXIT
ip link add $T type veth peer name $I
ip link set $T netns $T; ip link set $I netns $I
ip -n $T link set $T up; ip -n $I link set $I up
dd if=/dev/urandom of=$IMG bs=1M count=256 status=none
ip netns exec $I $LAB peer --iface $I >/dev/null 2>&1 &
PEER=$!
LOG=$(mktemp)
for round in $(seq 1 $ROUNDS); do
  ORDER="old new"; [ $((round % 2)) = 0 ] && ORDER="new old"
  for who in $ORDER; do
    BIN=$OLD; [ $who = new ] && BIN=$NEW
    ip netns exec $T $BIN export --shelf 1 --slot 2 --iface $T --buffers 64 ${AB_EXPORT_ARGS:-} $IMG >/dev/null 2>&1 &
    TP=$!
    sleep 1.5
    for pat in $PATTERNS; do
      ip netns exec $I $NEW bench --iface $I --target e1.2 --pattern $pat --depth 16 \
          --duration $SECS --json 2>/dev/null | tail -1 |
        python3 -c "import json,sys; d=json.load(sys.stdin); print($round, '$who', '$pat', int(d['iops']), round(d['cpu_us_per_io'], 2))" |
        tee -a $LOG
    done
    kill $TP; wait $TP 2>/dev/null || true
    sleep 0.5
  done
done
python3 - $LOG <<'PY'
import statistics as st, sys
d = {}
for l in open(sys.argv[1]):
    r, who, pat, iops, cpu = l.split()
    d.setdefault((pat, who), []).append((int(iops), float(cpu)))
for (pat, who), v in sorted(d.items()):
    print(f"{pat:10} {who}: median {st.median(x for x, _ in v):>9.0f} IOPS, {st.median(y for _, y in v):.2f} us CPU/IO over {len(v)} runs")
PY
rm -f $LOG
