// backend.h — the DPDK back end (issue #17): io::Backend over a poll-mode port and the
// project's own TCP (net::Stack), beside the kernel one behind the transport seam.
//
// Threads: one poll thread owns the port, the exception port and the Stack — nothing else
// touches them. It receives bursts, hands each frame to the Stack (or, for what is not the
// stack's, to the exception port, whose kernel side answers DNS, gRPC, SSH, ARP...), forwards
// the exception port's output out of the mail port, runs the TCP timers and transmits. The
// endpoints' loops (net threads, delivery agents) are ordinary thread loops; each stream is a
// pair of bounded byte buffers between its loop and the poll thread, so the SMTP code runs
// unchanged. When idle the poll thread sleeps 50 µs between polls (these machines share two
// cores with everything else); the appliance would pin it to a core and spin.
//
// Bounds: the Stack's (flows, half-open flows, out-of-order bytes, ARP); each stream buffers
// at most 256 KiB each way; connects time out.
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

namespace mailseal::dpdk {

struct DpdkOptions {
  std::vector<std::string> eal_args;
  std::string port, exception_port;
  uint32_t ip = 0, netmask = 0, gateway = 0;   // host order
  std::vector<uint16_t> listen_ports;
  uint32_t mbufs = 8191;
  uint32_t max_flows = 65536, syn_budget = 1024;
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

  // Stats: counters of the port and the stack, published by the poll thread once a second.
  struct Stats {
    uint64_t rx = 0, tx = 0, tx_dropped = 0, to_kernel = 0, from_kernel = 0;
    uint64_t flows = 0, half_open = 0, syn_cookies_sent = 0, syn_cookies_accepted = 0, syn_dropped = 0, rst_sent = 0,
             flows_reset = 0, bad_checksum = 0, icmp_errors = 0;
  };
  Stats stats() const;

  struct Impl;

 private:
  DpdkBackend() = default;
  std::shared_ptr<Impl> impl_;
};

}  // namespace mailseal::dpdk
