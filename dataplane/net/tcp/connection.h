// connection.h — one TCP connection of the project's user-space TCP (issue #17), sans-I/O.
//
// The DPDK back end owns the packets, the flow table and the clock; a Connection owns one
// flow's protocol state. Segments that arrived go in (Receive), application bytes go in (Send)
// and out (Read), time goes in (Tick), and segments to transmit come out (TakeOutput). No
// sockets, no allocation of packet buffers, no clock of its own: the same code runs under the
// scripted-segment tests, the fuzzer and the poll-mode loop.
//
// What it does: passive open (FromSyn, the SYN-ACK queued) and active open (Open); RFC 9293's
// segment processing in its order (sequence acceptability, RST, SYN, ACK, text, FIN) with the
// RFC 5961 hardening (RST only at exactly RCV.NXT, else a challenge ACK; a SYN in a
// synchronized state gets a challenge ACK; ACKs outside [SND.UNA - MAX.SND.WND, SND.NXT]
// dropped); retransmission timer of RFC 6298 (Karn's rule, back-off, a retry limit that
// aborts); NewReno congestion control (RFC 5681, RFC 6582); window scaling (RFC 7323, offered
// in our SYN and used when both sides sent it); MSS (RFC 6691: the peer's, 536 when absent);
// zero-window probing; orderly close both ways and TIME-WAIT (2 MSL, configurable).
// Timestamps (RFC 7323 §3-5): offered in our SYN, answered when the peer's SYN has them; once
// agreed every segment but a RST carries them, RTT is sampled from each ACK's echo (so
// retransmitted segments are timed too), and PAWS drops an old segment (TSval below
// TS.Recent) with an ACK. Segments without the option are still taken, as Linux does, though
// RFC 7323 §3.2 says SHOULD drop. TSval is a millisecond clock plus a per-connection offset
// (§7.1: the clock is not revealed).
// Delayed ACKs (RFC 5681 §4.2) when Limits::delayed_ack_ms is set.
// SACK (RFC 2018): offered in our SYN, answered when the peer's SYN has it. As receiver, every
// ACK sent while out-of-order pieces are held names them (the block holding the newest piece
// first, up to 3 beside timestamps). As sender, the peer's blocks make a scoreboard (only
// blocks inside (SND.UNA, SND.MAX] are believed; at most 32 ranges), loss recovery follows
// RFC 6675 — entered on the third duplicate ACK or when the scoreboard shows a hole lost
// (three SACKed ranges or more than 2 SMSS above it); while in recovery the holes judged lost
// are sent again, then new data, as long as the pipe (bytes believed in the network) is below
// cwnd; a retransmission timeout forgets the scoreboard (RFC 2018 §8: the receiver may renege).
// Not done: urgent data (ignored, as RFC 6093 advises); D-SACK is not sent.
//
// Reassembly: in-order bytes wait in the receive buffer until Read; out-of-order pieces are
// kept, at most `max_ooo_segments` of them and never more bytes than the window we
// advertised (which is the free part of `rcv_buf`), so a flow's memory is bounded by rcv_buf
// plus the send buffer. Overlap policy: bytes a segment repeats are compared with what was
// received before (the unread buffer, the last `history` bytes read, the out-of-order
// pieces): equal bytes are trimmed; different bytes reset the flow (an evasion attempt: two
// readers of the stream must never disagree) and error() says so.
//
// SECURITY: every field of a segment is the peer's; nothing it sends makes state grow beyond
// the limits above, and a sequence number outside the window changes nothing but an ACK.
//
// STANDARDS: RFC 9293, RFC 5961, RFC 6298, RFC 5681, RFC 6582, RFC 7323 (window scale, timestamps, PAWS),
// RFC 6691, RFC 6093.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dataplane/net/tcp/segment.h"
#include "dataplane/net/tcp/seq.h"

