// stack.cc — see stack.h.
#include "dataplane/net/stack.h"

#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "dataplane/net/bytes.h"
#include "dataplane/net/frame.h"

namespace mailseal::net {
namespace {
using tcp::TcpSeq;

constexpr uint16_t kTypeArp = kEtherArp, kTypeIpv4 = kEtherIpv4;
constexpr uint16_t kCookieMss[4] = {536, 1220, 1440, 1460};   // RFC 4987: a few common values
constexpr int64_t kCookiePeriodMs = 64000;
const Mac kBroadcast = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

uint16_t Checksum(std::string_view b) {
  return tcp::ChecksumFold(tcp::ChecksumAdd(0, reinterpret_cast<const uint8_t*>(b.data()), b.size()));
}
}  // namespace

Stack::Stats& Stack::Stats::operator+=(const Stats& o) {
  frames_in += o.frames_in;
  frames_out += o.frames_out;
  to_kernel += o.to_kernel;
  dropped += o.dropped;
  bad_checksum += o.bad_checksum;
  rst_sent += o.rst_sent;
  syn_cookies_sent += o.syn_cookies_sent;
  syn_cookies_accepted += o.syn_cookies_accepted;
  syn_dropped += o.syn_dropped;
  arp_replies += o.arp_replies;
  echo_replies += o.echo_replies;
  flows_reset += o.flows_reset;
  icmp_errors += o.icmp_errors;
  retransmits += o.retransmits;
  fast_retransmits += o.fast_retransmits;
  sack_recoveries += o.sack_recoveries;
  sack_retransmits += o.sack_retransmits;
  timeouts += o.timeouts;
  sack_flows += o.sack_flows;
  return *this;
}

namespace {
void AddTcp(Stack::Stats* s, const tcp::Connection& c) {
  const tcp::Connection::Stats& cs = c.stats();
  s->retransmits += cs.retransmits;
  s->fast_retransmits += cs.fast_retransmits;
  s->sack_recoveries += cs.sack_recoveries;
  s->sack_retransmits += cs.sack_retransmits;
  s->timeouts += cs.timeouts;
  if (c.sack()) ++s->sack_flows;
}
}  // namespace

// TsOffset: a connection's timestamp clock offset (RFC 7323 §7.1), the ISN function's keyed
// hash of the tuple with the ends swapped: unpredictable, and unrelated to the ISN.
uint32_t Stack::TsOffset(uint32_t remote, uint16_t rport, uint16_t lport) const {
  return isn_.Next(remote, rport, cfg_.ip, lport, 0).raw();
}

Stack::Stack(StackConfig cfg) : cfg_(std::move(cfg)) {
  if (RAND_bytes(cookie_secret_.data(), static_cast<int>(cookie_secret_.size())) != 1) std::abort();   // see isn.h
  next_ephemeral_ = cfg_.ephemeral_first;
}

Stack::Verdict Stack::Input(std::string_view frame, int64_t now) {
  now_ = now;
  ++stats_.frames_in;
  if (frame.size() < 14) {
    ++stats_.dropped;
    return Verdict::kDropped;
  }
  uint16_t type = Get16(frame.data() + 12);
  std::string_view payload = frame.substr(14);
  if (type == kTypeArp) {
    InputArp(payload, now);
    return Verdict::kBoth;   // the kernel keeps its own table right
  }
  if (type == kTypeIpv4) {
    Verdict v = InputIpv4(payload, now);
    if (v == Verdict::kToKernel) ++stats_.to_kernel;
    if (v == Verdict::kDropped) ++stats_.dropped;
    return v;
  }
  ++stats_.to_kernel;   // IPv6, VLANs, LLDP, ...: the kernel's
  return Verdict::kToKernel;
}

void Stack::InputArp(std::string_view p, int64_t now) {
  if (p.size() < 28 || Get16(p.data()) != 1 || Get16(p.data() + 2) != kTypeIpv4 || p[4] != 6 || p[5] != 4) return;
  uint16_t op = Get16(p.data() + 6);
  Mac sha;
  std::memcpy(sha.data(), p.data() + 8, 6);
  uint32_t spa = Get32(p.data() + 14), tpa = Get32(p.data() + 24);
  if (spa == 0 || spa == cfg_.ip) return;   // probes and our own address: nothing to learn
  // RFC 826's merge: refresh what we know; learn the sender when it asks us.
  auto it = arp_.find(spa);
  if (it == arp_.end() && tpa == cfg_.ip && arp_.size() < cfg_.arp_entries) it = arp_.emplace(spa, ArpEntry{}).first;
  if (it != arp_.end()) {
    it->second.mac = sha;
    it->second.resolved = true;
    it->second.expires = now + cfg_.arp_ttl_ms;
    for (std::string& pkt : it->second.pending) SendFrame(sha, kTypeIpv4, pkt);
    it->second.pending.clear();
  }
  if (op == 1 && tpa == cfg_.ip && cfg_.primary) {
    SendArp(2, sha, spa);
    ++stats_.arp_replies;
  }
}

Stack::Verdict Stack::InputIpv4(std::string_view p, int64_t now) {
  if (p.size() < 20 || (static_cast<uint8_t>(p[0]) >> 4) != 4) return Verdict::kDropped;
  size_t ihl = static_cast<size_t>(p[0] & 0x0f) * 4;
  size_t total = Get16(p.data() + 2);
  if (ihl < 20 || total < ihl || total > p.size()) return Verdict::kDropped;
  p = p.substr(0, total);   // Ethernet padding off
  if (Checksum(p.substr(0, ihl)) != 0) {
    ++stats_.bad_checksum;
    return Verdict::kDropped;
  }
  uint32_t src = Get32(p.data() + 12), dst = Get32(p.data() + 16);
  if (dst != cfg_.ip) return Verdict::kToKernel;                      // broadcast, multicast, others
  if ((Get16(p.data() + 6) & 0x3fff) != 0) return Verdict::kToKernel;   // fragments: the kernel reassembles
  uint8_t proto = static_cast<uint8_t>(p[9]);
  std::string_view body = p.substr(ihl);
  if (proto == kProtoIcmp) {
    if (body.size() >= 8 && body[0] == 8 && Checksum(body) == 0) {   // echo request (RFC 792)
      std::string reply(body);
      reply[0] = 0;
      reply[2] = reply[3] = 0;
      uint16_t sum = Checksum(reply);
      reply[2] = static_cast<char>(sum >> 8);
      reply[3] = static_cast<char>(sum & 0xff);
      SendIpv4(src, kProtoIcmp, std::move(reply), now);
      ++stats_.echo_replies;
      return Verdict::kConsumed;
    }
    // Destination unreachable quoting one of our segments (RFC 792; RFC 5927's checks in
    // Connection::IcmpError): the IP header we sent and the first 8 bytes of its TCP header.
    if (body.size() >= 8 + 20 + 8 && body[0] == 3 && Checksum(body) == 0) {
      std::string_view inner = body.substr(8);
      size_t ihl2 = static_cast<size_t>(inner[0] & 0x0f) * 4;
      if ((static_cast<uint8_t>(inner[0]) >> 4) == 4 && ihl2 >= 20 && inner.size() >= ihl2 + 8 &&
          static_cast<uint8_t>(inner[9]) == kProtoTcp && Get32(inner.data() + 12) == cfg_.ip) {
        Key k{Get32(inner.data() + 16), Get16(inner.data() + ihl2 + 2), Get16(inner.data() + ihl2)};
        if (auto it = by_key_.find(k); it != by_key_.end()) {
          FlowState& f = flows_.at(it->second);
          uint8_t code = static_cast<uint8_t>(body[1]);
          uint32_t mtu = code == 4 ? Get16(body.data() + 6) : 0;
          if (f.conn->IcmpError(TcpSeq(Get32(inner.data() + ihl2 + 4)), mtu, code != 4,
                                StrCat("destination unreachable (ICMP code ", int{code}, ")")))
            ++stats_.icmp_errors;
          Drain(it->second, f, now);
          return Verdict::kConsumed;
        }
      }
    }
    return Verdict::kToKernel;
  }
  if (proto == kProtoTcp) return InputTcp(src, body, now);
  return Verdict::kToKernel;
}

Stack::Verdict Stack::InputTcp(uint32_t src, std::string_view bytes, int64_t now) {
  if (bytes.size() < 4) return Verdict::kDropped;
  uint16_t lport = Get16(bytes.data() + 2);
  bool ours = listen_ports_.count(lport) || (lport >= cfg_.ephemeral_first && lport <= cfg_.ephemeral_last);
  if (!ours) return Verdict::kToKernel;   // management gRPC, LDAP and DNS answers to the kernel's sockets, SSH
  Result<tcp::Segment> parsed = tcp::ParseTcp4(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), src, cfg_.ip);
  if (!parsed.ok()) {
    ++stats_.bad_checksum;
    return Verdict::kDropped;
  }
  const tcp::Segment& seg = *parsed;
  Key k{src, seg.src_port, lport};
  if (auto it = by_key_.find(k); it != by_key_.end()) {
    FlowState& f = flows_.at(it->second);
    f.conn->Receive(seg, now);
    Drain(it->second, f, now);
    return Verdict::kConsumed;
  }
  if (seg.has(tcp::kRst)) return Verdict::kConsumed;   // never answered
  bool listening = listen_ports_.count(lport) > 0;
  if (listening && seg.has(tcp::kSyn) && !seg.has(tcp::kAck) && !seg.has(tcp::kFin)) {
    if (flows_.size() >= cfg_.max_flows) {
      ++stats_.syn_dropped;
      return Verdict::kConsumed;
    }
    if (half_open_ < cfg_.syn_budget) {
      auto conn = tcp::Connection::FromSyn(cfg_.tcp, seg, isn_.Next(cfg_.ip, lport, src, seg.src_port, now * 1000), now,
                                           TsOffset(src, seg.src_port, lport));
      if (!conn) return Verdict::kConsumed;
      FlowId id = next_id_++;
      FlowState& f = flows_[id];
      f.key = k;
      f.conn = std::move(conn);
      f.passive = f.half_open = true;
      ++half_open_;
      by_key_[k] = id;
      Drain(id, f, now);
      return Verdict::kConsumed;
    }
    // Over the budget: a SYN cookie (RFC 4987 §3.6), no state kept.
    uint32_t idx = 0;
    uint16_t mss = seg.options.mss ? seg.options.mss : 536;
    for (uint32_t i = 0; i < 4; ++i)
      if (kCookieMss[i] <= mss) idx = i;
    uint32_t t = static_cast<uint32_t>(now / kCookiePeriodMs);
    tcp::Segment out;
    out.src_port = lport;
    out.dst_port = seg.src_port;
    out.seq = TcpSeq(Cookie(k, seg.seq, t, idx));
    out.ack = seg.seq + 1;
    out.flags = tcp::kSyn | tcp::kAck;
    out.window = static_cast<uint16_t>(std::min<uint32_t>(cfg_.tcp.rcv_buf, 0xffff));
    out.options.mss = cfg_.tcp.mss;
    std::string b;
    tcp::BuildTcp4(out, cfg_.ip, src, &b);
    SendIpv4(src, kProtoTcp, std::move(b), now);
    ++stats_.syn_cookies_sent;
    return Verdict::kConsumed;
  }
  if (listening && seg.has(tcp::kAck) && !seg.has(tcp::kSyn) && flows_.size() < cfg_.max_flows) {
    if (std::optional<uint16_t> mss = CookieMss(k, seg.seq - 1, seg.ack, now)) {
      tcp::Segment syn;
      syn.src_port = seg.src_port;
      syn.dst_port = lport;
      syn.seq = seg.seq - 1;
      syn.flags = tcp::kSyn;
      syn.window = seg.window;
      syn.options.mss = *mss;
      auto conn = tcp::Connection::FromSyn(cfg_.tcp, syn, seg.ack - 1, now);
      conn->TakeOutput();   // the SYN-ACK went long ago, as the cookie
      conn->Receive(seg, now);
      FlowId id = next_id_++;
      FlowState& f = flows_[id];
      f.key = k;
      f.conn = std::move(conn);
      f.passive = true;
      by_key_[k] = id;
      ++stats_.syn_cookies_accepted;
      Drain(id, f, now);
      return Verdict::kConsumed;
    }
  }
  SendRst(src, seg, lport, now);
  return Verdict::kConsumed;
}

