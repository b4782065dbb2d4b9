// The user-space TCP core (issue #17), driven by scripted segments without privileges: the
// handshake both ways, RFC 9293's segment processing, RFC 5961's answers to blind RST/SYN/ACK,
// reassembly with its bounds and the overlap policy, RFC 6298 retransmission, NewReno fast
// retransmit, zero-window probing, every close, and two cores moving a megabyte each way over
// a seeded wire that loses, reorders and duplicates segments.
#include <gtest/gtest.h>

#include <cstdio>
#include <deque>
#include <random>
#include <string>
#include <vector>

#include "dataplane/net/tcp/connection.h"
#include "dataplane/net/tcp/isn.h"
#include "dataplane/net/tcp/segment.h"

namespace mailseal::net::tcp {
namespace {

constexpr uint32_t kPeerIsn = 1000;     // the scripted peer's ISN
constexpr uint32_t kOurIsn = 0xfffffff0;   // ours: wraps around zero within the test

Segment Seg(uint32_t seq, uint32_t ack, uint8_t flags, uint16_t window = 65535, std::string_view payload = "") {
  Segment s;
  s.seq = TcpSeq(seq);
  s.ack = TcpSeq(ack);
  s.flags = flags;
  s.window = window;
  s.payload = payload;
  return s;
}

struct Fixture {
  Limits limits;
  std::unique_ptr<Connection> c;
  int64_t now = 0;
  uint32_t peer_nxt = kPeerIsn + 1;   // the scripted peer's next sequence number
  uint32_t our_nxt = kOurIsn + 1;

  explicit Fixture(Limits l = {}) : limits(l) {}
  // Establish: SYN (no window scale), SYN-ACK checked, ACK.
  void Establish(uint16_t peer_mss = 1000, bool sack = false) {
    Segment syn = Seg(kPeerIsn, 0, kSyn, 65535);
    syn.options.mss = peer_mss;
    syn.options.sack_permitted = sack;
    c = Connection::FromSyn(limits, syn, TcpSeq(kOurIsn), now);
    ASSERT_TRUE(c);
    auto out = c->TakeOutput();
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].flags, kSyn | kAck);
    EXPECT_EQ(out[0].ack.raw(), kPeerIsn + 1);
    EXPECT_EQ(out[0].options.wscale, -1) << "no window scale offered to a peer that did not offer it";
    EXPECT_EQ(out[0].options.sack_permitted, sack && limits.sack) << "SACK answered only when offered";
    c->Receive(Seg(peer_nxt, our_nxt, kAck), now);
    ASSERT_EQ(c->state(), State::kEstablished);
    EXPECT_TRUE(c->TakeOutput().empty());
  }
  std::string ReadAll() {
    std::string s(c->readable_bytes(), '\0');
    s.resize(c->Read(s.data(), s.size(), now));
    return s;
  }
  void PeerSends(std::string_view data, uint8_t extra = 0) {
    c->Receive(Seg(peer_nxt, our_nxt, kAck | extra, 65535, data), now);
    peer_nxt += static_cast<uint32_t>(data.size()) + ((extra & kFin) ? 1 : 0);
  }
};

TEST(TcpSegment, WireFormRoundTripsAndBadInputIsRefused) {
  Segment s = Seg(0x01020304, 0x0a0b0c0d, kSyn | kAck, 4321, "payload");
  s.src_port = 25;
  s.dst_port = 40000;
  s.options.mss = 1460;
  s.options.wscale = 7;
  s.options.sack_permitted = true;
  std::string wire;
  BuildTcp4(s, 0x0a000001, 0x0a000002, &wire);
  auto* p = reinterpret_cast<const uint8_t*>(wire.data());
  Result<Segment> back = ParseTcp4(p, wire.size(), 0x0a000001, 0x0a000002);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->seq.raw(), 0x01020304u);
  EXPECT_EQ(back->ack.raw(), 0x0a0b0c0du);
  EXPECT_EQ(back->flags, kSyn | kAck);
  EXPECT_EQ(back->window, 4321);
  EXPECT_EQ(back->options.mss, 1460);
  EXPECT_EQ(back->options.wscale, 7);
  EXPECT_TRUE(back->options.sack_permitted);
  EXPECT_EQ(back->payload, "payload");
  EXPECT_FALSE(ParseTcp4(p, wire.size(), 0x0a000001, 0x0a000003).ok()) << "pseudo-header in the checksum";
  std::string bad = wire;
  bad[25] ^= 1;
  EXPECT_FALSE(ParseTcp4(reinterpret_cast<const uint8_t*>(bad.data()), bad.size(), 0x0a000001, 0x0a000002).ok());
  EXPECT_FALSE(ParseTcp4(p, 19, 0x0a000001, 0x0a000002).ok()) << "shorter than a header";
  // An option whose length runs past the header is refused, whatever the checksum.
  Segment o = Seg(1, 2, kAck);
  std::string w2;
  BuildTcp4(o, 1, 2, &w2);
  w2[12] = 0x60;   // data offset 24: four option bytes
  w2.insert(20, std::string("\x02\x09\x05\xb4", 4));
  w2[16] = w2[17] = 0;
  uint16_t sum = ChecksumFold(ChecksumAdd(0 + 0 + 0 + 1 + 0 + 2 + 6 + static_cast<uint32_t>(w2.size()),
                                          reinterpret_cast<const uint8_t*>(w2.data()), w2.size()));
  w2[16] = static_cast<char>(sum >> 8);
  w2[17] = static_cast<char>(sum & 0xff);
  Result<Segment> r = ParseTcp4(reinterpret_cast<const uint8_t*>(w2.data()), w2.size(), 1, 2);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("option"), std::string::npos) << r.status().message();
}

TEST(TcpIsn, KeyedPerFourTupleAndAdvancingWithTime) {
  IsnGenerator a, b;
  TcpSeq x = a.Next(0x0a000001, 25, 0x0a000002, 40000, 1000000);
  EXPECT_EQ(a.Next(0x0a000001, 25, 0x0a000002, 40000, 1000000).raw(), x.raw()) << "a function of its inputs";
  EXPECT_NE(a.Next(0x0a000001, 25, 0x0a000002, 40001, 1000000).raw(), x.raw()) << "another port, another ISN";
  EXPECT_NE(b.Next(0x0a000001, 25, 0x0a000002, 40000, 1000000).raw(), x.raw()) << "another secret, another ISN";
  EXPECT_EQ(a.Next(0x0a000001, 25, 0x0a000002, 40000, 1000400) - x, 100) << "M ticks every 4 us";
}

