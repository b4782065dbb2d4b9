// mailseal-impair — a seeded network impairment forwarder for the DPDK tests (issue #17).
//
// Bridges two DPDK ports (e.g. net_af_packet on two veths) and, in both directions, drops,
// duplicates, delays and reorders frames by a seeded random generator, so that a failing run
// can be run again with the same choices. The kernels here have no netem qdisc; nftables can
// drop but not reorder or duplicate — this does the rest in user space.
//
//   mailseal-impair --seed 7 --loss 5 --duplicate 2 --reorder 5 --reorder-ms 3 --delay-ms 0
//       -- <EAL arguments with two --vdev ports, port 0 and port 1>
//
// A frame is dropped with probability loss %; otherwise it leaves after delay-ms, or, with
// probability reorder %, after delay-ms plus 1..reorder-ms more (so frames behind it overtake
// it); with probability duplicate % a copy leaves as well, at its own time. At most 8192
// frames are held at once (beyond: dropped and counted). On SIGTERM/SIGINT it prints its
// counters as one JSON line and exits.
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>

namespace {
volatile std::sig_atomic_t g_stop = 0;
void OnSignal(int) { g_stop = 1; }

int64_t NowUs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

struct Counters {
  uint64_t in = 0, forwarded = 0, dropped = 0, duplicated = 0, reordered = 0, overflow = 0;
};

int Fail(const std::string& what) {
  std::fprintf(stderr, "mailseal-impair: %s\n", what.c_str());
  return 2;
}

bool SetupPort(uint16_t port, rte_mempool* pool) {
  rte_eth_conf conf{};
  if (rte_eth_dev_configure(port, 1, 1, &conf) != 0) return false;
  int socket = rte_eth_dev_socket_id(port);
  if (rte_eth_rx_queue_setup(port, 0, 1024, socket < 0 ? 0 : socket, nullptr, pool) != 0) return false;
  if (rte_eth_tx_queue_setup(port, 0, 1024, socket < 0 ? 0 : socket, nullptr) != 0) return false;
  if (rte_eth_dev_start(port) != 0) return false;
  rte_eth_promiscuous_enable(port);
  return true;
}
}  // namespace

