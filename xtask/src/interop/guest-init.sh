#!/bin/busybox sh
# /init of the interop guest: Linux's own aoe driver against the target on the host.
# Parameters arrive as environment variables from the kernel command line:
#   mtu, target (e.g. e1.2), pattern_mb (size), pattern_at_mb (offset), fs_kb, file_mb.
# Every result line starts with "AOE-GUEST"; the host parses them.

/bin/busybox mkdir -p /proc /sys /dev /mnt /tmp
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

say() { echo "AOE-GUEST $*"; }
fail() {
	say "FAIL $* ($(dmesg | tail -n 3 | tr '\n' ' '))"
	poweroff -f
}
now() { cut -d' ' -f1 /proc/uptime; }
mbs() { awk -v mb="$1" -v a="$2" -v b="$3" 'BEGIN { d = b - a; if (d <= 0) d = 0.01; printf "%.1f", mb / d }'; }

# ext4 wants a crc32c driver even for ext2.
for m in virtio_pci virtio_net crc32c_generic ext4; do
	modprobe $m || fail "modprobe $m"
done
i=0
while [ ! -e /sys/class/net/eth0 ]; do
	i=$((i + 1))
	[ $i -gt 100 ] && fail "no eth0"
	sleep 0.1
done
ip link set eth0 mtu "$mtu" up || fail "cannot set MTU $mtu"
modprobe aoe aoe_iflist=eth0 || fail "modprobe aoe"

dev=/dev/etherd/$target
sys="/sys/block/etherd!$target"
i=0
while [ ! -b "$dev" ]; do
	i=$((i + 1))
	[ $i -gt 300 ] && fail "$dev did not appear"
	[ $((i % 20)) -eq 0 ] && echo >/dev/etherd/discover
	sleep 0.1
done
say "device $dev"
mkdir -p /sys/kernel/debug && mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
# If the I/O stalls, say what the driver thinks before the host gives up on us.
(
	sleep "${stall_after:-60}"
	say "STALL $(dmesg | tail -n 8 | tr '\n' '|')"
	say "STALL-DEBUG $(cat /sys/kernel/debug/aoe/$target 2>/dev/null | tr '\n' '|')"
) &
say "size $(cat "$sys/size")"
# Bytes per frame the driver settled on: 17 sectors (8704) at MTU 9000.
say "payload $(cat "$sys/payload" 2>/dev/null)"

dd if=/dev/urandom of=/tmp/pattern bs=1M count="$pattern_mb" 2>/dev/null || fail "no pattern"
say "pattern $(sha256sum /tmp/pattern | cut -d' ' -f1)"
t0=$(now)
dd if=/tmp/pattern of="$dev" bs=1M seek="$pattern_at_mb" oflag=direct 2>/dev/null || fail "O_DIRECT write"
t1=$(now)
dd if="$dev" of=/tmp/back bs=1M skip="$pattern_at_mb" count="$pattern_mb" iflag=direct 2>/dev/null || fail "O_DIRECT read"
t2=$(now)
say "write_mbs $(mbs "$pattern_mb" "$t0" "$t1")"
say "read_mbs $(mbs "$pattern_mb" "$t1" "$t2")"
cmp -s /tmp/pattern /tmp/back || fail "pattern read back differs"
say "readback ok"
rm /tmp/back

size=$(cat "$sys/size")
dd if="$dev" of=/tmp/last bs=512 skip=$((size - 1)) count=1 iflag=direct 2>/dev/null || fail "last sector unreadable"
[ "$(wc -c </tmp/last)" -eq 512 ] || fail "last sector short"
say "last ok"

mke2fs -F -b 1024 "$dev" "$fs_kb" >/dev/null 2>&1 || fail "mke2fs"
mount -t ext2 "$dev" /mnt 2>/tmp/err || fail "mount: $(cat /tmp/err)"
dd if=/tmp/pattern of=/mnt/file bs=1M count="$file_mb" 2>/dev/null || fail "writing the file"
say "file $(sha256sum /mnt/file | cut -d' ' -f1)"
umount /mnt || fail "umount"
sync
echo 3 >/proc/sys/vm/drop_caches
mount -t ext2 -o ro "$dev" /mnt || fail "remount"
say "file_again $(sha256sum /mnt/file | cut -d' ' -f1)"
umount /mnt
say "driver $(cat /sys/kernel/debug/aoe/$target 2>/dev/null | tr '\n' '|')"
say "DONE"
poweroff -f
