#!/bin/busybox sh
# /init-fault of the fault-lab guest (booted with rdinit=/init-fault on the scale-out
# guest's initramfs, which has e2fsprogs): ext4 on an export, files written and fsync'd
# one after another while the host cuts the power of the storage node under it (faultfs)
# and restarts the target on what survived; then e2fsck, and every fsync'd file read back.
# Kernel command line: target (e.g. e1.2), deadsecs (aoe_deadsecs), before (files fsync'd
# before the cut), after (files fsync'd after the restart), file_kb.
# "AOE-GUEST HOST <n> cut" asks the host for the cut; it answers "ACK <n> ok" on the console
# once the target serves again. Every result line starts with "AOE-GUEST".

/bin/busybox mkdir -p /proc /sys /dev /mnt /tmp /run
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
fsynced() { wc -l </tmp/fsynced; }
# Wait up to $2 seconds until $1 files are fsync'd.
until_fsynced() {
	i=0
	while [ "$(fsynced)" -lt "$1" ]; do
		i=$((i + 1))
		[ $i -gt $(($2 * 10)) ] && fail "only $(fsynced) files fsync'd, waited for $1"
		sleep 0.1
	done
}

for m in virtio_pci virtio_net crc32c_generic ext4; do
	modprobe $m || fail "modprobe $m"
done
i=0
while [ ! -e /sys/class/net/eth0 ]; do
	i=$((i + 1))
	[ $i -gt 100 ] && fail "no eth0"
	sleep 0.1
done
ip link set eth0 up
modprobe aoe aoe_iflist=eth0 aoe_deadsecs="$deadsecs" || fail "modprobe aoe"
dev=/dev/etherd/$target
i=0
while [ ! -b "$dev" ]; do
	i=$((i + 1))
	[ $i -gt 300 ] && fail "$dev did not appear"
	[ $((i % 20)) -eq 0 ] && echo >/dev/etherd/discover
	sleep 0.1
done
say "device $dev write cache: $(cat "/sys/block/etherd!$target/queue/write_cache")"

mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$dev" >/tmp/err 2>&1 ||
	fail "mkfs.ext4: $(cat /tmp/err)"
mount -t ext4 "$dev" /mnt 2>/tmp/err || fail "mount: $(cat /tmp/err)"
: >/tmp/fsynced
# The writer: each file is on disk (as the initiator sees it) once its fsync returned.
(
	k=0
	while [ ! -e /tmp/stop ]; do
		k=$((k + 1))
		dd if=/dev/urandom of=/tmp/src bs=1k count="$file_kb" 2>/dev/null
		sum=$(sha256sum /tmp/src | cut -d' ' -f1)
		if dd if=/tmp/src of=/mnt/f$k bs=64k conv=fsync 2>/dev/null; then
			echo "f$k $sum" >>/tmp/fsynced
		else
			say "write of f$k failed"
		fi
	done
) &
writer=$!
until_fsynced "$before" 120
# The power goes while the writer writes; the host answers once the target is back.
host cut
at_cut=$(fsynced)
until_fsynced $((at_cut + after)) 180
touch /tmp/stop
wait $writer
total=$(fsynced)
say "fsynced $total files, $at_cut before the target was back"
sync
umount /mnt || fail "umount"
e2fsck -fn "$dev" >/tmp/fsck 2>&1
say "fsck $? $(grep -v '^e2fsck\|^Pass\|^$' /tmp/fsck | head -n 6 | tr '\n' '|')"
intact=0
bad=
if mount -t ext4 -o ro "$dev" /mnt 2>/tmp/err; then
	while read -r name sum; do
		got=$(sha256sum "/mnt/$name" 2>/dev/null | cut -d' ' -f1)
		if [ "$got" = "$sum" ]; then
			intact=$((intact + 1))
		else
			bad="$bad $name"
		fi
	done </tmp/fsynced
	umount /mnt
else
	bad=" (the filesystem does not mount: $(cat /tmp/err))"
fi
say "intact $intact of $total;$bad"
say "DONE"
poweroff -f