uint32_t Stack::Cookie(const Key& k, TcpSeq peer_isn, uint32_t t, uint32_t mss_index) const {
  unsigned char in[16];
  uint32_t isn = peer_isn.raw();
  std::memcpy(in, &k.ip, 4);
  std::memcpy(in + 4, &k.rport, 2);
  std::memcpy(in + 6, &k.lport, 2);
  std::memcpy(in + 8, &isn, 4);
  std::memcpy(in + 12, &t, 4);
  unsigned char mac[32];
  unsigned int len = 0;
  HMAC(EVP_sha256(), cookie_secret_.data(), static_cast<int>(cookie_secret_.size()), in, sizeof in, mac, &len);
  uint32_t h = static_cast<uint32_t>(mac[0]) << 16 | static_cast<uint32_t>(mac[1]) << 8 | mac[2];
  return h << 8 | (t & 0x1f) << 3 | mss_index;
}

std::optional<uint16_t> Stack::CookieMss(const Key& k, TcpSeq peer_isn, TcpSeq ack, int64_t now) const {
  uint32_t isn = (ack - 1).raw();
  uint32_t idx = isn & 7;
  if (idx >= 4) return std::nullopt;
  uint32_t cur = static_cast<uint32_t>(now / kCookiePeriodMs);
  for (uint32_t t : {cur, cur - 1})   // valid for one to two periods
    if ((t & 0x1f) == ((isn >> 3) & 0x1f) && Cookie(k, peer_isn, t, idx) == isn) return kCookieMss[idx];
  return std::nullopt;
}

