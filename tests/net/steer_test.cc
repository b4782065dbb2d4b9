// Several lcores on one port (issue #17), without DPDK: the RSS hash against Microsoft's
// verification suite; which lcore owns which frame; and a gateway of three stacks behind
// software steering that accepts and opens connections with a client stack, every frame
// routed as the DPDK back end routes it (to its owner, ARP to all).
#include <gtest/gtest.h>

#include <arpa/inet.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dataplane/net/frame.h"
#include "dataplane/net/stack.h"
#include "dataplane/net/steer.h"
#include "dataplane/net/tcp/segment.h"

namespace mailseal::net {
namespace {

uint32_t Ip(const char* s) {
  in_addr a{};
  inet_pton(AF_INET, s, &a);
  return ntohl(a.s_addr);
}

// The TCP/IPv4 rows of "Verifying the RSS Hash Calculation" (Microsoft, NDIS RSS).
TEST(Steer, ToeplitzMatchesTheRssVerificationSuite) {
  struct Row {
    const char *dst, *src;
    uint16_t dport, sport;
    uint32_t hash;
  } rows[] = {
      {"161.142.100.80", "66.9.149.187", 1766, 2794, 0x51ccc178},
      {"65.69.140.83", "199.92.111.2", 4739, 14230, 0xc626b0ea},
      {"12.22.207.184", "24.19.198.95", 38024, 12898, 0x5c2b394a},
      {"209.142.163.6", "38.27.205.30", 2217, 48228, 0xafc7327f},
      {"202.188.127.2", "153.39.163.191", 1303, 44251, 0x10e828a2},
  };
  for (const Row& r : rows)
    EXPECT_EQ(ToeplitzHash(kRssKey, Ip(r.src), Ip(r.dst), r.sport, r.dport), r.hash) << r.src << " -> " << r.dst;
}

constexpr uint32_t kGw = 0x0a000002, kPeer = 0x0a000001, kMask = 0xffffff00;
const Mac kMacGw = {2, 0, 0, 0, 0, 2}, kMacPeer = {2, 0, 0, 0, 0, 1};

bool StackPort(const void*, uint16_t p) { return p == 25 || p >= 61000; }

SteerConfig Steering(unsigned lcores) {
  SteerConfig c;
  c.ip = kGw;
  c.lcores = lcores;
  c.is_stack_port = StackPort;
  return c;
}

std::string Tcp(uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport) {
  tcp::Segment s;
  s.src_port = sport;
  s.dst_port = dport;
  s.flags = tcp::kSyn;
  s.window = 1000;
  std::string b;
  tcp::BuildTcp4(s, src, dst, &b);
  return EthernetFrame(kMacGw, kMacPeer, kEtherIpv4, Ipv4Packet(src, dst, kProtoTcp, b));
}

TEST(Steer, OwnerOfEachKindOfFrame) {
  SteerConfig c = Steering(4);
  // A flow's frames go to one owner, the one FlowOwner names; over many flows all four serve.
  std::map<int, int> seen;
  for (uint16_t port = 40000; port < 40400; ++port) {
    int o = OwnerOf(Tcp(kPeer, port, kGw, 25), c);
    ASSERT_GE(o, 0);
    ASSERT_LT(o, 4);
    EXPECT_EQ(static_cast<unsigned>(o), FlowOwner(c, kPeer, port, 25));
    ++seen[o];
  }
  EXPECT_EQ(seen.size(), 4u);
  for (auto& [lcore, n] : seen) EXPECT_GT(n, 50) << "lcore " << lcore << " gets its share";
  // TCP that is not the stacks' (gRPC, SSH), other addresses, UDP, IPv6: lcore 0 (the kernel's).
  EXPECT_EQ(OwnerOf(Tcp(kPeer, 40001, kGw, 9443), c), 0);
  EXPECT_EQ(OwnerOf(Tcp(kPeer, 40001, 0x0a000003, 25), c), 0);
  EXPECT_EQ(OwnerOf(EthernetFrame(kMacGw, kMacPeer, kEtherIpv4, Ipv4Packet(kPeer, kGw, kProtoUdp, "12345678")), c), 0);
  EXPECT_EQ(OwnerOf(EthernetFrame(kMacGw, kMacPeer, 0x86dd, std::string(40, '\0')), c), 0);
  // ARP: every lcore.
  EXPECT_EQ(OwnerOf(EthernetFrame(kMacGw, kMacPeer, kEtherArp, std::string(28, '\0')), c), kAllLcores);
  // Truncated and hostile frames never index past their end.
  std::string f = Tcp(kPeer, 40001, kGw, 25);
  for (size_t n = 0; n < f.size(); ++n) {
    int o = OwnerOf(std::string_view(f).substr(0, n), c);
    EXPECT_GE(o, 0);
  }
  // An ICMP error quoting our segment gw:61234 -> peer:25 goes to that flow's owner.
  std::string quoted = Ipv4Packet(kGw, kPeer, kProtoTcp, std::string("\xef\x32\x00\x19\x00\x00\x00\x01", 8));
  std::string icmp = std::string("\x03\x01\x00\x00\x00\x00\x00\x00", 8) + quoted;
  EXPECT_EQ(OwnerOf(EthernetFrame(kMacGw, kMacPeer, kEtherIpv4, Ipv4Packet(0x0a0000fe, kGw, kProtoIcmp, icmp)), c),
            static_cast<int>(FlowOwner(c, kPeer, 25, 61234)));
  // One lcore: everything is lcore 0's.
  EXPECT_EQ(OwnerOf(Tcp(kPeer, 40001, kGw, 25), Steering(1)), 0);
}

std::string ReadAll(Stack& s, FlowId f, int64_t now) {
  std::string out;
  char buf[4096];
  while (size_t n = s.Read(f, buf, sizeof buf, now)) out.append(buf, n);
  return out;
}

// A gateway of `n` stacks behind one port, routed like DpdkBackend.
struct Gateway {
  SteerConfig steer;
  std::vector<std::unique_ptr<Stack>> lcores;
  size_t steered = 0, copied = 0;
  explicit Gateway(unsigned n) : steer(Steering(n)) {
    for (unsigned i = 0; i < n; ++i) {
      StackConfig c;
      c.ip = kGw;
      c.mac = kMacGw;
      c.netmask = kMask;
      c.primary = i == 0;
      c.own_port = [this, i](uint32_t ip, uint16_t rport, uint16_t lport) {
        return FlowOwner(steer, ip, rport, lport) == i;
      };
      lcores.push_back(std::make_unique<Stack>(c));
      lcores.back()->Listen(25);
    }
  }
  void Input(const std::string& frame, int64_t now) {
    int o = OwnerOf(frame, steer);
    if (o == kAllLcores) {
      copied += lcores.size() - 1;
      for (auto& s : lcores) s->Input(frame, now);
      return;
    }
    if (o != 0) ++steered;
    lcores[static_cast<size_t>(o)]->Input(frame, now);
  }
  std::vector<std::string> Output() {
    std::vector<std::string> out;
    for (auto& s : lcores)
      for (auto& f : s->TakeFrames()) out.push_back(std::move(f));
    return out;
  }
};

TEST(Steer, ThreeLcoresAcceptAndOpenConnectionsThroughSoftwareSteering) {
  Gateway gw(3);
  StackConfig pc;
  pc.ip = kPeer;
  pc.mac = kMacPeer;
  pc.netmask = kMask;
  pc.arp_pending = 64;   // all 30 SYNs wait for the first ARP answer
  Stack peer(pc);
  peer.Listen(25);
  int64_t now = 0;
  auto exchange = [&] {
    for (int round = 0; round < 200; ++round) {
      auto from_gw = gw.Output();
      auto from_peer = peer.TakeFrames();
      if (from_gw.empty() && from_peer.empty()) return;
      for (auto& f : from_gw) peer.Input(f, now);
      for (auto& f : from_peer) gw.Input(f, now);
      ++now;
    }
  };
  // 30 connections in (peer -> gateway:25) and 30 out (gateway lcore i % 3 -> peer:25).
  std::vector<FlowId> in;
  for (int i = 0; i < 30; ++i) {
    auto f = peer.Connect(kGw, 25, now);
    ASSERT_TRUE(f);
    in.push_back(*f);
  }
  std::vector<std::pair<size_t, FlowId>> out;
  for (size_t i = 0; i < 30; ++i) {
    auto f = gw.lcores[i % 3]->Connect(kPeer, 25, now);
    ASSERT_TRUE(f);
    out.emplace_back(i % 3, *f);
  }
  exchange();
  // Every lcore accepted some of the inbound connections; each outbound one is established on
  // the lcore that opened it (its replies were steered home).
  std::vector<std::vector<FlowId>> accepted(3);
  size_t connected = 0;
  for (size_t i = 0; i < 3; ++i)
    for (auto& [f, e] : gw.lcores[i]->TakeEvents()) {
      if (e == Stack::Event::kAccepted) accepted[i].push_back(f);
      if (e == Stack::Event::kConnected) ++connected;
    }
  EXPECT_EQ(accepted[0].size() + accepted[1].size() + accepted[2].size(), 30u);
  for (size_t i = 0; i < 3; ++i) EXPECT_GT(accepted[i].size(), 0u) << "lcore " << i;
  EXPECT_EQ(connected, 30u);
  for (auto& [lcore, f] : out) {
    ASSERT_NE(gw.lcores[lcore]->Flow(f), nullptr);
    EXPECT_EQ(gw.lcores[lcore]->Flow(f)->state(), tcp::State::kEstablished);
  }
  // ARP went to every stack: the peer's request and the answers to each lcore's own request.
  EXPECT_EQ(gw.copied, 2u * 4) << "the peer's ARP request and three answers, copied to the two other lcores";
  // Bytes both ways on every accepted flow.
  for (size_t i = 0; i < 3; ++i)
    for (FlowId f : accepted[i]) gw.lcores[i]->Send(f, "220 lcore " + std::to_string(i) + "\r\n", now);
  exchange();
  std::map<std::string, int> greetings;
  for (FlowId f : in) ++greetings[ReadAll(peer, f, now)];
  for (size_t i = 0; i < 3; ++i)
    EXPECT_EQ(greetings["220 lcore " + std::to_string(i) + "\r\n"], static_cast<int>(accepted[i].size()));
  EXPECT_GT(gw.steered, 0u);
  EXPECT_EQ(peer.stats().rst_sent + gw.lcores[0]->stats().rst_sent + gw.lcores[1]->stats().rst_sent +
                gw.lcores[2]->stats().rst_sent,
            0u)
      << "no frame reached a stack that did not own its flow";
}

}  // namespace
}  // namespace mailseal::net
