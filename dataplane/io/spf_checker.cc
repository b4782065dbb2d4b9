// spf_checker.cc — see spf_checker.h.
#include "dataplane/io/spf_checker.h"

#include <pthread.h>

namespace mailseal::io {

SpfChecker::SpfChecker(int threads, const std::string& forwarder, std::vector<std::string> local_zones,
                       std::vector<std::string> local_data, size_t max_queued)
    : forwarder_(forwarder), local_zones_(std::move(local_zones)), local_data_(std::move(local_data)),
      max_queued_(max_queued) {
  for (int i = 0; i < threads; ++i) {
    threads_.emplace_back([this, i] { Run(i); });
    std::string name = "spf" + std::to_string(i);
    pthread_setname_np(threads_.back().native_handle(), name.c_str());
  }
}

SpfChecker::~SpfChecker() { Stop(); }

bool SpfChecker::Submit(spf::Request req, Done done) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_ || jobs_.size() >= max_queued_) return false;
  jobs_.push_back(Job{std::move(req), std::move(done)});
  cv_.notify_one();
  return true;
}

void SpfChecker::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : threads_)
    if (t.joinable()) t.join();
}

void SpfChecker::Run(int index) {
  Resolver resolver(forwarder_, local_zones_, local_data_);   // one unbound context per thread
  SpfDns dns(&resolver);
  for (;;) {
    Job job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
      if (stopping_) return;   // pending callers are gone with their connections
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    spf::Verdict v;
    if (!resolver.init_status().ok()) {
      v.result = spf::Result::kTempError;
      v.problem = "resolver: " + resolver.init_status().message();
    } else {
      // RFC 7208 §2.3: the HELO identity first; only its "fail" decides (a host name without a
      // policy, or a DNS problem with it, leaves the decision to MAIL FROM).
      if (!job.req.mail_from.empty()) {
        spf::Request helo = job.req;
        helo.mail_from.clear();
        spf::Verdict h = spf::Check(helo, dns);
        if (h.result == spf::Result::kFail) v = h;
      }
      if (v.identity.empty()) v = spf::Check(job.req, dns);
    }
    job.done(v);
  }
}

}  // namespace mailseal::io
