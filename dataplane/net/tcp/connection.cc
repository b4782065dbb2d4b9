// connection.cc — see connection.h. Receive() follows RFC 9293 §3.10.7 step by step; the
// step numbers in the comments are the RFC's.
#include "dataplane/net/tcp/connection.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace mailseal::net::tcp {

const char* StateName(State s) {
  switch (s) {
    case State::kClosed: return "CLOSED";
    case State::kSynSent: return "SYN-SENT";
    case State::kSynReceived: return "SYN-RECEIVED";
    case State::kEstablished: return "ESTABLISHED";
    case State::kFinWait1: return "FIN-WAIT-1";
    case State::kFinWait2: return "FIN-WAIT-2";
    case State::kCloseWait: return "CLOSE-WAIT";
    case State::kClosing: return "CLOSING";
    case State::kLastAck: return "LAST-ACK";
    case State::kTimeWait: return "TIME-WAIT";
  }
  return "?";
}

namespace {
constexpr uint32_t kMinMss = 64;   // a peer announcing less still gets 64-byte segments
uint32_t InitialWindow(uint32_t smss) {   // RFC 5681 §3.1
  return smss > 2190 ? 2 * smss : smss > 1095 ? 3 * smss : 4 * smss;
}
}  // namespace

void Connection::SetSendMss(const Options& o) {
  // The MSS counts no options: the 12 bytes of timestamps come off every segment (RFC 6691).
  uint32_t mss = std::min<uint32_t>(limits_.mss, o.mss ? o.mss : 536);
  smss_ = std::max<uint32_t>(kMinMss, ts_ok_ && mss > 12 ? mss - 12 : mss);
  cwnd_ = InitialWindow(smss_);
}

std::unique_ptr<Connection> Connection::FromSyn(const Limits& limits, const Segment& syn, TcpSeq iss, int64_t now,
                                                uint32_t ts_offset) {
  if (!syn.has(kSyn) || syn.has(kAck) || syn.has(kRst) || syn.has(kFin)) return nullptr;
  std::unique_ptr<Connection> c(new Connection(limits));
  c->now_ = now;
  c->ts_offset_ = ts_offset;
  if (limits.timestamps && syn.options.has_timestamps) {   // RFC 7323 §3.2: answered
    c->ts_ok_ = true;
    c->ts_recent_ = syn.options.ts_val;
    c->ts_recent_at_ = now;
  }
  c->passive_ = true;
  c->sack_ok_ = limits.sack && syn.options.sack_permitted;   // RFC 2018 §2: answered
  c->irs_ = syn.seq;
  c->rcv_nxt_ = syn.seq + 1;
  c->iss_ = c->snd_una_ = c->recover_ = iss;
  c->snd_nxt_ = c->snd_max_ = iss + 1;
  c->syn_unacked_ = true;
  if (syn.options.wscale >= 0) {   // both sides must send the option (RFC 7323 §2.2)
    c->peer_ws_ = true;
    c->snd_wscale_ = syn.options.wscale;
    c->rcv_wscale_ = limits.wscale;
  }
  c->SetSendMss(syn.options);
  c->snd_wnd_ = c->max_snd_wnd_ = syn.window;   // never scaled in a SYN
  c->snd_wl1_ = syn.seq;
  c->snd_wl2_ = iss;
  c->rto_ms_ = limits.rto_initial_ms;
  c->state_ = State::kSynReceived;
  c->Emit(iss, kSyn | kAck, "");
  c->ArmRto(now);
  return c;
}

std::unique_ptr<Connection> Connection::Open(const Limits& limits, TcpSeq iss, int64_t now, uint32_t ts_offset) {
  std::unique_ptr<Connection> c(new Connection(limits));
  c->now_ = now;
  c->ts_offset_ = ts_offset;
  c->iss_ = c->snd_una_ = c->recover_ = iss;
  c->snd_nxt_ = c->snd_max_ = iss + 1;
  c->syn_unacked_ = true;
  c->rto_ms_ = limits.rto_initial_ms;
  c->state_ = State::kSynSent;
  c->Emit(iss, kSyn, "");
  c->ArmRto(now);
  return c;
}

uint32_t Connection::RcvWindow() const {
  // Sequence space, not free memory: out-of-order pieces lie inside the window already offered
  // (ProcessText trims at its right edge), so unread + pieces stays within rcv_buf. Counting
  // the pieces would shrink the window field of every duplicate ACK, and a sender counts an
  // ACK with another window as no duplicate (RFC 5681 §2): no fast retransmit, only timeouts.
  size_t used = rcv_data_.size();
  return used >= limits_.rcv_buf ? 0 : static_cast<uint32_t>(limits_.rcv_buf - used);
}

uint16_t Connection::AdvertisedWindow() {
  uint32_t w = RcvWindow();
  uint32_t field = std::min<uint32_t>(w >> rcv_wscale_, 0xffff);
  TcpSeq edge = rcv_nxt_ + (field << rcv_wscale_);
  if (edge > rcv_adv_ || rcv_adv_ < rcv_nxt_) rcv_adv_ = edge;   // never shrink what was offered
  return static_cast<uint16_t>(field);
}

