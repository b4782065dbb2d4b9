// The DPDK back end's stack (issue #17) without DPDK: two stacks on an in-memory wire resolve
// each other (ARP), open a TCP connection and talk SMTP; ICMP echo; the exception path (what
// goes to the kernel); RST for a closed port of ours; a SYN flood against a small budget
// answered with SYN cookies while a real client still gets through.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "dataplane/net/frame.h"
#include "dataplane/net/stack.h"
#include "dataplane/net/tcp/segment.h"

namespace mailseal::net {
namespace {

constexpr uint32_t kA = 0x0a000001, kB = 0x0a000002, kMask = 0xffffff00;
const Mac kMacA = {2, 0, 0, 0, 0, 1}, kMacB = {2, 0, 0, 0, 0, 2};

StackConfig Config(uint32_t ip, Mac mac) {
  StackConfig c;
  c.ip = ip;
  c.mac = mac;
  c.netmask = kMask;
  return c;
}

// Frame: Ethernet + IPv4 (correct checksum) around `payload`.
std::string Frame(const Mac& dst, const Mac& src, uint32_t sip, uint32_t dip, uint8_t proto, std::string_view payload) {
  return EthernetFrame(dst, src, kEtherIpv4, Ipv4Packet(sip, dip, proto, payload, 1));
}

std::string TcpFrame(uint32_t sip, uint16_t sport, uint32_t dip, uint16_t dport, uint32_t seq, uint32_t ack,
                     uint8_t flags) {
  tcp::Segment s;
  s.src_port = sport;
  s.dst_port = dport;
  s.seq = tcp::TcpSeq(seq);
  s.ack = tcp::TcpSeq(ack);
  s.flags = flags;
  s.window = 65535;
  s.options.mss = 1460;
  std::string b;
  tcp::BuildTcp4(s, sip, dip, &b);
  return Frame(kMacB, kMacA, sip, dip, 6, b);
}

// Moves frames between two stacks until nothing is in flight; time advances 1 ms a round.
void Exchange(Stack& a, Stack& b, int64_t& now, int rounds = 200) {
  for (int i = 0; i < rounds; ++i) {
    auto fa = a.TakeFrames(), fb = b.TakeFrames();
    if (fa.empty() && fb.empty()) {
      ++now;
      a.Tick(now);
      b.Tick(now);
      if (a.TakeFrames().empty() && b.TakeFrames().empty()) return;
      continue;
    }
    for (auto& f : fa) b.Input(f, now);
    for (auto& f : fb) a.Input(f, now);
    ++now;
  }
}

std::string ReadAll(Stack& s, FlowId f, int64_t now) {
  std::string out;
  char buf[4096];
  while (size_t n = s.Read(f, buf, sizeof buf, now)) out.append(buf, n);
  return out;
}

TEST(Stack, TwoStacksResolveEachOtherAndTalkSmtp) {
  Stack a(Config(kA, kMacA)), b(Config(kB, kMacB));
  b.Listen(25);
  int64_t now = 0;
  std::optional<FlowId> client = a.Connect(kB, 25, now);
  ASSERT_TRUE(client);
  auto first = a.TakeFrames();
  ASSERT_EQ(first.size(), 1u) << "the SYN waits for ARP";
  EXPECT_EQ(first[0].substr(0, 6), std::string(6, '\xff')) << "an ARP request, broadcast";
  EXPECT_EQ(b.Input(first[0], now), Stack::Verdict::kBoth) << "ARP is also the kernel's";
  Exchange(a, b, now);
  auto ea = a.TakeEvents(), eb = b.TakeEvents();
  ASSERT_FALSE(eb.empty());
  EXPECT_EQ(eb[0].second, Stack::Event::kAccepted);
  FlowId server = eb[0].first;
  ASSERT_FALSE(ea.empty());
  EXPECT_EQ(ea[0], std::make_pair(*client, Stack::Event::kConnected));
  EXPECT_EQ(b.RemoteOf(server).ip, kA);
  EXPECT_GE(b.RemoteOf(server).port, 61000);

  b.Send(server, "220 gw.test ESMTP\r\n", now);
  Exchange(a, b, now);
  EXPECT_EQ(ReadAll(a, *client, now), "220 gw.test ESMTP\r\n");
  a.Send(*client, "EHLO client.test\r\n", now);
  Exchange(a, b, now);
  bool readable = false;
  for (auto& [f, e] : b.TakeEvents()) readable |= f == server && e == Stack::Event::kReadable;
  EXPECT_TRUE(readable);
  EXPECT_EQ(ReadAll(b, server, now), "EHLO client.test\r\n");

  // The client closes; the server reads the end, closes; both flows go away.
  a.Close(*client, now);
  Exchange(a, b, now);
  EXPECT_TRUE(b.Flow(server)->peer_finished());
  b.Close(server, now);
  Exchange(a, b, now);
  EXPECT_EQ(b.flows(), 0u) << "the passive closer forgets the flow at once";
  EXPECT_EQ(a.flows(), 1u) << "the active closer waits in TIME-WAIT";
  now += 60001;
  a.Tick(now);
  EXPECT_EQ(a.flows(), 0u);
}

TEST(Stack, EchoAndTheExceptionPath) {
  Stack b(Config(kB, kMacB));
  b.Listen(25);
  int64_t now = 0;
  // ARP from A first, so that B can answer.
  std::string arp(reinterpret_cast<const char*>(kMacB.data()), 6);
  arp.append(reinterpret_cast<const char*>(kMacA.data()), 6);
  Put16(&arp, 0x0806);
  Put16(&arp, 1);
  Put16(&arp, 0x0800);
  arp.push_back(6);
  arp.push_back(4);
  Put16(&arp, 1);
  arp.append(reinterpret_cast<const char*>(kMacA.data()), 6);
  Put16(&arp, kA >> 16);
  Put16(&arp, kA & 0xffff);
  arp.append(6, '\0');
  Put16(&arp, kB >> 16);
  Put16(&arp, kB & 0xffff);
  EXPECT_EQ(b.Input(arp, now), Stack::Verdict::kBoth);
  auto out = b.TakeFrames();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(static_cast<uint8_t>(out[0][21]), 2) << "an ARP reply";

  std::string echo("\x08\x00\x00\x00\x12\x34\x00\x01ping", 12);
  uint16_t sum = tcp::ChecksumFold(tcp::ChecksumAdd(0, reinterpret_cast<const uint8_t*>(echo.data()), echo.size()));
  echo[2] = static_cast<char>(sum >> 8);
  echo[3] = static_cast<char>(sum & 0xff);
  EXPECT_EQ(b.Input(Frame(kMacB, kMacA, kA, kB, 1, echo), now), Stack::Verdict::kConsumed);
  out = b.TakeFrames();
  ASSERT_EQ(out.size(), 1u);
  std::string reply = out[0].substr(34, echo.size());
  EXPECT_EQ(reply[0], 0) << "echo reply";
  EXPECT_EQ(reply.substr(4), echo.substr(4));
  EXPECT_EQ(tcp::ChecksumFold(tcp::ChecksumAdd(0, reinterpret_cast<const uint8_t*>(reply.data()), reply.size())), 0);

  // To the kernel: UDP (DNS answers), TCP for ports that are not the stack's (the management
  // API, LDAP), IPv6, and what is addressed to someone else.
  EXPECT_EQ(b.Input(Frame(kMacB, kMacA, kA, kB, 17, std::string_view("\x00\x35\xc0\x00\x00\x0c\x00\x00xxxx", 12)), now),
            Stack::Verdict::kToKernel);
  EXPECT_EQ(b.Input(TcpFrame(kA, 40000, kB, 9443, 1, 0, tcp::kSyn), now), Stack::Verdict::kToKernel);
  EXPECT_EQ(b.Input(TcpFrame(kA, 40000, 0x0a000003, 25, 1, 0, tcp::kSyn), now), Stack::Verdict::kToKernel);
  std::string v6(reinterpret_cast<const char*>(kMacB.data()), 6);
  v6.append(reinterpret_cast<const char*>(kMacA.data()), 6);
  Put16(&v6, 0x86dd);
  v6.append(40, '\0');
  EXPECT_EQ(b.Input(v6, now), Stack::Verdict::kToKernel);
  EXPECT_TRUE(b.TakeFrames().empty()) << "the stack answers none of them";
  // A damaged IPv4 header is dropped.
  std::string bad = Frame(kMacB, kMacA, kA, kB, 6, "x");
  bad[14 + 8] ^= 1;
  EXPECT_EQ(b.Input(bad, now), Stack::Verdict::kDropped);
  // A SYN for a port of the stack's range without a flow: RST+ACK (RFC 9293 §3.10.7.1).
  EXPECT_EQ(b.Input(TcpFrame(kA, 40000, kB, 61005, 777, 0, tcp::kSyn), now), Stack::Verdict::kConsumed);
  out = b.TakeFrames();
  ASSERT_EQ(out.size(), 1u);
  size_t ip_len = static_cast<uint8_t>(out[0][16]) << 8 | static_cast<uint8_t>(out[0][17]);   // frames are padded
  Result<tcp::Segment> rst = tcp::ParseTcp4(reinterpret_cast<const uint8_t*>(out[0].data() + 34), ip_len - 20, kB, kA);
  ASSERT_TRUE(rst.ok()) << rst.status().ToString();
  EXPECT_EQ(rst->flags, tcp::kRst | tcp::kAck);
  EXPECT_EQ(rst->ack.raw(), 778u);
}

TEST(Stack, SynFloodIsBoundedAndARealClientStillGetsThrough) {
  StackConfig cb = Config(kB, kMacB);
  cb.syn_budget = 64;
  Stack b(cb);
  b.Listen(25);
  Stack a(Config(kA, kMacA));
  int64_t now = 0;
  // Resolve A on B first (the flood's SYN-ACKs need it), as a real client would have.
  a.Connect(kB, 9, now);   // an active open to a closed port: only for the ARP exchange
  Exchange(a, b, now);
  a.TakeEvents();
  std::mt19937 rng(7);
  for (int i = 0; i < 20000; ++i)
    b.Input(TcpFrame(kA, static_cast<uint16_t>(1024 + i % 60000), kB, 25, rng(), 0, tcp::kSyn), now);
  EXPECT_LE(b.half_open(), 64u);
  EXPECT_LE(b.flows(), 64u) << "the flood holds no more than the budget";
  EXPECT_GT(b.stats().syn_cookies_sent, 19000u);
  b.TakeFrames();
  // A real client completes the handshake through a cookie and is served.
  std::optional<FlowId> c = a.Connect(kB, 25, now);
  ASSERT_TRUE(c);
  Exchange(a, b, now);
  EXPECT_GE(b.stats().syn_cookies_accepted, 1u);
  FlowId server = 0;
  for (auto& [f, e] : b.TakeEvents())
    if (e == Stack::Event::kAccepted) server = f;
  ASSERT_NE(server, 0u);
  a.Send(*c, "EHLO after-the-flood\r\n", now);
  Exchange(a, b, now);
  EXPECT_EQ(ReadAll(b, server, now), "EHLO after-the-flood\r\n");
  // The flood's half-open flows time out; the real one stays.
  for (int i = 0; i < 20; ++i) {
    now += 60000;
    b.Tick(now);
    a.Tick(now);
    Exchange(a, b, now);
  }
  EXPECT_EQ(b.half_open(), 0u);
  EXPECT_EQ(b.flows(), 1u);
}

// ICMP "fragmentation needed" quoting a segment in flight lowers the flow's segment size and
// what was sent goes again smaller; a quote of a sequence number not in flight is not believed
// (RFC 5927), and neither is a floor below 536.
TEST(Stack, PathMtuFromIcmpOnlyForSegmentsInFlight) {
  Stack a(Config(kA, kMacA)), b(Config(kB, kMacB));
  b.Listen(25);
  int64_t now = 0;
  std::optional<FlowId> client = a.Connect(kB, 25, now);
  Exchange(a, b, now);
  FlowId server = 0;
  for (auto& [f, e] : b.TakeEvents())
    if (e == Stack::Event::kAccepted) server = f;
  ASSERT_NE(server, 0u);
  uint16_t cport = b.RemoteOf(server).port;
  ASSERT_TRUE(b.Flow(server)->timestamps()) << "both stacks offer RFC 7323 timestamps";
  EXPECT_EQ(b.Flow(server)->send_mss(), 1460u - 12) << "the MSS less the timestamps option";
  b.Send(server, std::string(3000, 'x'), now);
  auto sent = b.TakeFrames();   // lost on the way: the router answers instead
  ASSERT_FALSE(sent.empty());
  uint32_t seq = static_cast<uint8_t>(sent[0][38]) << 24 | static_cast<uint8_t>(sent[0][39]) << 16 |
                 static_cast<uint8_t>(sent[0][40]) << 8 | static_cast<uint8_t>(sent[0][41]);
  auto icmp = [&](uint32_t quoted_seq, uint16_t mtu) {
    std::string m("\x03\x04\x00\x00\x00\x00", 6);
    Put16(&m, mtu);
    m += sent[0].substr(14, 20);   // our IP header
    std::string tcp8;
    Put16(&tcp8, 25);
    Put16(&tcp8, cport);
    Put16(&tcp8, static_cast<uint16_t>(quoted_seq >> 16));
    Put16(&tcp8, static_cast<uint16_t>(quoted_seq));
    m += tcp8;
    uint16_t sum = tcp::ChecksumFold(tcp::ChecksumAdd(0, reinterpret_cast<const uint8_t*>(m.data()), m.size()));
    m[2] = static_cast<char>(sum >> 8);
    m[3] = static_cast<char>(sum & 0xff);
    return Frame(kMacB, kMacA, 0x0a0000fe, kB, 1, m);
  };
  EXPECT_EQ(b.Input(icmp(seq + 100000, 1000), now), Stack::Verdict::kConsumed);
  EXPECT_EQ(b.Flow(server)->send_mss(), 1460u - 12) << "a sequence number not in flight is not believed";
  EXPECT_EQ(b.Input(icmp(seq, 300), now), Stack::Verdict::kConsumed);
  EXPECT_EQ(b.Flow(server)->send_mss(), 536u - 12) << "never below 536 (options included)";
  EXPECT_EQ(b.stats().icmp_errors, 1u);
  auto again = b.TakeFrames();
  ASSERT_FALSE(again.empty()) << "what was sent too large goes again at once";
  size_t ip_len = static_cast<uint8_t>(again[0][16]) << 8 | static_cast<uint8_t>(again[0][17]);
  EXPECT_EQ(ip_len, 20u + 20u + 12u + 524u) << "576 bytes: the datagram every host takes";
  for (auto& f : again) a.Input(f, now);
  // The data still arrives, in smaller segments.
  Exchange(a, b, now, 2000);
  now += 2000;
  b.Tick(now);
  Exchange(a, b, now, 2000);
  EXPECT_EQ(ReadAll(a, *client, now), std::string(3000, 'x'));
}

}  // namespace
}  // namespace mailseal::net
