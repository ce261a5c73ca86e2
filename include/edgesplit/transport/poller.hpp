// edgesplit/transport/poller.hpp - readiness of many descriptors at once, for event loops:
// epoll on Linux, poll() elsewhere (or with EDGESPLIT_POLLER_USE_POLL defined, to test it).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>
#include <string>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

#if defined(__linux__) && !defined(EDGESPLIT_POLLER_USE_POLL)
#define EDGESPLIT_POLLER_EPOLL 1
#include <sys/epoll.h>
#include <sys/eventfd.h>
#else
#define EDGESPLIT_POLLER_EPOLL 0
#endif

#include "edgesplit/core/error.hpp"

namespace edgesplit {

/// Waits for any of many descriptors to become readable or writable. Level-triggered: a
/// descriptor keeps being reported while it is ready. add/modify/remove and wake may be called
/// from any thread while another waits; wait() from one thread at a time.
class Poller {
 public:
  /// Interest and readiness bits.
  enum : unsigned {
    readable = 1,  ///< data (or end of stream) to read, or a connection to accept
    writable = 2,  ///< room to write
  };
  /// One ready descriptor, as wait() reports it.
  struct Event {
    void* tag = nullptr;     ///< what add() was given for the descriptor
    unsigned ready = 0;      ///< readable | writable
    bool hangup = false;     ///< the peer hung up or the socket failed: reading tells which
  };