void Connection::Emit(TcpSeq seq, uint8_t flags, std::string payload) {
  OutSegment o;
  o.seq = seq;
  o.flags = flags;
  if (flags & kAck) {
    o.ack = rcv_nxt_;
    last_ack_sent_ = rcv_nxt_;
    unacked_segments_ = 0;   // whatever was owed goes with this one
    delack_at_.reset();
  }
  if (flags & kSyn) {   // the window of a SYN is never scaled; our options go with it
    uint32_t w = std::min<uint32_t>(RcvWindow(), 0xffff);
    o.window = static_cast<uint16_t>(w);
    rcv_adv_ = rcv_nxt_ + w;
    o.options.mss = limits_.mss;
    if (state_ == State::kSynSent || peer_ws_) o.options.wscale = limits_.wscale;   // offered, or answered
    o.options.sack_permitted = state_ == State::kSynSent ? limits_.sack : sack_ok_;
  } else if (!(flags & kRst)) {
    o.window = AdvertisedWindow();
  }
  // Timestamps: offered in our SYN, then on every segment but a RST once both sides sent them.
  if (!(flags & kRst) && (ts_ok_ || (state_ == State::kSynSent && (flags & kSyn) && limits_.timestamps))) {
    o.options.has_timestamps = true;
    o.options.ts_val = TsNow();
    o.options.ts_ecr = ts_ok_ ? ts_recent_ : 0;
  }
  if ((flags & kAck) && !(flags & (kSyn | kRst)) && sack_ok_ && !ooo_.empty()) AddSackBlocks(&o);
  o.payload = std::move(payload);
  out_.push_back(std::move(o));
}

std::vector<OutSegment> Connection::TakeOutput() {
  std::vector<OutSegment> o;
  o.swap(out_);
  return o;
}

// A pure ACK carries the highest sequence number sent: after a go-back retransmission snd_nxt_
// is behind what the peer may already hold, and an ACK below its RCV.NXT would be
// unacceptable to it (and answered, and so on).
void Connection::SendAck() { Emit(snd_max_, kAck, ""); }

void Connection::ChallengeAck(int64_t now) {   // RFC 5961 §3.2, §4.2, §5.2, rate limited (§7)
  if (now - challenge_window_start_ >= 1000) {
    challenge_window_start_ = now;
    challenge_count_ = 0;
  }
  if (challenge_count_ >= limits_.challenge_acks_per_s) return;
  ++challenge_count_;
  ++stats_.challenge_acks;
  SendAck();
}

void Connection::Reset(const std::string& why, bool send_rst) {
  if (send_rst && state_ != State::kClosed && state_ != State::kSynSent && state_ != State::kTimeWait)
    Emit(snd_max_, kRst, "");
  if (error_.empty()) error_ = why;
  state_ = State::kClosed;
  rto_at_.reset();
  persist_at_.reset();
  time_wait_at_.reset();
  delack_at_.reset();
  rcv_data_.clear();
  history_.clear();
  ooo_.clear();
  ooo_bytes_ = 0;
  snd_data_.clear();
  scoreboard_.clear();
}

void Connection::Abort(const std::string& why) { Reset(why, true); }

void Connection::EnterTimeWait(int64_t now) {
  state_ = State::kTimeWait;
  rto_at_.reset();
  persist_at_.reset();
  delack_at_.reset();
  time_wait_at_ = now + limits_.time_wait_ms;
}

void Connection::ArmRto(int64_t now) { rto_at_ = now + rto_ms_; }

bool Connection::DelayAck(int64_t now) {
  if (limits_.delayed_ack_ms <= 0 || ++unacked_segments_ >= 2) return false;
  if (!delack_at_) delack_at_ = now + limits_.delayed_ack_ms;
  ++stats_.delayed_acks;
  return true;
}

bool Connection::Acceptable(const Segment& s) const {   // RFC 9293 §3.10.7.4, first check
  uint32_t len = s.length();
  int32_t wnd = rcv_adv_ - rcv_nxt_;
  uint32_t w = wnd > 0 ? static_cast<uint32_t>(wnd) : 0;
  auto in_window = [&](TcpSeq x) { return rcv_nxt_ <= x && x < rcv_nxt_ + w; };
  if (len == 0) return w == 0 ? s.seq == rcv_nxt_ : in_window(s.seq);
  if (w == 0) return false;
  return in_window(s.seq) || in_window(s.seq + (len - 1));
}

bool Connection::PawsRejects(const Segment& s) const {   // RFC 7323 §5.3 R1
  if (!ts_ok_ || !s.options.has_timestamps || s.has(kRst)) return false;
  if (now_ - ts_recent_at_ > 24LL * 24 * 3600 * 1000) return false;   // TS.Recent too old to judge by (§5.5)
  return static_cast<int32_t>(s.options.ts_val - ts_recent_) < 0;
}

void Connection::RttSample(double r) {   // RFC 6298 §2
  if (r < 0 || r > static_cast<double>(limits_.rto_max_ms)) return;   // an echo we never sent
  if (!have_rtt_) {
    srtt_ms_ = r;
    rttvar_ms_ = r / 2;
    have_rtt_ = true;
  } else {
    rttvar_ms_ = 0.75 * rttvar_ms_ + 0.25 * std::abs(srtt_ms_ - r);
    srtt_ms_ = 0.875 * srtt_ms_ + 0.125 * r;
  }
  rto_ms_ = std::clamp<int64_t>(static_cast<int64_t>(srtt_ms_ + std::max(1.0, 4 * rttvar_ms_)), limits_.rto_min_ms,
                                limits_.rto_max_ms);
}

