// backend.cc — see backend.h.
#include "dataplane/kernel/backend.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "dataplane/base/log.h"
#include "dataplane/io/socket_util.h"

namespace mailseal::kernel {
using base::Log;
using base::LogLevel;

namespace {

// SocketStream: a connected, non-blocking TCP socket on an EpollLoop.
class SocketStream : public io::Stream, public FdHandler {
 public:
  SocketStream(EpollLoop* loop, int fd, const sockaddr_storage& peer) : loop_(loop), fd_(fd), peer_(peer) {
    loop_->Add(fd_, 0, this);
  }
  ~SocketStream() override {
    loop_->Remove(fd_);
    ::close(fd_);
  }
  io::IoResult Read(char* buf, size_t cap) override {
    while (true) {
      ssize_t n = ::recv(fd_, buf, cap, 0);
      if (n > 0) return io::IoResult::Ok(static_cast<size_t>(n));
      if (n == 0) return io::IoResult::Closed();
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return io::IoResult::WouldBlock();
      return io::IoResult::Failed(std::strerror(errno));
    }
  }
  io::IoResult Write(std::string_view bytes) override {
    while (true) {
      ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n >= 0) return io::IoResult::Ok(static_cast<size_t>(n));
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return io::IoResult::WouldBlock();
      return io::IoResult::Failed(std::strerror(errno));
    }
  }
  void Watch(io::StreamHandler* h, bool read, bool write) override {
    handler_ = h;
    uint32_t ev = (h && read ? uint32_t{EPOLLIN} : 0u) | (h && write ? uint32_t{EPOLLOUT} : 0u);
    if (ev != interest_) {
      loop_->Modify(fd_, ev, this);
      interest_ = ev;
    }
  }
  const sockaddr_storage& peer() const override { return peer_; }
  void OnEvent(uint32_t ev) override {
    if (!handler_) return;
    bool readable = ev & (EPOLLIN | EPOLLERR | EPOLLHUP);
    handler_->OnReady(readable, ev & EPOLLOUT);
  }

 private:
  EpollLoop* loop_;
  int fd_;
  sockaddr_storage peer_;
  io::StreamHandler* handler_ = nullptr;
  uint32_t interest_ = 0;
};

// SocketListener: the listening sockets of one net thread.
class SocketListener : public io::Listener {
 public:
  SocketListener(EpollLoop* loop, const std::vector<int>& fds, io::AcceptFn on_accept, std::string busy_reply)
      : loop_(loop), on_accept_(std::move(on_accept)), busy_reply_(std::move(busy_reply)) {
    reserve_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);   // spent to refuse politely at the descriptor limit
    for (int fd : fds) sockets_.push_back(std::make_unique<Socket>(this, fd));
    Resume();
  }
  ~SocketListener() override {
    Pause();
    if (pause_timer_) loop_->Cancel(pause_timer_);
    if (reserve_fd_ >= 0) ::close(reserve_fd_);
  }
  void Pause() override {
    if (!active_) return;
    for (auto& s : sockets_) loop_->Remove(s->fd);
    active_ = false;
  }
  void Resume() override {
    if (active_) return;
    for (auto& s : sockets_) loop_->Add(s->fd, EPOLLIN, s.get());
    active_ = true;
  }

 private:
  struct Socket : FdHandler {
    Socket(SocketListener* l, int f) : owner(l), fd(f) {}
    void OnEvent(uint32_t) override { owner->Accept(fd); }
    SocketListener* owner;
    int fd;
  };

  void Accept(int listen_fd) {
    for (int i = 0; i < 64 && active_; ++i) {
      sockaddr_storage peer{};
      socklen_t len = sizeof peer;
      int fd = ::accept4(listen_fd, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR) continue;
        if (errno == EMFILE || errno == ENFILE) OutOfDescriptors(listen_fd);
        else if (errno != EAGAIN && errno != EWOULDBLOCK) LogRefusal(StrCat("accept failed: ", std::strerror(errno)));
        return;
      }
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      on_accept_(std::make_unique<SocketStream>(loop_, fd, peer));
    }
  }

  // OutOfDescriptors: accept failed with EMFILE/ENFILE — answer one waiting client with the
  // reserve descriptor, and pause accepting for a second if even that fails.
  void OutOfDescriptors(int listen_fd) {
    if (reserve_fd_ >= 0) {
      ::close(reserve_fd_);
      reserve_fd_ = -1;
      int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd >= 0) {
        ssize_t ignored = ::send(fd, busy_reply_.data(), busy_reply_.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)ignored;
        ::close(fd);
      }
      reserve_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
    LogRefusal(StrCat("accept failed: ", std::strerror(EMFILE), " (descriptor limit)"));
    if (reserve_fd_ < 0 && !pause_timer_) {   // not even that: stop accepting for a second instead of spinning
      Pause();
      pause_timer_ = loop_->After(1000, [this] {
        pause_timer_ = 0;
        if (reserve_fd_ < 0) reserve_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        Resume();
      });
    }
  }

  // Rate-limited: a flood of refusals must not become a flood of log lines.
  void LogRefusal(const std::string& what) {
    ++refusals_since_log_;
    int64_t now = loop_->NowMs();
    if (now - last_refusal_log_ms_ < 10000) return;
    Log(LogLevel::kWarning, "smtpd", "connections refused", {{"why", what}, {"refused_since_last_line", std::to_string(refusals_since_log_)}});
    last_refusal_log_ms_ = now;
    refusals_since_log_ = 0;
  }

  EpollLoop* loop_;
  io::AcceptFn on_accept_;
  std::string busy_reply_;
  std::vector<std::unique_ptr<Socket>> sockets_;
  bool active_ = false;
  int reserve_fd_ = -1;
  uint64_t pause_timer_ = 0;
  int64_t last_refusal_log_ms_ = 0;
  uint64_t refusals_since_log_ = 0;
};