void Stack::SendRst(uint32_t dst, const tcp::Segment& s, uint16_t lport, int64_t now) {   // RFC 9293 §3.10.7.1
  tcp::Segment r;
  r.src_port = lport;
  r.dst_port = s.src_port;
  if (s.has(tcp::kAck)) {
    r.seq = s.ack;
    r.flags = tcp::kRst;
  } else {
    r.ack = s.seq + s.length();
    r.flags = tcp::kRst | tcp::kAck;
  }
  std::string b;
  tcp::BuildTcp4(r, cfg_.ip, dst, &b);
  SendIpv4(dst, kProtoTcp, std::move(b), now);
  ++stats_.rst_sent;
}

void Stack::SendIpv4(uint32_t dst, uint8_t proto, std::string payload, int64_t now) {
  std::string pkt = Ipv4Packet(cfg_.ip, dst, proto, payload, ip_id_++);
  uint32_t hop = (dst & cfg_.netmask) == (cfg_.ip & cfg_.netmask) ? dst : cfg_.gateway;
  if (hop == 0) {
    ++stats_.dropped;
    return;
  }
  auto it = arp_.find(hop);
  if (it != arp_.end() && it->second.resolved && it->second.expires > now) {
    SendFrame(it->second.mac, kTypeIpv4, pkt);
    return;
  }
  if (it == arp_.end()) {
    if (arp_.size() >= cfg_.arp_entries) {
      ++stats_.dropped;
      return;
    }
    it = arp_.emplace(hop, ArpEntry{}).first;
  }
  ArpEntry& e = it->second;
  e.resolved = false;
  if (e.pending.size() < cfg_.arp_pending) e.pending.push_back(std::move(pkt));
  else ++stats_.dropped;   // TCP sends it again
  if (now >= e.next_try) {
    SendArp(1, Mac{}, hop);
    e.next_try = now + cfg_.arp_retry_ms;
  }
}