void Connection::Receive(const Segment& seg, int64_t now) {
  now_ = now;
  switch (state_) {
    case State::kClosed:
      return;   // the back end answers RST for flows it does not know
    case State::kSynSent: {   // RFC 9293 §3.10.7.3
      if (seg.has(kAck) && (seg.ack <= iss_ || seg.ack > snd_max_)) {
        if (!seg.has(kRst)) out_.push_back(OutSegment{seg.ack, TcpSeq(), kRst, 0, {}, {}});
        return;
      }
      if (seg.has(kRst)) {
        if (seg.has(kAck)) Reset("connection refused", false);
        return;
      }
      if (!seg.has(kSyn)) return;
      irs_ = seg.seq;
      rcv_nxt_ = seg.seq + 1;
      rcv_adv_ = rcv_nxt_;
      if (seg.options.wscale >= 0) {
        peer_ws_ = true;
        snd_wscale_ = seg.options.wscale;
        rcv_wscale_ = limits_.wscale;
      }
      sack_ok_ = limits_.sack && seg.options.sack_permitted;
      if (limits_.timestamps && seg.options.has_timestamps) {
        ts_ok_ = true;
        ts_recent_ = seg.options.ts_val;
        ts_recent_at_ = now;
        if (seg.has(kAck) && seg.options.ts_ecr != 0) RttSample(static_cast<double>(TsNow() - seg.options.ts_ecr));
      }
      SetSendMss(seg.options);
      snd_wnd_ = max_snd_wnd_ = seg.window;
      snd_wl1_ = seg.seq;
      snd_wl2_ = seg.ack;
      if (seg.has(kAck)) {
        snd_una_ = seg.ack;
        syn_unacked_ = false;
        state_ = State::kEstablished;
        rto_at_.reset();
        retries_ = 0;
        rto_ms_ = limits_.rto_initial_ms;
        SendAck();
        Output(now);
      } else {   // simultaneous open
        state_ = State::kSynReceived;
        Emit(iss_, kSyn | kAck, "");
      }
      return;
    }
    default:
      break;
  }
  // SYN-RECEIVED and the synchronized states (RFC 9293 §3.10.7.4).
  if (state_ == State::kSynReceived && seg.has(kSyn) && !seg.has(kAck) && seg.seq == irs_) {
    Emit(iss_, kSyn | kAck, "");   // our SYN-ACK was lost: the peer sent its SYN again
    return;
  }
  // PAWS (RFC 7323 §5.3 R1): an old duplicate is answered with an ACK and dropped.
  if (PawsRejects(seg)) {
    ++stats_.paws_dropped;
    if (seg.length() > 0) SendAck();
    else ChallengeAck(now);
    return;
  }
  // First: sequence number acceptability.
  if (!Acceptable(seg)) {
    if (seg.has(kRst)) return;   // RFC 5961 §3.2: out of window, silently dropped
    if (state_ == State::kTimeWait && seg.has(kFin)) time_wait_at_ = now + limits_.time_wait_ms;   // its FIN again
    // A repetition of bytes already received must repeat them exactly.
    if (!seg.payload.empty() && seg.seq < rcv_nxt_) {
      int32_t back = rcv_nxt_ - seg.seq;
      if (static_cast<uint64_t>(back) <= rcv_nxt_abs_ + (fin_received_ ? 1 : 0) &&
          !CheckOverlap(rcv_nxt_abs_ - static_cast<uint64_t>(back), seg.payload)) {
        Reset("retransmitted bytes differ from those received before (evasion attempt)", true);
        return;
      }
      stats_.trimmed_bytes += seg.payload.size();
    }
    // An old segment with data is acknowledged (the peer's retransmission needs it); one
    // without data only within the challenge ACK budget, so that two ends can never trade
    // ACKs forever.
    if (seg.length() > 0) SendAck();
    else ChallengeAck(now);
    return;
  }
  // TS.Recent follows the segments that reach the left window edge (RFC 7323 §4.3).
  if (ts_ok_ && seg.options.has_timestamps && static_cast<int32_t>(seg.options.ts_val - ts_recent_) >= 0 &&
      seg.seq <= last_ack_sent_) {
    ts_recent_ = seg.options.ts_val;
    ts_recent_at_ = now;
  }
  // Second: RST (RFC 5961 §3.2: only exactly at RCV.NXT; elsewhere in the window, a challenge).
  if (seg.has(kRst)) {
    if (seg.seq == rcv_nxt_) Reset(state_ == State::kSynReceived ? "connection reset in the handshake" : "reset by peer", false);
    else ChallengeAck(now);
    return;
  }
  // Fourth: SYN in a synchronized state (RFC 5961 §4.2): a challenge ACK, nothing else.
  if (seg.has(kSyn)) {
    ChallengeAck(now);
    return;
  }
  // Fifth: ACK.
  if (!seg.has(kAck)) return;
  if (state_ == State::kSynReceived) {
    if (!(snd_una_ < seg.ack && seg.ack <= snd_max_)) {
      out_.push_back(OutSegment{seg.ack, TcpSeq(), kRst, 0, {}, {}});
      return;
    }
    state_ = State::kEstablished;
    snd_wl1_ = seg.seq - 1;   // the window below is taken from this segment
  }
  TcpSeq before = snd_una_;
  ProcessAck(seg, now);
  if (state_ == State::kClosed) return;
  (void)before;
  // Seventh: segment text (ESTABLISHED, FIN-WAIT-1, FIN-WAIT-2).
  bool data_states = state_ == State::kEstablished || state_ == State::kFinWait1 || state_ == State::kFinWait2;
  // In order, no hole before or after it, taken whole: the only data whose ACK may wait.
  bool may_delay = false;
  if (!seg.payload.empty() && data_states && !fin_received_) {
    bool in_order = seg.seq == rcv_nxt_ && ooo_.empty();
    uint64_t before_abs = rcv_nxt_abs_;
    ProcessText(seg);
    if (state_ == State::kClosed) return;
    may_delay = in_order && ooo_.empty() && rcv_nxt_abs_ - before_abs == seg.payload.size() && RcvWindow() >= limits_.mss;
  }
  // Eighth: FIN — taken when every byte before it arrived (it may come ahead of a hole).
  if (seg.has(kFin) && !fin_received_) {
    int32_t ahead = (seg.seq + static_cast<uint32_t>(seg.payload.size())) - rcv_nxt_;
    if (ahead >= 0) {
      uint64_t at = rcv_nxt_abs_ + static_cast<uint64_t>(ahead);
      if (fin_at_ && *fin_at_ != at) {
        Reset("two FINs at different places in the stream", true);
        return;
      }
      fin_at_ = at;
    }
  }
  if (fin_at_ && !fin_received_ && *fin_at_ == rcv_nxt_abs_) FinArrived(now);
  if (seg.has(kFin) || (!seg.payload.empty() && !(may_delay && DelayAck(now)))) SendAck();
  Output(now);
}