int main(int argc, char** argv) {
  uint64_t seed = 1;
  double loss = 0, duplicate = 0, reorder = 0;
  int64_t delay_ms = 0, reorder_ms = 3;
  int i = 1;
  for (; i < argc && std::strcmp(argv[i], "--") != 0; ++i) {
    std::string a = argv[i];
    if (i + 1 >= argc) return Fail("option " + a + " needs a value");
    const char* v = argv[++i];
    char* end = nullptr;
    double d = std::strtod(v, &end);
    if (!end || *end || d < 0) return Fail("option " + a + ": '" + v + "' is not a non-negative number");
    if (a == "--seed") seed = static_cast<uint64_t>(d);
    else if (a == "--loss") loss = d;
    else if (a == "--duplicate") duplicate = d;
    else if (a == "--reorder") reorder = d;
    else if (a == "--delay-ms") delay_ms = static_cast<int64_t>(d);
    else if (a == "--reorder-ms") reorder_ms = std::max<int64_t>(1, static_cast<int64_t>(d));
    else return Fail("unknown option " + a);
  }
  if (loss > 100 || duplicate > 100 || reorder > 100) return Fail("percentages are at most 100");
  if (i >= argc) return Fail("usage: mailseal-impair [options] -- <EAL arguments with two ports>");
  argv[i] = argv[0];   // EAL's argv: the program name, then what follows "--"
  if (rte_eal_init(argc - i, argv + i) < 0) return Fail(std::string("EAL: ") + rte_strerror(rte_errno));
  if (rte_eth_dev_count_avail() < 2) return Fail("two ports are needed (two --vdev)");
  rte_mempool* pool = rte_pktmbuf_pool_create("impair", 16383, 256, 0, RTE_MBUF_DEFAULT_BUF_SIZE,
                                              static_cast<int>(rte_socket_id()));
  if (!pool) return Fail(std::string("mbuf pool: ") + rte_strerror(rte_errno));
  for (uint16_t p = 0; p < 2; ++p)
    if (!SetupPort(p, pool)) return Fail("port " + std::to_string(p) + " cannot start");
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);

  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> pct(0, 100);
  std::uniform_int_distribution<int64_t> extra(1, reorder_ms);
  constexpr size_t kMaxHeld = 8192;
  std::multimap<int64_t, rte_mbuf*> held[2];   // by release time, per output port
  Counters c[2];                                // per direction: 0 = port 0 -> port 1
  std::fprintf(stderr, "mailseal-impair: forwarding (seed %llu, loss %.1f%%, duplicate %.1f%%, reorder %.1f%%)\n",
               static_cast<unsigned long long>(seed), loss, duplicate, reorder);
  rte_mbuf* bufs[32];
  int idle = 0;
  while (!g_stop) {
    bool busy = false;
    int64_t now = NowUs();
    for (uint16_t in = 0; in < 2; ++in) {
      uint16_t out = 1 - in;
      uint16_t n = rte_eth_rx_burst(in, 0, bufs, 32);
      busy |= n > 0;
      for (uint16_t k = 0; k < n; ++k) {
        Counters& cc = c[in];
        ++cc.in;
        if (pct(rng) < loss) {
          rte_pktmbuf_free(bufs[k]);
          ++cc.dropped;
          continue;
        }
        auto schedule = [&](rte_mbuf* m) {
          int64_t at = now + delay_ms * 1000;
          if (pct(rng) < reorder) {
            at += extra(rng) * 1000;
            ++cc.reordered;
          }
          if (held[out].size() >= kMaxHeld) {
            rte_pktmbuf_free(m);
            ++cc.overflow;
            return;
          }
          held[out].emplace(at, m);
        };
        if (pct(rng) < duplicate) {
          if (rte_mbuf* copy = rte_pktmbuf_copy(bufs[k], pool, 0, UINT32_MAX)) {
            ++cc.duplicated;
            schedule(copy);
          }
        }
        schedule(bufs[k]);
      }
    }
    for (uint16_t out = 0; out < 2; ++out) {
      auto& q = held[out];
      while (!q.empty() && q.begin()->first <= now) {
        uint16_t n = 0;
        while (n < 32 && !q.empty() && q.begin()->first <= now) {
          bufs[n++] = q.begin()->second;
          q.erase(q.begin());
        }
        uint16_t sent = rte_eth_tx_burst(out, 0, bufs, n);
        c[1 - out].forwarded += sent;
        for (uint16_t k = sent; k < n; ++k) {
          rte_pktmbuf_free(bufs[k]);
          ++c[1 - out].overflow;
        }
        busy = true;
      }
    }
    idle = busy ? 0 : idle + 1;
    if (idle > 64) ::usleep(20);
  }
  auto row = [](const Counters& x) {
    char b[256];
    std::snprintf(b, sizeof b,
                  "{\"in\": %llu, \"forwarded\": %llu, \"dropped\": %llu, \"duplicated\": %llu, \"reordered\": %llu, "
                  "\"overflow\": %llu}",
                  static_cast<unsigned long long>(x.in), static_cast<unsigned long long>(x.forwarded),
                  static_cast<unsigned long long>(x.dropped), static_cast<unsigned long long>(x.duplicated),
                  static_cast<unsigned long long>(x.reordered), static_cast<unsigned long long>(x.overflow));
    return std::string(b);
  };
  std::printf("{\"0to1\": %s, \"1to0\": %s}\n", row(c[0]).c_str(), row(c[1]).c_str());
  std::fflush(stdout);
  for (auto& q : held)
    for (auto& [at, m] : q) rte_pktmbuf_free(m);
  for (uint16_t p = 0; p < 2; ++p) rte_eth_dev_stop(p);
  return 0;
}
