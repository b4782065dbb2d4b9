// backend.cc — see backend.h.
#include "dataplane/dpdk/backend.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <pthread.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_ring.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <bitset>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "dataplane/base/clock.h"
#include "dataplane/base/cpu.h"
#include "dataplane/base/log.h"
#include "dataplane/memory/backend.h"
#include "dataplane/net/stack.h"
#include "dataplane/net/steer.h"

namespace mailseal::dpdk {
struct Poller;

namespace {
using base::Log;
using base::LogLevel;

constexpr size_t kBufCap = 256 * 1024;   // per stream and direction
constexpr uint16_t kBurst = 32;

// Link: one stream's state shared by its owner's loop and the poll thread.
struct Link {
  Poller* poller = nullptr;   // the lcore that owns the flow
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

struct Poller;

struct DpdkBackend::Impl : std::enable_shared_from_this<Impl> {
  DpdkOptions opt;
  uint16_t port = 0, exc = 0;
  bool has_exc = false;
  uint16_t rx_queues = 1;   // the port's RX queues: the first rx_queues pollers poll one each
  bool rss = false;         // the port hashes flows to queues itself (same key as steer.h)
  rte_mempool* pool = nullptr;
  std::vector<std::unique_ptr<Poller>> pollers;   // one per lcore; fixed after Start
  net::SteerConfig steer;
  std::bitset<65536> stack_ports;                 // listening and ephemeral: the stacks' TCP
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> to_kernel{0}, from_kernel{0};
  std::atomic<unsigned> next_connect{0};

  std::mutex mu;   // guards acceptors, next_acceptor
  struct Acceptor {
    io::Loop* loop;
    io::AcceptFn fn;
    std::atomic<bool> paused{false};
  };
  std::vector<std::shared_ptr<Acceptor>> acceptors;
  size_t next_acceptor = 0;

  ~Impl();
};

// Poller: one lcore's thread — its RX/TX queue pair of the port, its ring of frames other
// lcores steered to it, its Stack and the streams of its flows. Only its thread touches the
// Stack, links and connects; tasks and dirty are handed in under mu.
struct Poller {
  DpdkBackend::Impl* impl = nullptr;
  unsigned index = 0;
  std::unique_ptr<net::Stack> stack;
  rte_ring* ring = nullptr;   // MP/SC: frames steered here by the other lcores
  std::thread thread;

  std::mutex mu;   // guards tasks, dirty, published
  std::vector<std::function<void()>> tasks;
  std::vector<std::shared_ptr<Link>> dirty;
  DpdkBackend::Stats published;

  std::unordered_map<net::FlowId, std::shared_ptr<Link>> links;
  struct PendingConnect {
    io::Loop* loop;
    io::ConnectFn done;
    int64_t deadline;
    sockaddr_storage to;
  };
  std::unordered_map<net::FlowId, PendingConnect> connects;
  // Flows reset because a peer sent different bytes for the same sequence numbers (an evasion
  // attempt, tcp/connection.h) are logged, at most 10 a second per lcore; the rest are counted.
  int64_t evasion_window_ms = 0;
  int evasion_logged = 0;
  uint64_t evasion_suppressed = 0;
  std::vector<std::string> to_exc;   // lcore 0: frames for the kernel, this round

  std::atomic<uint64_t> rx{0}, tx{0}, tx_dropped{0}, steered{0}, steer_dropped{0};

