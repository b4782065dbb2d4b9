// backend.cc — see backend.h.
#include "dataplane/memory/backend.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstring>

#include "dataplane/base/clock.h"
#include "dataplane/io/socket_util.h"

namespace mailseal::memory {
namespace {
constexpr size_t kPipeCapacity = 256 * 1024;

// Pipe: the bytes travelling toward one end.
struct Pipe {
  std::string readable;     // arrived, not read yet
  size_t in_flight = 0;     // written, not arrived yet
  uint64_t written = 0;     // all bytes ever written into it
  bool writer_closed = false;
  bool eof = false;         // the writer's close has arrived
  Faults faults;
};

// End: one side's loop and what its handler wants.
struct End {
  MemLoop* loop = nullptr;
  io::StreamHandler* handler = nullptr;
  bool want_read = false, want_write = false;
  bool alive = true;
  bool notify_pending = false;
};

// Link: one connection. pipe[i] carries bytes toward end i.
struct Link {
  std::mutex mu;
  Pipe pipe[2];
  End end[2];
  bool reset = false;
};

bool ReadableLocked(const Link& l, int side) {
  return l.reset || !l.pipe[side].readable.empty() || l.pipe[side].eof;
}
bool WritableLocked(const Link& l, int side) {
  const Pipe& p = l.pipe[1 - side];
  return l.reset || !l.end[1 - side].alive || p.readable.size() + p.in_flight < kPipeCapacity;
}

// Notify (on end `side`'s loop): level-triggered readiness, as epoll gives it — told again
// while it stays ready and wanted.
void Notify(const std::shared_ptr<Link>& link, int side) {
  bool r, w;
  io::StreamHandler* h;
  {
    std::lock_guard<std::mutex> g(link->mu);
    End& e = link->end[side];
    e.notify_pending = false;
    if (!e.alive || !e.handler) return;
    r = e.want_read && ReadableLocked(*link, side);
    w = e.want_write && WritableLocked(*link, side);
    h = e.handler;
  }
  if (r || w) h->OnReady(r, w);   // the handler changes only on this thread: still valid
  std::lock_guard<std::mutex> g(link->mu);
  End& e = link->end[side];
  if (!e.alive || !e.handler || e.notify_pending) return;
  if ((e.want_read && ReadableLocked(*link, side)) || (e.want_write && WritableLocked(*link, side))) {
    e.notify_pending = true;
    e.loop->Post([link, side] { Notify(link, side); });
  }
}

// Kick schedules a Notify of `side` (mu held by the caller).
void KickLocked(const std::shared_ptr<Link>& link, int side) {
  End& e = link->end[side];
  if (!e.alive || !e.loop || e.notify_pending) return;
  e.notify_pending = true;
  e.loop->Post([link, side] { Notify(link, side); });
}

class MemStream : public io::Stream {
 public:
  MemStream(std::shared_ptr<Link> link, int side, const sockaddr_storage& peer)
      : link_(std::move(link)), side_(side), peer_(peer) {}
  ~MemStream() override {
    std::lock_guard<std::mutex> g(link_->mu);
    link_->end[side_].alive = false;
    link_->end[side_].handler = nullptr;
    Pipe& out = link_->pipe[1 - side_];
    out.writer_closed = true;
    // The close arrives after the bytes in flight (same delay, so in order).
    End& peer = link_->end[1 - side_];
    if (peer.alive && peer.loop) {
      std::shared_ptr<Link> link = link_;
      int to = 1 - side_;
      peer.loop->PostAfter(out.faults.delay_ms, [link, to] {
        std::lock_guard<std::mutex> g2(link->mu);
        link->pipe[to].eof = true;
        KickLocked(link, to);
      });
    }
  }

  io::IoResult Read(char* buf, size_t cap) override {
    std::lock_guard<std::mutex> g(link_->mu);
    if (link_->reset) return io::IoResult::Failed("connection reset by peer");
    Pipe& in = link_->pipe[side_];
    if (in.readable.empty()) return in.eof ? io::IoResult::Closed() : io::IoResult::WouldBlock();
    size_t n = std::min(cap, in.readable.size());
    std::memcpy(buf, in.readable.data(), n);
    in.readable.erase(0, n);
    KickLocked(link_, 1 - side_);   // room for the writer
    return io::IoResult::Ok(n);
  }

