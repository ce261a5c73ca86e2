// Catch2's main, plus the allocation counter the no-allocation tests read. Kept in its own
// translation unit (no Eigen) so it compiles once and fast.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>

#include "alloc_counter.hpp"

// Counting every heap allocation of the process: glibc lets a program replace malloc and
// friends, and operator new, Eigen's aligned_malloc and std containers all go through them.
// Sanitizer builds bring their own allocator, so there the counter stays unavailable and the
// tests that need it say so.
#if EDGESPLIT_TEST_COUNTS_ALLOCATIONS
#include <atomic>
#include <cerrno>
#include <cstddef>

extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void __libc_free(void*);
}

namespace {
std::atomic<long long> g_allocations{0};
}

long long edgesplit_test::allocations() noexcept { return g_allocations.load(std::memory_order_relaxed); }

extern "C" {
void* malloc(std::size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_malloc(n);
}
void* calloc(std::size_t a, std::size_t b) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_calloc(a, b);
}
void* realloc(void* p, std::size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_realloc(p, n);
}
void* memalign(std::size_t a, std::size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_memalign(a, n);
}
void* aligned_alloc(std::size_t a, std::size_t n) { return memalign(a, n); }
int posix_memalign(void** out, std::size_t a, std::size_t n) {
  void* p = memalign(a, n);
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}
void free(void* p) { __libc_free(p); }
}
#else
long long edgesplit_test::allocations() noexcept { return -1; }
#endif
