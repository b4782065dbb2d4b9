// frame.h — Ethernet frames and IPv4 headers as the stack writes them (RFC 894, RFC 791), for
// the stack, its tests and the benchmark alike.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "dataplane/net/bytes.h"
#include "dataplane/net/tcp/segment.h"

namespace mailseal::net {

using Mac = std::array<uint8_t, 6>;
constexpr uint16_t kEtherIpv4 = 0x0800, kEtherArp = 0x0806;
constexpr uint8_t kProtoIcmp = 1, kProtoTcp = 6, kProtoUdp = 17;

// Ipv4Packet: a 20-byte IPv4 header (no options, DF set, TTL 64, checksum filled) and
// `payload` after it.
inline std::string Ipv4Packet(uint32_t src, uint32_t dst, uint8_t proto, std::string_view payload, uint16_t id = 0) {
  std::string pkt;
  pkt.reserve(20 + payload.size());
  pkt.push_back(0x45);
  pkt.push_back(0);
  Put16(&pkt, static_cast<uint16_t>(20 + payload.size()));
  Put16(&pkt, id);
  Put16(&pkt, 0x4000);   // don't fragment: TCP segments fit the MSS
  pkt.push_back(64);
  pkt.push_back(static_cast<char>(proto));
  Put16(&pkt, 0);
  Put32(&pkt, src);
  Put32(&pkt, dst);
  uint16_t sum = tcp::ChecksumFold(tcp::ChecksumAdd(0, reinterpret_cast<const uint8_t*>(pkt.data()), 20));
  pkt[10] = static_cast<char>(sum >> 8);
  pkt[11] = static_cast<char>(sum & 0xff);
  pkt.append(payload);
  return pkt;
}

// EthernetFrame: dst, src, type and `payload`, padded to the 60-byte minimum.
inline std::string EthernetFrame(const Mac& dst, const Mac& src, uint16_t type, std::string_view payload) {
  std::string f;
  f.reserve(14 + (payload.size() < 46 ? 46 : payload.size()));
  f.append(reinterpret_cast<const char*>(dst.data()), 6);
  f.append(reinterpret_cast<const char*>(src.data()), 6);
  Put16(&f, type);
  f.append(payload);
  if (f.size() < 60) f.resize(60, '\0');
  return f;
}

}  // namespace mailseal::net