void Connection::FinArrived(int64_t now) {
  fin_received_ = true;
  rcv_nxt_ += 1;
  switch (state_) {
    case State::kSynReceived:
    case State::kEstablished: state_ = State::kCloseWait; break;
    case State::kFinWait1:
      if (fin_acked_) EnterTimeWait(now);
      else state_ = State::kClosing;
      break;
    case State::kFinWait2: EnterTimeWait(now); break;
    default: break;
  }
}

void Connection::ProcessAck(const Segment& seg, int64_t now) {
  // RFC 5961 §5.2: an ACK for data never sent, or older than the largest window the peer ever
  // offered, is not believed.
  if (seg.ack > snd_max_) {
    SendAck();
    return;
  }
  if (seg.ack < snd_una_ - max_snd_wnd_) {
    ChallengeAck(now);
    return;
  }
  uint32_t wnd = static_cast<uint32_t>(seg.window) << snd_wscale_;
  if (sack_ok_ && seg.options.sack_count > 0 && !syn_unacked_) TakeSackBlocks(seg);
  if (seg.ack > snd_una_) {
    uint32_t acked = static_cast<uint32_t>(seg.ack - snd_una_);
    uint32_t bytes = acked;
    if (syn_unacked_) {
      syn_unacked_ = false;
      --bytes;
    }
    if (fin_sent_ && seg.ack == fin_seq_ + 1) {
      fin_acked_ = true;
      --bytes;
    }
    snd_data_.erase(0, std::min<size_t>(bytes, snd_data_.size()));
    if (ts_ok_ && seg.options.has_timestamps && seg.options.ts_ecr != 0) {
      // RFC 7323 §4: the echo times the segment it acknowledges, retransmitted or not.
      RttSample(static_cast<double>(static_cast<int32_t>(TsNow() - seg.options.ts_ecr)));
      timing_ = false;
    } else if (timing_ && seg.ack > timed_seq_) {   // RFC 6298 §2, Karn: only segments sent once
      RttSample(static_cast<double>(now - timed_at_));
      timing_ = false;
    }
    snd_una_ = seg.ack;
    if (snd_nxt_ < snd_una_) snd_nxt_ = snd_una_;
    if (high_rxt_ < snd_una_) high_rxt_ = snd_una_;
    PruneScoreboard();
    retries_ = 0;
    // Congestion control: RFC 5681 §3.1, NewReno recovery RFC 6582 §3.2.
    if (in_recovery_) {
      if (seg.ack >= recover_) {
        cwnd_ = std::min(ssthresh_, std::max(FlightSize(), smss_) + smss_);
        in_recovery_ = false;
        dupacks_ = 0;
      } else if (!sack_ok_) {
        Retransmit(now);   // partial ACK: the next hole
        cwnd_ = cwnd_ > bytes ? cwnd_ - bytes : 0;
        if (bytes >= smss_) cwnd_ += smss_;
        cwnd_ = std::max(cwnd_, smss_);
      }   // with SACK the holes go again from Output(), as the pipe allows (RFC 6675 §5)
    } else {
      dupacks_ = 0;
      if (cwnd_ < ssthresh_) cwnd_ += std::min(bytes, smss_);
      else cwnd_ += std::max<uint32_t>(1, smss_ * smss_ / std::max<uint32_t>(cwnd_, 1));
    }
    if (FlightSize() == 0) rto_at_.reset();
    else ArmRto(now);
    // FIN acknowledged: the closing states move on.
    if (fin_acked_) {
      if (state_ == State::kFinWait1) state_ = State::kFinWait2;
      else if (state_ == State::kClosing) EnterTimeWait(now);
      else if (state_ == State::kLastAck) {
        state_ = State::kClosed;
        rto_at_.reset();
        return;
      }
    }
  } else if (seg.ack == snd_una_ && seg.payload.empty() && !seg.has(kSyn) && !seg.has(kFin) && FlightSize() > 0 &&
             wnd == snd_wnd_) {
    // A duplicate ACK (RFC 5681 §2).
    ++dupacks_;
    bool lost = sack_ok_ && !scoreboard_.empty() && scoreboard_.front().first > snd_una_ &&
                HoleLost(scoreboard_.front().first);
    // Early retransmit (RFC 5827): with fewer than four segments out and nothing new to send,
    // three duplicate ACKs can never come; one fewer than the segments out is enough.
    uint32_t oseg = (FlightSize() + smss_ - 1) / smss_;
    size_t sent = static_cast<size_t>(snd_nxt_ - snd_una_);
    bool nothing_new = snd_data_.size() <= sent || snd_wnd_ <= FlightSize();
    bool early = oseg >= 2 && oseg < 4 && nothing_new && dupacks_ >= static_cast<int>(oseg) - 1;
    if (!in_recovery_ && (dupacks_ == 3 || lost || early) && snd_una_ - 1 >= recover_) {   // RFC 6582 §3.2 step 2, RFC 6675 §5
      ssthresh_ = std::max(FlightSize() / 2, 2 * smss_);
      recover_ = snd_max_;
      ++stats_.fast_retransmits;
      high_rxt_ = snd_una_;
      Retransmit(now);
      in_recovery_ = true;
      if (sack_ok_) {   // RFC 6675 §5 step 4: the first hole went again; the pipe governs the rest
        ++stats_.sack_recoveries;
        high_rxt_ = snd_una_ + static_cast<uint32_t>(std::min<size_t>(smss_, snd_data_.size()));
        cwnd_ = ssthresh_;
      } else {
        cwnd_ = ssthresh_ + 3 * smss_;
      }
    } else if (in_recovery_ && !sack_ok_) {
      cwnd_ += smss_;
    }
  }
  // The send window (RFC 9293 §3.10.7.4, fifth check): from the newest segment only.
  if (snd_wl1_ < seg.seq || (snd_wl1_ == seg.seq && snd_wl2_ <= seg.ack)) {
    snd_wnd_ = wnd;
    max_snd_wnd_ = std::max(max_snd_wnd_, wnd);
    snd_wl1_ = seg.seq;
    snd_wl2_ = seg.ack;
    if (snd_wnd_ > 0) persist_at_.reset();
  }
  if (snd_wnd_ == 0) retries_ = 0;   // a peer that answers its window probes is alive
}