TEST(TcpSeq, ComparesAcrossWraparound) {
  EXPECT_LT(TcpSeq(0xfffffff0), TcpSeq(5));
  EXPECT_GT(TcpSeq(5), TcpSeq(0xfffffff0));
  EXPECT_EQ(TcpSeq(5) - TcpSeq(0xfffffff0), 21);
}

TEST(TcpCore, PassiveOpenWithWindowScaleAndMss) {
  Limits l;
  Segment syn = Seg(kPeerIsn, 0, kSyn, 100);
  syn.options.mss = 1200;
  syn.options.wscale = 2;
  auto c = Connection::FromSyn(l, syn, TcpSeq(kOurIsn), 0);
  ASSERT_TRUE(c);
  auto out = c->TakeOutput();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].options.mss, 1460);
  EXPECT_EQ(out[0].options.wscale, 7) << "a peer that offers a window scale gets ours";
  EXPECT_EQ(c->send_mss(), 1200u) << "the peer's MSS bounds our segments";
  c->Receive(Seg(kPeerIsn + 1, kOurIsn + 1, kAck, 100), 1);   // window 100 << 2
  ASSERT_EQ(c->state(), State::kEstablished);
  std::string big(1000, 'x');
  EXPECT_EQ(c->Send(big, 1), 1000u);
  out = c->TakeOutput();
  size_t sent = 0;
  for (const auto& o : out) sent += o.payload.size();
  EXPECT_EQ(sent, 400u) << "the peer's window of 100 scaled by 2^2 bounds what is in flight";
  // Our windows are scaled by 7 from now on.
  EXPECT_EQ(out.back().window, static_cast<uint16_t>(l.rcv_buf >> 7));
  EXPECT_EQ(Connection::FromSyn(l, Seg(1, 2, kSyn | kAck), TcpSeq(5), 0), nullptr) << "not a plain SYN";
}

TEST(TcpCore, ActiveOpenAndTheHandshakesFailures) {
  Limits l;
  auto c = Connection::Open(l, TcpSeq(kOurIsn), 0);
  auto out = c->TakeOutput();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].flags, kSyn);
  EXPECT_EQ(out[0].options.wscale, 7) << "we offer window scaling in our SYN";
  // An ACK for something we never sent: RST at that ACK, state unchanged.
  c->Receive(Seg(5, kOurIsn + 7, kSyn | kAck), 1);
  out = c->TakeOutput();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].flags, kRst);
  EXPECT_EQ(out[0].seq.raw(), kOurIsn + 7);
  EXPECT_EQ(c->state(), State::kSynSent);
  Segment synack = Seg(kPeerIsn, kOurIsn + 1, kSyn | kAck, 500);
  synack.options.mss = 1400;
  c->Receive(synack, 2);
  ASSERT_EQ(c->state(), State::kEstablished);
  out = c->TakeOutput();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].flags, kAck);
  EXPECT_EQ(out[0].ack.raw(), kPeerIsn + 1);
  // Refused: RST+ACK in SYN-SENT.
  auto d = Connection::Open(l, TcpSeq(7), 0);
  d->Receive(Seg(0, 8, kRst | kAck), 1);
  EXPECT_EQ(d->state(), State::kClosed);
  EXPECT_EQ(d->error(), "connection refused");
  // No answer at all: the SYN goes again with back-off, then the open fails.
  auto e = Connection::Open(l, TcpSeq(7), 0);
  e->TakeOutput();
  int64_t t = 0;
  int syns = 0;
  while (e->state() != State::kClosed && t < 1000000) {
    t = *e->NextTimerMs();
    e->Tick(t);
    for (const auto& o : e->TakeOutput()) syns += o.flags == kSyn;
  }
  EXPECT_EQ(syns, l.max_retransmits);
  EXPECT_EQ(e->error(), "handshake timed out");
  EXPECT_GE(t, 1000 + 2000 + 4000 + 8000) << "the retransmission timer backs off";
}

TEST(TcpCore, LostSynAckIsSentAgainForTheRepeatedSyn) {
  Fixture f;
  Segment syn = Seg(kPeerIsn, 0, kSyn);
  f.c = Connection::FromSyn(f.limits, syn, TcpSeq(kOurIsn), 0);
  f.c->TakeOutput();
  f.c->Receive(syn, 5);
  auto out = f.c->TakeOutput();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].flags, kSyn | kAck);
  EXPECT_EQ(f.c->state(), State::kSynReceived);
}

TEST(TcpCore, InOrderOutOfOrderAndOverlappingData) {
  Fixture f;
  f.Establish();
  f.PeerSends("MAIL FROM:<a@b>\r\n");
  auto out = f.c->TakeOutput();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].ack.raw(), f.peer_nxt);
  EXPECT_EQ(f.ReadAll(), "MAIL FROM:<a@b>\r\n");
  // Out of order: the second part first; nothing readable until the hole is filled.
  uint32_t base = f.peer_nxt;
  f.c->Receive(Seg(base + 5, f.our_nxt, kAck, 65535, "world"), 0);
  EXPECT_EQ(f.c->readable_bytes(), 0u);
  out = f.c->TakeOutput();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].ack.raw(), base) << "a duplicate ACK tells the peer where the hole is";
  f.c->Receive(Seg(base, f.our_nxt, kAck, 65535, "hello"), 0);
  EXPECT_EQ(f.ReadAll(), "helloworld");
  // A retransmission of bytes already read, and one overlapping the edge: equal bytes trimmed.
  f.c->Receive(Seg(base + 3, f.our_nxt, kAck, 65535, "loworld!!"), 0);
  EXPECT_EQ(f.ReadAll(), "!!");
  EXPECT_EQ(f.c->state(), State::kEstablished);
  EXPECT_GE(f.c->stats().trimmed_bytes, 7u);
}