  void PostTask(std::function<void()> t) {
    std::lock_guard<std::mutex> g(mu);
    tasks.push_back(std::move(t));
  }
  void MarkDirty(std::shared_ptr<Link> l) {
    std::lock_guard<std::mutex> g(mu);
    dirty.push_back(std::move(l));
  }
  void Run();
  void Route(rte_mbuf* m, int64_t now);   // a frame from the port: here, to its owner, or to all
  void Local(rte_mbuf* m, int64_t now);   // a frame this lcore's stack takes
  void Pump(const std::shared_ptr<Link>& l, int64_t now);
  void HandleEvents(int64_t now);
  void Transmit(uint16_t to, uint16_t queue, std::vector<std::string> frames);
  void Publish();
};

DpdkBackend::Impl::~Impl() {
  for (auto& p : pollers)
    if (p->ring) rte_ring_free(p->ring);
}

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
    link_->poller->MarkDirty(link_);   // the poll thread closes the flow after what was written
  }
  io::IoResult Read(char* buf, size_t cap) override {
    std::lock_guard<std::mutex> g(link_->mu);
    if (!link_->rx.empty()) {
      size_t n = std::min(cap, link_->rx.size());
      std::memcpy(buf, link_->rx.data(), n);
      link_->rx.erase(0, n);
      link_->poller->MarkDirty(link_);   // room: take more from the flow
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
    link_->poller->MarkDirty(link_);
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

void Poller::Pump(const std::shared_ptr<Link>& l, int64_t now) {
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

void Poller::HandleEvents(int64_t now) {
  for (auto [f, e] : stack->TakeEvents()) {
    switch (e) {
      case net::Stack::Event::kAccepted: {
        std::shared_ptr<DpdkBackend::Impl::Acceptor> a;
        {
          std::lock_guard<std::mutex> g(impl->mu);
          for (size_t i = 0; i < impl->acceptors.size() && !a; ++i) {
            auto& cand = impl->acceptors[(impl->next_acceptor + i) % impl->acceptors.size()];
            if (!cand->paused) a = cand;
          }
          ++impl->next_acceptor;
        }
        if (!a) {
          stack->Abort(f, "no listener accepting");
          break;
        }
        auto link = std::make_shared<Link>();
        link->poller = this;
        link->flow = f;
        links[f] = link;
        net::Stack::Remote r = stack->RemoteOf(f);
        auto stream = std::make_shared<std::unique_ptr<io::Stream>>(
            std::make_unique<DpdkStream>(impl->shared_from_this(), link, a->loop, Address(r.ip, r.port)));
        a->loop->Post([a, stream] { a->fn(std::move(*stream)); });
        break;
      }
      case net::Stack::Event::kConnected: {
        auto it = connects.find(f);
        if (it == connects.end()) break;
        auto link = std::make_shared<Link>();
        link->poller = this;
        link->flow = f;
        links[f] = link;
        auto stream = std::make_shared<std::unique_ptr<io::Stream>>(
            std::make_unique<DpdkStream>(impl->shared_from_this(), link, it->second.loop, it->second.to));
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
        if (why.find("evasion") != std::string::npos) {
          if (now - evasion_window_ms >= 1000) {
            if (evasion_suppressed)
              Log(LogLevel::kWarning, "dpdk", "more flows reset for differing overlapping bytes (not logged one by one)",
                  {{"count", std::to_string(evasion_suppressed)}});
            evasion_window_ms = now;
            evasion_logged = 0;
            evasion_suppressed = 0;
          }
          if (evasion_logged++ < 10)
            Log(LogLevel::kWarning, "dpdk", "flow reset: an evasion attempt", {{"peer", stack->ClosedPeer(f)}, {"reason", why}});
          else
            ++evasion_suppressed;
        }
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

void Poller::Transmit(uint16_t to, uint16_t queue, std::vector<std::string> frames) {
  rte_mbuf* out[kBurst];
  size_t i = 0;
  while (i < frames.size()) {
    uint16_t n = 0;
    for (; n < kBurst && i < frames.size(); ++i) {
      rte_mbuf* m = rte_pktmbuf_alloc(impl->pool);
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
    uint16_t sent = rte_eth_tx_burst(to, queue, out, n);
    tx += sent;
    for (uint16_t k = sent; k < n; ++k) {
      rte_pktmbuf_free(out[k]);
      ++tx_dropped;   // TCP sends it again
    }
  }
}

void Poller::Local(rte_mbuf* m, int64_t now) {
  net::Stack::Verdict v = net::Stack::Verdict::kDropped;
  if (m->nb_segs == 1) v = stack->Input(std::string_view(rte_pktmbuf_mtod(m, const char*), m->data_len), now);
  bool kernel = v == net::Stack::Verdict::kToKernel || v == net::Stack::Verdict::kBoth;
  // Only lcore 0 is steered what is the kernel's (steer.h); the others see ARP as well.
  if (kernel && index == 0 && impl->has_exc) to_exc.emplace_back(rte_pktmbuf_mtod(m, const char*), m->data_len);
  rte_pktmbuf_free(m);
}

void Poller::Route(rte_mbuf* m, int64_t now) {
  int owner = m->nb_segs == 1
                  ? net::OwnerOf(std::string_view(rte_pktmbuf_mtod(m, const char*), m->data_len), impl->steer)
                  : static_cast<int>(index);
  if (owner == net::kAllLcores) {   // ARP: a copy for every other lcore's stack
    for (auto& p : impl->pollers) {
      if (p.get() == this) continue;
      rte_mbuf* c = rte_pktmbuf_copy(m, impl->pool, 0, UINT32_MAX);
      if (!c || rte_ring_mp_enqueue(p->ring, c) != 0) {
        if (c) rte_pktmbuf_free(c);
        ++steer_dropped;
      }
    }
    owner = static_cast<int>(index);
  }
  if (owner == static_cast<int>(index)) return Local(m, now);
  if (rte_ring_mp_enqueue(impl->pollers[static_cast<size_t>(owner)]->ring, m) != 0) {
    rte_pktmbuf_free(m);   // the owner is behind: dropped like a full RX queue (TCP sends again)
    ++steer_dropped;
    return;
  }
  ++steered;
}

void Poller::Publish() {
  std::lock_guard<std::mutex> g(mu);
  published.flows = stack->flows();
  published.half_open = stack->half_open();
  published.stack = stack->stats();
}

void Poller::Run() {
  if (!impl->opt.cpus.empty()) {
    uint32_t cpu = impl->opt.cpus[index % impl->opt.cpus.size()];
    if (!base::PinThisThread(static_cast<int>(cpu)))
      Log(LogLevel::kWarning, "dpdk", "poll thread not pinned: that CPU cannot be used",
          {{"lcore", std::to_string(index)}, {"cpu", std::to_string(cpu)}});
  }
  std::string name = "dpdk-poll" + std::to_string(index);
  pthread_setname_np(pthread_self(), name.c_str());
  rte_thread_register();   // an lcore id, for the mempool's per-lcore cache (none: it works without)
  rte_mbuf* bufs[kBurst];
  int idle = 0;
  int64_t last_publish = 0;
  const bool polls_port = index < impl->rx_queues;
  while (!impl->stop.load(std::memory_order_acquire)) {
    int64_t now = base::SteadyMs();
    bool busy = false;
    if (polls_port) {
      uint16_t n = rte_eth_rx_burst(impl->port, static_cast<uint16_t>(index), bufs, kBurst);
      rx += n;
      for (uint16_t i = 0; i < n; ++i) Route(bufs[i], now);
      busy |= n > 0;
    }
    unsigned r = rte_ring_sc_dequeue_burst(ring, reinterpret_cast<void**>(bufs), kBurst, nullptr);
    for (unsigned i = 0; i < r; ++i) Local(bufs[i], now);
    busy |= r > 0;
    if (index == 0 && impl->has_exc) {
      if (!to_exc.empty()) {
        impl->to_kernel += to_exc.size();
        Transmit(impl->exc, 0, std::move(to_exc));
        to_exc.clear();
      }
      // The kernel's packets out of the mail port.
      uint16_t k = rte_eth_rx_burst(impl->exc, 0, bufs, kBurst);
      impl->from_kernel += k;
      uint16_t sent = k ? rte_eth_tx_burst(impl->port, 0, bufs, k) : 0;
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
    if (!frames.empty()) Transmit(impl->port, static_cast<uint16_t>(index), std::move(frames));
    if (now - last_publish >= 1000) {
      last_publish = now;
      Publish();
    }
    idle = busy ? 0 : idle + 1;
    if (idle > 64) ::usleep(50);
  }
  Publish();
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
    // EAL pins the calling thread to its main lcore's CPUs, and every thread started from it
    // later (net threads, crypto workers, queue) would inherit that: give it back its own set.
    cpu_set_t cpus;
    bool have_cpus = sched_getaffinity(0, sizeof cpus, &cpus) == 0;
    eal_rc = rte_eal_init(static_cast<int>(argv.size()), argv.data());
    if (have_cpus) sched_setaffinity(0, sizeof cpus, &cpus);
    if (eal_rc < 0) eal_error = rte_strerror(rte_errno);
  });
  if (eal_rc < 0) return UnavailableError(StrCat("DPDK EAL: ", eal_error));
  const unsigned lcores = std::max(1u, o.lcores);
  auto impl = std::make_shared<Impl>();
  impl->opt = o;
  uint16_t port_id = 0;
  if (rte_eth_dev_get_port_by_name(o.port.c_str(), &port_id) != 0)
    return InvalidArgumentError(StrCat("DPDK: no port named '", o.port, "' (is it in eal_args as a --vdev?)"));
  rte_eth_dev_info info{};
  if (int rc = rte_eth_dev_info_get(port_id, &info); rc != 0)
    return UnavailableError(StrCat("DPDK: port '", o.port, "': ", rte_strerror(-rc)));
  if (info.max_tx_queues < lcores)
    return InvalidArgumentError(StrCat("DPDK: port '", o.port, "' has ", info.max_tx_queues,
                                       " TX queue(s); io.dpdk.lcores is ", lcores,
                                       " (net_af_packet: qpairs=N in its --vdev)"));
  impl->rx_queues = static_cast<uint16_t>(std::min<unsigned>(lcores, info.max_rx_queues));
  constexpr uint16_t kDesc = 1024;
  constexpr unsigned kRing = 1024;
  // The pool holds every RX descriptor's mbuf, the rings, and what is in flight to TX.
  uint32_t need = (impl->rx_queues + 1u) * kDesc + lcores * (kRing + 2 * kDesc) + 1024;
  uint32_t mbufs = std::max(o.mbufs ? o.mbufs : 8191u, need);
  impl->pool = rte_pktmbuf_pool_create("mailseal_mbufs", mbufs, 256, 0, RTE_MBUF_DEFAULT_BUF_SIZE,
                                       static_cast<int>(rte_socket_id()));
  if (!impl->pool) return UnavailableError(StrCat("DPDK: no mbuf pool of ", mbufs, ": ", rte_strerror(rte_errno)));
  auto setup = [&](const std::string& name, uint16_t id, uint16_t rxq, uint16_t txq, bool rss) -> Status {
    rte_eth_conf conf{};
    uint8_t key[40];
    std::memcpy(key, net::kRssKey.data(), sizeof key);
    if (rss) {
      conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
      conf.rx_adv_conf.rss_conf.rss_key = key;
      conf.rx_adv_conf.rss_conf.rss_key_len = sizeof key;
      conf.rx_adv_conf.rss_conf.rss_hf = RTE_ETH_RSS_NONFRAG_IPV4_TCP;
    }
    int rc = rte_eth_dev_configure(id, rxq, txq, &conf);
    int socket = rte_eth_dev_socket_id(id);
    for (uint16_t q = 0; rc == 0 && q < rxq; ++q)
      rc = rte_eth_rx_queue_setup(id, q, kDesc, socket < 0 ? 0 : socket, nullptr, impl->pool);
    for (uint16_t q = 0; rc == 0 && q < txq; ++q)
      rc = rte_eth_tx_queue_setup(id, q, kDesc, socket < 0 ? 0 : socket, nullptr);
    if (rc == 0) rc = rte_eth_dev_start(id);
    if (rc != 0) return UnavailableError(StrCat("DPDK: port '", name, "' cannot start: ", rte_strerror(-rc)));
    rte_eth_promiscuous_enable(id);
    return OkStatus();
  };
  // RSS with the key of steer.h where the port hashes TCP/IPv4 itself: a flow arrives at its
  // owner's queue. Elsewhere the lcores steer in software.
  impl->rss = impl->rx_queues > 1 && (info.flow_type_rss_offloads & RTE_ETH_RSS_NONFRAG_IPV4_TCP) != 0 &&
              info.hash_key_size == 40;
  impl->port = port_id;
  if (Status st = setup(o.port, port_id, impl->rx_queues, static_cast<uint16_t>(lcores), impl->rss); !st.ok())
    return st;
  if (!o.exception_port.empty()) {
    if (rte_eth_dev_get_port_by_name(o.exception_port.c_str(), &impl->exc) != 0)
      return InvalidArgumentError(
          StrCat("DPDK: no port named '", o.exception_port, "' (is it in eal_args as a --vdev?)"));
    if (Status st = setup(o.exception_port, impl->exc, 1, 1, false); !st.ok()) return st;
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
  sc.tcp.delayed_ack_ms = o.delayed_ack_ms;
  // The flow and half-open bounds are the port's: each lcore gets its share.
  if (o.max_flows) sc.max_flows = std::max<size_t>(1, o.max_flows / lcores);
  if (o.syn_budget) sc.syn_budget = std::max<size_t>(1, o.syn_budget / lcores);
  for (uint16_t p : o.listen_ports) impl->stack_ports.set(p);
  for (uint32_t p = sc.ephemeral_first; p <= sc.ephemeral_last; ++p) impl->stack_ports.set(p);
  impl->steer.ip = o.ip;
  impl->steer.lcores = lcores;
  impl->steer.ctx = impl.get();
  impl->steer.is_stack_port = [](const void* ctx, uint16_t p) {
    return static_cast<const Impl*>(ctx)->stack_ports.test(p);
  };
  for (unsigned i = 0; i < lcores; ++i) {
    auto p = std::make_unique<Poller>();
    p->impl = impl.get();
    p->index = i;
    net::StackConfig c = sc;
    c.primary = i == 0;
    const net::SteerConfig* steer = &impl->steer;
    if (lcores > 1)
      c.own_port = [steer, i](uint32_t ip, uint16_t rport, uint16_t lport) {
        return net::FlowOwner(*steer, ip, rport, lport) == i;
      };
    p->stack = std::make_unique<net::Stack>(c);
    for (uint16_t lp : o.listen_ports) p->stack->Listen(lp);
    std::string ring_name = StrCat("mailseal_steer", i);
    p->ring = rte_ring_create(ring_name.c_str(), kRing, static_cast<int>(rte_socket_id()), RING_F_SC_DEQ);
    if (!p->ring) return UnavailableError(StrCat("DPDK: no ring ", ring_name, ": ", rte_strerror(rte_errno)));
    impl->pollers.push_back(std::move(p));
  }
  std::unique_ptr<DpdkBackend> b(new DpdkBackend());
  b->impl_ = impl;
  for (auto& p : impl->pollers) {
    Poller* raw = p.get();
    p->thread = std::thread([raw] { raw->Run(); });
  }
  char macs[18];
  std::snprintf(macs, sizeof macs, "%02x:%02x:%02x:%02x:%02x:%02x", mac.addr_bytes[0], mac.addr_bytes[1],
                mac.addr_bytes[2], mac.addr_bytes[3], mac.addr_bytes[4], mac.addr_bytes[5]);
  Log(LogLevel::kInfo, "dpdk", "port up",
      {{"port", o.port}, {"mac", macs}, {"exception_port", o.exception_port.empty() ? "none" : o.exception_port},
       {"lcores", std::to_string(lcores)}, {"rx_queues", std::to_string(impl->rx_queues)},
       {"steering", lcores == 1 ? "none" : impl->rss ? "rss" : "software"}, {"mbufs", std::to_string(mbufs)}});
  return b;
}

DpdkBackend::~DpdkBackend() { Stop(); }

std::vector<std::pair<std::string, std::string>> DpdkBackend::Stats::Fields() const {
  return {{"rx", std::to_string(rx)},
          {"tx", std::to_string(tx)},
          {"tx_dropped", std::to_string(tx_dropped)},
          {"to_kernel", std::to_string(to_kernel)},
          {"from_kernel", std::to_string(from_kernel)},
          {"steered", std::to_string(steered)},
          {"steer_dropped", std::to_string(steer_dropped)},
          {"flows", std::to_string(flows)},
          {"half_open", std::to_string(half_open)},
          {"syn_cookies_sent", std::to_string(stack.syn_cookies_sent)},
          {"syn_cookies_accepted", std::to_string(stack.syn_cookies_accepted)},
          {"syn_dropped", std::to_string(stack.syn_dropped)},
          {"rst_sent", std::to_string(stack.rst_sent)},
          {"flows_reset", std::to_string(stack.flows_reset)},
          {"bad_checksum", std::to_string(stack.bad_checksum)},
          {"icmp_errors", std::to_string(stack.icmp_errors)},
          {"tcp_retransmits", std::to_string(stack.retransmits)},
          {"tcp_fast_retransmits", std::to_string(stack.fast_retransmits)},
          {"tcp_timeouts", std::to_string(stack.timeouts)},
          {"tcp_sack_flows", std::to_string(stack.sack_flows)},
          {"tcp_sack_recoveries", std::to_string(stack.sack_recoveries)},
          {"tcp_sack_retransmits", std::to_string(stack.sack_retransmits)}};
}

void DpdkBackend::Stop() {
  if (!impl_ || impl_->stop.exchange(true)) return;
  for (auto& p : impl_->pollers)
    if (p->thread.joinable()) p->thread.join();
  Log(LogLevel::kInfo, "dpdk", "stopped", stats().Fields());
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
  // Active opens spread over the lcores; each picks a local port that hashes to itself.
  Poller* p = impl_->pollers[impl_->next_connect++ % impl_->pollers.size()].get();
  p->PostTask([p, loop, to, ip, port, timeout_ms, done] {
    int64_t now = base::SteadyMs();
    std::optional<net::FlowId> f = p->stack->Connect(ip, port, now);
    if (!f) {
      loop->Post([done] { done(UnavailableError("no free local port or flow slot")); });
      return;
    }
    p->connects[*f] = Poller::PendingConnect{loop, done, now + timeout_ms, to};
  });
}

DpdkBackend::Stats DpdkBackend::stats() const {
  Stats s;
  for (auto& p : impl_->pollers) {
    {
      std::lock_guard<std::mutex> g(p->mu);
      s.flows += p->published.flows;
      s.half_open += p->published.half_open;
      s.stack += p->published.stack;
    }
    s.rx += p->rx;
    s.tx += p->tx;
    s.tx_dropped += p->tx_dropped;
    s.steered += p->steered;
    s.steer_dropped += p->steer_dropped;
  }
  s.to_kernel = impl_->to_kernel;
  s.from_kernel = impl_->from_kernel;
  return s;
}

}  // namespace mailseal::dpdk
