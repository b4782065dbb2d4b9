// backend.h — the DPDK back end (issue #17): io::Backend over a poll-mode port and the
// project's own TCP (net::Stack), beside the kernel one behind the transport seam.
//
// Threads: `lcores` poll threads (registered with EAL as lcores). Each owns one RX/TX queue
// pair of the port, a net::Stack with its own flow table, and the streams of its flows;
// nothing else touches them. A flow belongs to the lcore its 4-tuple hashes to (steer.h): with
// RSS the port delivers it there; otherwise the lcore that received a frame passes it to the
// owner over the owner's rte_ring (MP/SC), and active opens choose local ports that hash home.
// Lcore 0 also owns the exception port: what is not the stacks' (DNS, gRPC, SSH, ARP as well)
// goes to the kernel through it, and the kernel's output leaves by the mail port. The
// endpoints' loops (net threads, delivery agents) are ordinary thread loops; each stream is a
// pair of bounded byte buffers between its loop and its poll thread, so the SMTP code runs
// unchanged. When idle a poll thread sleeps 50 µs between polls (these machines share two
// cores with everything else); the appliance would pin each to a core and spin.
//
// Bounds: the Stacks' (flows and half-open flows — the configured numbers shared out over the
// lcores —, out-of-order bytes, ARP); each stream buffers at most 256 KiB each way; each
// steering ring holds 1024 frames (beyond: dropped, TCP sends again); connects time out.
//
// SECURITY: frames from the port are untrusted input to net::Stack (see stack.h); EAL runs
// with the arguments of the configuration only.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dataplane/io/transport.h"
#include "dataplane/net/stack.h"

namespace mailseal::dpdk {

struct DpdkOptions {
  std::vector<std::string> eal_args;
  std::string port, exception_port;
  uint32_t ip = 0, netmask = 0, gateway = 0;   // host order
  std::vector<uint16_t> listen_ports;
  uint32_t mbufs = 8191;
  uint32_t max_flows = 65536, syn_budget = 1024;   // for the port, shared out over the lcores
  unsigned lcores = 1;                              // poll threads, each with its queue pair and stack
  uint32_t delayed_ack_ms = 40;                     // tcp::Limits::delayed_ack_ms
  std::vector<uint32_t> cpus;                       // poll thread i runs on cpus[i % n]; empty: any
};

// ParseAddress: "10.0.0.2/24" into ip and netmask (host order).
bool ParseAddress(const std::string& s, uint32_t* ip, uint32_t* netmask);

class DpdkBackend : public io::Backend {
 public:
  // Start initialises EAL (once per process), both ports and the poll thread.
  static Result<std::unique_ptr<DpdkBackend>> Start(DpdkOptions options);
  ~DpdkBackend() override;
  std::unique_ptr<io::Loop> NewLoop() override;
  Result<std::unique_ptr<io::Listener>> Listen(io::Loop* loop, int index, io::AcceptFn on_accept) override;
  void Connect(io::Loop* loop, const sockaddr_storage& to, int timeout_ms, io::ConnectFn done) override;
  void Stop();

  // Stats: counters of the port and the stacks (summed over the lcores), published by each
  // poll thread once a second.
  struct Stats {
    uint64_t rx = 0, tx = 0, tx_dropped = 0, to_kernel = 0, from_kernel = 0, steered = 0, steer_dropped = 0;
    uint64_t flows = 0, half_open = 0;
    net::Stack::Stats stack;
    std::vector<std::pair<std::string, std::string>> Fields() const;   // for the log
  };
  Stats stats() const;

  struct Impl;

 private:
  DpdkBackend() = default;
  std::shared_ptr<Impl> impl_;
};

}  // namespace mailseal::dpdk
