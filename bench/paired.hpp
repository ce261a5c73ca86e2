// bench/paired.hpp - the paired driver of conv_bench and vision_bench: variants of one
// measurement run in alternating blocks of calls in the same process, so that the slow phases of
// a shared machine hit them all alike and their ratios hold where absolute times do not.
#pragma once

#include <benchmark/benchmark.h>

#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

namespace edgesplit_bench {

/// One variant of a paired benchmark: its counter name and one call.
struct Variant {
  std::string name;
  std::function<void()> run;
};

/// The median (the upper one of an even count); 0 for none.
inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  auto mid = v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2);
  std::nth_element(v.begin(), mid, v.end());
  return *mid;
}

/// The calling thread's CPU time in µs.
inline double thread_cpu_us() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) * 1e-3;
}

/// Times one call of f in µs: by the thread's CPU time when `cpu_time`, else by the wall clock.
inline double time_call(const std::function<void()>& f, bool cpu_time) {
  if (cpu_time) {
    const double t0 = thread_cpu_us();
    f();
    return thread_cpu_us() - t0;
  }
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
}

/// Runs the variants in alternating blocks (each block ~2 ms and at least 3 calls, its first
/// call dropped as a warm-up, the variant that starts rotating), every call timed on its own;
/// returns each variant's median per-call time in µs and sets the counters us_<name>, GFLOPs_<name>
/// (when flops > 0: FLOPs per call), calls and cpu_timed. Calls of over 0.5 ms are timed by the
/// thread's CPU time: on a loaded machine most such calls are preempted, and then even their
/// median is not the call's own time (reading that clock costs ~1 µs, under 0.5% of such a call).
inline std::vector<double> run_paired(benchmark::State& state, std::vector<Variant>& variants, double flops) {
  const std::size_t n = variants.size();
  double slowest = 0;
  for (std::size_t v = 0; v < n; ++v) {
    time_call(variants[v].run, false);
    slowest = std::max(slowest, time_call(variants[v].run, false));
  }
  const bool cpu_time = slowest > 500;
  state.counters["cpu_timed"] = cpu_time ? 1 : 0;
  const int block = std::clamp(static_cast<int>(2000.0 / std::max(slowest, 1e-3)), 3, 200);
  std::vector<std::vector<double>> t(n);
  std::size_t first = 0;
  for (auto _ : state) {
    for (std::size_t j = 0; j < n; ++j) {
      const std::size_t v = (first + j) % n;
      for (int i = 0; i < block; ++i) {
        const double us = time_call(variants[v].run, cpu_time);
        if (i > 0) t[v].push_back(us);
      }
    }
    first = (first + 1) % n;
  }
  std::vector<double> med(n);
  for (std::size_t v = 0; v < n; ++v) {
    med[v] = median(t[v]);
    state.counters["us_" + variants[v].name] = med[v];
    if (flops > 0) state.counters["GFLOPs_" + variants[v].name] = med[v] > 0 ? flops / med[v] * 1e-3 : 0;
  }
  state.counters["calls"] = static_cast<double>(t[0].size());
  return med;
}

}  // namespace edgesplit_bench
