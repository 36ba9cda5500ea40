#!/usr/bin/env bash
# Where a process's CPU goes, by thread name: samples /proc/PID/task/*/stat twice,
# SECONDS apart, and prints user and system CPU per thread name (threads of the same
# name summed: voxd-shard-0, voxd-shard-1, voxd-control, ...) as cores and as a
# share of the process.
#
#   perf/threads.sh PID [SECONDS]
#
# Used beside a loadgen run to tell the shards' media work from the control
# runtime's provider work (see perf/RESULTS.md).
set -euo pipefail
PID=${1:?usage: perf/threads.sh PID [SECONDS]}
S=${2:-5}
HZ=$(getconf CLK_TCK)

snap() {
  local t comm rest
  for t in /proc/"$PID"/task/*; do
    [[ -r $t/stat ]] || continue
    # comm may hold spaces; it sits between the first '(' and the last ')'.
    rest=$(cat "$t/stat" 2>/dev/null) || continue
    comm=${rest#*(}
    comm=${comm%)*}
    rest=${rest##*) }
    # Fields after comm: state(3) ... utime(14) stime(15), i.e. words 12 and 13 here.
    set -- $rest
    printf '%s %s %s %s\n' "${t##*/}" "${comm// /_}" "${12}" "${13}"
  done
}

A=$(snap)
sleep "$S"
B=$(snap)

join <(sort <<<"$A") <(sort <<<"$B") | awk -v hz="$HZ" -v s="$S" '
  { name = $2; sub(/-[0-9]+$/, "-N", name); u[name] += $6 - $3; k[name] += $7 - $4; n[name]++ }
  END {
    for (x in u) { tu += u[x]; tk += k[x] }
    printf "| thread | threads | user cores | system cores | share of process |\n|---|---|---|---|---|\n"
    for (x in u) if (u[x] + k[x] > 0)
      printf "| %s | %d | %.3f | %.3f | %.1f %% |\n", x, n[x], u[x] / hz / s, k[x] / hz / s,
        100 * (u[x] + k[x]) / (tu + tk)
    printf "| all | | %.3f | %.3f | 100 %% |\n", tu / hz / s, tk / hz / s
  }'
