// edgesplit/core/thread_name.hpp - names the runtime's threads for top -H, perf and debuggers.
#pragma once

#if defined(__linux__)
#include <pthread.h>
#endif

namespace edgesplit {

/// Names the calling thread (Linux keeps the first 15 characters), so that a profile or
/// `top -H` shows which of the runtime's threads spends the time. A no-op elsewhere.
inline void name_this_thread(const char* name) noexcept {
#if defined(__linux__)
  char shortened[16] = {};
  for (int i = 0; i < 15 && name[i] != '\0'; ++i) shortened[i] = name[i];
  (void)pthread_setname_np(pthread_self(), shortened);
#else
  (void)name;
#endif
}

}  // namespace edgesplit
