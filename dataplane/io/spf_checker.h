// spf_checker.h — SPF checks off the net threads: a few threads, each with its own resolver,
// take requests from a bounded queue and hand each verdict to a callback (which posts it back
// to the net thread that asked). A net thread never waits on DNS. The HELO identity is checked
// before MAIL FROM (RFC 7208 §2.3); only a HELO "fail" stands in for the MAIL FROM verdict.
//
// SECURITY: the queue is bounded (a flood of MAIL commands cannot grow it); a request that does
// not fit is answered at once with temperror, which the server defers or accepts by policy.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "dataplane/io/dns.h"
#include "dataplane/spf/spf.h"

namespace mailseal::io {

class SpfChecker {
 public:
  using Done = std::function<void(const spf::Verdict&)>;
  // Resolver settings as for delivery (forwarder, local zones and data).
  SpfChecker(int threads, const std::string& forwarder, std::vector<std::string> local_zones,
             std::vector<std::string> local_data, size_t max_queued = 4096);
  ~SpfChecker();
  SpfChecker(const SpfChecker&) = delete;
  SpfChecker& operator=(const SpfChecker&) = delete;

  // Submit queues a check; false when the queue is full (nothing will be called).
  bool Submit(spf::Request req, Done done);
  void Stop();

 private:
  struct Job {
    spf::Request req;
    Done done;
  };
  void Run(int index);

  std::string forwarder_;
  std::vector<std::string> local_zones_, local_data_;
  size_t max_queued_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace mailseal::io