TEST(TcpCore, OverlappingBytesThatDifferResetTheFlow) {
  for (int variant = 0; variant < 3; ++variant) {
    Fixture f;
    f.Establish();
    uint32_t base = f.peer_nxt;
    if (variant == 0) {   // against the unread buffer
      f.c->Receive(Seg(base, f.our_nxt, kAck, 65535, "RCPT TO:<bob@a.test>"), 0);
      f.c->Receive(Seg(base + 9, f.our_nxt, kAck, 65535, "<eve@x.test>"), 0);
    } else if (variant == 1) {   // against what was read already
      f.c->Receive(Seg(base, f.our_nxt, kAck, 65535, "RCPT TO:<bob@a.test>"), 0);
      f.ReadAll();
      f.c->Receive(Seg(base + 9, f.our_nxt, kAck, 65535, "eve"), 0);
    } else {   // two out-of-order pieces that disagree
      f.c->Receive(Seg(base + 10, f.our_nxt, kAck, 65535, "abcdef"), 0);
      f.c->Receive(Seg(base + 12, f.our_nxt, kAck, 65535, "XXXXXXXX"), 0);
    }
    EXPECT_EQ(f.c->state(), State::kClosed) << variant;
    EXPECT_NE(f.c->error().find("evasion"), std::string::npos) << f.c->error();
    auto out = f.c->TakeOutput();
    ASSERT_FALSE(out.empty());
    EXPECT_EQ(out.back().flags, kRst) << "the reset is sent";
    EXPECT_EQ(f.c->readable_bytes(), 0u) << "nothing of the disputed stream is handed on";
  }
}

TEST(TcpCore, OutOfOrderPiecesAreBounded) {
  Limits l;
  l.max_ooo_segments = 8;
  l.rcv_buf = 64 * 1024;
  Fixture f(l);
  f.Establish();
  for (uint32_t i = 0; i < 100; ++i)   // every other 10-byte piece: 100 holes
    f.c->Receive(Seg(f.peer_nxt + 20 * (i + 1), f.our_nxt, kAck, 65535, "0123456789"), 0);
  EXPECT_EQ(f.c->stats().dropped_ooo, 92u);
  // Beyond the advertised window: trimmed away, never stored.
  f.c->Receive(Seg(f.peer_nxt + 70000, f.our_nxt, kAck, 65535, std::string(1000, 'z')), 0);
  EXPECT_EQ(f.c->state(), State::kEstablished);
  // The hole filled: the kept pieces join the stream in order.
  f.c->Receive(Seg(f.peer_nxt, f.our_nxt, kAck, 65535, "abcdefghijklmnopqrst"), 0);
  std::string got = f.ReadAll();
  EXPECT_EQ(got.substr(0, 30), "abcdefghijklmnopqrst0123456789");
}

TEST(TcpCore, BlindResetsSynsAndAcksGetChallengeAcks) {
  Fixture f;
  f.Establish();
  // RST in the window but not at RCV.NXT: a challenge ACK, the connection stays.
  f.c->Receive(Seg(f.peer_nxt + 100, 0, kRst), 0);
  EXPECT_EQ(f.c->state(), State::kEstablished);
  auto out = f.c->TakeOutput();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].flags, kAck);
  // Out of the window: silently ignored.
  f.c->Receive(Seg(f.peer_nxt + 10000000, 0, kRst), 0);
  EXPECT_TRUE(f.c->TakeOutput().empty());
  EXPECT_EQ(f.c->state(), State::kEstablished);
  // A SYN in a synchronized state: challenge ACKs, at most 10 a second.
  for (int i = 0; i < 30; ++i) f.c->Receive(Seg(f.peer_nxt + 5, 0, kSyn), 100);
  EXPECT_EQ(f.c->TakeOutput().size(), 9u) << "one challenge ACK was already spent in this second";
  EXPECT_EQ(f.c->state(), State::kEstablished);
  // An ACK for data never sent: answered, ignored.
  f.c->Receive(Seg(f.peer_nxt, f.our_nxt + 5000, kAck), 2000);
  EXPECT_EQ(f.c->TakeOutput().size(), 1u);
  EXPECT_EQ(f.c->state(), State::kEstablished);
  // The RST exactly at RCV.NXT ends it.
  f.c->Receive(Seg(f.peer_nxt, 0, kRst), 2000);
  EXPECT_EQ(f.c->state(), State::kClosed);
  EXPECT_EQ(f.c->error(), "reset by peer");
}

TEST(TcpCore, RetransmissionTimerBacksOffAndGivesUp) {
  Fixture f;
  f.Establish();
  f.c->Send("250 2.0.0 Ok\r\n", 0);
  auto out = f.c->TakeOutput();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].payload, "250 2.0.0 Ok\r\n");
  ASSERT_TRUE(f.c->NextTimerMs());
  EXPECT_EQ(*f.c->NextTimerMs(), 1000) << "RFC 6298: 1 s before a round trip was measured";
  std::vector<int64_t> at;
  while (f.c->state() == State::kEstablished) {
    int64_t t = *f.c->NextTimerMs();
    f.c->Tick(t);
    for (const auto& o : f.c->TakeOutput())
      if (!o.payload.empty()) {
        EXPECT_EQ(o.payload, "250 2.0.0 Ok\r\n");
        at.push_back(t);
      }
  }
  ASSERT_EQ(at.size(), static_cast<size_t>(f.limits.max_retransmits));
  for (size_t i = 1; i < at.size(); ++i) EXPECT_GE(at[i] - at[i - 1], std::min<int64_t>(60000, 1000 << i));
  EXPECT_EQ(f.c->error(), "retransmission timeout");
}

TEST(TcpCore, RoundTripTimeSetsTheTimer) {
  Fixture f;
  f.Establish();
  f.c->Send("x", 0);
  f.c->TakeOutput();
  f.c->Receive(Seg(f.peer_nxt, f.our_nxt + 1, kAck), 50);   // 50 ms round trip
  f.c->Send("y", 60);
  f.c->TakeOutput();
  ASSERT_TRUE(f.c->NextTimerMs());
  EXPECT_EQ(*f.c->NextTimerMs(), 60 + 200) << "SRTT 50 + 4*RTTVAR 100 = 150, clamped to the 200 ms minimum";
}

