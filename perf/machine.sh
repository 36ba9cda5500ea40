#!/usr/bin/env bash
# How fast is this machine's kernel path right now? Prints one Markdown table row to
# put beside any capacity or CPU-per-call-second figure in perf/RESULTS.md.
#
#   perf/machine.sh [--header]
#
# Why: voxd's CPU per call-second is mostly kernel work (socket calls, wake-ups,
# loopback delivery), and on a shared VM that part changes with the host's load while
# user-space code does not. Two sessions' figures are only comparable next to these
# probes. Columns:
#   syscall ns    `perf bench syscall basic` (getppid), ns per call
#   pipe us       `perf bench sched pipe`: one round trip between two processes
#                 through pipes (two wake-ups, two context switches), us
#   udp us        a Python loopback UDP echo round trip (two sends, two receives,
#                 two wake-ups), median of 20,000, us
#   steal %       share of CPU time the hypervisor reported as stolen during the probe
#   load          1-minute load average before the probe
# Needs: perf (linux-perf) and python3; a missing tool prints "n/a" in its column.
set -euo pipefail

if [[ ${1:-} == --header ]]; then
  echo "| when (UTC) | syscall ns | pipe us | udp us | steal % | load |"
  echo "|---|---|---|---|---|---|"
fi

load=$(cut -d' ' -f1 /proc/loadavg)
s0=$(head -1 /proc/stat)

syscall=n/a
pipe=n/a
if command -v perf >/dev/null; then
  syscall=$(perf bench syscall basic 2>/dev/null | awk '/usecs\/op/ { printf "%.0f", $1 * 1000 }')
  pipe=$(perf bench sched pipe -l 100000 2>/dev/null | awk '/usecs\/op/ { printf "%.1f", $1 }')
fi

udp=$(python3 - <<'EOF'
import socket, threading, time
a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); a.bind(("127.0.0.1", 0))
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); b.bind(("127.0.0.1", 0))
N = 20000
def echo():
    for _ in range(N):
        d, addr = b.recvfrom(2048)
        b.sendto(d, addr)
t = threading.Thread(target=echo); t.start()
msg = b"x" * 172
dest = b.getsockname()
rtts = []
for _ in range(N):
    t0 = time.perf_counter_ns()
    a.sendto(msg, dest)
    a.recvfrom(2048)
    rtts.append(time.perf_counter_ns() - t0)
t.join()
rtts.sort()
print(f"{rtts[N // 2] / 1000:.1f}")
EOF
) || udp=n/a

s1=$(head -1 /proc/stat)
steal=$(python3 - "$s0" "$s1" <<'EOF'
import sys
a = list(map(int, sys.argv[1].split()[1:9])); b = list(map(int, sys.argv[2].split()[1:9]))
d = [y - x for x, y in zip(a, b)]
print(f"{100 * d[7] / max(1, sum(d)):.1f}")
EOF
)

echo "| $(date -u +%Y-%m-%dT%H:%MZ) | $syscall | $pipe | $udp | $steal | $load |"