// Connecting: a non-blocking connect in progress, finished by EPOLLOUT or the timer.
class Connecting : public FdHandler {
 public:
  Connecting(EpollLoop* loop, int fd, const sockaddr_storage& to, io::ConnectFn done)
      : loop_(loop), fd_(fd), to_(to), done_(std::move(done)) {}
  void Begin(int timeout_ms) {
    loop_->Add(fd_, EPOLLOUT, this);
    timer_ = loop_->After(timeout_ms, [this] {
      timer_ = 0;
      Finish(UnavailableError(StrCat("connect to ", io::FormatAddress(reinterpret_cast<const sockaddr*>(&to_)), ": timed out")));
    });
  }
  void OnEvent(uint32_t) override {
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      Finish(UnavailableError(StrCat("connect to ", io::FormatAddress(reinterpret_cast<const sockaddr*>(&to_)), ": ", std::strerror(err))));
      return;
    }
    loop_->Remove(fd_);
    int fd = fd_;
    fd_ = -1;
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    Finish(std::unique_ptr<io::Stream>(new SocketStream(loop_, fd, to_)));
  }

 private:
  void Finish(Result<std::unique_ptr<io::Stream>> r) {
    if (timer_) loop_->Cancel(timer_);
    if (fd_ >= 0) {
      loop_->Remove(fd_);
      ::close(fd_);
    }
    io::ConnectFn done = std::move(done_);
    // Safe: called from this object's own event (its descriptor is out of the epoll set now, and
    // appears at most once in a batch) or from a timer (after the batch).
    delete this;
    done(std::move(r));
  }
  EpollLoop* loop_;
  int fd_;
  sockaddr_storage to_;
  io::ConnectFn done_;
  uint64_t timer_ = 0;
};

}  // namespace

Result<int> OpenListener(const std::string& ip, uint16_t* port) {
  sockaddr_storage ss;
  socklen_t len;
  if (!io::MakeAddress(ip, *port, &ss, &len)) return InvalidArgumentError(StrCat("bad listen address ", ip));
  int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return InternalError(StrCat("socket: ", std::strerror(errno)));
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || ::listen(fd, 1024) != 0) {
    int e = errno;
    ::close(fd);
    return UnavailableError(StrCat("listen on ", ip, ":", *port, ": ", std::strerror(e)));
  }
  sockaddr_storage bound{};
  socklen_t blen = sizeof bound;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &blen);
  *port = ntohs(bound.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&bound)->sin_port
                                           : reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
  return fd;
}

KernelBackend::KernelBackend(std::string busy_reply) : busy_reply_(std::move(busy_reply)) {}

void KernelBackend::SetListeners(std::vector<std::vector<int>> listen_fds) {
  for (auto& fds : listen_fds_)
    for (int fd : fds) ::close(fd);
  listen_fds_ = std::move(listen_fds);
}

KernelBackend::~KernelBackend() {
  for (auto& fds : listen_fds_)
    for (int fd : fds) ::close(fd);
}

std::unique_ptr<io::Loop> KernelBackend::NewLoop() { return std::make_unique<EpollLoop>(); }

Result<std::unique_ptr<io::Listener>> KernelBackend::Listen(io::Loop* loop, int index, io::AcceptFn on_accept) {
  if (index < 0 || static_cast<size_t>(index) >= listen_fds_.size())
    return InvalidArgumentError(StrCat("no listening sockets for net thread ", index));
  return std::unique_ptr<io::Listener>(
      new SocketListener(static_cast<EpollLoop*>(loop), listen_fds_[index], std::move(on_accept), busy_reply_));
}

void KernelBackend::Connect(io::Loop* loop, const sockaddr_storage& to, int timeout_ms, io::ConnectFn done) {
  auto* ep = static_cast<EpollLoop*>(loop);
  int fd = ::socket(to.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    done(UnavailableError(StrCat("socket: ", std::strerror(errno))));
    return;
  }
  int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&to), io::AddressLength(to));
  if (rc != 0 && errno != EINPROGRESS) {
    int e = errno;
    ::close(fd);
    done(UnavailableError(StrCat("connect to ", io::FormatAddress(reinterpret_cast<const sockaddr*>(&to)), ": ", std::strerror(e))));
    return;
  }
  (new Connecting(ep, fd, to, std::move(done)))->Begin(timeout_ms);
}

}  // namespace mailseal::kernel
