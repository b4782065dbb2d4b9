// epoll_loop.h — the kernel back end's event loop: one epoll set per net thread (io::Loop).
//
// Everything a loop owns is touched only by its thread; other threads reach it with Post(),
// which queues a task and wakes the loop through an eventfd. Timers (After) serve connect
// timeouts and pauses; they run on the loop's thread.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <vector>

#include "dataplane/io/transport.h"

namespace mailseal::kernel {

// FdHandler: epoll events for one descriptor.
class FdHandler {
 public:
  virtual ~FdHandler() = default;
  virtual void OnEvent(uint32_t epoll_events) = 0;
};

class EpollLoop : public io::Loop {
 public:
  EpollLoop();
  ~EpollLoop() override;
  EpollLoop(const EpollLoop&) = delete;
  EpollLoop& operator=(const EpollLoop&) = delete;

  bool Add(int fd, uint32_t events, FdHandler* h);
  bool Modify(int fd, uint32_t events, FdHandler* h);
  void Remove(int fd);
  // After runs `fn` on the loop's thread once `ms` have passed; returns an id for Cancel.
  uint64_t After(int64_t ms, std::function<void()> fn);
  void Cancel(uint64_t timer);

  void Post(std::function<void()> task) override;
  int64_t NowMs() const override;
  void Run(int tick_ms, const std::function<void()>& tick, const std::function<void()>& after_batch) override;
  void Stop() override;
  void RunOnce(int timeout_ms) override;

 private:
  void Dispatch(int timeout_ms);
  void DrainPosted();
  void RunTimers();
  int epfd_ = -1;
  int wakefd_ = -1;
  bool stop_ = false;
  std::mutex mu_;
  std::vector<std::function<void()>> posted_;
  std::multimap<int64_t, std::pair<uint64_t, std::function<void()>>> timers_;   // by due time
  uint64_t next_timer_ = 1;
};

}  // namespace mailseal::kernel
