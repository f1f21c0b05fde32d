#!/bin/sh
# PID 1 of fresh pid, mount, uts, ipc, net and cgroup namespaces until it
# execs the machine's own systemd, for tests/real_systemd. Started through
# `unshare` with
#   $1  a scratch directory that holds the empty mount point `stage`
#   $2  a host directory shown read-only at /run/host-share (fifod, units,
#       configs)
#
# Nothing that systemd or its services write reaches the host: / is made
# recursively private, every host mount becomes read-only in this namespace
# (the namespace's copy of the mount, never the file system), /etc /usr and
# /var are overlays whose writes stay in memory, /run /tmp /var/tmp and /dev
# are fresh tmpfs, /sys is the private network namespace's own (read-only),
# /sys/fs/cgroup the cgroup the test made, /proc/sys read-only. systemd loads
# only the handful of targets written below, and its services write to the
# console (a pseudo-terminal that the test logs): there is no journal.
set -eu
STATE=$1
SHARE=$2
STAGE=$STATE/stage
CONSOLE_TTY=$(readlink /proc/self/fd/0)
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

mount -n --make-rprivate /

# The future /run, filled while host paths can still be reached.
mount -n -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$STAGE"
S=$STAGE/realsystemd
mkdir -p "$S/units" "$S/empty" "$S/etc-system" "$STAGE/host-share"
touch "$S/console"
mount -n --bind "$CONSOLE_TTY" "$S/console"
mount -n --bind "$SHARE" "$STAGE/host-share"
mount -n -o remount,bind,ro "$STAGE/host-share"

# The smallest unit set that services and sockets with default dependencies
# need: targets only.
for t in basic default multi-user paths shutdown sockets slices sysinit timers; do
    printf '[Unit]\nDescription=%s (test minimum)\n' "$t" > "$S/units/$t.target"
done
printf 'Requires=sysinit.target\nAfter=sysinit.target sockets.target\n' >> "$S/units/basic.target"
printf 'Requires=basic.target\nAfter=basic.target\nAllowIsolate=yes\n' >> "$S/units/default.target"

# Every writable host mount becomes read-only here (MS_REMOUNT|MS_BIND).
cat /proc/self/mountinfo > "$S/host-mounts"
while read -r _ _ _ _ mp opts _; do
    mp=$(printf '%b' "$(printf '%s' "$mp" | sed 's/\\\([0-7][0-7][0-7]\)/\\0\1/g')")
    case "$mp" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*|"$STAGE"|"$STAGE"/*) continue;; esac
    case ",$opts," in *,ro,*) continue;; esac
    flags=remount,bind,ro
    for o in $(printf '%s' "$opts" | tr ',' ' '); do
        case "$o" in nosuid|nodev|noexec|noatime|nodiratime|relatime|strictatime) flags=$flags,$o;; esac
    done
    mount -n -o "$flags" "$mp"
done < "$S/host-mounts"

mount -n --move "$STAGE" /run
S=/run/realsystemd

for d in etc usr var; do
    mkdir -p "$S/overlay/$d/upper" "$S/overlay/$d/work"
    mount -n -t overlay overlay \
        -o "lowerdir=/$d,upperdir=$S/overlay/$d/upper,workdir=$S/overlay/$d/work" "/$d"
done
mount -n -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mount -n -t tmpfs -o mode=1777,nosuid,nodev tmpfs /var/tmp

# Only the units above, an empty /etc/systemd/system, no generators.
mount -n --bind "$S/units" /usr/lib/systemd/system
mount -n --bind "$S/etc-system" /etc/systemd/system
merged=no
[ "$(readlink -f /lib/systemd)" = "$(readlink -f /usr/lib/systemd)" ] && merged=yes
for d in /lib/systemd/system /usr/local/lib/systemd/system \
         /usr/lib/systemd/system-generators /usr/lib/systemd/system-environment-generators \
         /lib/systemd/system-generators /lib/systemd/system-environment-generators \
         /etc/systemd/system-generators /etc/systemd/system-environment-generators \
         /usr/local/lib/systemd/system-generators /usr/local/lib/systemd/system-environment-generators; do
    [ -d "$d" ] || continue
    case "$d" in /lib/*) [ $merged = yes ] && continue;; esac
    mount -n --bind "$S/empty" "$d"
done
mkdir -p /etc/systemd/system.conf.d
printf '[Manager]\nDefaultStandardOutput=tty\nDefaultStandardError=tty\n' \
    > /etc/systemd/system.conf.d/90-test.conf
echo fifod-test > /etc/hostname

# A private /dev.
mount -n -t tmpfs -o mode=0755,nosuid tmpfs /dev
for n in "null 1 3" "zero 1 5" "full 1 7" "random 1 8" "urandom 1 9" "tty 5 0"; do
    set -- $n
    mknod -m 0666 "/dev/$1" c "$2" "$3"
done
mkdir -m 0755 /dev/pts /dev/shm /dev/mqueue
mount -n -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts /dev/pts
ln -s pts/ptmx /dev/ptmx
mount -n -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
ln -s /proc/self/fd /dev/fd
touch /dev/console
mount -n --bind "$S/console" /dev/console

# The kernel's settings read-only (PID 1 would raise fs.nr_open for the whole
# machine); the private network namespace's own stay writable.
for p in /proc/sys /proc/sysrq-trigger /proc/irq /proc/bus; do
    [ -e "$p" ] || continue
    mount -n --bind "$p" "$p"
    [ "$p" = /proc/sys ] && mount -n --bind /proc/sys/net /proc/sys/net
    mount -n -o remount,bind,ro "$p"
done

mount -n -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -n -o remount,bind,ro,nosuid,nodev,noexec /sys
mount -n -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup

exec </dev/console >/dev/console 2>&1
exec env -i container=fifod-test \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    setpriv --bounding-set -sys_module,-sys_time \
    /lib/systemd/systemd --system --log-level=info systemd.show_status=0