void Stack::SendFrame(const Mac& dst, uint16_t type, std::string_view payload) {
  frames_.push_back(EthernetFrame(dst, cfg_.mac, type, payload));
  ++stats_.frames_out;
}

void Stack::SendArp(uint16_t op, const Mac& tha, uint32_t tpa) {
  std::string a;
  Put16(&a, 1);
  Put16(&a, kTypeIpv4);
  a.push_back(6);
  a.push_back(4);
  Put16(&a, op);
  a.append(reinterpret_cast<const char*>(cfg_.mac.data()), 6);
  Put32(&a, cfg_.ip);
  a.append(reinterpret_cast<const char*>(tha.data()), 6);
  Put32(&a, tpa);
  SendFrame(op == 1 ? kBroadcast : tha, kTypeArp, a);
}

std::vector<std::string> Stack::TakeFrames() {
  std::vector<std::string> f;
  f.swap(frames_);
  return f;
}

void Stack::ScheduleTimer(FlowId id, FlowState& f) {
  std::optional<int64_t> next = f.conn->NextTimerMs();
  if (next && (!f.timer_at || *next < *f.timer_at)) {
    f.timer_at = next;
    timers_.emplace(*next, id);
  }
}

void Stack::EmitSegments(FlowState& f, int64_t now) {
  for (tcp::OutSegment& o : f.conn->TakeOutput()) {
    tcp::Segment s;
    s.src_port = f.key.lport;
    s.dst_port = f.key.rport;
    s.seq = o.seq;
    s.ack = o.ack;
    s.flags = o.flags;
    s.window = o.window;
    s.options = o.options;
    s.payload = o.payload;
    std::string b;
    tcp::BuildTcp4(s, cfg_.ip, f.key.ip, &b);
    SendIpv4(f.key.ip, kProtoTcp, std::move(b), now);
  }
}

