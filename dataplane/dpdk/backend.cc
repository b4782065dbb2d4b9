// backend.cc — see backend.h.
#include "dataplane/dpdk/backend.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "dataplane/base/clock.h"
#include "dataplane/base/log.h"
#include "dataplane/memory/backend.h"
#include "dataplane/net/stack.h"

namespace mailseal::dpdk {
namespace {
using base::Log;
using base::LogLevel;

constexpr size_t kBufCap = 256 * 1024;   // per stream and direction
constexpr uint16_t kBurst = 32;

// Link: one stream's state shared by its owner's loop and the poll thread.
struct Link {
  std::mutex mu;
  net::FlowId flow = 0;
  std::string rx, tx;         // toward the owner / toward the flow
  bool eof = false;           // the peer's end reached the owner (after rx)
  std::string failed;         // the flow was reset or aborted: why
  bool owner_gone = false, close_sent = false;
  io::Loop* loop = nullptr;
  io::StreamHandler* handler = nullptr;
  bool want_read = false, want_write = false, notify_pending = false;
};

bool ReadableLocked(const Link& l) { return !l.rx.empty() || l.eof || !l.failed.empty(); }
bool WritableLocked(const Link& l) { return !l.failed.empty() || l.eof || l.tx.size() < kBufCap; }

// Notify on the owner's loop, level-triggered like epoll (told again while ready and wanted).
void Notify(const std::shared_ptr<Link>& link) {
  bool r, w;
  io::StreamHandler* h;
  {
    std::lock_guard<std::mutex> g(link->mu);
    link->notify_pending = false;
    if (link->owner_gone || !link->handler) return;
    r = link->want_read && ReadableLocked(*link);
    w = link->want_write && WritableLocked(*link);
    h = link->handler;
  }
  if (r || w) h->OnReady(r, w);
  std::lock_guard<std::mutex> g(link->mu);
  if (link->owner_gone || !link->handler || link->notify_pending) return;
  if ((link->want_read && ReadableLocked(*link)) || (link->want_write && WritableLocked(*link))) {
    link->notify_pending = true;
    link->loop->Post([link] { Notify(link); });
  }
}

void KickLocked(const std::shared_ptr<Link>& link) {
  if (link->owner_gone || !link->loop || link->notify_pending) return;
  link->notify_pending = true;
  link->loop->Post([link] { Notify(link); });
}

sockaddr_storage Address(uint32_t ip, uint16_t port) {
  sockaddr_storage ss{};
  auto* in = reinterpret_cast<sockaddr_in*>(&ss);
  in->sin_family = AF_INET;
  in->sin_addr.s_addr = htonl(ip);
  in->sin_port = htons(port);
  return ss;
}
}  // namespace

struct DpdkBackend::Impl : std::enable_shared_from_this<Impl> {
  DpdkOptions opt;
  uint16_t port = 0, exc = 0;
  bool has_exc = false;
  rte_mempool* pool = nullptr;
  std::unique_ptr<net::Stack> stack;
  std::thread poller;
  std::atomic<bool> stop{false};

  std::mutex mu;   // guards tasks, dirty, acceptors
  std::vector<std::function<void()>> tasks;
  std::vector<std::shared_ptr<Link>> dirty;
  struct Acceptor {
    io::Loop* loop;
    io::AcceptFn fn;
    std::atomic<bool> paused{false};
  };
  std::vector<std::shared_ptr<Acceptor>> acceptors;
  size_t next_acceptor = 0;

  // The poll thread's own.
  std::unordered_map<net::FlowId, std::shared_ptr<Link>> links;
  struct PendingConnect {
    io::Loop* loop;
    io::ConnectFn done;
    int64_t deadline;
    sockaddr_storage to;
  };
  std::unordered_map<net::FlowId, PendingConnect> connects;