namespace mailseal::net::tcp {

enum class State {
  kClosed, kSynSent, kSynReceived, kEstablished, kFinWait1, kFinWait2, kCloseWait, kClosing, kLastAck, kTimeWait
};
const char* StateName(State s);

struct Limits {
  uint16_t mss = 1460;                 // ours: MTU 1500 - 40 (RFC 6691)
  uint32_t rcv_buf = 256 * 1024;       // unread + out-of-order bytes
  uint32_t snd_buf = 256 * 1024;       // unacknowledged + unsent bytes
  uint8_t wscale = 7;                  // our shift, offered in the SYN
  size_t max_ooo_segments = 64;        // out-of-order pieces kept
  uint32_t history = 64 * 1024;        // bytes kept after Read, to compare retransmissions with
  int64_t rto_initial_ms = 1000, rto_min_ms = 200, rto_max_ms = 60000;
  int max_retransmits = 8;             // of one segment: then the connection is aborted
  int64_t time_wait_ms = 60000;        // 2 MSL
  int challenge_acks_per_s = 10;       // RFC 5961 §7
  bool timestamps = true;              // offer and use RFC 7323 timestamps
  // Delayed ACKs (RFC 5681 §4.2, RFC 9293 §3.8.6.3): 0 acknowledges every segment at once;
  // otherwise in-order data is acknowledged at the latest with the second segment or after this
  // many ms (under 500), or with the next segment we send. Out-of-order data, a segment that
  // fills a hole, a FIN and a full window are acknowledged at once.
  int64_t delayed_ack_ms = 0;
  bool sack = true;                    // offer and use SACK (RFC 2018, RFC 6675)
};

// OutSegment: a segment to transmit (ports are the back end's; payload owned).
struct OutSegment {
  TcpSeq seq, ack;
  uint8_t flags = 0;
  uint16_t window = 0;
  Options options;
  std::string payload;
};

class Connection {
 public:
  // FromSyn: a SYN arrived for a listener (RFC 9293 §3.10.7.2). nullptr when it is not a
  // plain SYN (the listener answers RST to an ACK and drops the rest).
  // ts_offset: added to the timestamp clock (secret per connection, RFC 7323 §7.1).
  static std::unique_ptr<Connection> FromSyn(const Limits& limits, const Segment& syn, TcpSeq iss, int64_t now_ms,
                                             uint32_t ts_offset = 0);
  // Open: an active open; the SYN is queued.
  static std::unique_ptr<Connection> Open(const Limits& limits, TcpSeq iss, int64_t now_ms, uint32_t ts_offset = 0);

  void Receive(const Segment& seg, int64_t now_ms);
  // Send queues application bytes (bounded by snd_buf): how many were taken.
  size_t Send(std::string_view data, int64_t now_ms);
  // Read takes in-order bytes.
  size_t Read(char* buf, size_t cap, int64_t now_ms);
  // Close: FIN after what was queued (RFC 9293 CLOSE). Abort: RST now, state CLOSED.
  void Close(int64_t now_ms);
  void Abort(const std::string& why);
  // IcmpError: an ICMP error quoting our segment with sequence number `seq` (RFC 5927: believed
  // only when seq is in flight, between SND.UNA and SND.MAX). Fragmentation needed (next_hop_mtu
  // > 0) lowers the segment size, never below 536 (RFC 5927 §7.2: an attacker must not force
  // tiny segments); unreachable during the handshake ends an active open (`why`), later it is
  // a soft error (ignored, as RFC 1122 §4.2.3.9 allows). Returns whether it was believed.
  bool IcmpError(TcpSeq seq, uint32_t next_hop_mtu, bool unreachable, const std::string& why);
  // Tick runs the timers due at now_ms.
  void Tick(int64_t now_ms);
  // NextTimerMs: when Tick should run next (nullopt: no timer).
  std::optional<int64_t> NextTimerMs() const;
  std::vector<OutSegment> TakeOutput();

  State state() const { return state_; }
  size_t readable_bytes() const { return rcv_data_.size(); }
  bool peer_finished() const { return fin_received_; }   // and every byte before it arrived
  size_t send_space() const { return limits_.snd_buf - snd_data_.size(); }
  // error: why the connection was reset or aborted ("" while none).
  const std::string& error() const { return error_; }
  // Counters (per connection; the back end sums them).
  struct Stats {
    uint64_t retransmits = 0, challenge_acks = 0, dropped_ooo = 0, trimmed_bytes = 0, fast_retransmits = 0,
             paws_dropped = 0, delayed_acks = 0, sack_retransmits = 0, sack_recoveries = 0,
             timeouts = 0;
  };
  const Stats& stats() const { return stats_; }
  uint32_t cwnd() const { return cwnd_; }
  uint32_t send_mss() const { return smss_; }
  bool timestamps() const { return ts_ok_; }
  bool sack() const { return sack_ok_; }
  int64_t rto_ms() const { return rto_ms_; }

