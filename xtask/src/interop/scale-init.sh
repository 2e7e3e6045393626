#!/bin/busybox sh
# /init of the scale-out guest: Linux's aoe driver, md and LVM over several target nodes.
# Kernel command line: deadsecs (aoe_deadsecs), cases (which of recipe, lost, rolling,
# multipath, many, corrupt to run after the recipe), many (exports the many-exports node has).
# "AOE-GUEST HOST <n> <verb> <node>" asks the host to act on a node (kill, start, restart,
# linkdown, linkup, stats, flip); the host acts, then writes "ACK <n> ok" (or "error") to the
# console, and the guest waits for that before its next step.
# Every other result line starts with "AOE-GUEST"; the host parses them.

/bin/busybox mkdir -p /proc /sys /dev /mnt /tmp /run /etc/lvm
/bin/busybox --install -s /bin
# Debian's mdadm, lvm and e2fsprogs in /sbin before busybox's stand-ins.
export PATH=/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mkdir -p /run/lvm /run/lock/lvm

say() { echo "AOE-GUEST $*"; }
fail() {
	say "FAIL $* ($(dmesg | tail -n 4 | tr '\n' ' '))"
	poweroff -f
}
# The host's acknowledgements arrive on the console: read them without echoing them back.
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
mbs() { awk -v mb="$1" -v a="$2" -v b="$3" 'BEGIN { d = b - a; if (d <= 0) d = 0.01; printf "%.1f", mb / d }'; }
# Wait up to $1 tenths of a second for the command in the rest of the arguments to succeed.
until_ok() {
	n=$1
	shift
	while ! "$@" 2>/dev/null; do
		n=$((n - 1))
		[ $n -le 0 ] && return 1
		sleep 0.1
	done
}
state() { cat "/sys/block/etherd!$1/state" 2>/dev/null; }
is_up() { [ "$(state "$1")" = up ]; }
no_closewait() { ! state "$1" | grep -q closewait; }
md_idle() { [ "$(cat /sys/block/$1/md/sync_action)" = idle ] && [ "$(cat /sys/block/$1/md/degraded)" = 0 ]; }
md_degraded() { [ "$(cat /sys/block/$1/md/degraded)" != 0 ]; }
# What the aoe driver and md said since the last call (for the runbook), one line.
mark=0
drvlog() {
	say "dmesg $1: $(dmesg | tail -n +$((mark + 1)) | grep -E 'aoe|md|raid' | sed 's/^\[ *[0-9.]*\] //' | head -n 14 | tr '\n' '|')"
	mark=$(dmesg | wc -l)
}
ioerrors() { dmesg | grep -ciE 'EXT4-fs (error|warning)|Buffer I/O error|I/O error, dev dm-'; }
# A file of $2 MiB from urandom at $1; its sha256 goes to $1.sum (kept in tmpfs).
# A short write (a full filesystem) fails here, not later as a checksum that differs.
write_file() {
	dd if=/dev/urandom bs=1M count="$2" 2>/dev/null | tee "$1" | sha256sum | cut -d' ' -f1 >"/tmp/$(basename "$1").sum"
	[ "$(stat -c %s "$1")" = "$(($2 * 1048576))" ] || { say "write_file: $1 is short (filesystem full?): $(df -P "$(dirname "$1")" | tail -1)"; return 1; }
}
# Every file written so far reads back from the devices (caches dropped) as it was written.
verify_files() {
	sync
	echo 3 >/proc/sys/vm/drop_caches
	for s in /tmp/*.sum; do
		f=$(basename "$s" .sum)
		for d in /mnt/p1 /mnt/p2; do
			[ -e "$d/$f" ] || continue
			[ "$(sha256sum "$d/$f" | cut -d' ' -f1)" = "$(cat "$s")" ] || fail "$1: $d/$f reads back different"
		done
	done
}
# md's check of every member; the mismatch count in $m.
md_check() {
	echo check >/sys/block/$1/md/sync_action
	sleep 0.5
	until_ok 3000 md_idle "$1" || fail "$1: check did not finish"
	m=$(cat /sys/block/$1/md/mismatch_cnt)
	say "mismatch $1 $m"
}
check_md() {
	md_check "$1"
	[ "$m" = 0 ] || fail "$1: mismatch_cnt $m after check"
}
fsck_all() {
	umount /mnt/p1 /mnt/p2 || fail "umount for fsck"
	for lv in project_1 project_2; do
		e2fsck -fn /dev/datastore/$lv >/tmp/fsck 2>&1 || fail "fsck $lv: $(tail -n 2 /tmp/fsck | tr '\n' ' ')"
	done
	mount /dev/datastore/project_1 /mnt/p1 && mount /dev/datastore/project_2 /mnt/p2 || fail "remount"
}
# Bring a member whose node came back into its array again: md has failed it (or does now),
# the driver keeps the open device down,closewait until md lets go, revalidate then finds
# the target again, and the write-intent bitmap lets --re-add resync only what changed.
readd() {
	md=$1
	dev=$2
	# Not t0: the cases time themselves with it.
	r0=$(now)
	mdadm /dev/$md --fail /dev/etherd/$dev >/dev/null 2>&1
	until_ok 300 mdadm /dev/$md --remove /dev/etherd/$dev >/dev/null || fail "$dev: mdadm --remove refused"
	say "driver $dev after remove: $(state "$dev")"
	until_ok 300 no_closewait "$dev" || fail "$dev: still $(state "$dev") after md let go"
	n=0
	while ! is_up "$dev"; do
		n=$((n + 1))
		[ $n -gt 300 ] && fail "$dev: still $(state "$dev") after revalidate"
		[ $((n % 10)) = 1 ] && echo "$dev" >/dev/etherd/revalidate 2>/dev/null
		sleep 0.1
	done
	r1=$(now)
	mdadm /dev/$md --re-add /dev/etherd/$dev >/tmp/readd 2>&1 || mdadm /dev/$md --add /dev/etherd/$dev >>/tmp/readd 2>&1 || fail "$dev: $(cat /tmp/readd)"
	until_ok 3000 md_idle "$md" || fail "$md: resync of $dev did not finish"
	say "readd $dev $(awk -v a="$r0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }') s, up again after $(awk -v a="$r0" -v b="$r1" 'BEGIN { printf "%.1f", b - a }') s ($(head -c 60 /tmp/readd | tr '\n' ' '))"
}

for m in virtio_pci virtio_net crc32c_generic ext4 md-mod raid1 raid456 dm-mod; do
	modprobe $m || fail "modprobe $m"
done
until_ok 100 [ -e /sys/class/net/eth1 ] || fail "no eth1"
ip link set eth0 up && ip link set eth1 up || fail "links"
modprobe aoe aoe_deadsecs="$deadsecs" || fail "modprobe aoe"
echo "eth0 eth1" >/dev/etherd/interfaces 2>/dev/null
mkdir -p /sys/kernel/debug && mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null

R5="e5.1 e5.2 e5.3"
R1="e7.1 e7.2"
for d in $R5 $R1; do
	n=0
	while ! is_up "$d"; do
		n=$((n + 1))
		[ $n -gt 300 ] && fail "$d did not appear"
		[ $((n % 20)) = 0 ] && echo >/dev/etherd/discover
		sleep 0.1
	done
done
say "nodes up"
mark=$(dmesg | wc -l)

# The seeds' recipe: RAID-5 over shelf 5, LVM, two volumes; then RAID-1 over shelf 7 added.
# --assume-clean: the images are fresh (all zeros), already consistent; the check proves it.
t0=$(now)
mdadm --create /dev/md0 --run --quiet --level=5 --raid-devices=3 --assume-clean --bitmap=internal \
	/dev/etherd/e5.1 /dev/etherd/e5.2 /dev/etherd/e5.3 >/tmp/err 2>&1 || fail "mdadm --create md0: $(cat /tmp/err)"
LVM="--config devices{obtain_device_list_from_udev=0}activation{udev_sync=0udev_rules=0}"
pvcreate -q $LVM /dev/md0 >/tmp/err 2>&1 || fail "pvcreate md0: $(cat /tmp/err)"
vgcreate -q $LVM datastore /dev/md0 >/tmp/err 2>&1 || fail "vgcreate: $(cat /tmp/err)"
# project_1 takes most of md0: project_2 starts small, so the file that needs the new space
# stays small (TCG writes through RAID-5 at about 1 MB/s).
lvcreate -q $LVM -n project_1 -L 44M datastore >/tmp/err 2>&1 || fail "lvcreate project_1: $(cat /tmp/err)"
lvcreate -q $LVM -n project_2 -l 100%FREE datastore >/tmp/err 2>&1 || fail "lvcreate project_2: $(cat /tmp/err)"
mkdir -p /mnt/p1 /mnt/p2
for lv in project_1 project_2; do
	mkfs.ext4 -q -F /dev/datastore/$lv >/tmp/err 2>&1 || fail "mkfs $lv: $(cat /tmp/err)"
done
mount /dev/datastore/project_1 /mnt/p1 && mount /dev/datastore/project_2 /mnt/p2 || fail "mount"
# -P: busybox puts a long device name on a line of its own otherwise.
old_kb=$(df -Pk /mnt/p2 | awk 'NR == 2 { print $2 }')
[ -n "$old_kb" ] || fail "df of project_2"

t1=$(now)
write_file /mnt/p1/first 8
sync
t2=$(now)
say "recipe_write_mbs $(mbs 8 "$t1" "$t2")"
mdadm --create /dev/md1 --run --quiet --level=1 --raid-devices=2 --assume-clean --bitmap=internal \
	/dev/etherd/e7.1 /dev/etherd/e7.2 >/tmp/err 2>&1 || fail "mdadm --create md1: $(cat /tmp/err)"
pvcreate -q $LVM /dev/md1 >/tmp/err 2>&1 || fail "pvcreate md1: $(cat /tmp/err)"
vgextend -q $LVM datastore /dev/md1 >/tmp/err 2>&1 || fail "vgextend: $(cat /tmp/err)"
lvextend -q $LVM -l +100%FREE datastore/project_2 >/tmp/err 2>&1 || fail "lvextend: $(cat /tmp/err)"
resize2fs /dev/datastore/project_2 >/tmp/err 2>&1 || fail "resize2fs: $(cat /tmp/err)"
new_kb=$(df -Pk /mnt/p2 | awk 'NR == 2 { print $2 }')
# A file bigger than project_2 was before the new md joined.
big=$((old_kb / 1024 + 8))
t1=$(now)
write_file /mnt/p2/big "$big" || fail "writing $big MiB into the grown project_2"
sync || fail "sync"
t2=$(now)
say "grown project_2 ${old_kb} KiB -> ${new_kb} KiB, file of $big MiB"
say "grown_write_mbs $(mbs "$big" "$t1" "$t2")"
[ "$big" -lt "$((new_kb / 1024))" ] || fail "project_2 did not grow past $big MiB ($new_kb KiB)"
verify_files recipe
# md's check runs where md resynced (lost, rolling) and in the corrupt case: on the fresh
# --assume-clean arrays it would cost 40 s of TCG time per run; the files' sha256 and fsck
# cover what the recipe wrote.
fsck_all
[ "$(ioerrors)" = 0 ] || fail "recipe: I/O errors in dmesg"
say "CASE recipe PASS $(mbs $((8 + big)) "$t0" "$(now)") MB/s $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }') s"

case ",$cases," in *",lost,"*)
	# A node dies under a writer: md degrades, the filesystem never sees an error.
	t0=$(now)
	(write_file /mnt/p1/during 8 && sync && touch /tmp/writer.ok) &
	w=$!
	sleep 1
	mark=$(dmesg | wc -l)
	host kill e5.2
	tk=$(now)
	until_ok 600 md_degraded md0 || fail "lost: md0 never degraded"
	say "lost: md0 degraded $(awk -v a="$tk" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }') s after the kill; driver says e5.2 $(state e5.2)"
	wait $w
	drvlog "lost e5.2"
	[ -e /tmp/writer.ok ] || fail "lost: the writer failed"
	verify_files lost
	[ "$(ioerrors)" = 0 ] || fail "lost: I/O errors reached the filesystem"
	host start e5.2
	readd md0 e5.2
	drvlog "re-add e5.2"
	check_md md0
	fsck_all
	say "CASE lost PASS $(mbs 8 "$t0" "$(now)") MB/s $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }') s"
	;;
esac

case ",$cases," in *",rolling,"*)
	# Every node restarted in turn, as an upgrade does, under a writer that never stops.
	t0=$(now)
	rm -f /tmp/stop
	(
		i=0
		while [ ! -e /tmp/stop ]; do
			i=$((i + 1))
			# Four files rewritten in turn: the writer runs as long as the restarts take,
			# and must not fill the volume (a full one made roll.10 short, not corrupt).
			write_file /mnt/p2/roll.$((i % 4)) 2 || exit 1
			sync || exit 1
		done
		echo $i >/tmp/rolled
	) &
	w=$!
	for d in $R5 $R1; do
		md=md0
		case $d in e7.*) md=md1 ;; esac
		host restart $d
		sleep 3
		# The node answers again (the driver retransmitted while it was gone) ...
		until_ok 600 dd if=/dev/etherd/$d of=/dev/null bs=512 count=1 iflag=direct || fail "rolling: $d did not come back"
		# ... and if md had given up on it meanwhile, it is re-added before the next node.
		if md_degraded $md; then
			readd $md $d
			touch /tmp/readded.$md
		fi
		until_ok 3000 md_idle $md || fail "rolling: $md not in sync after $d"
		say "rolling: $d back, $md $(cat /sys/block/$md/md/array_state)"
		drvlog "rolling $d"
	done
	touch /tmp/stop
	wait $w || fail "rolling: the writer failed"
	verify_files rolling
	# A node back within aoe_deadsecs costs md nothing; one md gave up on was resynced: check.
	for md in md0 md1; do
		[ -e /tmp/readded.$md ] && check_md $md
	done
	[ "$(ioerrors)" = 0 ] || fail "rolling: I/O errors reached the filesystem"
	say "CASE rolling PASS $(mbs $((2 * $(cat /tmp/rolled))) "$t0" "$(now)") MB/s $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }') s"
	;;
esac

case ",$cases," in *",multipath,"*)
	# e7.2 answers on both segments: two targets in the driver, traffic on both, and a link
	# lost mid-I/O costs no error.
	t0=$(now)
	say "paths $(cat /sys/kernel/debug/aoe/e7.2 2>/dev/null | tr '\n' '|')"
	host stats before
	dd if=/dev/etherd/e7.2 of=/dev/null bs=1M count=8 iflag=direct 2>/dev/null || fail "multipath: read"
	host stats both
	(dd if=/dev/etherd/e7.2 of=/dev/null bs=1M count=8 iflag=direct 2>/dev/null && touch /tmp/mp.ok) &
	w=$!
	sleep 0.5
	mark=$(dmesg | wc -l)
	host linkdown e7.2
	wait $w
	[ -e /tmp/mp.ok ] || fail "multipath: a read failed with one link down"
	dd if=/dev/etherd/e7.2 of=/dev/null bs=1M count=4 iflag=direct 2>/dev/null || fail "multipath: read on one link"
	host stats down
	drvlog "link down"
	host linkup e7.2
	sleep 2
	dd if=/dev/etherd/e7.2 of=/dev/null bs=1M count=8 iflag=direct 2>/dev/null || fail "multipath: read after the link came back"
	host stats back
	drvlog "link back"
	verify_files multipath
	say "paths-after $(cat /sys/kernel/debug/aoe/e7.2 2>/dev/null | tr '\n' '|')"
	say "CASE multipath PASS $(mbs 28 "$t0" "$(now)") MB/s $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }') s"
	;;
esac

case ",$cases," in *",many,"*)
	# One daemon's exports, shelves 10 and 11: all discovered, a sample verified.
	t0=$(now)
	n=0
	while [ "$(ls /dev/etherd | grep -c '^e1[01]\.')" -lt "$many" ]; do
		n=$((n + 1))
		[ $n -gt 600 ] && fail "many: $(ls /dev/etherd | grep -c '^e1[01]\.') of $many exports appeared"
		[ $((n % 20)) = 1 ] && echo >/dev/etherd/discover
		sleep 0.1
	done
	t1=$(now)
	say "many: $many exports in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
	dd if=/dev/urandom of=/tmp/sample bs=1M count=1 2>/dev/null
	for d in e10.0 e10.77 e11.0 e11.127; do
		dd if=/tmp/sample of=/dev/etherd/$d bs=1M oflag=direct 2>/dev/null || fail "many: write $d"
		dd if=/dev/etherd/$d of=/tmp/back bs=1M count=1 iflag=direct 2>/dev/null || fail "many: read $d"
		cmp -s /tmp/sample /tmp/back || fail "many: $d reads back different"
	done
	say "CASE many PASS $(mbs 8 "$t1" "$(now)") MB/s $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }') s"
	;;
esac

case ",$cases," in *",corrupt,"*)
	# The control of the checks, last (it leaves md0 inconsistent): the host flips one bit of
	# e5.2's image behind its target (aoe-lab flip-bit), and md's check must count it. A
	# check that cannot fail is no check.
	t0=$(now)
	sync
	host flip e5.2
	md_check md0
	[ "$m" != 0 ] || fail "corrupt: a bit flipped in e5.2's image went unnoticed (mismatch_cnt 0)"
	say "CASE corrupt PASS detected: md0 mismatch_cnt $m, $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }') s"
	;;
esac

umount /mnt/p1 /mnt/p2
say "DONE"
poweroff -f
