// crypto_stage.h — crypto workers fed by lock-free rings (ARCHITECTURE.md "crypto workers").
//
// One dispatcher thread (the queue manager) is the only producer of every job ring; each
// worker is the only producer of its completion ring. A full job ring is push-back: Submit()
// returns false and the caller keeps the job, never spins or drops it.
//
// Today the workers seal nothing: policy has no rule that protects mail yet (issues #4, #6),
// so every job completes with verdict kPlain and the message goes on unchanged. The stage is
// here so that S/MIME sealing is added as work inside Worker::Process, not as a restructure.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <semaphore>
#include <string>
#include <thread>
#include <vector>

#include "dataplane/crypto/spsc_ring.h"

namespace mailseal::crypto {

enum class Verdict { kPlain, kSealed, kHold, kTempFail };

struct Job {
  std::string queue_id;
  std::string spool_path;   // the message's current spool file
};

struct Completion {
  std::string queue_id;
  Verdict verdict = Verdict::kPlain;
  std::string reason;       // why, for the log and the audit trail
};

class CryptoStage {
 public:
  // on_completion_ready is called from a worker thread after it posted a completion; it must
  // only wake the dispatcher (which then calls DrainCompletions()).
  CryptoStage(size_t workers, size_t ring_capacity, std::function<void()> on_completion_ready);
  ~CryptoStage();

  void Start();
  void Stop();
  // Submit (dispatcher thread only): false when every ring is full (push back); `job` is
  // left intact then.
  bool Submit(Job& job);
  // DrainCompletions (dispatcher thread only).
  size_t DrainCompletions(std::vector<Completion>* out);

  uint64_t jobs_done() const { return jobs_done_.load(std::memory_order_relaxed); }

 private:
  struct Worker {
    explicit Worker(size_t cap) : jobs(cap), done(cap), wake(0) {}
    SpscRing<Job> jobs;
    SpscRing<Completion> done;
    std::counting_semaphore<> wake;
    std::thread thread;
  };
  void Run(Worker* w);
  Completion Process(const Job& job);

  std::vector<std::unique_ptr<Worker>> workers_;
  std::function<void()> on_completion_ready_;
  size_t next_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> jobs_done_{0};
};

}  // namespace mailseal::crypto
