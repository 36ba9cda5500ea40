// vmstall: does touching fresh memory stall this machine's timers?
//
// Reproduces, without voxd, the 12-15 ms instants seen during call set-up on the
// development VM (perf/RESULTS.md, 2026-11-22 and 2026-11-23). One thread per CPU
// sleeps 1 ms at a time (clock_nanosleep, CLOCK_MONOTONIC, absolute deadlines, like
// voxd's shard loops) and records how late each wake-up is. Meanwhile, depending on
// MODE, the main thread:
//   idle    does nothing (the baseline)
//   fresh   every PERIOD_MS, maps CHUNK_MIB of new anonymous memory, writes one byte
//           per 4 KiB page, and unmaps it (so the guest keeps handing pages back and
//           touching new ones: what a starting process or a growing heap does)
//   reuse   maps CHUNK_MIB once, then every PERIOD_MS writes one byte per page of the
//           same memory (the same amount of writing, no new pages)
// It prints, per sleeper, the count of wake-ups and how many were > 2, > 5 and > 10
// ms late, and the worst, plus the moments (ms from start) of every wake-up > 5 ms
// late, so stalls on both CPUs at once can be seen.
//
// build: cc -O2 -pthread -o /tmp/vmstall perf/vmstall/vmstall.c
// run:   /tmp/vmstall MODE SECONDS [CHUNK_MIB] [PERIOD_MS]   (perf/vmstall/run.sh)
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MAX_CPUS 64
#define MAX_EVENTS 4096

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

struct sleeper {
  int cpu;
  int64_t start_ns, end_ns;
  long wakeups, over2, over5, over10;
  int64_t worst_ns;
  int nev;
  int64_t ev_at_ms[MAX_EVENTS];
  int64_t ev_late_us[MAX_EVENTS];
};

static void *sleep_loop(void *arg) {
  struct sleeper *s = arg;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(s->cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
  int64_t deadline = now_ns();
  while (deadline < s->end_ns) {
    deadline += 1000000;
    struct timespec ts = {deadline / 1000000000, deadline % 1000000000};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) != 0) {
    }
    int64_t t = now_ns();
    int64_t late = t - deadline;
    s->wakeups++;
    if (late > 2000000) s->over2++;
    if (late > 5000000) {
      s->over5++;
      if (s->nev < MAX_EVENTS) {
        s->ev_at_ms[s->nev] = (deadline - s->start_ns) / 1000000;
        s->ev_late_us[s->nev] = late / 1000;
        s->nev++;
      }
    }
    if (late > 10000000) s->over10++;
    if (late > s->worst_ns) s->worst_ns = late;
    // Resynchronise after a stall, as voxd's tick loop does.
    if (late > 1000000) deadline = t;
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s idle|fresh|reuse SECONDS [CHUNK_MIB] [PERIOD_MS]\n", argv[0]);
    return 2;
  }
  const char *mode = argv[1];
  int seconds = atoi(argv[2]);
  size_t chunk = (size_t)(argc > 3 ? atoi(argv[3]) : 64) << 20;
  int period_ms = argc > 4 ? atoi(argv[4]) : 200;
  if (strcmp(mode, "idle") && strcmp(mode, "fresh") && strcmp(mode, "reuse")) {
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
  }
  int ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
  if (ncpu > MAX_CPUS) ncpu = MAX_CPUS;
  static struct sleeper s[MAX_CPUS];
  pthread_t th[MAX_CPUS];
  int64_t start = now_ns(), end = start + (int64_t)seconds * 1000000000;
  for (int i = 0; i < ncpu; i++) {
    s[i].cpu = i;
    s[i].start_ns = start;
    s[i].end_ns = end;
    pthread_create(&th[i], NULL, sleep_loop, &s[i]);
  }
  long touched_mib = 0;
  char *reused = NULL;
  if (!strcmp(mode, "reuse")) {
    reused = mmap(NULL, chunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (reused == MAP_FAILED) return 1;
  }
  while (now_ns() < end) {
    if (strcmp(mode, "idle")) {
      char *p = reused;
      if (!p) {
        p = mmap(NULL, chunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return 1;
      }
      for (size_t off = 0; off < chunk; off += 4096) p[off] = (char)off;
      if (!reused) munmap(p, chunk);
      touched_mib += (long)(chunk >> 20);
    }
    usleep((useconds_t)period_ms * 1000);
  }
  for (int i = 0; i < ncpu; i++) pthread_join(th[i], NULL);
  printf("mode %s, %d s, chunk %zu MiB every %d ms, touched %ld MiB\n", mode, seconds,
         chunk >> 20, period_ms, touched_mib);
  for (int i = 0; i < ncpu; i++) {
    printf("cpu %d: wake-ups %ld, late >2 ms %ld, >5 ms %ld, >10 ms %ld, worst %.2f ms\n", i,
           s[i].wakeups, s[i].over2, s[i].over5, s[i].over10, s[i].worst_ns / 1e6);
  }
  for (int i = 0; i < ncpu; i++) {
    for (int e = 0; e < s[i].nev; e++) {
      printf("  cpu %d late %.1f ms at %lld ms\n", i, s[i].ev_late_us[e] / 1000.0,
             (long long)s[i].ev_at_ms[e]);
    }
  }
  return 0;
}
