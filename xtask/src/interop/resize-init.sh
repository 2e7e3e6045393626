#!/bin/busybox sh
# /init of the resize guest: Linux's aoe driver with ext4 mounted on e1.2 while the host grows
# the image under the running target, twice: once doing nothing more (the guest's revalidate
# sends the IDENTIFY that makes the target look), once with `aoe-ctl resize` (which also
# announces). Each time the guest revalidates, sees the new size, grows the mounted
# filesystem with resize2fs; at the end a file that needs the new space is written and read
# back after a remount.
# Kernel command line: target (e1.2), start_mb, grow1_mb, grow2_mb (the image's sizes).
# "AOE-GUEST HOST <n> grow|grow-resize <MiB>" asks the host to grow the image; the host does,
# then writes "ACK <n> ok" (or "error") to the console, and the guest waits for that.
# Every other result line starts with "AOE-GUEST"; the host parses them.

/bin/busybox mkdir -p /proc /sys /dev /mnt /tmp
/bin/busybox --install -s /bin
# Debian's e2fsprogs in /sbin before busybox's stand-ins.
export PATH=/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

say() { echo "AOE-GUEST $*"; }
fail() {
	say "FAIL $* ($(dmesg | tail -n 4 | tr '\n' ' '))"
	poweroff -f
}
stty -echo 2>/dev/null
asked=0
host() {
	asked=$((asked + 1))
	say "HOST $asked $*"
	while read -r -t 120 word n how; do
		[ "$word $n" = "ACK $asked" ] || continue
		[ "$how" = ok ] || fail "the host could not $*"
		return 0
	done
	fail "the host did not acknowledge: $*"
}
now() { cut -d' ' -f1 /proc/uptime; }
until_ok() {
	n=$1
	shift
	while ! "$@" 2>/dev/null; do
		n=$((n - 1))
		[ $n -le 0 ] && return 1
		sleep 0.1
	done
}
dev=/dev/etherd/$target
sys="/sys/block/etherd!$target"
size() { cat "$sys/size"; }
fs_kb() { df -Pk /mnt | awk 'NR == 2 { print $2 }'; }
has_size() { [ "$(size)" = "$1" ]; }
# What the aoe driver and the block layer said since the last call, one line.
mark=0
drvlog() {
	say "dmesg $1: $(dmesg | tail -n +$((mark + 1)) | grep -E 'aoe|etherd|EXT4' | sed 's/^\[ *[0-9.]*\] //' | head -n 8 | tr '\n' '|')"
	mark=$(dmesg | wc -l)
}
# Grow the image on the host ($1: grow or grow-resize, $2: MiB), then revalidate and grow
# the mounted filesystem.
grow() {
	want=$(($2 * 2048))
	host "$1" "$2"
	say "$1: before revalidate the driver says $(size) sectors"
	echo "$target" >/dev/etherd/revalidate || fail "$1: revalidate"
	until_ok 300 has_size "$want" || fail "$1: $(size) sectors after revalidate, not $want"
	before=$(fs_kb)
	resize2fs "$dev" >/tmp/err 2>&1 || fail "$1: resize2fs: $(tail -n 2 /tmp/err | tr '\n' ' ')"
	after=$(fs_kb)
	[ "$after" -gt "$before" ] || fail "$1: the filesystem did not grow ($before KiB -> $after KiB)"
	say "$1 $(size) sectors, filesystem $before KiB -> $after KiB"
	drvlog "$1"
}

t0=$(now)
for m in virtio_pci virtio_net crc32c_generic ext4; do
	modprobe $m || fail "modprobe $m"
done
until_ok 100 [ -e /sys/class/net/eth0 ] || fail "no eth0"
ip link set eth0 up || fail "eth0"
modprobe aoe aoe_iflist=eth0 || fail "modprobe aoe"
mkdir -p /sys/kernel/debug && mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
n=0
while [ ! -b "$dev" ]; do
	n=$((n + 1))
	[ $n -gt 300 ] && fail "$dev did not appear"
	[ $((n % 20)) -eq 0 ] && echo >/dev/etherd/discover
	sleep 0.1
done
until_ok 300 has_size $((start_mb * 2048)) || fail "$dev has $(size) sectors, not $((start_mb * 2048))"
# The 6.1 driver can strand requests it has already taken when no frame is free (every
# frame's skb still held by the network layer): its timer's kick re-runs only the block
# queue, which holds nothing new, and nothing is in flight to complete (docs/interop.md,
# "the Linux driver stalls"). Any new request sends them. A one-sector read every 2 s, so
# this case judges the target and not that bug; it cannot hide a target that is silent
# (the driver then has frames in flight and retransmits them). `kicked` says if it struck.
(
	while :; do
		sleep 2
		dd if="$dev" of=/dev/null bs=512 count=1 iflag=direct 2>/dev/null
	done
) &
mkfs.ext4 -q -F "$dev" >/tmp/err 2>&1 || fail "mkfs.ext4: $(cat /tmp/err)"
mount -t ext4 "$dev" /mnt || fail "mount"
dd if=/dev/urandom of=/mnt/first bs=1M count=2 2>/dev/null || fail "writing /mnt/first"
first=$(sha256sum /mnt/first | cut -d' ' -f1)
mark=$(dmesg | wc -l)
say "start $(size) sectors, filesystem $(fs_kb) KiB mounted"

grow grow "$grow1_mb"
grown_kb=$(fs_kb)
grow grow-resize "$grow2_mb"

# If the I/O stalls, say what the driver thinks before the host gives up on us.
(
	sleep 60
	say "STALL-DEBUG $(cat /sys/kernel/debug/aoe/$target 2>/dev/null | tr '\n' '|')"
	sleep 5
	say "STALL-DEBUG $(cat /sys/kernel/debug/aoe/$target 2>/dev/null | tr '\n' '|')"
	say "STALL-STATE $(cat "$sys/state" 2>/dev/null) $(grep -E 'Dirty|Writeback:' /proc/meminfo | tr '\n' ' ')"
	echo w >/proc/sysrq-trigger
	sleep 1
	dmesg | tail -n 60 | sed 's/^/AOE-GUEST STALL /'
	fail "stalled"
) &
# A file bigger than the whole filesystem was before the last growth: it needs the new space.
big=$((grown_kb / 1024 + 4))
dd if=/dev/urandom bs=1M count="$big" 2>/dev/null >/mnt/big || fail "writing $big MiB into the grown filesystem"
[ "$(stat -c %s /mnt/big)" = $((big * 1048576)) ] || fail "/mnt/big is short: $(df -Pk /mnt | tail -n 1)"
sum=$(sha256sum /mnt/big | cut -d' ' -f1)
say "big $big $sum"
say "step umount"
umount /mnt || fail "umount"
say "step e2fsck"
e2fsck -fn "$dev" >/tmp/fsck 2>&1 || fail "e2fsck: $(tail -n 3 /tmp/fsck | tr '\n' ' ')"
echo 3 >/proc/sys/vm/drop_caches
mount -t ext4 -o ro "$dev" /mnt || fail "remount"
[ "$(sha256sum /mnt/big | cut -d' ' -f1)" = "$sum" ] || fail "/mnt/big reads back different after the remount"
[ "$(sha256sum /mnt/first | cut -d' ' -f1)" = "$first" ] || fail "/mnt/first reads back different after the remount"
umount /mnt
say "readback ok"
say "driver $(grep -E 'kicked|falloc' /sys/kernel/debug/aoe/$target 2>/dev/null | tr '\n' ' ')"
say "seconds $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }')"
say "DONE"
poweroff -f