// RFC 7323: timestamps agreed in the handshake, echoed, timing retransmitted segments, and
// PAWS dropping an old duplicate (one a reader of the stream must never take for new data).
TEST(TcpCore, TimestampsAreAgreedEchoedAndProtectAgainstWrappedSequences) {
  Limits l;
  Segment syn = Seg(kPeerIsn, 0, kSyn, 65535);
  syn.options.mss = 1000;
  syn.options.has_timestamps = true;
  syn.options.ts_val = 5000;
  auto c = Connection::FromSyn(l, syn, TcpSeq(kOurIsn), 0, /*ts_offset=*/777);
  ASSERT_TRUE(c);
  auto out = c->TakeOutput();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_TRUE(out[0].options.has_timestamps) << "a peer that offers timestamps gets them";
  EXPECT_EQ(out[0].options.ts_ecr, 5000u);
  EXPECT_EQ(out[0].options.ts_val, 777u) << "our clock (0 ms) plus the connection's offset";
  EXPECT_TRUE(c->timestamps());
  EXPECT_EQ(c->send_mss(), 1000u - 12) << "the 12 option bytes come off every segment";
  uint32_t peer = kPeerIsn + 1, ours = kOurIsn + 1;
  auto seg = [&](uint32_t seq, uint32_t tsval, std::string_view data, uint8_t flags = kAck) {
    Segment s = Seg(seq, ours, flags, 65535, data);
    s.options.has_timestamps = true;
    s.options.ts_val = tsval;
    s.options.ts_ecr = 777;
    return s;
  };
  c->Receive(seg(peer, 5001, ""), 10);
  ASSERT_EQ(c->state(), State::kEstablished);
  c->Receive(seg(peer, 6000, "new "), 20);
  peer += 4;
  out = c->TakeOutput();
  ASSERT_FALSE(out.empty());
  EXPECT_TRUE(out.back().options.has_timestamps);
  EXPECT_EQ(out.back().options.ts_ecr, 6000u) << "TS.Recent follows the newest in-order segment";
  // An old duplicate: in the window, but its timestamp is older than TS.Recent.
  c->Receive(seg(peer, 5500, "OLD!"), 30);
  EXPECT_EQ(c->readable_bytes(), 4u) << "PAWS dropped it";
  EXPECT_EQ(c->stats().paws_dropped, 1u);
  out = c->TakeOutput();
  ASSERT_EQ(out.size(), 1u) << "and acknowledged what we have";
  EXPECT_EQ(out[0].ack.raw(), peer);
  // A timestamp that wrapped around zero is newer, not older.
  c->Receive(seg(peer, 6000 + 0x7fff0000u, "more"), 40);
  peer += 4;
  EXPECT_EQ(c->readable_bytes(), 8u);
  c->TakeOutput();
  // RTT from the echo: our segment sent at 100 ms carries TSval 877; echoed at 400 ms, even
  // after a retransmission (which Karn's rule alone would leave untimed).
  c->Send("x", 100);
  out = c->TakeOutput();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].options.ts_val, 877u);
  c->Tick(1100);   // the RTO (1 s initial) fires: sent again
  out = c->TakeOutput();
  ASSERT_EQ(out.size(), 1u);
  ASSERT_EQ(out[0].payload, "x");
  Segment ack = seg(peer, 0x7fff2000u, "");
  ack.ack = TcpSeq(ours + 1);
  ack.options.ts_ecr = out[0].options.ts_val;   // echoes the retransmission (sent at 1100 ms)
  c->Receive(ack, 1400);
  // Samples: 10 ms (the handshake's ACK echoed the SYN-ACK's 777), then 300 ms: SRTT 10 -> 46.25,
  // RTTVAR 5 -> 76.25, RTO 46.25 + 4 * 76.25 = 351.
  EXPECT_EQ(c->rto_ms(), 351) << "the retransmitted segment was timed by its echo";
  // A segment without the option is still taken (as Linux does).
  c->Receive(Seg(peer, ours + 1, kAck, 65535, "bare"), 1500);
  EXPECT_EQ(c->readable_bytes(), 12u);
  // An old timestamp does not shield a RST from the RST rules (PAWS skips RSTs).
  peer += 4;
  c->Receive(seg(peer, 1, "", kRst), 1600);
  EXPECT_EQ(c->state(), State::kClosed);
  // Timestamps off: none offered.
  Limits off;
  off.timestamps = false;
  auto a = Connection::Open(off, TcpSeq(kOurIsn), 0);
  EXPECT_FALSE(a->TakeOutput()[0].options.has_timestamps);
  auto b = Connection::Open(l, TcpSeq(kOurIsn), 0, 42);
  auto bo = b->TakeOutput();
  EXPECT_TRUE(bo[0].options.has_timestamps) << "offered in our SYN";
  EXPECT_EQ(bo[0].options.ts_ecr, 0u);
}

TEST(TcpCore, ThreeDuplicateAcksRetransmitAtOnce) {
  Fixture f;
  f.Establish(1000);
  std::string data(4000, 'd');
  for (int i = 0; i < 4; ++i) data[static_cast<size_t>(i) * 1000] = static_cast<char>('A' + i);
  f.c->Send(data, 0);
  auto out = f.c->TakeOutput();
  ASSERT_EQ(out.size(), 4u) << "the initial window (RFC 5681: 4 segments of 1000) is sent";
  // The first segment is lost: the peer acknowledges nothing three times.
  for (int i = 0; i < 3; ++i) f.c->Receive(Seg(f.peer_nxt, f.our_nxt, kAck), 10);
  out = f.c->TakeOutput();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].seq.raw(), f.our_nxt);
  EXPECT_EQ(out[0].payload[0], 'A');
  EXPECT_EQ(f.c->stats().fast_retransmits, 1u);
  EXPECT_LT(10, *f.c->NextTimerMs()) << "before the retransmission timer";
  // The whole window acknowledged: recovery ends.
  f.c->Receive(Seg(f.peer_nxt, f.our_nxt + 4000, kAck), 20);
  EXPECT_EQ(f.c->send_space(), f.limits.snd_buf);
}