void Stack::Drain(FlowId id, FlowState& f, int64_t now) {
  EmitSegments(f, now);
  tcp::State st = f.conn->state();
  if (f.half_open && st != tcp::State::kSynReceived) {
    f.half_open = false;
    --half_open_;
  }
  bool synchronized = st != tcp::State::kClosed && st != tcp::State::kSynSent && st != tcp::State::kSynReceived;
  if (!f.announced && synchronized) {
    f.announced = true;
    events_.emplace_back(id, f.passive ? Event::kAccepted : Event::kConnected);
  }
  if (f.announced && st != tcp::State::kClosed && (f.conn->readable_bytes() > 0 || f.conn->peer_finished()))
    events_.emplace_back(id, Event::kReadable);
  if (f.was_full && f.conn->send_space() > 0) events_.emplace_back(id, Event::kWritable);
  f.was_full = f.conn->send_space() == 0;
  if (st == tcp::State::kClosed) {
    if (!f.conn->error().empty()) ++stats_.flows_reset;
    // Reported to whoever holds the id (an active open that failed, too).
    if (f.announced || !f.passive) {
      closing_reasons_[id] = f.conn->error();
      if (!f.conn->error().empty())
        closing_peers_[id] = StrCat((f.key.ip >> 24) & 255, ".", (f.key.ip >> 16) & 255, ".", (f.key.ip >> 8) & 255, ".",
                                    f.key.ip & 255, ":", f.key.rport);
      events_.emplace_back(id, Event::kClosed);
    }
    if (f.half_open) --half_open_;
    AddTcp(&stats_, *f.conn);
    by_key_.erase(f.key);
    flows_.erase(id);
    return;
  }
  ScheduleTimer(id, f);
}

void Stack::Tick(int64_t now) {
  now_ = now;
  while (!timers_.empty() && timers_.top().first <= now) {
    auto [at, id] = timers_.top();
    timers_.pop();
    auto it = flows_.find(id);
    if (it == flows_.end() || it->second.timer_at != at) continue;   // gone, or superseded
    it->second.timer_at.reset();
    it->second.conn->Tick(now);
    Drain(id, it->second, now);
  }
  for (auto it = arp_.begin(); it != arp_.end();) {
    ArpEntry& e = it->second;
    if (!e.resolved && !e.pending.empty() && now >= e.next_try) {
      SendArp(1, Mac{}, it->first);
      e.next_try = now + cfg_.arp_retry_ms;
    }
    if (e.resolved && e.expires <= now && e.pending.empty()) it = arp_.erase(it);
    else ++it;
  }
}