 private:
  explicit Connection(const Limits& l) : limits_(l) {}
  bool Acceptable(const Segment& s) const;
  void ProcessAck(const Segment& s, int64_t now);
  void ProcessText(const Segment& s);
  bool CheckOverlap(uint64_t at, std::string_view bytes);   // false: bytes differ (reset)
  void AbsorbOutOfOrder();
  void ChallengeAck(int64_t now);
  void SendAck();
  void Output(int64_t now);   // new data and FIN as window and cwnd allow
  void Emit(TcpSeq seq, uint8_t flags, std::string payload);
  void Retransmit(int64_t now);
  void ArmRto(int64_t now);
  bool DelayAck(int64_t now);   // true: this segment's ACK waits (delack_at_ armed)
  void Reset(const std::string& why, bool send_rst);
  void EnterTimeWait(int64_t now);
  void FinArrived(int64_t now);
  void Advance(size_t n);   // rcv_nxt moves over n in-order bytes
  void SetSendMss(const Options& o);
  void RttSample(double ms);
  uint32_t TsNow() const { return static_cast<uint32_t>(now_) + ts_offset_; }
  bool PawsRejects(const Segment& s) const;
  uint32_t RcvWindow() const;
  uint16_t AdvertisedWindow();
  uint32_t FlightSize() const { return static_cast<uint32_t>(snd_nxt_ - snd_una_); }
  // SACK (RFC 2018, RFC 6675).
  void TakeSackBlocks(const Segment& s);
  void PruneScoreboard();
  bool HoleLost(TcpSeq hole_end) const;    // RFC 6675 IsLost, for a hole ending at hole_end
  uint32_t Pipe() const;                   // RFC 6675 SetPipe
  uint32_t InFlight() const { return sack_ok_ && in_recovery_ ? Pipe() : FlightSize(); }
  bool SackRetransmitNext();               // RFC 6675 NextSeg rule 1: one lost hole segment again
  void AddSackBlocks(OutSegment* o) const;
  uint64_t Abs(TcpSeq s) const { return rcv_nxt_abs_ + static_cast<int64_t>(s - rcv_nxt_); }

  Limits limits_;
  State state_ = State::kClosed;
  std::string error_;
  Stats stats_;
  std::vector<OutSegment> out_;
  int64_t now_ = 0;   // the latest time an entry point was given

  // Timestamps (RFC 7323).
  bool ts_ok_ = false;
  uint32_t ts_offset_ = 0, ts_recent_ = 0;
  int64_t ts_recent_at_ = 0;
  TcpSeq last_ack_sent_;

  // Send side (RFC 9293 §3.3.1). snd_data_ holds the bytes from SND.UNA on (acknowledged bytes
  // leave it); a SYN and a FIN take a sequence number each but no byte.
  TcpSeq iss_, snd_una_, snd_nxt_, snd_max_;
  std::string snd_data_;
  uint32_t snd_wnd_ = 0, max_snd_wnd_ = 0;
  TcpSeq snd_wl1_, snd_wl2_;
  int snd_wscale_ = 0, rcv_wscale_ = 0;   // applied to windows received / sent (0: not agreed)
  uint32_t smss_ = 536;
  bool fin_queued_ = false;               // Close() called: FIN after snd_data_
  bool fin_sent_ = false, fin_acked_ = false;
  TcpSeq fin_seq_;
  bool syn_unacked_ = false;
  bool passive_ = false;
  bool peer_ws_ = false;                  // the peer's SYN carried a window scale

  // SACK: agreed in the handshake; the peer's SACKed ranges above SND.UNA, sorted, disjoint;
  // HighRxt of RFC 6675 (the highest sequence number sent again in this recovery).
  bool sack_ok_ = false;
  std::vector<std::pair<TcpSeq, TcpSeq>> scoreboard_;
  TcpSeq high_rxt_;
  uint64_t last_ooo_at_ = 0;              // stream offset of the newest out-of-order piece

  // Congestion control (RFC 5681, RFC 6582).
  uint32_t cwnd_ = 0, ssthresh_ = 0xffffffff;
  int dupacks_ = 0;
  bool in_recovery_ = false;
  TcpSeq recover_;

  // Retransmission (RFC 6298).
  int64_t rto_ms_ = 1000;
  double srtt_ms_ = 0, rttvar_ms_ = 0;
  bool have_rtt_ = false;
  std::optional<int64_t> rto_at_, persist_at_, time_wait_at_, delack_at_;
  int unacked_segments_ = 0;              // in-order data segments not yet acknowledged
  int retries_ = 0;
  bool timing_ = false;
  TcpSeq timed_seq_;
  int64_t timed_at_ = 0;

  // Receive side. rcv_nxt_abs_ counts the stream's bytes received in order (64-bit, no wrap).
  TcpSeq irs_, rcv_nxt_;
  uint64_t rcv_nxt_abs_ = 0;
  std::string rcv_data_;                  // in order, unread
  std::string history_;                   // the last bytes read (up to limits_.history)
  std::map<uint64_t, std::string> ooo_;   // out-of-order pieces by stream offset, not overlapping
  size_t ooo_bytes_ = 0;
  TcpSeq rcv_adv_;                        // right edge of the window we advertised
  bool fin_received_ = false;
  std::optional<uint64_t> fin_at_;        // stream offset of a FIN that arrived early
  int64_t challenge_window_start_ = 0;
  int challenge_count_ = 0;
};

}  // namespace mailseal::net::tcp