// ---- SACK (RFC 2018, RFC 6675) --------------------------------------------------------------

TEST(TcpSegment, SackBlocksRoundTripInTheRoomLeft) {
  Segment s = Seg(1, 2, kAck);
  s.options.has_timestamps = true;
  s.options.ts_val = 7;
  s.options.sack_count = 4;
  for (uint32_t b = 0; b < 4; ++b) s.options.sack[b] = {TcpSeq(100 * b + 10), TcpSeq(100 * b + 20)};
  std::string wire;
  BuildTcp4(s, 1, 2, &wire);
  EXPECT_LE(wire.size(), 60u) << "40 option bytes at most";
  Result<Segment> back = ParseTcp4(reinterpret_cast<const uint8_t*>(wire.data()), wire.size(), 1, 2);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ASSERT_EQ(back->options.sack_count, 3) << "three blocks beside timestamps (RFC 2018 §3)";
  EXPECT_EQ(back->options.sack[2].left.raw(), 210u);
  EXPECT_EQ(back->options.sack[2].right.raw(), 220u);
  EXPECT_TRUE(back->options.has_timestamps);
  s.options.has_timestamps = false;
  wire.clear();
  BuildTcp4(s, 1, 2, &wire);
  back = ParseTcp4(reinterpret_cast<const uint8_t*>(wire.data()), wire.size(), 1, 2);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->options.sack_count, 4) << "four without";
  // A SACK option whose length is not 2 + 8n refuses the segment.
  std::string bad = wire;
  size_t at = bad.find(std::string("\x05\x22", 2));
  ASSERT_NE(at, std::string::npos);
  bad[at + 1] = 0x21;
  bad[16] = bad[17] = 0;
  uint16_t sum = ChecksumFold(ChecksumAdd(0 + 1 + 0 + 2 + 6 + static_cast<uint32_t>(bad.size()),
                                          reinterpret_cast<const uint8_t*>(bad.data()), bad.size()));
  bad[16] = static_cast<char>(sum >> 8);
  bad[17] = static_cast<char>(sum & 0xff);
  EXPECT_FALSE(ParseTcp4(reinterpret_cast<const uint8_t*>(bad.data()), bad.size(), 1, 2).ok());
}

TEST(TcpCore, SackIsUsedOnlyWhenBothSidesOfferIt) {
  Fixture yes;
  yes.Establish(1000, true);
  EXPECT_TRUE(yes.c->sack());
  Fixture no;
  no.Establish(1000, false);
  EXPECT_FALSE(no.c->sack());
  Limits off;
  off.sack = false;
  Fixture refused(off);
  refused.Establish(1000, true);   // checks the SYN-ACK does not carry SACK-permitted
  EXPECT_FALSE(refused.c->sack());
  auto active = Connection::Open(Limits{}, TcpSeq(kOurIsn), 0);
  EXPECT_TRUE(active->TakeOutput()[0].options.sack_permitted) << "offered in our SYN";
  Segment synack = Seg(kPeerIsn, kOurIsn + 1, kSyn | kAck);   // the peer does not offer it
  active->Receive(synack, 1);
  EXPECT_EQ(active->state(), State::kEstablished);
  EXPECT_FALSE(active->sack());
}

TEST(TcpCore, OutOfOrderPiecesAreNamedInSackBlocksNewestFirst) {
  Fixture f;
  f.Establish(1000, true);
  std::string a(100, 'a'), b(100, 'b'), c(100, 'c'), d(100, 'd');
  uint32_t base = f.peer_nxt;
  auto send_at = [&](uint32_t off, const std::string& bytes) {
    f.c->Receive(Seg(base + off, f.our_nxt, kAck, 65535, bytes), f.now);
    auto out = f.c->TakeOutput();
    EXPECT_EQ(out.size(), 1u);
    return out.empty() ? OutSegment{} : out.back();
  };
  OutSegment ack = send_at(100, b);   // hole [0, 100)
  EXPECT_EQ(ack.ack.raw(), base);
  ASSERT_EQ(ack.options.sack_count, 1);
  EXPECT_EQ(ack.options.sack[0].left.raw(), base + 100);
  EXPECT_EQ(ack.options.sack[0].right.raw(), base + 200);
  ack = send_at(300, d);   // second hole [200, 300)
  ASSERT_EQ(ack.options.sack_count, 2);
  EXPECT_EQ(ack.options.sack[0].left.raw(), base + 300) << "the block of the newest piece first";
  EXPECT_EQ(ack.options.sack[1].left.raw(), base + 100);
  ack = send_at(200, c);   // fills the second hole: one block [100, 400)
  ASSERT_EQ(ack.options.sack_count, 1);
  EXPECT_EQ(ack.options.sack[0].left.raw(), base + 100);
  EXPECT_EQ(ack.options.sack[0].right.raw(), base + 400);
  ack = send_at(0, a);     // everything in order: no block
  EXPECT_EQ(ack.ack.raw(), base + 400);
  EXPECT_EQ(ack.options.sack_count, 0);
  EXPECT_EQ(f.ReadAll(), a + b + c + d);
}

// Opens the congestion window to `segments` segments of 1000 bytes by sending and acknowledging.
void GrowWindow(Fixture& f, uint32_t segments) {
  while (f.c->cwnd() < segments * 1000) {
    std::string chunk(f.c->cwnd(), 'w');
    ASSERT_EQ(f.c->Send(chunk, f.now), chunk.size());
    f.c->TakeOutput();
    f.our_nxt += static_cast<uint32_t>(chunk.size());
    f.now += 10;
    f.c->Receive(Seg(f.peer_nxt, f.our_nxt, kAck), f.now);
    f.c->TakeOutput();
  }
}

