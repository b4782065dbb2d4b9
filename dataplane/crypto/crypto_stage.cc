// crypto_stage.cc — see crypto_stage.h.
#include "dataplane/crypto/crypto_stage.h"

#include <pthread.h>

#include <chrono>

namespace mailseal::crypto {

const char* TreatmentEvent(Treatment t) {
  switch (t) {
    case Treatment::kSealed: return "mail.sealed";
    case Treatment::kSigned: return "mail.signed";
    case Treatment::kOpened: return "mail.opened";
    case Treatment::kMarked: return "mail.marked";
    case Treatment::kPingReply: return "mail.ping-replied";
    case Treatment::kCertAnswer: return "mail.certificate-sent";
    case Treatment::kHeld: return "mail.held";
    case Treatment::kConsumed: return "mail.consumed";
  }
  return "mail.transformed";
}

CryptoStage::CryptoStage(size_t workers, size_t ring_capacity,
                         std::function<void()> on_completion_ready, ProcessorFactory factory)
    : on_completion_ready_(std::move(on_completion_ready)), factory_(std::move(factory)) {
  for (size_t i = 0; i < workers; ++i) workers_.push_back(std::make_unique<Worker>(ring_capacity));
}

CryptoStage::~CryptoStage() { Stop(); }

void CryptoStage::Start() {
  for (size_t i = 0; i < workers_.size(); ++i) {
    Worker* w = workers_[i].get();
    w->thread = std::thread([this, w, i] { Run(w, i); });
    std::string name = "crypto" + std::to_string(i);
    pthread_setname_np(w->thread.native_handle(), name.c_str());
  }
}

void CryptoStage::Stop() {
  if (stop_.exchange(true)) return;
  for (auto& w : workers_) w->wake.release();
  for (auto& w : workers_)
    if (w->thread.joinable()) w->thread.join();
}

bool CryptoStage::Submit(Job& job) {
  // Round robin; a full ring is tried once each, then the caller keeps the job.
  for (size_t tries = 0; tries < workers_.size(); ++tries) {
    Worker* w = workers_[next_++ % workers_.size()].get();
    if (w->jobs.TryPush(std::move(job))) {
      w->wake.release();
      return true;
    }
  }
  return false;
}

size_t CryptoStage::DrainCompletions(std::vector<Completion>* out) {
  size_t n = 0;
  for (auto& w : workers_) n += w->done.PopBurst(out, 256);
  return n;
}

void CryptoStage::Run(Worker* w, size_t index) {
  std::unique_ptr<JobProcessor> processor = factory_ ? factory_(index) : nullptr;
  auto process = [&](const Job& job) {
    if (processor) return processor->Process(job);
    return Completion{job.queue_id, Verdict::kPlain, "no protection rule applies", 0, {}};
  };
  while (true) {
    if (!w->wake.try_acquire_for(std::chrono::seconds(1))) {
      if (stop_.load(std::memory_order_acquire)) return;
      if (processor) processor->Idle();
      continue;
    }
    if (stop_.load(std::memory_order_acquire)) return;
    while (std::optional<Job> job = w->jobs.TryPop()) {
      Completion c = process(*job);
      // The completion ring is as large as the job ring, and the dispatcher drains it before
      // submitting more, so it cannot stay full; yield until there is room.
      while (!w->done.TryPush(std::move(c))) {
        if (stop_.load(std::memory_order_acquire)) return;
        on_completion_ready_();
        std::this_thread::yield();
      }
      jobs_done_.fetch_add(1, std::memory_order_relaxed);
      on_completion_ready_();
    }
  }
}

}  // namespace mailseal::crypto
