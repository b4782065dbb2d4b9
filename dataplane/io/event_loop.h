// event_loop.h — one epoll loop per net thread (kernel back end).
//
// Everything a loop owns is touched only by its thread; other threads reach it with Post(),
// which queues a task and wakes the loop through an eventfd.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <vector>

namespace mailseal::io {

class EventHandler {
 public:
  virtual ~EventHandler() = default;
  virtual void OnEvent(uint32_t epoll_events) = 0;
};

class EventLoop {
 public:
  EventLoop();
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  bool Add(int fd, uint32_t events, EventHandler* h);
  bool Modify(int fd, uint32_t events, EventHandler* h);
  void Remove(int fd);
  // Post runs `task` on the loop's thread soon. Thread safe.
  void Post(std::function<void()> task);
  // Run dispatches events until Stop(); `tick` runs about every tick_ms (timers, sweeps).
  // after_batch runs after each batch of events (deferred frees happen there).
  void Run(int tick_ms, const std::function<void()>& tick,
           const std::function<void()>& after_batch);
  void Stop();
  static int64_t NowMs();  // monotonic

 private:
  void DrainPosted();
  int epfd_ = -1;
  int wakefd_ = -1;
  bool stop_ = false;
  std::mutex mu_;
  std::vector<std::function<void()>> posted_;
};

}  // namespace mailseal::io