TEST(TcpCore, WithSackEveryLostHoleIsSentAgainWithinOneRoundTrip) {
  for (bool sack : {true, false}) {
    SCOPED_TRACE(sack ? "SACK" : "NewReno");
    Fixture f;
    f.Establish(1000, sack);
    GrowWindow(f, 8);
    std::string data;
    for (int i = 0; i < 8; ++i) data += std::string(1000, static_cast<char>('A' + i));
    ASSERT_EQ(f.c->Send(data, f.now), data.size());
    auto out = f.c->TakeOutput();
    ASSERT_GE(out.size(), 8u);
    uint32_t una = f.our_nxt;
    // Segments A and E are lost. The peer acknowledges una each time and names what it holds.
    auto dupack = [&](std::vector<std::pair<uint32_t, uint32_t>> blocks) {
      Segment s = Seg(f.peer_nxt, una, kAck);
      if (sack) {
        s.options.sack_count = static_cast<uint8_t>(blocks.size());
        for (size_t i = 0; i < blocks.size(); ++i)
          s.options.sack[i] = {TcpSeq(una + blocks[i].first * 1000), TcpSeq(una + blocks[i].second * 1000)};
      }
      f.now += 1;
      f.c->Receive(s, f.now);
      return f.c->TakeOutput();
    };
    std::vector<OutSegment> resent;
    for (auto& blocks : std::vector<std::vector<std::pair<uint32_t, uint32_t>>>{
             {{1, 2}}, {{1, 3}}, {{1, 4}}, {{5, 6}, {1, 4}}, {{5, 7}, {1, 4}}, {{5, 8}, {1, 4}}})
      for (OutSegment& o : dupack(blocks))
        if (!o.payload.empty() && o.seq < TcpSeq(una + 8000)) resent.push_back(o);
    std::string which;
    for (const OutSegment& o : resent) which += o.payload[0];
    if (sack) {
      EXPECT_EQ(which, "AE") << "both holes again before any cumulative ACK; nothing the peer holds";
      EXPECT_EQ(f.c->stats().sack_recoveries, 1u);
    } else {
      EXPECT_EQ(which, "A") << "NewReno learns of the second hole only from the partial ACK";
    }
    // A arrives: the partial ACK up to E. NewReno sends E now, a round trip later.
    f.now += 10;
    f.c->Receive(Seg(f.peer_nxt, una + 4000, kAck), f.now);
    std::string after;
    for (const OutSegment& o : f.c->TakeOutput())
      if (!o.payload.empty() && o.seq < TcpSeq(una + 8000)) after += o.payload[0];
    EXPECT_EQ(after, sack ? "" : "E");
    f.c->Receive(Seg(f.peer_nxt, una + 8000, kAck), f.now + 10);
    EXPECT_EQ(f.c->send_space(), f.limits.snd_buf) << "recovered";
  }
}

TEST(TcpCore, HostileSackBlocksAreNotBelievedAndRenegingIsSurvived) {
  Fixture f;
  f.Establish(1000, true);
  GrowWindow(f, 8);
  std::string data(8000, 'x');
  ASSERT_EQ(f.c->Send(data, f.now), data.size());
  f.c->TakeOutput();
  uint32_t una = f.our_nxt;
  // Blocks beyond what was sent, below SND.UNA, empty or reversed: nothing is believed, nothing
  // is sent again before three real duplicate ACKs.
  std::vector<std::pair<uint32_t, uint32_t>> lies = {{una + 9000, una + 12000}, {una - 5000, una - 1000},
                                                     {una + 3000, una + 3000}, {una + 4000, una + 2000}};
  for (auto [l, r] : lies) {
    Segment s = Seg(f.peer_nxt, una, kAck);
    s.options.sack_count = 1;
    s.options.sack[0] = {TcpSeq(l), TcpSeq(r)};
    f.c->Receive(s, ++f.now);
    for (const OutSegment& o : f.c->TakeOutput()) {
      EXPECT_TRUE(o.seq >= TcpSeq(una) && o.seq + static_cast<uint32_t>(o.payload.size()) <= TcpSeq(una + 8000))
          << "nothing outside what was sent";
    }
  }
  EXPECT_EQ(f.c->stats().sack_retransmits, 0u);
  // Many disjoint blocks: the scoreboard stays bounded and the connection keeps working.
  for (uint32_t i = 0; i < 200; ++i) {
    Segment s = Seg(f.peer_nxt, una, kAck);
    s.options.sack_count = 1;
    uint32_t at = una + 100 + (i * 37) % 7800;
    s.options.sack[0] = {TcpSeq(at), TcpSeq(at + 1)};
    f.c->Receive(s, ++f.now);
    f.c->TakeOutput();
  }
  // The peer SACKed bytes and then reneges (drops them): after the timeout everything from
  // SND.UNA goes again, SACKed or not, and the transfer completes.
  f.now += 5000;
  f.c->Tick(f.now);
  auto out = f.c->TakeOutput();
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(out[0].seq.raw(), una) << "the timeout starts again at SND.UNA";
  EXPECT_GE(f.c->stats().timeouts, 1u);
  f.c->Receive(Seg(f.peer_nxt, una + 8000, kAck), f.now + 10);
  EXPECT_EQ(f.c->send_space(), f.limits.snd_buf);
  EXPECT_EQ(f.c->state(), State::kEstablished);
}

TEST(TcpCore, ZeroWindowIsProbed) {
  Fixture f;
  f.Establish();
  f.c->Receive(Seg(f.peer_nxt, f.our_nxt, kAck, 0), 0);   // the peer's window closes
  f.c->Send("queued", 0);
  EXPECT_TRUE(f.c->TakeOutput().empty()) << "nothing beyond a zero window";
  ASSERT_TRUE(f.c->NextTimerMs());
  f.c->Tick(*f.c->NextTimerMs());
  auto out = f.c->TakeOutput();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].payload, "q") << "a one-byte window probe";
  f.c->Receive(Seg(f.peer_nxt, f.our_nxt + 1, kAck, 1000), 1500);   // it opens
  out = f.c->TakeOutput();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].payload, "ueued");
}

