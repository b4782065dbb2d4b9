// epoll_loop.cc — see epoll_loop.h.
#include "dataplane/kernel/epoll_loop.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>

#include "dataplane/base/clock.h"

namespace mailseal::kernel {

EpollLoop::EpollLoop() {
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  wakefd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (epfd_ < 0 || wakefd_ < 0) std::abort();  // broken environment: let systemd restart us
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;  // nullptr marks the wake fd
  epoll_ctl(epfd_, EPOLL_CTL_ADD, wakefd_, &ev);
}

EpollLoop::~EpollLoop() {
  ::close(wakefd_);
  ::close(epfd_);
}

bool EpollLoop::Add(int fd, uint32_t events, FdHandler* h) {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = h;
  return epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) == 0;
}

bool EpollLoop::Modify(int fd, uint32_t events, FdHandler* h) {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = h;
  return epoll_ctl(epfd_, EPOLL_CTL_MOD, fd, &ev) == 0;
}

void EpollLoop::Remove(int fd) { epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr); }

uint64_t EpollLoop::After(int64_t ms, std::function<void()> fn) {
  uint64_t id = next_timer_++;
  timers_.emplace(NowMs() + ms, std::make_pair(id, std::move(fn)));
  return id;
}

void EpollLoop::Cancel(uint64_t timer) {
  for (auto it = timers_.begin(); it != timers_.end(); ++it)
    if (it->second.first == timer) {
      timers_.erase(it);
      return;
    }
}

void EpollLoop::Post(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> l(mu_);
    posted_.push_back(std::move(task));
  }
  uint64_t one = 1;
  ssize_t ignored = ::write(wakefd_, &one, sizeof one);
  (void)ignored;
}

void EpollLoop::Stop() {
  Post([this] { stop_ = true; });
}

int64_t EpollLoop::NowMs() const { return base::SteadyMs(); }

void EpollLoop::DrainPosted() {
  uint64_t v;
  while (::read(wakefd_, &v, sizeof v) > 0) {}
  std::vector<std::function<void()>> tasks;
  {
    std::lock_guard<std::mutex> l(mu_);
    tasks.swap(posted_);
  }
  for (auto& t : tasks) t();
}

void EpollLoop::RunTimers() {
  int64_t now = NowMs();
  while (!timers_.empty() && timers_.begin()->first <= now) {
    std::function<void()> fn = std::move(timers_.begin()->second.second);
    timers_.erase(timers_.begin());
    fn();
  }
}

void EpollLoop::Dispatch(int timeout_ms) {
  constexpr int kMaxEvents = 256;
  epoll_event events[kMaxEvents];
  int64_t wait = timeout_ms;
  if (!timers_.empty()) wait = std::min<int64_t>(wait, timers_.begin()->first - NowMs());
  int n = epoll_wait(epfd_, events, kMaxEvents, wait < 0 ? 0 : static_cast<int>(wait));
  if (n < 0 && errno != EINTR) std::abort();
  for (int i = 0; i < n; ++i) {
    auto* h = static_cast<FdHandler*>(events[i].data.ptr);
    if (h == nullptr) DrainPosted();
    else h->OnEvent(events[i].events);
  }
  RunTimers();
}

void EpollLoop::RunOnce(int timeout_ms) { Dispatch(timeout_ms); }

void EpollLoop::Run(int tick_ms, const std::function<void()>& tick, const std::function<void()>& after_batch) {
  int64_t next_tick = NowMs() + tick_ms;
  while (!stop_) {
    Dispatch(static_cast<int>(std::max<int64_t>(0, next_tick - NowMs())));
    if (NowMs() >= next_tick) {
      next_tick = NowMs() + tick_ms;
      tick();
    }
    after_batch();
  }
}

}  // namespace mailseal::kernel