  std::atomic<uint64_t> rx{0}, tx{0}, tx_dropped{0}, to_kernel{0}, from_kernel{0};
  DpdkBackend::Stats published;   // the stack's counters, under mu
  int64_t last_publish = 0;

  void PostTask(std::function<void()> t) {
    std::lock_guard<std::mutex> g(mu);
    tasks.push_back(std::move(t));
  }
  void MarkDirty(std::shared_ptr<Link> l) {
    std::lock_guard<std::mutex> g(mu);
    dirty.push_back(std::move(l));
  }
  void Run();
  void Pump(const std::shared_ptr<Link>& l, int64_t now);
  void HandleEvents(int64_t now);
  void Transmit(uint16_t to, std::vector<std::string> frames);
};

namespace {
class DpdkStream : public io::Stream {
 public:
  DpdkStream(std::shared_ptr<DpdkBackend::Impl> impl, std::shared_ptr<Link> link, io::Loop* loop, sockaddr_storage peer)
      : impl_(std::move(impl)), link_(std::move(link)), peer_(peer) {
    std::lock_guard<std::mutex> g(link_->mu);
    link_->loop = loop;
  }
  ~DpdkStream() override {
    {
      std::lock_guard<std::mutex> g(link_->mu);
      link_->owner_gone = true;
      link_->handler = nullptr;
    }
    impl_->MarkDirty(link_);   // the poll thread closes the flow after what was written
  }
  io::IoResult Read(char* buf, size_t cap) override {
    std::lock_guard<std::mutex> g(link_->mu);
    if (!link_->rx.empty()) {
      size_t n = std::min(cap, link_->rx.size());
      std::memcpy(buf, link_->rx.data(), n);
      link_->rx.erase(0, n);
      impl_->MarkDirty(link_);   // room: take more from the flow
      return io::IoResult::Ok(n);
    }
    if (!link_->failed.empty()) return io::IoResult::Failed(link_->failed);
    if (link_->eof) return io::IoResult::Closed();
    return io::IoResult::WouldBlock();
  }
  io::IoResult Write(std::string_view bytes) override {
    std::lock_guard<std::mutex> g(link_->mu);
    if (!link_->failed.empty()) return io::IoResult::Failed(link_->failed);
    size_t room = kBufCap - std::min(kBufCap, link_->tx.size());
    if (room == 0) return io::IoResult::WouldBlock();
    size_t n = std::min(room, bytes.size());
    link_->tx.append(bytes.substr(0, n));
    impl_->MarkDirty(link_);
    return io::IoResult::Ok(n);
  }
  void Watch(io::StreamHandler* h, bool read, bool write) override {
    std::lock_guard<std::mutex> g(link_->mu);
    link_->handler = h;
    link_->want_read = h && read;
    link_->want_write = h && write;
    if ((link_->want_read && ReadableLocked(*link_)) || (link_->want_write && WritableLocked(*link_))) KickLocked(link_);
  }
  const sockaddr_storage& peer() const override { return peer_; }

 private:
  std::shared_ptr<DpdkBackend::Impl> impl_;
  std::shared_ptr<Link> link_;
  sockaddr_storage peer_;
};

class DpdkListener : public io::Listener {
 public:
  explicit DpdkListener(std::shared_ptr<DpdkBackend::Impl::Acceptor> a) : a_(std::move(a)) {}
  ~DpdkListener() override { a_->paused = true; }
  void Pause() override { a_->paused = true; }
  void Resume() override { a_->paused = false; }