std::optional<int64_t> Stack::NextTimerMs() const {
  std::optional<int64_t> t;
  if (!timers_.empty()) t = timers_.top().first;
  for (const auto& [ip, e] : arp_)
    if (!e.resolved && !e.pending.empty() && (!t || e.next_try < *t)) t = e.next_try;
  return t;
}

std::optional<FlowId> Stack::Connect(uint32_t ip, uint16_t port, int64_t now) {
  now_ = now;
  if (flows_.size() >= cfg_.max_flows) return std::nullopt;
  uint32_t range = static_cast<uint32_t>(cfg_.ephemeral_last - cfg_.ephemeral_first) + 1;
  for (uint32_t tries = 0; tries < range; ++tries) {
    uint16_t lport = next_ephemeral_;
    next_ephemeral_ = lport >= cfg_.ephemeral_last ? cfg_.ephemeral_first : static_cast<uint16_t>(lport + 1);
    Key k{ip, port, lport};
    if (by_key_.count(k) || (cfg_.own_port && !cfg_.own_port(ip, port, lport))) continue;
    FlowId id = next_id_++;
    FlowState& f = flows_[id];
    f.key = k;
    f.conn = tcp::Connection::Open(cfg_.tcp, isn_.Next(cfg_.ip, lport, ip, port, now * 1000), now,
                                   TsOffset(ip, port, lport));
    by_key_[k] = id;
    Drain(id, f, now);
    return id;
  }
  return std::nullopt;
}

size_t Stack::Send(FlowId id, std::string_view data, int64_t now) {
  auto it = flows_.find(id);
  if (it == flows_.end()) return 0;
  size_t n = it->second.conn->Send(data, now);
  Drain(id, it->second, now);
  return n;
}

size_t Stack::Read(FlowId id, char* buf, size_t cap, int64_t now) {
  auto it = flows_.find(id);
  if (it == flows_.end()) return 0;
  now_ = now;
  size_t n = it->second.conn->Read(buf, cap, now);
  EmitSegments(it->second, now);   // a window update; readability is not announced again
  return n;
}

void Stack::Close(FlowId id, int64_t now) {
  auto it = flows_.find(id);
  if (it == flows_.end()) return;
  it->second.closed_by_app = true;
  it->second.conn->Close(now);
  Drain(id, it->second, now);
}

void Stack::Abort(FlowId id, const std::string& why) {
  auto it = flows_.find(id);
  if (it == flows_.end()) return;
  it->second.conn->Abort(why);
  Drain(id, it->second, now_);
}

const tcp::Connection* Stack::Flow(FlowId id) const {
  auto it = flows_.find(id);
  return it == flows_.end() ? nullptr : it->second.conn.get();
}

Stack::Remote Stack::RemoteOf(FlowId id) const {
  auto it = flows_.find(id);
  return it == flows_.end() ? Remote{} : Remote{it->second.key.ip, it->second.key.rport};
}

std::vector<std::pair<FlowId, Stack::Event>> Stack::TakeEvents() {
  closed_reasons_.swap(closing_reasons_);
  closing_reasons_.clear();
  closed_peers_.swap(closing_peers_);
  closing_peers_.clear();
  std::vector<std::pair<FlowId, Event>> e;
  e.swap(events_);
  return e;
}

Stack::Stats Stack::stats() const {
  Stats s = stats_;   // the ended flows' TCP counters are in it already
  for (const auto& [id, f] : flows_)
    if (f.conn) AddTcp(&s, *f.conn);
  return s;
}

std::string Stack::ClosedPeer(FlowId id) const {
  auto it = closed_peers_.find(id);
  return it == closed_peers_.end() ? "" : it->second;
}

std::string Stack::ClosedReason(FlowId id) const {
  auto it = closed_reasons_.find(id);
  return it == closed_reasons_.end() ? "" : it->second;
}

}  // namespace mailseal::net
