// edgesplit/runtime/memory_budget.hpp - one byte budget for everything a server holds for its peers.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <utility>

namespace edgesplit {

/// A count of bytes held on behalf of peers (requests being read, decoded features waiting,
/// replies not yet written), against one limit for the whole server. Front ends reserve before
/// they allocate and refuse work (`overloaded`) when a reservation fails, so what peers can make
/// the server hold is bounded by the limit, whatever they send. Thread-safe, lock-free.
class MemoryBudget {
 public:
  /// Bytes held under a budget until released (or destroyed). Move-only; may grow and shrink.
  class Reservation {
   public:
    Reservation() = default;
    /// Takes over `o`'s bytes.
    Reservation(Reservation&& o) noexcept : budget_(std::exchange(o.budget_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
    /// Releases this one's bytes, then takes over `o`'s.
    Reservation& operator=(Reservation&& o) noexcept {
      if (this != &o) {
        release();
        budget_ = std::exchange(o.budget_, nullptr);
        bytes_ = std::exchange(o.bytes_, 0);
      }
      return *this;
    }
    Reservation(const Reservation&) = delete;
    Reservation& operator=(const Reservation&) = delete;
    ~Reservation() { release(); }

    std::size_t bytes() const noexcept { return bytes_; }  ///< bytes held now
    /// Holds `more` bytes in addition; false (nothing changes) when the budget has no room.
    bool grow(std::size_t more) noexcept {
      if (budget_ == nullptr || !budget_->take(more)) return false;
      bytes_ += more;
      return true;
    }
    /// Keeps at most `n` bytes, giving the rest back.
    void shrink_to(std::size_t n) noexcept {
      if (budget_ == nullptr || n >= bytes_) return;
      budget_->give(bytes_ - n);
      bytes_ = n;
    }
    /// Takes over the bytes of `o` (a reservation on the same budget, or an empty one).
    void absorb(Reservation&& o) noexcept {
      if (o.bytes_ == 0) return;
      if (budget_ == nullptr) budget_ = o.budget_;
      if (budget_ != o.budget_) {  // another budget: give them back rather than mix the counts
        o.release();
        return;
      }
      bytes_ += std::exchange(o.bytes_, 0);
    }
    /// Gives every byte back. Idempotent.
    void release() noexcept {
      if (budget_ != nullptr && bytes_ != 0) budget_->give(bytes_);
      bytes_ = 0;
    }

   private:
    friend class MemoryBudget;
    Reservation(MemoryBudget* b, std::size_t n) noexcept : budget_(b), bytes_(n) {}
    MemoryBudget* budget_ = nullptr;
    std::size_t bytes_ = 0;
  };

  /// A budget of `limit` bytes.
  explicit MemoryBudget(std::size_t limit) noexcept : limit_(limit) {}
  MemoryBudget(const MemoryBudget&) = delete;
  MemoryBudget& operator=(const MemoryBudget&) = delete;

  /// An empty reservation on this budget, to grow() as bytes arrive.
  Reservation open() noexcept { return Reservation(this, 0); }
  /// `n` bytes if the budget has room for them, else an empty reservation and false in `ok`.
  Reservation reserve(std::size_t n, bool& ok) noexcept {
    ok = take(n);
    return Reservation(this, ok ? n : 0);
  }

  std::size_t limit() const noexcept { return limit_; }  ///< the budget
  std::size_t in_use() const noexcept { return used_.load(std::memory_order_relaxed); }  ///< bytes held now
  std::size_t peak() const noexcept { return peak_.load(std::memory_order_relaxed); }  ///< most bytes ever held at once
  std::size_t refusals() const noexcept { return refusals_.load(std::memory_order_relaxed); }  ///< reservations refused

 private:
  bool take(std::size_t n) noexcept {
    std::size_t cur = used_.load(std::memory_order_relaxed);
    do {
      if (n > limit_ - std::min(cur, limit_)) {
        refusals_.fetch_add(1, std::memory_order_relaxed);
        return false;
      }
    } while (!used_.compare_exchange_weak(cur, cur + n, std::memory_order_relaxed));
    std::size_t p = peak_.load(std::memory_order_relaxed);
    while (cur + n > p && !peak_.compare_exchange_weak(p, cur + n, std::memory_order_relaxed)) {
    }
    return true;
  }
  void give(std::size_t n) noexcept { used_.fetch_sub(n, std::memory_order_relaxed); }

  const std::size_t limit_;
  std::atomic<std::size_t> used_{0}, peak_{0}, refusals_{0};
};

}  // namespace edgesplit