bool Connection::CheckOverlap(uint64_t at, std::string_view bytes) {
  uint64_t end = at + bytes.size();
  // What was received in order and is still held: history_ then rcv_data_.
  uint64_t unread_start = rcv_nxt_abs_ - rcv_data_.size();
  uint64_t held_start = unread_start - history_.size();
  for (uint64_t o = std::max(at, held_start); o < std::min(end, rcv_nxt_abs_);) {
    const std::string& src = o < unread_start ? history_ : rcv_data_;
    uint64_t src_start = o < unread_start ? held_start : unread_start;
    uint64_t src_end = o < unread_start ? unread_start : rcv_nxt_abs_;
    uint64_t n = std::min(std::min(end, rcv_nxt_abs_), src_end) - o;
    if (std::memcmp(src.data() + (o - src_start), bytes.data() + (o - at), n) != 0) return false;
    o += n;
  }
  // The out-of-order pieces.
  for (auto it = ooo_.upper_bound(at); it != ooo_.begin();) {   // the piece that may start before `at`
    --it;
    if (it->first + it->second.size() > at) {
      uint64_t o = at, stop = std::min(end, it->first + it->second.size());
      if (std::memcmp(it->second.data() + (o - it->first), bytes.data(), stop - o) != 0) return false;
    }
    break;
  }
  for (auto it = ooo_.lower_bound(at); it != ooo_.end() && it->first < end; ++it) {
    uint64_t stop = std::min(end, it->first + it->second.size());
    if (std::memcmp(it->second.data(), bytes.data() + (it->first - at), stop - it->first) != 0) return false;
  }
  return true;
}

void Connection::Advance(size_t n) {
  rcv_nxt_abs_ += n;
  rcv_nxt_ += static_cast<uint32_t>(n);
}

void Connection::ProcessText(const Segment& seg) {
  std::string_view data = seg.payload;
  int32_t delta = seg.seq - rcv_nxt_;
  if (delta < 0 && static_cast<uint64_t>(-static_cast<int64_t>(delta)) > rcv_nxt_abs_) {
    size_t skip = static_cast<size_t>(-static_cast<int64_t>(delta) - static_cast<int64_t>(rcv_nxt_abs_));
    if (skip >= data.size()) return;
    data.remove_prefix(skip);
    delta += static_cast<int32_t>(skip);
  }
  uint64_t at = static_cast<uint64_t>(static_cast<int64_t>(rcv_nxt_abs_) + delta);
  // Trim what lies beyond the window we offered (RFC 9293: "trimmed to the window").
  uint64_t right = rcv_nxt_abs_ + static_cast<uint64_t>(std::max<int32_t>(0, rcv_adv_ - rcv_nxt_));
  if (at + data.size() > right) data = data.substr(0, right > at ? static_cast<size_t>(right - at) : 0);
  if (data.empty()) return;
  if (!CheckOverlap(at, data)) {
    Reset("overlapping bytes differ from those received before (evasion attempt)", true);
    return;
  }
  if (at < rcv_nxt_abs_) {   // the repeated part matched: trimmed
    size_t dup = static_cast<size_t>(std::min<uint64_t>(rcv_nxt_abs_ - at, data.size()));
    stats_.trimmed_bytes += dup;
    data.remove_prefix(dup);
    at += dup;
  }
  if (data.empty()) return;
  if (at == rcv_nxt_abs_) {
    rcv_data_.append(data);
    Advance(data.size());
    AbsorbOutOfOrder();
    return;
  }
  // Out of order: keep the parts no piece holds yet (equal bytes were checked above).
  std::vector<std::pair<uint64_t, std::string_view>> gaps;
  uint64_t o = at, end = at + data.size();
  auto it = ooo_.upper_bound(at);
  if (it != ooo_.begin()) {
    auto prev = std::prev(it);
    if (prev->first + prev->second.size() > o) o = prev->first + prev->second.size();
  }
  for (; o < end; ++it) {
    uint64_t next = it == ooo_.end() ? end : std::min(end, it->first);
    if (next > o) gaps.emplace_back(o, data.substr(static_cast<size_t>(o - at), static_cast<size_t>(next - o)));
    if (it == ooo_.end()) break;
    o = std::max(o, it->first + it->second.size());
  }
  for (const auto& [off, piece] : gaps) {
    if (ooo_.size() >= limits_.max_ooo_segments) {
      ++stats_.dropped_ooo;   // the peer sends it again
      break;
    }
    ooo_.emplace(off, std::string(piece));
    ooo_bytes_ += piece.size();
  }
  last_ooo_at_ = at;
}

