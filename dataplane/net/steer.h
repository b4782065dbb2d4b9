// steer.h — which poll thread owns a frame, when the DPDK back end runs several (issue #17).
//
// Each lcore owns a net::Stack with its own flow table; a TCP flow lives on exactly one of
// them. The owner of a flow is a Toeplitz hash (the RSS hash of Microsoft's specification,
// which NICs compute) of the IPv4 4-tuple as it arrives, modulo the lcore count: a port with
// RSS, configured with the same key, delivers a flow's frames to its owner's queue directly;
// on a port without it (net_af_packet spreads frames by the kernel's own hash, net_tap has one
// queue) the lcore that received a frame hands it to the owner over a ring. Active opens pick
// local ports whose hash lands on the opening lcore (Stack's own_port), so replies come home.
//
// What is not a flow of the stack's goes to lcore 0, the one that answers ARP and ICMP echo
// and owns the exception path to the kernel; ARP goes to every lcore (each stack resolves its
// own next hops); an ICMP error goes to the owner of the flow it quotes.
//
// SECURITY: the frame is untrusted; every offset is checked against its length. A peer can
// choose its port to pick an lcore, not to reach state it could not reach anyway.
//
// STANDARDS: Microsoft RSS (Toeplitz hash, verification suite), RFC 791, RFC 792.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace mailseal::net {

// The default RSS key of many NICs' drivers (Microsoft's verification key).
extern const std::array<uint8_t, 40> kRssKey;

// ToeplitzHash over IPv4 src, dst and the ports, all in host order, as RSS hashes TCP/IPv4.
uint32_t ToeplitzHash(const std::array<uint8_t, 40>& key, uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport);

struct SteerConfig {
  uint32_t ip = 0;                // the stack's address (host order)
  unsigned lcores = 1;
  // is_stack_port: a local port whose TCP belongs to the stacks (listening or ephemeral);
  // other TCP to our address is the kernel's (lcore 0).
  bool (*is_stack_port)(const void* ctx, uint16_t port) = nullptr;
  const void* ctx = nullptr;
};

constexpr int kAllLcores = -1;
// OwnerOf: the lcore for `frame` (0 .. lcores-1), or kAllLcores.
int OwnerOf(std::string_view frame, const SteerConfig& c);
// FlowOwner: the lcore of the TCP flow remote:rport -> local:lport.
unsigned FlowOwner(const SteerConfig& c, uint32_t remote, uint16_t rport, uint16_t lport);

}  // namespace mailseal::net
