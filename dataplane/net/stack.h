// stack.h — the DPDK back end's network stack for one port (issue #17), sans-I/O: Ethernet
// frames in (Input), frames out (TakeFrames), TCP flows for the SMTP endpoints.
//
// What it answers itself: ARP for its address (RFC 826; and it resolves its next hops,
// queueing a bounded number of frames per address meanwhile), ICMP echo (RFC 792), ICMP
// destination unreachable for its own flows (path MTU, refused opens; RFC 5927), and TCP for
// its listening ports and the connections it opened (connection.h). Everything else — other
// protocols, IPv6, fragments, UDP (DNS), TCP for other ports (management gRPC, LDAP, SSH),
// ARP as well (so the kernel's table stays right) — is the exception path: Input says
// kToKernel and the back end writes the frame to the TAP interface, whose output goes out of
// the port. The stack's active opens use local ports from its own range, which the kernel's
// ip_local_port_range must exclude.
//
// Bounds (SECURITY: every frame is hostile until parsed): at most `max_flows` TCP flows; at
// most `syn_budget` of them half-open — beyond that SYNs are answered with SYN cookies (RFC
// 4987 §3.6: no state until the handshake completes; such flows have no window scaling); at
// most `arp_pending` frames waiting per unresolved address and `arp_entries` addresses; what
// TakeFrames returns is bounded by what the flows may send. A SYN flood therefore costs the
// stack no memory beyond the budget, and established flows keep working.
//
// STANDARDS: RFC 826, RFC 791, RFC 792, RFC 1122, RFC 9293 §3.10.7.1 (RST for closed ports),
// RFC 4987 (SYN cookies), RFC 6528.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <queue>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "dataplane/net/frame.h"
#include "dataplane/net/tcp/connection.h"
#include "dataplane/net/tcp/isn.h"

namespace mailseal::net {

struct StackConfig {
  Mac mac{};
  uint32_t ip = 0, netmask = 0, gateway = 0;   // host order; gateway 0: on-link only
  tcp::Limits tcp;
  size_t max_flows = 65536;
  size_t syn_budget = 1024;                    // half-open flows kept; SYN cookies beyond
  uint16_t ephemeral_first = 61000, ephemeral_last = 65535;   // for active opens
  size_t arp_entries = 4096, arp_pending = 16;
  int64_t arp_ttl_ms = 300000, arp_retry_ms = 1000;
  // Several stacks on one port (one per lcore, steer.h): only the primary answers ARP requests;
  // the others learn from ARP and resolve their own next hops. own_port: the local ports this
  // stack's active opens may use toward ip:rport (every port when empty).
  bool primary = true;
  std::function<bool(uint32_t ip, uint16_t rport, uint16_t lport)> own_port;
};

// FlowId: a stable handle for a TCP flow (never reused within a stack's life).
using FlowId = uint64_t;

class Stack {
 public:
  explicit Stack(StackConfig cfg);

  enum class Verdict { kConsumed, kToKernel, kBoth, kDropped };
  // Input: one received Ethernet frame at now_ms.
  Verdict Input(std::string_view frame, int64_t now_ms);
  // TakeFrames: frames to transmit on the port.
  std::vector<std::string> TakeFrames();
  // Tick runs the timers due (retransmission, TIME-WAIT, ARP retries) at now_ms.
  void Tick(int64_t now_ms);
  std::optional<int64_t> NextTimerMs() const;

  // TCP for the endpoints.
  void Listen(uint16_t port) { listen_ports_.insert(port); }
  // Connect: an active open to ip:port; nothing when no local port or flow slot is free.
  std::optional<FlowId> Connect(uint32_t ip, uint16_t port, int64_t now_ms);
  size_t Send(FlowId f, std::string_view data, int64_t now_ms);
  size_t Read(FlowId f, char* buf, size_t cap, int64_t now_ms);
  void Close(FlowId f, int64_t now_ms);   // orderly; the flow is forgotten once closed
  void Abort(FlowId f, const std::string& why);
  const tcp::Connection* Flow(FlowId f) const;
  struct Remote {
    uint32_t ip = 0;
    uint16_t port = 0;
  };
  Remote RemoteOf(FlowId f) const;