void Connection::AbsorbOutOfOrder() {
  while (!ooo_.empty() && ooo_.begin()->first <= rcv_nxt_abs_) {
    auto it = ooo_.begin();
    uint64_t end = it->first + it->second.size();
    if (end > rcv_nxt_abs_) {
      size_t skip = static_cast<size_t>(rcv_nxt_abs_ - it->first);
      rcv_data_.append(it->second, skip, std::string::npos);
      Advance(it->second.size() - skip);
    }
    ooo_bytes_ -= it->second.size();
    ooo_.erase(it);
  }
}

size_t Connection::Read(char* buf, size_t cap, int64_t now) {
  now_ = now;
  size_t n = std::min(cap, rcv_data_.size());
  if (n == 0) return 0;
  uint32_t offered = static_cast<uint32_t>(std::max<int32_t>(0, rcv_adv_ - rcv_nxt_));
  std::memcpy(buf, rcv_data_.data(), n);
  history_.append(rcv_data_, 0, n);
  if (history_.size() > limits_.history) history_.erase(0, history_.size() - limits_.history);
  rcv_data_.erase(0, n);
  // Window update when it opened by enough to matter (receiver SWS avoidance, RFC 9293 §3.8.6.2.2).
  if (state_ == State::kEstablished || state_ == State::kFinWait1 || state_ == State::kFinWait2) {
    uint32_t can_offer = std::min<uint32_t>(RcvWindow(), 0xffffu << rcv_wscale_);
    if (can_offer >= offered + std::min<uint32_t>(limits_.rcv_buf / 2, smss_)) SendAck();
  }
  (void)now;
  return n;
}

size_t Connection::Send(std::string_view data, int64_t now) {
  now_ = now;
  bool open = state_ == State::kEstablished || state_ == State::kCloseWait || state_ == State::kSynSent ||
              state_ == State::kSynReceived;
  if (!open || fin_queued_) return 0;
  size_t take = std::min(data.size(), send_space());
  snd_data_.append(data.substr(0, take));
  Output(now);
  return take;
}

void Connection::Close(int64_t now) {
  now_ = now;
  switch (state_) {
    case State::kSynSent: Reset("closed before the handshake", false); return;
    case State::kSynReceived:
    case State::kEstablished:
    case State::kCloseWait: fin_queued_ = true; break;
    default: return;
  }
  Output(now);
}

void Connection::Output(int64_t now) {
  if (state_ != State::kEstablished && state_ != State::kCloseWait && state_ != State::kFinWait1 &&
      state_ != State::kLastAck && state_ != State::kClosing)
    return;
  // SACK loss recovery (RFC 6675 §5 step 5): the holes judged lost first, as the pipe allows.
  if (sack_ok_ && in_recovery_)
    while (cwnd_ >= Pipe() + smss_ && SackRetransmitNext()) {
    }
  for (;;) {
    size_t offset = static_cast<size_t>(snd_nxt_ - snd_una_);   // the SYN is acknowledged here
    if (fin_sent_ && snd_nxt_ > fin_seq_) return;               // everything, FIN included, is out
    size_t unsent = snd_data_.size() > offset ? snd_data_.size() - offset : 0;
    // The peer's window bounds what is beyond SND.UNA; cwnd bounds what is in the network
    // (the pipe during SACK recovery, else the flight size).
    uint32_t flight = FlightSize(), in_flight = InFlight();
    // Limited transmit (RFC 3042): the first two duplicate ACKs each let one new segment out,
    // so that a small window still gets its third duplicate ACK.
    uint32_t limit = cwnd_ + (!in_recovery_ && dupacks_ > 0 ? static_cast<uint32_t>(std::min(dupacks_, 2)) * smss_ : 0);
    uint32_t avail = std::min(snd_wnd_ > flight ? snd_wnd_ - flight : 0, limit > in_flight ? limit - in_flight : 0);
    if (unsent > 0 && avail > 0) {
      size_t n = std::min<size_t>({unsent, smss_, avail});
      // Sender SWS avoidance (RFC 9293 §3.8.6.2.1), without Nagle: a full segment, the rest
      // of what is queued, or half the largest window the peer offered.
      if (n < smss_ && n < unsent && n < max_snd_wnd_ / 2) break;
      bool last = n == unsent;
      Emit(snd_nxt_, kAck | (last ? kPsh : 0), snd_data_.substr(offset, n));
      if (!timing_ && snd_nxt_ >= snd_max_) {
        timing_ = true;
        timed_seq_ = snd_nxt_;
        timed_at_ = now;
      }
      snd_nxt_ += static_cast<uint32_t>(n);
      if (snd_nxt_ > snd_max_) snd_max_ = snd_nxt_;
      if (!rto_at_) ArmRto(now);
      continue;
    }
    if (unsent == 0 && fin_queued_ && (!fin_sent_ || snd_nxt_ == fin_seq_)) {
      if (!fin_sent_) {
        fin_sent_ = true;
        fin_seq_ = snd_nxt_;
        state_ = state_ == State::kCloseWait ? State::kLastAck : state_ == State::kEstablished ? State::kFinWait1 : state_;
      }
      Emit(snd_nxt_, kFin | kAck, "");
      snd_nxt_ += 1;
      if (snd_nxt_ > snd_max_) snd_max_ = snd_nxt_;
      if (!rto_at_) ArmRto(now);
    }
    if (unsent > 0 && snd_wnd_ == 0 && FlightSize() == 0 && !persist_at_) persist_at_ = now + rto_ms_;
    break;
  }
}