TEST(TcpCore, ClosesFromEitherSideAndAtOnce) {
  {   // we close first: FIN-WAIT-1, -2, TIME-WAIT, CLOSED after 2 MSL
    Fixture f;
    f.Establish();
    f.c->Close(0);
    auto out = f.c->TakeOutput();
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].flags, kFin | kAck);
    EXPECT_EQ(f.c->state(), State::kFinWait1);
    f.c->Receive(Seg(f.peer_nxt, f.our_nxt + 1, kAck), 1);
    EXPECT_EQ(f.c->state(), State::kFinWait2);
    f.PeerSends("bye", kFin);
    EXPECT_EQ(f.c->state(), State::kTimeWait);
    EXPECT_EQ(f.ReadAll(), "bye");
    EXPECT_TRUE(f.c->peer_finished());
    EXPECT_EQ(*f.c->NextTimerMs(), f.now + f.limits.time_wait_ms);
    f.c->Tick(f.limits.time_wait_ms);
    EXPECT_EQ(f.c->state(), State::kClosed);
    EXPECT_EQ(f.c->error(), "");
  }
  {   // the peer closes first: CLOSE-WAIT, our FIN, LAST-ACK, CLOSED
    Fixture f;
    f.Establish();
    f.PeerSends("QUIT\r\n", kFin);
    EXPECT_EQ(f.c->state(), State::kCloseWait);
    f.c->Send("221 Bye\r\n", 0);
    f.c->Close(0);
    auto out = f.c->TakeOutput();
    ASSERT_GE(out.size(), 2u);
    EXPECT_EQ(out.back().flags, kFin | kAck);
    EXPECT_EQ(f.c->state(), State::kLastAck);
    f.c->Receive(Seg(f.peer_nxt, f.our_nxt + 9 + 1, kAck), 1);
    EXPECT_EQ(f.c->state(), State::kClosed);
  }
  {   // both at once: CLOSING, then TIME-WAIT
    Fixture f;
    f.Establish();
    f.c->Close(0);
    f.c->TakeOutput();
    f.c->Receive(Seg(f.peer_nxt, f.our_nxt, kFin | kAck), 1);   // their FIN crosses ours
    EXPECT_EQ(f.c->state(), State::kClosing);
    f.c->Receive(Seg(f.peer_nxt + 1, f.our_nxt + 1, kAck), 2);
    EXPECT_EQ(f.c->state(), State::kTimeWait);
  }
  {   // a FIN ahead of a hole waits for the hole
    Fixture f;
    f.Establish();
    f.c->Receive(Seg(f.peer_nxt + 3, f.our_nxt, kAck | kFin, 65535, "def"), 0);
    EXPECT_EQ(f.c->state(), State::kEstablished);
    f.c->Receive(Seg(f.peer_nxt, f.our_nxt, kAck, 65535, "abc"), 0);
    EXPECT_EQ(f.c->state(), State::kCloseWait);
    EXPECT_EQ(f.ReadAll(), "abcdef");
  }
}

// Two cores, a client and a server, over a wire that loses, reorders and duplicates.
struct LossyRun {
  int64_t finished_ms = 0;
  uint64_t retransmits = 0, sack_retransmits = 0, sack_recoveries = 0, timeouts = 0, fast = 0;
};

LossyRun LossyMegabyteEachWay(int64_t delayed_ack_ms, bool sack = true, int jitter_ms = 20) {
  LossyRun run;
  std::mt19937 rng(20261201);
  Limits l;
  l.delayed_ack_ms = delayed_ack_ms;
  l.sack = sack;
  l.rto_min_ms = 50;
  l.rto_initial_ms = 200;
  l.max_retransmits = 30;
  auto client = Connection::Open(l, TcpSeq(0x7ffffff0), 0);
  std::unique_ptr<Connection> server;
  struct InFlight {
    int64_t at;
    bool to_server;
    OutSegment s;
  };
  std::vector<InFlight> wire;
  int64_t now = 0;
  auto put = [&](std::vector<OutSegment> segs, bool to_server) {
    for (auto& s : segs) {
      unsigned r = rng() % 100;
      if (r < 5) continue;                                       // 5 % lost
      int64_t delay = 1 + static_cast<int64_t>(rng() % static_cast<unsigned>(jitter_ms));   // reordered by jitter
      if (r < 8) wire.push_back({now + delay + 3, to_server, s});   // 3 % duplicated
      wire.push_back({now + delay, to_server, std::move(s)});
    }
  };
  std::string up(1 << 20, '\0'), down(1 << 20, '\0');
  for (size_t i = 0; i < up.size(); ++i) {
    up[i] = static_cast<char>(rng());
    down[i] = static_cast<char>(rng());
  }
  size_t up_sent = 0, down_sent = 0;
  std::string up_got, down_got;
  put(client->TakeOutput(), true);
  for (int step = 0; step < 2000000 && (up_got.size() < up.size() || down_got.size() < down.size()); ++step) {
    // Deliver what is due (in time order), else jump to the next event.
    std::sort(wire.begin(), wire.end(), [](const InFlight& a, const InFlight& b) { return a.at < b.at; });
    int64_t next = wire.empty() ? INT64_MAX : wire.front().at;
    for (Connection* c : {client.get(), server.get()})
      if (c && c->NextTimerMs()) next = std::min(next, *c->NextTimerMs());
    EXPECT_NE(next, INT64_MAX) << "stalled";
    if (next == INT64_MAX) return run;
    now = std::max(now, next);
    while (!wire.empty() && wire.front().at <= now) {
      InFlight f = std::move(wire.front());
      wire.erase(wire.begin());
      Segment s;
      s.seq = f.s.seq;
      s.ack = f.s.ack;
      s.flags = f.s.flags;
      s.window = f.s.window;
      s.options = f.s.options;
      s.payload = f.s.payload;
      if (f.to_server) {
        if (!server) {
          server = Connection::FromSyn(l, s, TcpSeq(0xfffff000), now);
          if (server) put(server->TakeOutput(), false);
          continue;
        }
        server->Receive(s, now);
      } else {
        client->Receive(s, now);
      }
    }
    client->Tick(now);
    if (server) server->Tick(now);
    EXPECT_NE(client->state(), State::kClosed) << client->error();
    if (client->state() == State::kClosed) return run;
    if (server) {
      EXPECT_NE(server->state(), State::kClosed) << server->error();
      if (server->state() == State::kClosed) return run;
    }
    if (client->state() == State::kEstablished && up_sent < up.size())
      up_sent += client->Send(std::string_view(up).substr(up_sent, 50000), now);
    if (server && server->state() == State::kEstablished && down_sent < down.size())
      down_sent += server->Send(std::string_view(down).substr(down_sent, 50000), now);
    char buf[65536];
    if (server)
      while (size_t n = server->Read(buf, sizeof buf, now)) up_got.append(buf, n);
    while (size_t n = client->Read(buf, sizeof buf, now)) down_got.append(buf, n);
    put(client->TakeOutput(), true);
    if (server) put(server->TakeOutput(), false);
  }
  EXPECT_TRUE(up_got == up) << up_got.size() << " of " << up.size() << " bytes up";
  EXPECT_TRUE(down_got == down) << down_got.size() << " of " << down.size() << " bytes down";
  EXPECT_GT(client->stats().retransmits + server->stats().retransmits, 0u);
  EXPECT_EQ(client->state(), State::kEstablished);
  if (delayed_ack_ms > 0) {
    EXPECT_GT(client->stats().delayed_acks + server->stats().delayed_acks, 0u);
  }
  EXPECT_EQ(client->sack(), sack);
  run.finished_ms = now;
  for (Connection* c : {client.get(), server.get()}) {
    run.retransmits += c->stats().retransmits;
    run.sack_retransmits += c->stats().sack_retransmits;
    run.sack_recoveries += c->stats().sack_recoveries;
    run.timeouts += c->stats().timeouts;
    run.fast += c->stats().fast_retransmits;
  }
  return run;
}