  io::IoResult Write(std::string_view bytes) override {
    std::lock_guard<std::mutex> g(link_->mu);
    if (link_->reset) return io::IoResult::Failed("connection reset by peer");
    End& peer = link_->end[1 - side_];
    if (!peer.alive) return io::IoResult::Failed("broken pipe (the peer closed)");
    Pipe& out = link_->pipe[1 - side_];
    size_t room = kPipeCapacity - std::min(kPipeCapacity, out.readable.size() + out.in_flight);
    if (room == 0) return io::IoResult::WouldBlock();
    size_t n = std::min(room, bytes.size());
    bool reset = false;
    if (out.faults.reset_after >= 0 && out.written + n >= static_cast<uint64_t>(out.faults.reset_after)) {
      n = static_cast<size_t>(out.faults.reset_after) - std::min<uint64_t>(out.written, out.faults.reset_after);
      reset = true;
    }
    std::string_view take = bytes.substr(0, n);
    out.written += n;
    size_t piece = out.faults.split ? out.faults.split : std::max<size_t>(n, 1);
    std::shared_ptr<Link> link = link_;
    int to = 1 - side_;
    for (size_t i = 0; i < take.size(); i += piece) {
      std::string chunk(take.substr(i, piece));
      out.in_flight += chunk.size();
      peer.loop->PostAfter(out.faults.delay_ms, [link, to, chunk] {
        std::lock_guard<std::mutex> g2(link->mu);
        Pipe& p = link->pipe[to];
        p.in_flight -= chunk.size();
        if (!link->reset) p.readable += chunk;
        KickLocked(link, to);
      });
    }
    if (reset) {
      // The reset travels behind the bytes before it; both ends see it then.
      peer.loop->PostAfter(out.faults.delay_ms, [link] {
        std::lock_guard<std::mutex> g2(link->mu);
        link->reset = true;
        link->pipe[0].readable.clear();
        link->pipe[1].readable.clear();
        KickLocked(link, 0);
        KickLocked(link, 1);
      });
      if (n == 0) return io::IoResult::Failed("connection reset by peer");
    }
    return io::IoResult::Ok(n);
  }

  void Watch(io::StreamHandler* h, bool read, bool write) override {
    std::lock_guard<std::mutex> g(link_->mu);
    End& e = link_->end[side_];
    e.handler = h;
    e.want_read = h && read;
    e.want_write = h && write;
    if ((e.want_read && ReadableLocked(*link_, side_)) || (e.want_write && WritableLocked(*link_, side_)))
      KickLocked(link_, side_);
  }

  const sockaddr_storage& peer() const override { return peer_; }

 private:
  std::shared_ptr<Link> link_;
  int side_;
  sockaddr_storage peer_;
};

sockaddr_storage Address(const std::string& ip, uint16_t port) {
  sockaddr_storage ss{};
  socklen_t len;
  if (!io::MakeAddress(ip, port, &ss, &len)) io::MakeAddress("127.0.0.1", port, &ss, &len);
  return ss;
}
}  // namespace

// ---- MemLoop ----

void MemLoop::Post(std::function<void()> task) { PostAfter(0, std::move(task)); }

void MemLoop::PostAfter(int64_t ms, std::function<void()> task) {
  {
    std::lock_guard<std::mutex> l(mu_);
    due_.emplace(base::SteadyMs() + std::max<int64_t>(ms, 0), std::move(task));
  }
  cv_.notify_one();
}

int64_t MemLoop::NowMs() const { return base::SteadyMs(); }

void MemLoop::Stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_one();
}

// TakeDue waits until a task is due, `until` (monotonic ms) passes or Stop(), and returns the
// tasks due then, in order.
std::vector<std::function<void()>> MemLoop::TakeDue(int64_t until) {
  std::vector<std::function<void()>> batch;
  std::unique_lock<std::mutex> l(mu_);
  while (!stop_) {
    int64_t now = NowMs();
    if ((!due_.empty() && due_.begin()->first <= now) || now >= until) break;
    int64_t next = due_.empty() ? until : std::min(until, due_.begin()->first);
    cv_.wait_for(l, std::chrono::milliseconds(next - now));
  }
  if (stop_) return batch;
  int64_t now = NowMs();
  while (!due_.empty() && due_.begin()->first <= now) {
    batch.push_back(std::move(due_.begin()->second));
    due_.erase(due_.begin());
  }
  return batch;
}

void MemLoop::RunOnce(int timeout_ms) {
  for (auto& t : TakeDue(NowMs() + timeout_ms)) t();
}

void MemLoop::Run(int tick_ms, const std::function<void()>& tick, const std::function<void()>& after_batch) {
  int64_t next_tick = NowMs() + tick_ms;
  while (true) {
    std::vector<std::function<void()>> batch = TakeDue(next_tick);
    {
      std::lock_guard<std::mutex> l(mu_);
      if (stop_) return;
    }
    for (auto& t : batch) t();
    if (NowMs() >= next_tick) {
      next_tick = NowMs() + tick_ms;
      tick();
    }
    after_batch();
  }
}

