// Process-wide heap allocation counter for the no-allocation tests (defined in test_main.cpp).
#pragma once

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
#define EDGESPLIT_TEST_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define EDGESPLIT_TEST_SANITIZED 1
#endif
#if defined(__GLIBC__) || defined(__linux__)
#ifndef EDGESPLIT_TEST_SANITIZED
#define EDGESPLIT_TEST_COUNTS_ALLOCATIONS 1
#endif
#endif
#ifndef EDGESPLIT_TEST_COUNTS_ALLOCATIONS
#define EDGESPLIT_TEST_COUNTS_ALLOCATIONS 0
#endif

namespace edgesplit_test {
/// Heap allocations made by the process so far, or -1 where they cannot be counted.
long long allocations() noexcept;
}  // namespace edgesplit_test
