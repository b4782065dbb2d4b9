// spsc_ring.h — a bounded, lock-free ring with one producer and one consumer.
//
// Why our own: rte_ring lives in DPDK's EAL memory, and the kernel back end must run with no
// DPDK at all (no hugepages, no EAL). This ring keeps rte_ring's contract — fixed power-of-two
// capacity, burst enqueue/dequeue that may be partial and says how much went through, never
// blocks, never allocates after construction — so the DPDK back end can put rte_ring behind
// the same calls. Indices are free-running 64-bit counters (no wraparound in practice).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <new>
#include <optional>
#include <utility>
#include <vector>

namespace mailseal::crypto {

template <typename T>
class SpscRing {
 public:
  // capacity is rounded up to a power of two.
  explicit SpscRing(size_t capacity) {
    size_t c = 1;
    while (c < capacity) c <<= 1;
    slots_.resize(c);
    mask_ = c - 1;
  }
  SpscRing(const SpscRing&) = delete;
  SpscRing& operator=(const SpscRing&) = delete;

  size_t capacity() const { return mask_ + 1; }

  // TryPush (producer only): false when full — the caller pushes back, never spins.
  // `value` is moved from only when the push succeeds.
  bool TryPush(T&& value) {
    const uint64_t tail = tail_.load(std::memory_order_relaxed);
    // acquire pairs with the consumer's release store of head_: the slot is free to reuse.
    if (tail - head_cache_ > mask_) {
      head_cache_ = head_.load(std::memory_order_acquire);
      if (tail - head_cache_ > mask_) return false;
    }
    slots_[tail & mask_] = std::move(value);
    // release pairs with the consumer's acquire load of tail_: the slot's contents are visible.
    tail_.store(tail + 1, std::memory_order_release);
    return true;
  }

  bool TryPush(const T& value) {
    T copy(value);
    return TryPush(std::move(copy));
  }

  // TryPop (consumer only): nullopt when empty.
  std::optional<T> TryPop() {
    const uint64_t head = head_.load(std::memory_order_relaxed);
    if (head == tail_cache_) {
      tail_cache_ = tail_.load(std::memory_order_acquire);  // pairs with TryPush's release
      if (head == tail_cache_) return std::nullopt;
    }
    std::optional<T> v(std::move(slots_[head & mask_]));
    slots_[head & mask_] = T();
    head_.store(head + 1, std::memory_order_release);  // pairs with TryPush's acquire
    return v;
  }

  // PopBurst (consumer only): moves up to `max` items into `out`; returns how many.
  size_t PopBurst(std::vector<T>* out, size_t max) {
    size_t n = 0;
    while (n < max) {
      std::optional<T> v = TryPop();
      if (!v) break;
      out->push_back(std::move(*v));
      ++n;
    }
    return n;
  }

  // Size is approximate when called from a third thread.
  size_t Size() const {
    return static_cast<size_t>(tail_.load(std::memory_order_acquire) -
                               head_.load(std::memory_order_acquire));
  }

 private:
  static constexpr size_t kLine = 64;
  std::vector<T> slots_;
  size_t mask_ = 0;
  alignas(kLine) std::atomic<uint64_t> head_{0};   // written by the consumer
  alignas(kLine) uint64_t tail_cache_ = 0;          // consumer's view of tail_
  alignas(kLine) std::atomic<uint64_t> tail_{0};   // written by the producer
  alignas(kLine) uint64_t head_cache_ = 0;          // producer's view of head_
};

}  // namespace mailseal::crypto
