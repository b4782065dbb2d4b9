// steer.cc — see steer.h.
#include "dataplane/net/steer.h"

#include "dataplane/net/bytes.h"
#include "dataplane/net/frame.h"

namespace mailseal::net {

const std::array<uint8_t, 40> kRssKey = {
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0, 0xd0, 0xca, 0x2b, 0xcb,
    0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa};

uint32_t ToeplitzHash(const std::array<uint8_t, 40>& key, uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport) {
  uint8_t in[12];
  for (int i = 0; i < 4; ++i) {
    in[i] = static_cast<uint8_t>(src >> (24 - 8 * i));
    in[4 + i] = static_cast<uint8_t>(dst >> (24 - 8 * i));
  }
  in[8] = static_cast<uint8_t>(sport >> 8);
  in[9] = static_cast<uint8_t>(sport);
  in[10] = static_cast<uint8_t>(dport >> 8);
  in[11] = static_cast<uint8_t>(dport);
  // For every set bit of the input (most significant first), XOR in the 32 bits of the key
  // that start at that bit position.
  uint32_t result = 0;
  uint64_t window = (uint64_t{key[0]} << 32) | (uint64_t{key[1]} << 24) | (uint64_t{key[2]} << 16) |
                    (uint64_t{key[3]} << 8) | key[4];   // 40 bits: the next 32 plus 8 ahead
  for (int byte = 0; byte < 12; ++byte) {
    for (int bit = 7; bit >= 0; --bit) {
      if (in[byte] & (1u << bit)) result ^= static_cast<uint32_t>(window >> 8);
      window <<= 1;
    }
    window |= byte + 5 < static_cast<int>(key.size()) ? key[byte + 5] : 0;
  }
  return result;
}

unsigned FlowOwner(const SteerConfig& c, uint32_t remote, uint16_t rport, uint16_t lport) {
  if (c.lcores <= 1) return 0;
  return ToeplitzHash(kRssKey, remote, c.ip, rport, lport) % c.lcores;
}

int OwnerOf(std::string_view f, const SteerConfig& c) {
  if (c.lcores <= 1 || f.size() < 14) return 0;
  uint16_t type = Get16(f.data() + 12);
  if (type == kEtherArp) return kAllLcores;
  if (type != kEtherIpv4) return 0;
  std::string_view p = f.substr(14);
  if (p.size() < 20 || (static_cast<uint8_t>(p[0]) >> 4) != 4) return 0;
  size_t ihl = static_cast<size_t>(p[0] & 0x0f) * 4;
  if (ihl < 20 || p.size() < ihl + 8 || Get32(p.data() + 16) != c.ip) return 0;
  if ((Get16(p.data() + 6) & 0x3fff) != 0) return 0;   // fragments: the kernel's
  uint32_t src = Get32(p.data() + 12);
  uint8_t proto = static_cast<uint8_t>(p[9]);
  std::string_view l4 = p.substr(ihl);
  if (proto == kProtoTcp) {
    uint16_t sport = Get16(l4.data()), dport = Get16(l4.data() + 2);
    if (!c.is_stack_port || !c.is_stack_port(c.ctx, dport)) return 0;
    return static_cast<int>(FlowOwner(c, src, sport, dport));
  }
  if (proto == kProtoIcmp && static_cast<uint8_t>(l4[0]) == 3 && l4.size() >= 8 + 20 + 8) {
    // Destination unreachable quoting a segment we sent: the quoted flow's owner.
    std::string_view inner = l4.substr(8);
    size_t ihl2 = static_cast<size_t>(inner[0] & 0x0f) * 4;
    if ((static_cast<uint8_t>(inner[0]) >> 4) != 4 || ihl2 < 20 || inner.size() < ihl2 + 4 ||
        static_cast<uint8_t>(inner[9]) != kProtoTcp || Get32(inner.data() + 12) != c.ip)
      return 0;
    uint16_t lport = Get16(inner.data() + ihl2), rport = Get16(inner.data() + ihl2 + 2);
    if (!c.is_stack_port || !c.is_stack_port(c.ctx, lport)) return 0;
    return static_cast<int>(FlowOwner(c, Get32(inner.data() + 16), rport, lport));
  }
  return 0;
}

}  // namespace mailseal::net
