// pointer_ring.h — the ring seam of the crypto stage: a bounded ring of pointers with one
// producer and one consumer, as rte_ring carries them.
//
// The crypto stage moves each job and each completion onto the heap and passes the pointer
// (a job is a whole seal or open: one allocation is nothing beside it). Under the kernel back
// end the rings are SpscRing<void*> (no DPDK in the process); under the DPDK back end they are
// rte_rings made by dataplane/dpdk (SP/SC: the queue manager is the only producer of every job
// ring — it is the only writer of queue state — and each worker of its completion ring).
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "dataplane/crypto/spsc_ring.h"

namespace mailseal::crypto {

class PointerRing {
 public:
  virtual ~PointerRing() = default;
  // Enqueue (producer only): false when full; the pointer stays the caller's.
  virtual bool Enqueue(void* p) = 0;
  // Dequeue (consumer only): nullptr when empty.
  virtual void* Dequeue() = 0;
  // What it is, for the start-up log ("spsc", "rte_ring").
  virtual const char* kind() const = 0;
};

// RingFactory makes a ring of at least `capacity` slots; `name` is unique in the process.
// Null: the default SpscRing.
using RingFactory = std::function<std::unique_ptr<PointerRing>(const std::string& name, size_t capacity)>;

class SpscPointerRing : public PointerRing {
 public:
  explicit SpscPointerRing(size_t capacity) : ring_(capacity) {}
  bool Enqueue(void* p) override { return ring_.TryPush(p); }
  void* Dequeue() override {
    std::optional<void*> v = ring_.TryPop();
    return v ? *v : nullptr;
  }
  const char* kind() const override { return "spsc"; }

 private:
  SpscRing<void*> ring_;
};

}  // namespace mailseal::crypto
