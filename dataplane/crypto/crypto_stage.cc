// crypto_stage.cc — see crypto_stage.h.
#include "dataplane/crypto/crypto_stage.h"

#include <pthread.h>

#include <chrono>

#include "dataplane/base/cpu.h"
#include "dataplane/base/log.h"

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
    case Treatment::kRejected: return "mail.rejected";
  }
  return "mail.transformed";
}

CryptoStage::CryptoStage(size_t workers, size_t ring_capacity,
                         std::function<void()> on_completion_ready, ProcessorFactory factory)
    : ring_capacity_(ring_capacity),
      on_completion_ready_(std::move(on_completion_ready)),
      factory_(std::move(factory)) {
  for (size_t i = 0; i < workers; ++i) workers_.push_back(std::make_unique<Worker>());
}

CryptoStage::~CryptoStage() {
  Stop();
  DrainLeftovers();
}

bool CryptoStage::Start(std::string* error) {
  for (size_t i = 0; i < workers_.size(); ++i) {
    Worker* w = workers_[i].get();
    std::string n = std::to_string(i);
    if (ring_factory_) {
      w->jobs = ring_factory_("ms_jobs" + n, ring_capacity_);
      w->done = ring_factory_("ms_done" + n, ring_capacity_);
    } else {
      w->jobs = std::make_unique<SpscPointerRing>(ring_capacity_);
      w->done = std::make_unique<SpscPointerRing>(ring_capacity_);
    }
    if (!w->jobs || !w->done) {
      if (error) *error = "crypto stage: cannot make the rings of worker " + n;
      for (auto& x : workers_) x->jobs.reset(), x->done.reset();
      return false;
    }
  }
  ring_kind_ = workers_.empty() ? "none" : workers_[0]->jobs->kind();
  for (size_t i = 0; i < workers_.size(); ++i) {
    Worker* w = workers_[i].get();
    w->thread = std::thread([this, w, i] { Run(w, i); });
    std::string name = "crypto" + std::to_string(i);
    pthread_setname_np(w->thread.native_handle(), name.c_str());
  }
  return true;
}

void CryptoStage::DrainLeftovers() {
  // Jobs not taken and completions not drained at a stop (their messages stay in the spool).
  for (auto& w : workers_) {
    if (w->jobs)
      while (void* p = w->jobs->Dequeue()) delete static_cast<Job*>(p);
    if (w->done)
      while (void* p = w->done->Dequeue()) delete static_cast<Completion*>(p);
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
    if (!w->jobs) return false;   // not started
    auto* p = new Job(std::move(job));
    if (w->jobs->Enqueue(p)) {
      w->wake.release();
      return true;
    }
    job = std::move(*p);
    delete p;
  }
  return false;
}

size_t CryptoStage::DrainCompletions(std::vector<Completion>* out) {
  size_t n = 0;
  for (auto& w : workers_) {
    if (!w->done) continue;
    for (size_t k = 0; k < 256; ++k) {
      void* p = w->done->Dequeue();
      if (!p) break;
      std::unique_ptr<Completion> c(static_cast<Completion*>(p));
      out->push_back(std::move(*c));
      ++n;
    }
  }
  return n;
}

void CryptoStage::Run(Worker* w, size_t index) {
  if (!cpus_.empty()) {
    int cpu = cpus_[index % cpus_.size()];
    if (!base::PinThisThread(cpu))
      base::Log(base::LogLevel::kWarning, "crypto", "worker not pinned: that CPU cannot be used",
                {{"worker", std::to_string(index)}, {"cpu", std::to_string(cpu)}});
  }
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
    while (void* jp = w->jobs->Dequeue()) {
      std::unique_ptr<Job> job(static_cast<Job*>(jp));
      if (job->message && job->body) jobs_in_memory_.fetch_add(1, std::memory_order_relaxed);
      auto c = std::make_unique<Completion>(process(*job));
      job.reset();   // the message's memory goes back to the budget now, not at the next job
      // The completion ring is as large as the job ring, and the dispatcher drains it before
      // submitting more, so it cannot stay full; yield until there is room.
      while (!w->done->Enqueue(c.get())) {
        if (stop_.load(std::memory_order_acquire)) return;
        on_completion_ready_();
        std::this_thread::yield();
      }
      c.release();
      jobs_done_.fetch_add(1, std::memory_order_relaxed);
      on_completion_ready_();
    }
  }
}

}  // namespace mailseal::crypto
