// event_loop.cc — see event_loop.h.
#include "dataplane/io/event_loop.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>

namespace mailseal::io {

EventLoop::EventLoop() {
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  wakefd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (epfd_ < 0 || wakefd_ < 0) std::abort();  // broken environment: let systemd restart us
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;  // nullptr marks the wake fd
  epoll_ctl(epfd_, EPOLL_CTL_ADD, wakefd_, &ev);
}

EventLoop::~EventLoop() {
  ::close(wakefd_);
  ::close(epfd_);
}

bool EventLoop::Add(int fd, uint32_t events, EventHandler* h) {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = h;
  return epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) == 0;
}

bool EventLoop::Modify(int fd, uint32_t events, EventHandler* h) {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = h;
  return epoll_ctl(epfd_, EPOLL_CTL_MOD, fd, &ev) == 0;
}

void EventLoop::Remove(int fd) { epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr); }

void EventLoop::Post(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> l(mu_);
    posted_.push_back(std::move(task));
  }
  uint64_t one = 1;
  ssize_t ignored = ::write(wakefd_, &one, sizeof one);
  (void)ignored;
}

void EventLoop::Stop() {
  Post([this] { stop_ = true; });
}

int64_t EventLoop::NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void EventLoop::DrainPosted() {
  uint64_t v;
  while (::read(wakefd_, &v, sizeof v) > 0) {}
  std::vector<std::function<void()>> tasks;
  {
    std::lock_guard<std::mutex> l(mu_);
    tasks.swap(posted_);
  }
  for (auto& t : tasks) t();
}

void EventLoop::Run(int tick_ms, const std::function<void()>& tick,
                    const std::function<void()>& after_batch) {
  constexpr int kMaxEvents = 256;
  epoll_event events[kMaxEvents];
  int64_t next_tick = NowMs() + tick_ms;
  while (!stop_) {
    int64_t wait = next_tick - NowMs();
    int n = epoll_wait(epfd_, events, kMaxEvents, wait < 0 ? 0 : static_cast<int>(wait));
    if (n < 0 && errno != EINTR) std::abort();
    for (int i = 0; i < n; ++i) {
      auto* h = static_cast<EventHandler*>(events[i].data.ptr);
      if (h == nullptr) DrainPosted();
      else h->OnEvent(events[i].events);
    }
    if (NowMs() >= next_tick) {
      next_tick = NowMs() + tick_ms;
      tick();
    }
    after_batch();
  }
}

}  // namespace mailseal::io
