#!/bin/busybox sh
# PID 1 of the test VM that `cargo xtask test --vm` boots (xtask/src/vm/initramfs.rs packs it).
# Mounts what the tracer needs, runs each integration test binary one after the other, and
# ends with one line the host looks for:
#   TRACER-VM-RESULT: PASS
#   TRACER-VM-RESULT: FAIL <test binary> <exit status>
# then powers off. Anything else (a panic, a hang) is a failure the host reports itself.

/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# /tmp stays on the initramfs's own root (memory already): a checkout under /tmp (a CI
# clone may be) has its Python fixtures packed there, at their host paths.
mkdir -p /tmp && chmod 1777 /tmp
mount -t tmpfs tmpfs /run
# The tracer mounts tracefs itself when it is missing; a server usually has it mounted.
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
# The TCP tests talk to 127.0.0.1.
ip link set lo up

. /tracer/suite

echo "TRACER-VM: kernel $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ { print $2 / 1024 " MiB" }' /proc/meminfo)"
print_skips

export TRACER_BIN=/tracer/bin/tracer
export TRACER_PREBUILT_FIXTURES=/tracer/fixtures
export CARGO_TARGET_TMPDIR=/tmp

result=PASS
eval "set -- $TEST_ARGS"
for test in $TESTS; do
    echo "TRACER-VM: running $test (at $(cut -d' ' -f1 /proc/uptime) s)"
    timeout -s KILL "$BINARY_TIMEOUT" "/tracer/tests/$test" --test-threads=1 "$@"
    status=$?
    if [ "$status" -ne 0 ]; then
        [ "$status" -eq 137 ] && echo "TRACER-VM: $test killed after ${BINARY_TIMEOUT}s"
        result="FAIL $test $status"
        break
    fi
done
echo "TRACER-VM: finished at $(cut -d' ' -f1 /proc/uptime) s"
echo "TRACER-VM-RESULT: $result"
sync
poweroff -f