  // Events since the last call, for the back end to dispatch: a flow became established
  // (kAccepted for passive opens, kConnected for active ones), has bytes or its end to read,
  // may take bytes, or is gone (kClosed: error() of the flow before it says why, if reset).
  enum class Event { kAccepted, kConnected, kReadable, kWritable, kClosed };
  std::vector<std::pair<FlowId, Event>> TakeEvents();
  std::string ClosedReason(FlowId f) const;
  // ClosedPeer: "a.b.c.d:port" of a flow that closed with a reason (for the log).
  std::string ClosedPeer(FlowId f) const;

  struct Stats {
    uint64_t frames_in = 0, frames_out = 0, to_kernel = 0, dropped = 0, bad_checksum = 0, rst_sent = 0,
             syn_cookies_sent = 0, syn_cookies_accepted = 0, syn_dropped = 0, arp_replies = 0, echo_replies = 0,
             flows_reset = 0, icmp_errors = 0;
    // TCP counters (tcp::Connection::Stats) of every flow, ended or still open.
    uint64_t retransmits = 0, fast_retransmits = 0, sack_recoveries = 0, sack_retransmits = 0, timeouts = 0,
             sack_flows = 0;
    Stats& operator+=(const Stats& o);
  };
  Stats stats() const;   // the counters, with the open flows' TCP counters added
  size_t flows() const { return flows_.size(); }
  size_t half_open() const { return half_open_; }

 private:
  struct Key {
    uint32_t ip;
    uint16_t rport, lport;
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    size_t operator()(const Key& k) const {
      return std::hash<uint64_t>()((uint64_t{k.ip} << 32) ^ (uint64_t{k.rport} << 16) ^ k.lport);
    }
  };
  struct FlowState {
    Key key;
    std::unique_ptr<tcp::Connection> conn;
    bool passive = false, announced = false, closed_by_app = false, was_full = false, half_open = false;
    std::optional<int64_t> timer_at;   // the entry in timers_ that stands for this flow
  };
  struct ArpEntry {
    Mac mac{};
    bool resolved = false;
    int64_t expires = 0, next_try = 0;
    std::deque<std::string> pending;   // IPv4 packets waiting for the address
  };

  void InputArp(std::string_view p, int64_t now);
  Verdict InputIpv4(std::string_view p, int64_t now);
  Verdict InputTcp(uint32_t src, std::string_view tcp, int64_t now);
  void SendIpv4(uint32_t dst, uint8_t proto, std::string payload, int64_t now);
  void SendFrame(const Mac& dst, uint16_t type, std::string_view payload);
  void SendArp(uint16_t op, const Mac& tha, uint32_t tpa);
  void SendRst(uint32_t dst, const tcp::Segment& s, uint16_t lport, int64_t now);
  void Drain(FlowId id, FlowState& f, int64_t now);   // a flow's segments out, events, cleanup
  void EmitSegments(FlowState& f, int64_t now);
  uint32_t Cookie(const Key& k, tcp::TcpSeq peer_isn, uint32_t t, uint32_t mss_index) const;
  std::optional<uint16_t> CookieMss(const Key& k, tcp::TcpSeq peer_isn, tcp::TcpSeq ack, int64_t now) const;
  void ScheduleTimer(FlowId id, FlowState& f);
  uint32_t TsOffset(uint32_t remote, uint16_t rport, uint16_t lport) const;

  StackConfig cfg_;
  tcp::IsnGenerator isn_;
  std::array<unsigned char, 32> cookie_secret_{};
  std::set<uint16_t> listen_ports_;
  std::unordered_map<Key, FlowId, KeyHash> by_key_;
  std::map<FlowId, FlowState> flows_;
  FlowId next_id_ = 1;
  size_t half_open_ = 0;
  uint16_t next_ephemeral_ = 0;
  std::unordered_map<uint32_t, ArpEntry> arp_;
  std::vector<std::string> frames_;
  std::vector<std::pair<FlowId, Event>> events_;
  std::map<FlowId, std::string> closing_reasons_, closed_reasons_;   // since / at the last TakeEvents
  std::map<FlowId, std::string> closing_peers_, closed_peers_;       // "ip:port" of flows closed with a reason
  std::priority_queue<std::pair<int64_t, FlowId>, std::vector<std::pair<int64_t, FlowId>>, std::greater<>> timers_;
  uint16_t ip_id_ = 0;
  int64_t now_ = 0;   // the latest time an entry point was given
  Stats stats_;
};

}  // namespace mailseal::net