TEST(TcpCore, AMegabyteEachWayOverALossyReorderingWireArrivesIntact) { LossyMegabyteEachWay(0); }
TEST(TcpCore, AndWithDelayedAcks) { LossyMegabyteEachWay(40); }

// A wire that loses (5 %) and duplicates (3 %) but keeps the order, with and without SACK: both
// arrive intact; with SACK several holes of a window are repaired in one round trip and the
// transfer ends sooner (simulated time, same seed). Under heavy reordering (the tests above)
// SACK's earlier loss detection also fires for segments merely late: there the two are within
// about 15 % of each other (RACK-style reordering windows are not done).
TEST(TcpCore, AndWithoutSackItTakesLonger) {
  LossyRun with = LossyMegabyteEachWay(0, true, 1);
  LossyRun without = LossyMegabyteEachWay(0, false, 1);
  EXPECT_GT(with.sack_recoveries, 0u);
  EXPECT_GT(with.sack_retransmits, 0u);
  EXPECT_EQ(without.sack_retransmits, 0u);
  EXPECT_LT(with.finished_ms, without.finished_ms)
      << "with SACK " << with.finished_ms << " ms, " << with.retransmits << " segments sent again; without "
      << without.finished_ms << " ms, " << without.retransmits;
  std::printf("lossy megabyte each way: SACK %lld ms (%llu retransmits, %llu timeouts, %llu recoveries), "
              "NewReno %lld ms (%llu, %llu, %llu)\n",
              static_cast<long long>(with.finished_ms), static_cast<unsigned long long>(with.retransmits),
              static_cast<unsigned long long>(with.timeouts), static_cast<unsigned long long>(with.fast),
              static_cast<long long>(without.finished_ms), static_cast<unsigned long long>(without.retransmits),
              static_cast<unsigned long long>(without.timeouts), static_cast<unsigned long long>(without.fast));
}

TEST(TcpCore, DelayedAcksWaitForASecondSegmentOrTheTimerButNeverForAHole) {
  Limits l;
  l.delayed_ack_ms = 40;
  Fixture f(l);
  f.Establish();
  f.now = 1000;
  // One in-order segment: its ACK waits, with a timer under 500 ms (RFC 9293 §3.8.6.3).
  f.PeerSends("EHLO a\r\n");
  EXPECT_TRUE(f.c->TakeOutput().empty());
  ASSERT_TRUE(f.c->NextTimerMs());
  EXPECT_EQ(*f.c->NextTimerMs(), 1040);
  // The second one is acknowledged at once, both of them (RFC 5681 §4.2).
  f.PeerSends("MAIL FROM:<a@b>\r\n");
  auto out = f.c->TakeOutput();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].ack.raw(), f.peer_nxt);
  EXPECT_FALSE(f.c->NextTimerMs()) << "nothing owed, no timer";
  // One more: the timer sends its ACK.
  f.PeerSends("RCPT TO:<c@d>\r\n");
  EXPECT_TRUE(f.c->TakeOutput().empty());
  f.now = 1039;
  f.c->Tick(f.now);
  EXPECT_TRUE(f.c->TakeOutput().empty());
  f.now = 1040;
  f.c->Tick(f.now);
  out = f.c->TakeOutput();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].ack.raw(), f.peer_nxt);
  // An owed ACK rides on our data: the reply carries it, no pure ACK follows.
  f.PeerSends("DATA\r\n");
  EXPECT_TRUE(f.c->TakeOutput().empty());
  EXPECT_EQ(f.c->Send("354 go ahead\r\n", f.now), 14u);
  out = f.c->TakeOutput();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].payload, "354 go ahead\r\n");
  EXPECT_EQ(out[0].ack.raw(), f.peer_nxt);
  f.now = 2000;
  f.c->Tick(f.now);
  EXPECT_TRUE(f.c->TakeOutput().empty()) << "the delayed ACK went with the data";
  f.c->Receive(Seg(f.peer_nxt, f.our_nxt + 14, kAck), f.now);   // the peer acknowledges the reply
  f.our_nxt += 14;
  // Out of order: a duplicate ACK at once; the segment that fills the hole: an ACK at once.
  uint32_t base = f.peer_nxt;
  f.c->Receive(Seg(base + 5, f.our_nxt, kAck, 65535, "world"), f.now);
  out = f.c->TakeOutput();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].ack.raw(), base);
  f.c->Receive(Seg(base, f.our_nxt, kAck, 65535, "hello"), f.now);
  out = f.c->TakeOutput();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].ack.raw(), base + 10);
  f.peer_nxt = base + 10;
  // A FIN is acknowledged at once.
  f.PeerSends("", kFin);
  out = f.c->TakeOutput();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].ack.raw(), f.peer_nxt);
  EXPECT_EQ(f.c->state(), State::kCloseWait);
  EXPECT_GE(f.c->stats().delayed_acks, 3u);
}

}  // namespace
}  // namespace mailseal::net::tcp