void Connection::Retransmit(int64_t now) {
  ++stats_.retransmits;
  timing_ = false;   // Karn's rule
  if (syn_unacked_) {
    Emit(iss_, state_ == State::kSynSent ? kSyn : kSyn | kAck, "");
    return;
  }
  size_t n = std::min<size_t>(smss_, snd_data_.size());
  if (n > 0) {
    Emit(snd_una_, kAck | (n == snd_data_.size() ? kPsh : 0), snd_data_.substr(0, n));
    if (snd_nxt_ < snd_una_ + static_cast<uint32_t>(n)) snd_nxt_ = snd_una_ + static_cast<uint32_t>(n);
  } else if (fin_sent_ && !fin_acked_) {
    Emit(fin_seq_, kFin | kAck, "");
    if (snd_nxt_ < fin_seq_ + 1) snd_nxt_ = fin_seq_ + 1;
  }
  (void)now;
}

void Connection::Tick(int64_t now) {
  now_ = now;
  if (time_wait_at_ && now >= *time_wait_at_) {
    time_wait_at_.reset();
    state_ = State::kClosed;
    return;
  }
  if (delack_at_ && now >= *delack_at_) SendAck();   // clears delack_at_
  if (rto_at_ && now >= *rto_at_) {   // RFC 6298 §5
    if (++retries_ > limits_.max_retransmits) {
      Reset(state_ == State::kSynReceived || state_ == State::kSynSent ? "handshake timed out" : "retransmission timeout",
            true);
      return;
    }
    ++stats_.timeouts;
    ssthresh_ = std::max(FlightSize() / 2, 2 * smss_);
    cwnd_ = smss_;
    recover_ = snd_max_;
    in_recovery_ = false;
    dupacks_ = 0;
    scoreboard_.clear();   // RFC 2018 §8: the receiver may have reneged; go back to SND.UNA
    rto_ms_ = std::min(rto_ms_ * 2, limits_.rto_max_ms);
    snd_nxt_ = snd_una_;   // go back: what follows the resent segment goes again as cwnd allows
    Retransmit(now);
    ArmRto(now);
  }
  if (persist_at_ && now >= *persist_at_) {   // zero window: probe with one byte (RFC 9293 §3.8.6.1)
    persist_at_.reset();
    size_t offset = static_cast<size_t>(snd_nxt_ - snd_una_);
    if (snd_wnd_ == 0 && offset < snd_data_.size()) {
      Emit(snd_nxt_, kAck, snd_data_.substr(offset, 1));
      snd_nxt_ += 1;
      if (snd_nxt_ > snd_max_) snd_max_ = snd_nxt_;
      ArmRto(now);
    }
  }
}

bool Connection::IcmpError(TcpSeq seq, uint32_t next_hop_mtu, bool unreachable, const std::string& why) {
  if (state_ == State::kClosed || seq < snd_una_ || seq >= snd_max_) return false;
  if (next_hop_mtu > 0) {
    uint32_t mss = std::max<uint32_t>(536, next_hop_mtu > 40 ? next_hop_mtu - 40 : 0);
    if (ts_ok_) mss -= 12;   // the options travel in every segment
    if (mss < smss_) {
      smss_ = mss;
      snd_nxt_ = snd_una_;   // what was sent too large goes again in smaller segments
      Retransmit(0);
    }
    return true;
  }
  if (unreachable && state_ == State::kSynSent) Reset(why, false);
  return true;
}

// ---- SACK (RFC 2018, RFC 6675) -------------------------------------------------------------

namespace {
constexpr size_t kMaxScoreboard = 32;   // SACKed ranges remembered per connection
}  // namespace