// ---- MemBackend ----

struct MemBackend::State {
  std::mutex mu;
  struct Listening {
    MemLoop* loop = nullptr;
    io::AcceptFn on_accept;
    bool paused = false;
    uint64_t generation = 0;
  };
  std::map<int, Listening> listeners;
  Faults connect_to_server, connect_to_client;
  int connect_target = 0;
  uint16_t next_port = 40000;
};

namespace {
class MemListener : public io::Listener {
 public:
  MemListener(std::shared_ptr<MemBackend::State> st, int index) : st_(std::move(st)), index_(index) {}
  ~MemListener() override {
    std::lock_guard<std::mutex> l(st_->mu);
    st_->listeners.erase(index_);
  }
  void Pause() override { Set(true); }
  void Resume() override { Set(false); }

 private:
  void Set(bool paused) {
    std::lock_guard<std::mutex> l(st_->mu);
    if (auto it = st_->listeners.find(index_); it != st_->listeners.end()) it->second.paused = paused;
  }
  std::shared_ptr<MemBackend::State> st_;
  int index_;
};
}  // namespace

MemBackend::MemBackend() : state_(std::make_shared<State>()) {}
MemBackend::~MemBackend() = default;

std::unique_ptr<io::Loop> MemBackend::NewLoop() { return std::make_unique<MemLoop>(); }

Result<std::unique_ptr<io::Listener>> MemBackend::Listen(io::Loop* loop, int index, io::AcceptFn on_accept) {
  std::lock_guard<std::mutex> l(state_->mu);
  State::Listening& li = state_->listeners[index];
  li.loop = static_cast<MemLoop*>(loop);
  li.on_accept = std::move(on_accept);
  li.paused = false;
  ++li.generation;
  return std::unique_ptr<io::Listener>(new MemListener(state_, index));
}

Result<std::unique_ptr<io::Stream>> MemBackend::Dial(io::Loop* loop, int index, const std::string& from_ip,
                                                     Faults to_server, Faults to_client) {
  std::lock_guard<std::mutex> l(state_->mu);
  auto it = state_->listeners.find(index);
  if (it == state_->listeners.end() || it->second.paused)
    return UnavailableError("connection refused (nobody listens)");
  auto link = std::make_shared<Link>();
  link->end[0].loop = static_cast<MemLoop*>(loop);   // end 0: the client
  link->end[1].loop = it->second.loop;               // end 1: the server
  link->pipe[1].faults = to_server;
  link->pipe[0].faults = to_client;
  uint16_t port = state_->next_port++;
  auto server_end = std::make_shared<std::unique_ptr<io::Stream>>(
      std::make_unique<MemStream>(link, 1, Address(from_ip, port)));
  std::shared_ptr<State> st = state_;
  uint64_t generation = it->second.generation;
  it->second.loop->Post([st, index, generation, server_end] {
    io::AcceptFn accept;
    {
      std::lock_guard<std::mutex> g(st->mu);
      auto li = st->listeners.find(index);
      if (li == st->listeners.end() || li->second.generation != generation) return;   // gone: the stream closes
      accept = li->second.on_accept;
    }
    accept(std::move(*server_end));
  });
  return std::unique_ptr<io::Stream>(new MemStream(link, 0, Address("127.0.0.25", 25)));
}

void MemBackend::SetConnectFaults(Faults to_server, Faults to_client) {
  std::lock_guard<std::mutex> l(state_->mu);
  state_->connect_to_server = to_server;
  state_->connect_to_client = to_client;
}

void MemBackend::SetConnectTarget(int index) {
  std::lock_guard<std::mutex> l(state_->mu);
  state_->connect_target = index;
}

void MemBackend::Connect(io::Loop* loop, const sockaddr_storage&, int, io::ConnectFn done) {
  Faults s, c;
  int target;
  {
    std::lock_guard<std::mutex> l(state_->mu);
    s = state_->connect_to_server;
    c = state_->connect_to_client;
    target = state_->connect_target;
  }
  Result<std::unique_ptr<io::Stream>> r = Dial(loop, target, "127.0.0.1", s, c);
  auto shared = std::make_shared<Result<std::unique_ptr<io::Stream>>>(std::move(r));
  loop->Post([done = std::move(done), shared]() mutable { done(std::move(*shared)); });
}

}  // namespace mailseal::memory
