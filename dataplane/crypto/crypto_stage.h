// crypto_stage.h — crypto workers fed by lock-free rings (ARCHITECTURE.md "crypto workers").
//
// One dispatcher thread (the queue manager) is the only producer of every job ring; each
// worker is the only producer of its completion ring. A full job ring is push-back: Submit()
// returns false and the caller keeps the job, never spins or drops it. The rings are
// PointerRings (pointer_ring.h): SpscRing by default, rte_ring under the DPDK back end.
//
// A job carries the message where it is still in memory (the envelope and the body bytes the
// spool writer kept, within the daemon's budget); the worker reads the spool file only for
// messages that are not (recovered after a restart, released from hold, over the budget).
//
// What a worker does with a job is its JobProcessor's business (one per worker, made on the
// worker's own thread, so it may own a PKCS#11 session and OpenSSL state): the daemon plugs in
// the S/MIME processor (dataplane/sealing/smime_processor.h). Without one, every job completes
// with verdict kPlain and the message goes on unchanged.
#pragma once

#include <atomic>
#include <functional>
#include <cstdint>
#include <memory>
#include <semaphore>
#include <string>
#include <thread>
#include <vector>

#include "dataplane/crypto/pointer_ring.h"

namespace mailseal::queue {
struct SpoolMessage;   // what a job carries; only the processors (dataplane/sealing) look inside
}

namespace mailseal::crypto {

// Verdict: how a job ended. kCorrupt: the message cannot be read (it goes to corrupt/ and the
// administrator is told) — its own outcome, never a kind of hold.
enum class Verdict { kPlain, kTransformed, kCorrupt, kTempFail };

struct Job {
  std::string queue_id;
  std::string spool_path;   // the message's current spool file
  // The message as the spool writer wrote it, when it is still in memory: both or neither.
  std::shared_ptr<const queue::SpoolMessage> message;
  std::shared_ptr<const std::string> body;
};

// Treatment: what a worker did for a copy's recipients (typed: the audit event comes from it).
// kRejected: refused by a content scanner (issue #19): the recipients fail with a DSN.
enum class Treatment { kSealed, kSigned, kOpened, kMarked, kPingReply, kCertAnswer, kHeld, kConsumed, kRejected };
const char* TreatmentEvent(Treatment t);   // "mail.sealed", "mail.held", ...

// DerivedCopy: a new spool file a worker made from the job's message (a sealed copy for one
// domain, an opened copy for our recipients, or a held copy); it takes over `rcpts`.
struct DerivedCopy {
  std::string queue_id;
  std::vector<uint32_t> rcpts;
  Treatment treatment = Treatment::kSealed;
  bool warned = false;            // the administrator is told: opened with a failed signature, or
                                  // sealed to a certificate whose status is unknown (SEE-2.8)
  uint64_t policy_version = 0;    // of the decision (0: none applied)
  std::string what;               // protection or hold reason, for people (log, audit detail)
  std::string cert_domain;        // held for want of this domain's certificate ("" otherwise)
  bool held() const { return treatment == Treatment::kHeld; }
  bool consumed() const { return treatment == Treatment::kConsumed || treatment == Treatment::kRejected; }
  bool rejected() const { return treatment == Treatment::kRejected; }
};

struct Completion {
  std::string queue_id;
  Verdict verdict = Verdict::kPlain;
  std::string reason;             // why, for the log and the audit trail
  uint64_t policy_version = 0;    // of the decision for the recipients left as they were
  std::vector<DerivedCopy> derived;   // kTransformed: these copies carry their recipients on
};

class JobProcessor {
 public:
  virtual ~JobProcessor() = default;
  virtual Completion Process(const Job& job) = 0;
  // Idle is called about once a second while the worker has no job (drop stale resources).
  virtual void Idle() {}
};
// ProcessorFactory makes worker `index`'s processor, on that worker's thread.
using ProcessorFactory = std::function<std::unique_ptr<JobProcessor>(size_t index)>;

class CryptoStage {
 public:
  // on_completion_ready is called from a worker thread after it posted a completion; it must
  // only wake the dispatcher (which then calls DrainCompletions()).
  CryptoStage(size_t workers, size_t ring_capacity, std::function<void()> on_completion_ready,
              ProcessorFactory factory = nullptr);
  ~CryptoStage();

  // SetRingFactory (before Start): where the rings come from (null: SpscRing).
  void SetRingFactory(RingFactory factory) { ring_factory_ = std::move(factory); }
  // SetCpus (before Start): worker i runs only on cpus[i % n]; empty: not pinned. A CPU that
  // cannot be had is logged and the worker runs unpinned (mail goes on).
  void SetCpus(std::vector<int> cpus) { cpus_ = std::move(cpus); }
  // Start makes the rings and the workers; false (nothing started) when a ring cannot be made.
  [[nodiscard]] bool Start(std::string* error = nullptr);
  void Stop();
  // Submit (dispatcher thread only): false when every ring is full (push back); `job` is
  // left intact then.
  bool Submit(Job& job);
  // DrainCompletions (dispatcher thread only).
  size_t DrainCompletions(std::vector<Completion>* out);

  uint64_t jobs_done() const { return jobs_done_.load(std::memory_order_relaxed); }
  // Jobs that carried their message (no spool read), and the rings' kind (after Start).
  uint64_t jobs_in_memory() const { return jobs_in_memory_.load(std::memory_order_relaxed); }
  const char* ring_kind() const { return ring_kind_; }

 private:
  struct Worker {
    Worker() : wake(0) {}
    std::unique_ptr<PointerRing> jobs;   // of Job*, owned while in the ring
    std::unique_ptr<PointerRing> done;   // of Completion*
    std::counting_semaphore<> wake;
    std::thread thread;
  };
  void Run(Worker* w, size_t index);
  void DrainLeftovers();

  std::vector<std::unique_ptr<Worker>> workers_;
  size_t ring_capacity_;
  RingFactory ring_factory_;
  std::vector<int> cpus_;
  const char* ring_kind_ = "none";
  std::atomic<uint64_t> jobs_in_memory_{0};
  std::function<void()> on_completion_ready_;
  ProcessorFactory factory_;
  size_t next_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> jobs_done_{0};
};

}  // namespace mailseal::crypto