 private:
  std::shared_ptr<DpdkBackend::Impl::Acceptor> a_;
};
}  // namespace

void DpdkBackend::Impl::Pump(const std::shared_ptr<Link>& l, int64_t now) {
  std::lock_guard<std::mutex> g(l->mu);
  const net::tcp::Connection* c = stack->Flow(l->flow);
  if (!c) return;
  bool kick = false;
  if (!l->tx.empty()) {
    size_t n = stack->Send(l->flow, l->tx, now);
    if (n) {
      l->tx.erase(0, n);
      kick = true;
    }
  }
  char buf[16384];
  while (l->rx.size() < kBufCap) {
    size_t n = stack->Read(l->flow, buf, std::min(sizeof buf, kBufCap - l->rx.size()), now);
    if (!n) break;
    l->rx.append(buf, n);
    kick = true;
  }
  c = stack->Flow(l->flow);
  if (c && c->peer_finished() && c->readable_bytes() == 0 && !l->eof) {
    l->eof = true;
    kick = true;
  }
  if (l->owner_gone && l->tx.empty() && !l->close_sent) {
    l->close_sent = true;
    stack->Close(l->flow, now);
  }
  if (kick) KickLocked(l);
}

void DpdkBackend::Impl::HandleEvents(int64_t now) {
  for (auto [f, e] : stack->TakeEvents()) {
    switch (e) {
      case net::Stack::Event::kAccepted: {
        std::shared_ptr<Acceptor> a;
        {
          std::lock_guard<std::mutex> g(mu);
          for (size_t i = 0; i < acceptors.size() && !a; ++i) {
            auto& cand = acceptors[(next_acceptor + i) % acceptors.size()];
            if (!cand->paused) a = cand;
          }
          ++next_acceptor;
        }
        if (!a) {
          stack->Abort(f, "no listener accepting");
          break;
        }
        auto link = std::make_shared<Link>();
        link->flow = f;
        links[f] = link;
        net::Stack::Remote r = stack->RemoteOf(f);
        auto stream = std::make_shared<std::unique_ptr<io::Stream>>(
            std::make_unique<DpdkStream>(shared_from_this(), link, a->loop, Address(r.ip, r.port)));
        a->loop->Post([a, stream] { a->fn(std::move(*stream)); });
        break;
      }
      case net::Stack::Event::kConnected: {
        auto it = connects.find(f);
        if (it == connects.end()) break;
        auto link = std::make_shared<Link>();
        link->flow = f;
        links[f] = link;
        auto stream = std::make_shared<std::unique_ptr<io::Stream>>(
            std::make_unique<DpdkStream>(shared_from_this(), link, it->second.loop, it->second.to));
        io::ConnectFn done = std::move(it->second.done);
        it->second.loop->Post([done, stream] { done(std::move(*stream)); });
        connects.erase(it);
        break;
      }
      case net::Stack::Event::kReadable:
      case net::Stack::Event::kWritable:
        if (auto it = links.find(f); it != links.end()) Pump(it->second, now);
        break;
      case net::Stack::Event::kClosed: {
        std::string why = stack->ClosedReason(f);
        if (auto it = connects.find(f); it != connects.end()) {
          io::ConnectFn done = std::move(it->second.done);
          std::string msg = why.empty() ? "connection closed" : why;
          it->second.loop->Post([done, msg] { done(UnavailableError(msg)); });
          connects.erase(it);
        }
        if (auto it = links.find(f); it != links.end()) {
          std::lock_guard<std::mutex> g(it->second->mu);
          if (!why.empty()) it->second->failed = why;
          else it->second->eof = true;
          KickLocked(it->second);
          links.erase(it);
        }
        break;
      }
    }
  }
}

void DpdkBackend::Impl::Transmit(uint16_t to, std::vector<std::string> frames) {
  rte_mbuf* out[kBurst];
  size_t i = 0;
  while (i < frames.size()) {
    uint16_t n = 0;
    for (; n < kBurst && i < frames.size(); ++i) {
      rte_mbuf* m = rte_pktmbuf_alloc(pool);
      if (!m) {
        ++tx_dropped;
        continue;
      }
      char* p = rte_pktmbuf_append(m, static_cast<uint16_t>(frames[i].size()));
      if (!p) {
        rte_pktmbuf_free(m);
        ++tx_dropped;
        continue;
      }
      std::memcpy(p, frames[i].data(), frames[i].size());
      out[n++] = m;
    }
    uint16_t sent = rte_eth_tx_burst(to, 0, out, n);
    tx += sent;
    for (uint16_t k = sent; k < n; ++k) {
      rte_pktmbuf_free(out[k]);
      ++tx_dropped;   // TCP sends it again
    }
  }
}

void DpdkBackend::Impl::Run() {
  rte_mbuf* bufs[kBurst];
  int idle = 0;
  while (!stop.load(std::memory_order_acquire)) {
    int64_t now = base::SteadyMs();
    bool busy = false;
    uint16_t n = rte_eth_rx_burst(port, 0, bufs, kBurst);
    rx += n;
    std::vector<std::string> to_exc;
    for (uint16_t i = 0; i < n; ++i) {
      rte_mbuf* m = bufs[i];
      net::Stack::Verdict v = net::Stack::Verdict::kDropped;
      if (m->nb_segs == 1) v = stack->Input(std::string_view(rte_pktmbuf_mtod(m, const char*), m->data_len), now);
      if (has_exc && (v == net::Stack::Verdict::kToKernel || v == net::Stack::Verdict::kBoth))
        to_exc.emplace_back(rte_pktmbuf_mtod(m, const char*), m->data_len);
      rte_pktmbuf_free(m);
    }
    busy |= n > 0;
    if (!to_exc.empty()) {
      to_kernel += to_exc.size();
      Transmit(exc, std::move(to_exc));
    }
    if (has_exc) {   // the kernel's packets out of the mail port
      uint16_t k = rte_eth_rx_burst(exc, 0, bufs, kBurst);
      from_kernel += k;
      uint16_t sent = k ? rte_eth_tx_burst(port, 0, bufs, k) : 0;
      for (uint16_t i = sent; i < k; ++i) rte_pktmbuf_free(bufs[i]);
      busy |= k > 0;
    }
    std::vector<std::function<void()>> t;
    std::vector<std::shared_ptr<Link>> d;
    {
      std::lock_guard<std::mutex> g(mu);
      t.swap(tasks);
      d.swap(dirty);
    }
    for (auto& task : t) task();
    for (auto& l : d) Pump(l, now);
    busy |= !t.empty() || !d.empty();
    stack->Tick(now);
    for (auto it = connects.begin(); it != connects.end();) {
      if (now < it->second.deadline) {
        ++it;
        continue;
      }
      io::ConnectFn done = std::move(it->second.done);
      it->second.loop->Post([done] { done(UnavailableError("connection timed out")); });
      net::FlowId f = it->first;
      it = connects.erase(it);
      stack->Abort(f, "connection timed out");
    }
    HandleEvents(now);
    std::vector<std::string> frames = stack->TakeFrames();
    busy |= !frames.empty();
    if (!frames.empty()) Transmit(port, std::move(frames));
    if (now - last_publish >= 1000) {
      last_publish = now;
      const net::Stack::Stats& st = stack->stats();
      std::lock_guard<std::mutex> g(mu);
      published.flows = stack->flows();
      published.half_open = stack->half_open();
      published.syn_cookies_sent = st.syn_cookies_sent;
      published.syn_cookies_accepted = st.syn_cookies_accepted;
      published.syn_dropped = st.syn_dropped;
      published.rst_sent = st.rst_sent;
      published.flows_reset = st.flows_reset;
      published.bad_checksum = st.bad_checksum;
      published.icmp_errors = st.icmp_errors;
    }
    idle = busy ? 0 : idle + 1;
    if (idle > 64) ::usleep(50);
  }
}

bool ParseAddress(const std::string& s, uint32_t* ip, uint32_t* netmask) {
  size_t slash = s.find('/');
  in_addr a{};
  if (inet_pton(AF_INET, s.substr(0, slash).c_str(), &a) != 1) return false;
  int prefix = 32;
  if (slash != std::string::npos) {
    std::string p = s.substr(slash + 1);
    if (p.empty() || p.size() > 2 || p.find_first_not_of("0123456789") != std::string::npos) return false;
    prefix = std::stoi(p);
    if (prefix > 32) return false;
  }
  *ip = ntohl(a.s_addr);
  *netmask = prefix == 0 ? 0 : ~uint32_t{0} << (32 - prefix);
  return true;
}

Result<std::unique_ptr<DpdkBackend>> DpdkBackend::Start(DpdkOptions o) {
  static std::once_flag eal_once;
  static int eal_rc = 0;
  static std::string eal_error;
  std::call_once(eal_once, [&] {
    std::vector<std::string> args = {"mailseald"};
    args.insert(args.end(), o.eal_args.begin(), o.eal_args.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    eal_rc = rte_eal_init(static_cast<int>(argv.size()), argv.data());
    if (eal_rc < 0) eal_error = rte_strerror(rte_errno);
  });
  if (eal_rc < 0) return UnavailableError(StrCat("DPDK EAL: ", eal_error));
  auto impl = std::make_shared<Impl>();
  impl->opt = o;
  impl->pool = rte_pktmbuf_pool_create("mailseal_mbufs", o.mbufs ? o.mbufs : 8191, 256, 0, RTE_MBUF_DEFAULT_BUF_SIZE,
                                       static_cast<int>(rte_socket_id()));
  if (!impl->pool) return UnavailableError(StrCat("DPDK: no mbuf pool: ", rte_strerror(rte_errno)));
  auto setup = [&](const std::string& name, uint16_t* id) -> Status {
    if (rte_eth_dev_get_port_by_name(name.c_str(), id) != 0)
      return InvalidArgumentError(StrCat("DPDK: no port named '", name, "' (is it in eal_args as a --vdev?)"));
    rte_eth_conf conf{};
    int rc = rte_eth_dev_configure(*id, 1, 1, &conf);
    int socket = rte_eth_dev_socket_id(*id);
    if (rc == 0) rc = rte_eth_rx_queue_setup(*id, 0, 1024, socket < 0 ? 0 : socket, nullptr, impl->pool);
    if (rc == 0) rc = rte_eth_tx_queue_setup(*id, 0, 1024, socket < 0 ? 0 : socket, nullptr);
    if (rc == 0) rc = rte_eth_dev_start(*id);
    if (rc != 0) return UnavailableError(StrCat("DPDK: port '", name, "' cannot start: ", rte_strerror(-rc)));
    rte_eth_promiscuous_enable(*id);
    return OkStatus();
  };
  if (Status st = setup(o.port, &impl->port); !st.ok()) return st;
  if (!o.exception_port.empty()) {
    if (Status st = setup(o.exception_port, &impl->exc); !st.ok()) return st;
    impl->has_exc = true;
  }
  rte_ether_addr mac{};
  rte_eth_macaddr_get(impl->port, &mac);
  // One MAC for the address: the kernel's side of the exception port takes the mail port's, so
  // that frames the stack hands it (addressed to that MAC) are the kernel's own.
  if (impl->has_exc) {
    if (int rc = rte_eth_dev_default_mac_addr_set(impl->exc, &mac); rc != 0)
      return UnavailableError(StrCat("DPDK: exception port '", o.exception_port, "' cannot take the port's MAC: ",
                                     rte_strerror(-rc)));
  }
  net::StackConfig sc;
  std::memcpy(sc.mac.data(), mac.addr_bytes, 6);
  sc.ip = o.ip;
  sc.netmask = o.netmask;
  sc.gateway = o.gateway;
  if (o.max_flows) sc.max_flows = o.max_flows;
  if (o.syn_budget) sc.syn_budget = o.syn_budget;
  impl->stack = std::make_unique<net::Stack>(sc);
  for (uint16_t p : o.listen_ports) impl->stack->Listen(p);
  std::unique_ptr<DpdkBackend> b(new DpdkBackend());
  b->impl_ = impl;
  impl->poller = std::thread([impl] { impl->Run(); });
  char macs[18];
  std::snprintf(macs, sizeof macs, "%02x:%02x:%02x:%02x:%02x:%02x", mac.addr_bytes[0], mac.addr_bytes[1],
                mac.addr_bytes[2], mac.addr_bytes[3], mac.addr_bytes[4], mac.addr_bytes[5]);
  Log(LogLevel::kInfo, "dpdk", "port up",
      {{"port", o.port}, {"mac", macs}, {"exception_port", o.exception_port.empty() ? "none" : o.exception_port}});
  return b;
}

DpdkBackend::~DpdkBackend() { Stop(); }

void DpdkBackend::Stop() {
  if (!impl_ || impl_->stop.exchange(true)) return;
  if (impl_->poller.joinable()) impl_->poller.join();
  // The poll thread is gone: the stack may be read here.
  const net::Stack::Stats& st = impl_->stack->stats();
  Log(LogLevel::kInfo, "dpdk", "stopped",
      {{"rx", std::to_string(impl_->rx.load())}, {"tx", std::to_string(impl_->tx.load())},
       {"to_kernel", std::to_string(impl_->to_kernel.load())}, {"flows", std::to_string(impl_->stack->flows())},
       {"half_open", std::to_string(impl_->stack->half_open())},
       {"syn_cookies_sent", std::to_string(st.syn_cookies_sent)},
       {"syn_cookies_accepted", std::to_string(st.syn_cookies_accepted)}, {"syn_dropped", std::to_string(st.syn_dropped)},
       {"rst_sent", std::to_string(st.rst_sent)}, {"flows_reset", std::to_string(st.flows_reset)}});
  rte_eth_dev_stop(impl_->port);
  if (impl_->has_exc) rte_eth_dev_stop(impl_->exc);
}

std::unique_ptr<io::Loop> DpdkBackend::NewLoop() { return std::make_unique<memory::MemLoop>(); }

Result<std::unique_ptr<io::Listener>> DpdkBackend::Listen(io::Loop* loop, int, io::AcceptFn on_accept) {
  auto a = std::make_shared<Impl::Acceptor>();
  a->loop = loop;
  a->fn = std::move(on_accept);
  std::lock_guard<std::mutex> g(impl_->mu);
  impl_->acceptors.push_back(a);
  return std::unique_ptr<io::Listener>(std::make_unique<DpdkListener>(a));
}

void DpdkBackend::Connect(io::Loop* loop, const sockaddr_storage& to, int timeout_ms, io::ConnectFn done) {
  if (to.ss_family != AF_INET) {
    loop->Post([done] { done(InvalidArgumentError("the DPDK back end speaks IPv4 only (IPv6 is designed in, not done)")); });
    return;
  }
  const auto* in = reinterpret_cast<const sockaddr_in*>(&to);
  uint32_t ip = ntohl(in->sin_addr.s_addr);
  uint16_t port = ntohs(in->sin_port);
  std::shared_ptr<Impl> impl = impl_;
  impl->PostTask([impl, loop, to, ip, port, timeout_ms, done] {
    int64_t now = base::SteadyMs();
    std::optional<net::FlowId> f = impl->stack->Connect(ip, port, now);
    if (!f) {
      loop->Post([done] { done(UnavailableError("no free local port or flow slot")); });
      return;
    }
    impl->connects[*f] = Impl::PendingConnect{loop, done, now + timeout_ms, to};
  });
}

DpdkBackend::Stats DpdkBackend::stats() const {
  Stats s;
  {
    std::lock_guard<std::mutex> g(impl_->mu);
    s = impl_->published;
  }
  s.rx = impl_->rx;
  s.tx = impl_->tx;
  s.tx_dropped = impl_->tx_dropped;
  s.to_kernel = impl_->to_kernel;
  s.from_kernel = impl_->from_kernel;
  return s;
}

}  // namespace mailseal::dpdk