  /// errc::io_error when the system has no room for the poller.
  Poller() {
#if EDGESPLIT_POLLER_EPOLL
    ep_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) fail_errno("epoll_create1");
    wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0) {
      const int err = errno;
      ::close(ep_);
      fail_errno("eventfd", err);
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = nullptr;
    if (::epoll_ctl(ep_, EPOLL_CTL_ADD, wake_fd_, &ev) != 0) {
      const int err = errno;
      ::close(wake_fd_);
      ::close(ep_);
      fail_errno("epoll_ctl(wake)", err);
    }
#else
    int p[2];
    if (::pipe(p) != 0) fail_errno("pipe");
    for (int fd : p) {
      ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
      ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    wake_read_ = p[0];
    wake_fd_ = p[1];
#endif
  }
  Poller(const Poller&) = delete;
  Poller& operator=(const Poller&) = delete;
  ~Poller() {
#if EDGESPLIT_POLLER_EPOLL
    ::close(ep_);
#else
    ::close(wake_read_);
#endif
    ::close(wake_fd_);
  }

  /// Watches `fd` for `interest`; wait() reports it with `tag`.
  void add(int fd, void* tag, unsigned interest) { control(fd, tag, interest, true); }
  /// Changes what `fd` is watched for.
  void modify(int fd, void* tag, unsigned interest) { control(fd, tag, interest, false); }
  /// Stops watching `fd` (before it is closed).
  void remove(int fd) noexcept {
#if EDGESPLIT_POLLER_EPOLL
    epoll_event ev{};
    (void)::epoll_ctl(ep_, EPOLL_CTL_DEL, fd, &ev);
#else
    std::lock_guard lock(mutex_);
    watched_.erase(fd);
#endif
  }

  /// Waits up to `timeout_ms` (-1: no limit) and fills `out` with ready descriptors; returns how
  /// many. A wake() makes it return, possibly with none. EINTR returns none.
  std::size_t wait(std::span<Event> out, int timeout_ms) {
#if EDGESPLIT_POLLER_EPOLL
    events_.resize(out.size());
    const int n = ::epoll_wait(ep_, events_.data(), static_cast<int>(std::min<std::size_t>(events_.size(), INT_MAX)),
                               timeout_ms);
    if (n < 0) {
      if (errno == EINTR) return 0;
      fail_errno("epoll_wait");
    }
    std::size_t k = 0;
    for (int i = 0; i < n; ++i) {
      const epoll_event& e = events_[static_cast<std::size_t>(i)];
      if (e.data.ptr == nullptr) {
        drain_wake();
        continue;
      }
      Event& o = out[k++];
      o.tag = e.data.ptr;
      o.ready = ((e.events & (EPOLLIN | EPOLLRDHUP)) ? readable : 0u) | ((e.events & EPOLLOUT) ? writable : 0u);
      o.hangup = (e.events & (EPOLLHUP | EPOLLERR)) != 0;
    }
    return k;
#else
    {
      std::lock_guard lock(mutex_);
      fds_.clear();
      tags_.clear();
      fds_.push_back({wake_read_, POLLIN, 0});
      tags_.push_back(nullptr);
      for (const auto& [fd, w] : watched_) {
        const short ev = static_cast<short>(((w.second & readable) ? POLLIN : 0) | ((w.second & writable) ? POLLOUT : 0));
        fds_.push_back({fd, ev, 0});
        tags_.push_back(w.first);
      }
    }
    const int n = ::poll(fds_.data(), static_cast<nfds_t>(fds_.size()), timeout_ms);
    if (n < 0) {
      if (errno == EINTR) return 0;
      fail_errno("poll");
    }
    std::size_t k = 0;
    for (std::size_t i = 0; i < fds_.size() && k < out.size(); ++i) {
      const short r = fds_[i].revents;
      if (r == 0) continue;
      if (tags_[i] == nullptr) {
        drain_wake();
        continue;
      }
      Event& o = out[k++];
      o.tag = tags_[i];
      o.ready = ((r & POLLIN) ? readable : 0u) | ((r & POLLOUT) ? writable : 0u);
      o.hangup = (r & (POLLHUP | POLLERR | POLLNVAL)) != 0;
    }
    return k;
#endif
  }

  /// Makes a wait() in progress (or the next one) return. From any thread.
  void wake() noexcept {
#if EDGESPLIT_POLLER_EPOLL
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto r = ::write(wake_fd_, &one, sizeof one);
#else
    const char one = 1;
    [[maybe_unused]] const auto r = ::write(wake_fd_, &one, 1);
#endif
  }

  /// "epoll" or "poll": which mechanism this build uses.
  static constexpr const char* mechanism() noexcept { return EDGESPLIT_POLLER_EPOLL ? "epoll" : "poll"; }

 private:
  [[noreturn]] static void fail_errno(const char* what, int err = errno) {
    fail(errc::io_error, std::string(what) + ": " + std::system_category().message(err));
  }

  void control(int fd, void* tag, unsigned interest, bool add) {
#if EDGESPLIT_POLLER_EPOLL
    epoll_event ev{};
    ev.events = ((interest & readable) ? EPOLLIN | EPOLLRDHUP : 0u) | ((interest & writable) ? EPOLLOUT : 0u);
    ev.data.ptr = tag;
    if (::epoll_ctl(ep_, add ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &ev) != 0) fail_errno("epoll_ctl");
#else
    {
      std::lock_guard lock(mutex_);
      if (add != (watched_.find(fd) == watched_.end())) fail(errc::invalid_argument, "Poller: descriptor already watched, or not");
      watched_[fd] = {tag, interest};
    }
    wake();  // the waiting thread polls the old set: make it take the new one
#endif
  }

  void drain_wake() noexcept {
#if EDGESPLIT_POLLER_EPOLL
    std::uint64_t v;
    [[maybe_unused]] const auto r = ::read(wake_fd_, &v, sizeof v);
#else
    char buf[64];
    while (::read(wake_read_, buf, sizeof buf) > 0) {
    }
#endif
  }

  int wake_fd_ = -1;
#if EDGESPLIT_POLLER_EPOLL
  int ep_ = -1;
  std::vector<epoll_event> events_;
#else
  int wake_read_ = -1;
  std::mutex mutex_;
  std::unordered_map<int, std::pair<void*, unsigned>> watched_;
  std::vector<pollfd> fds_;
  std::vector<void*> tags_;
#endif
};

}  // namespace edgesplit