void Connection::TakeSackBlocks(const Segment& seg) {
  TcpSeq floor = seg.ack > snd_una_ ? seg.ack : snd_una_;
  for (int b = 0; b < seg.options.sack_count; ++b) {
    TcpSeq l = seg.options.sack[b].left, r = seg.options.sack[b].right;
    // Believed only inside (SND.UNA, SND.MAX]; a block at or below the ACK (D-SACK) says
    // nothing about holes.
    if (!(l < r) || r <= floor || r > snd_max_ || l < snd_una_ - max_snd_wnd_) continue;
    if (l < floor) l = floor;
    auto it = std::lower_bound(scoreboard_.begin(), scoreboard_.end(), l,
                               [](const std::pair<TcpSeq, TcpSeq>& x, TcpSeq v) { return x.first < v; });
    if (it != scoreboard_.begin() && std::prev(it)->second >= l) --it;   // touches the one before
    if (it == scoreboard_.end() || r < it->first) {                     // a new range
      if (scoreboard_.size() >= kMaxScoreboard) continue;
      scoreboard_.insert(it, {l, r});
      continue;
    }
    if (l < it->first) it->first = l;   // merge with every range it touches
    if (it->second < r) it->second = r;
    auto next = std::next(it);
    while (next != scoreboard_.end() && next->first <= it->second) {
      if (it->second < next->second) it->second = next->second;
      next = scoreboard_.erase(next);
      it = std::prev(next);
    }
  }
}

void Connection::PruneScoreboard() {
  while (!scoreboard_.empty() && scoreboard_.front().second <= snd_una_) scoreboard_.erase(scoreboard_.begin());
  if (!scoreboard_.empty() && scoreboard_.front().first < snd_una_) scoreboard_.front().first = snd_una_;
}

bool Connection::HoleLost(TcpSeq hole_end) const {
  // RFC 6675 IsLost: DupThresh (3) discontiguous SACKed ranges above it, or more than
  // (DupThresh - 1) * SMSS bytes SACKed above it. Every byte of a hole has the same above.
  int ranges = 0;
  uint64_t bytes = 0;
  for (const auto& [l, r] : scoreboard_) {
    if (l < hole_end) continue;
    ++ranges;
    bytes += static_cast<uint32_t>(r - l);
  }
  return ranges >= 3 || bytes > 2ull * smss_;
}

uint32_t Connection::Pipe() const {
  // RFC 6675 SetPipe: each byte from SND.UNA to SND.MAX not SACKed counts once unless it is
  // judged lost, and once more if it was sent again in this recovery (below HighRxt).
  uint64_t pipe = 0;
  auto resent = [&](TcpSeq a, TcpSeq b) -> uint64_t {   // bytes of [a, b) below HighRxt
    TcpSeq e = b < high_rxt_ ? b : high_rxt_;
    return a < e ? static_cast<uint32_t>(e - a) : 0;
  };
  TcpSeq cur = snd_una_;
  for (const auto& [l, r] : scoreboard_) {
    if (cur < l) {
      if (!HoleLost(l)) pipe += static_cast<uint32_t>(l - cur);
      pipe += resent(cur, l);
    }
    if (cur < r) cur = r;
  }
  if (cur < snd_max_) pipe += static_cast<uint32_t>(snd_max_ - cur) + resent(cur, snd_max_);
  return static_cast<uint32_t>(std::min<uint64_t>(pipe, 0xffffffffu));
}

bool Connection::SackRetransmitNext() {
  // NextSeg rule 1: the lowest byte above HighRxt in a hole judged lost.
  TcpSeq cur = snd_una_;
  for (const auto& [l, r] : scoreboard_) {
    TcpSeq start = cur < high_rxt_ ? high_rxt_ : cur;
    if (start < l && HoleLost(l)) {
      size_t offset = static_cast<size_t>(start - snd_una_);
      if (offset >= snd_data_.size()) return false;
      size_t n = std::min<size_t>({smss_, static_cast<size_t>(static_cast<uint32_t>(l - start)), snd_data_.size() - offset});
      Emit(start, kAck, snd_data_.substr(offset, n));
      high_rxt_ = start + static_cast<uint32_t>(n);
      ++stats_.retransmits;
      ++stats_.sack_retransmits;
      timing_ = false;   // Karn's rule
      return true;
    }
    if (cur < r) cur = r;
  }
  return false;
}

void Connection::AddSackBlocks(OutSegment* o) const {
  // The pieces as contiguous ranges of the stream; the one holding the newest piece first
  // (RFC 2018 §4), then the others from the left.
  std::pair<uint64_t, uint64_t> ranges[8];
  size_t n = 0, first = 0;
  bool truncated = false;
  for (const auto& [at, bytes] : ooo_) {
    if (n > 0 && ranges[n - 1].second == at) {
      ranges[n - 1].second += bytes.size();
    } else if (n < 8) {
      ranges[n++] = {at, at + bytes.size()};
    } else {
      truncated = true;
      break;
    }
  }
  (void)truncated;
  for (size_t i = 0; i < n; ++i)
    if (ranges[i].first <= last_ooo_at_ && last_ooo_at_ < ranges[i].second) first = i;
  auto seq = [&](uint64_t abs) { return rcv_nxt_ + static_cast<uint32_t>(abs - rcv_nxt_abs_); };
  o->options.sack_count = 0;
  auto add = [&](size_t i) {
    if (o->options.sack_count < 4) o->options.sack[o->options.sack_count++] = {seq(ranges[i].first), seq(ranges[i].second)};
  };
  if (n > 0) add(first);
  for (size_t i = 0; i < n; ++i)
    if (i != first) add(i);
}

std::optional<int64_t> Connection::NextTimerMs() const {
  std::optional<int64_t> t;
  for (const auto& x : {rto_at_, persist_at_, time_wait_at_, delack_at_})
    if (x && (!t || *x < *t)) t = x;
  return t;
}

}  // namespace mailseal::net::tcp
