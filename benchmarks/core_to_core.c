// Core-to-core round trip between CPU 0 and CPU 1, sampled over time.
//
// Why: on a VM the hypervisor may move the two virtual CPUs between physical cores that share a
// last-level cache and cores that do not. A process whose threads pass data between cores (the
// tf.data pipeline does) then slows down; separate processes do not (benchmarks/RESULTS.md,
// "Where the 2-core gap on full-size JPEGs comes from"). This probe tells which placement the
// machine is in at each moment, so a benchmark's windows can be sorted by it
// (`benchmarks/input_pipeline.py --core_probe=PATH` runs it and does the sorting).
//
// Build: gcc -O2 -pthread -o core_to_core benchmarks/core_to_core.c
// Run:   chrt -f 50 ./core_to_core SAMPLES ROUNDS PERIOD_S > probe.txt
//        e.g. `chrt -f 50 ./core_to_core 600 20000 0.5` samples every half second for ~5 min.
// Output: one line per sample, "unix_time round_trip_ns": the mean of ROUNDS cache-line round
// trips. Under SCHED_FIFO (chrt, needs root) the probe's two threads
// preempt other work at once, so a busy machine does not inflate the round trip; 20,000
// rounds take 1-7 ms, about 1% of the machine at one sample per half second.
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static _Alignas(64) atomic_int flag;
static int rounds;

static double seconds(clockid_t clock) {
  struct timespec t;
  clock_gettime(clock, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static void pin_self(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void* pong(void* unused) {
  (void)unused;
  for (int i = 0; i < rounds; i++) {
    while (atomic_load_explicit(&flag, memory_order_acquire) != 2 * i + 1) {}
    atomic_store_explicit(&flag, 2 * i + 2, memory_order_release);
  }
  return NULL;
}

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s SAMPLES ROUNDS PERIOD_S\n", argv[0]);
    return 2;
  }
  int samples = atoi(argv[1]);
  rounds = atoi(argv[2]);
  double period = atof(argv[3]);
  pin_self(0);
  // The partner starts on CPU 1: created on CPU 0 under SCHED_FIFO it could never run there
  // while this thread spins.
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  cpu_set_t cpu1;
  CPU_ZERO(&cpu1);
  CPU_SET(1, &cpu1);
  pthread_attr_setaffinity_np(&attr, sizeof cpu1, &cpu1);
  for (int s = 0; s < samples; s++) {
    pthread_t partner;
    atomic_store(&flag, 0);
    if (pthread_create(&partner, &attr, pong, NULL) != 0) {
      perror("pthread_create");
      return 1;
    }
    double start = seconds(CLOCK_MONOTONIC);
    for (int i = 0; i < rounds; i++) {
      atomic_store_explicit(&flag, 2 * i + 1, memory_order_release);
      while (atomic_load_explicit(&flag, memory_order_acquire) != 2 * i + 2) {}
    }
    double round_trip_ns = (seconds(CLOCK_MONOTONIC) - start) / rounds * 1e9;
    pthread_join(partner, NULL);
    printf("%.2f %.0f\n", seconds(CLOCK_REALTIME), round_trip_ns);
    fflush(stdout);
    usleep((useconds_t)(period * 1e6));
  }
  return 0;
}
