#!/bin/bash
# Storage, cold: xtask/scripts/cold.sh IMAGE (on the machine's disk, not tmpfs; make it first with
#   dd if=/dev/zero of=IMAGE bs=4M count=4096 oflag=direct  # 16 GiB of real extents)
# Cold random read and durable random write, 1 KiB at depth 16, 16 GiB image with real extents, page cache dropped
# before each target; fio on the same file as the disk's limit.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd); BIN=$ROOT/target/release/aoe-ctl; LAB=$ROOT/target/release/aoe-lab
IMG=${1:?usage: cold.sh IMAGE}; T=cold$$t; I=cold$$i
ip netns add $T; ip netns add $I
ip link add $T netns $T type veth peer name $I netns $I
ip -n $T link set $T up; ip -n $I link set $I up
ip netns exec $I $LAB peer --iface $I >/dev/null 2>&1 & PEER=$!
rd() { awk '$3=="vda"{print $6*512}' /proc/diskstats; }
run() { name=$1; shift
  sync; echo 3 > /proc/sys/vm/drop_caches
  ip netns exec $T "$@" >/tmp/cold-target.log 2>&1 & TP=$!; sleep 2
  b0=$(rd)
  out=$(ip netns exec $I $BIN bench --iface $I --target e1.2 --pattern $PAT --depth 16 --sectors 2 --duration 5 --json 2>/dev/null | tail -1)
  b1=$(rd)
  kill $TP; wait $TP 2>/dev/null
  python3 -c "import json,sys; d=json.loads(sys.argv[1]); served=d['iops']*5*1024; print(f\"$name: {d['iops']:.0f} IOPS, p99 {d['p99_us']:.0f} us, timeouts {d['timeouts']}, disk bytes read per byte moved {($b1-$b0)/served:.1f}\")" "$out"
}
PAT=randread
run "aoe-ctl default" $BIN export --shelf 1 --slot 2 --iface $T $IMG
run "aoe-ctl --direct" $BIN export --shelf 1 --slot 2 --iface $T --direct $IMG
run "vblade" vblade 1 2 $T $IMG
run "vblade -d" vblade -d 1 2 $T $IMG
sync; echo 3 > /proc/sys/vm/drop_caches
fio --name=limit --filename=$IMG --rw=randread --bs=1k --iodepth=16 --ioengine=io_uring --direct=1 --runtime=5 --time_based --output-format=terse 2>/dev/null | awk -F';' '{print "fio randread 1k QD16 O_DIRECT io_uring: " $8 " IOPS"}'
PAT=randwrite
run "aoe-ctl --sync" $BIN export --shelf 1 --slot 2 --iface $T --sync $IMG
run "aoe-ctl --direct --sync" $BIN export --shelf 1 --slot 2 --iface $T --direct --sync $IMG
run "vblade -s" vblade -s 1 2 $T $IMG
run "vblade -d -s" vblade -d -s 1 2 $T $IMG
sync; echo 3 > /proc/sys/vm/drop_caches
fio --name=limit --filename=$IMG --rw=randwrite --bs=1k --iodepth=16 --ioengine=io_uring --direct=1 --sync=dsync --runtime=5 --time_based --output-format=terse 2>/dev/null | awk -F';' '{print "fio randwrite 1k QD16 O_DIRECT|O_DSYNC io_uring: " $49 " IOPS"}'
kill $PEER; ip netns del $T; ip netns del $I
