// segment.cc — see segment.h.
#include "dataplane/net/tcp/segment.h"

#include <algorithm>

#include "dataplane/net/bytes.h"

namespace mailseal::net::tcp {
namespace {
using net::Get16;
using net::Get32;
using net::Put16;
using net::Put32;
uint32_t PseudoHeader(uint32_t src, uint32_t dst, size_t len) {
  return (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + 6u /* TCP */ + static_cast<uint32_t>(len);
}
}  // namespace

uint32_t ChecksumAdd(uint32_t sum, const uint8_t* data, size_t len) {
  uint64_t s = sum;
  size_t i = 0;
  for (; i + 1 < len; i += 2) s += Get16(data + i);
  if (i < len) s += static_cast<uint32_t>(data[i]) << 8;
  while (s >> 32) s = (s & 0xffffffff) + (s >> 32);
  return static_cast<uint32_t>(s);
}

uint16_t ChecksumFold(uint32_t sum) {
  uint64_t s = sum;
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return static_cast<uint16_t>(~s & 0xffff);
}

Result<Segment> ParseTcp4(const uint8_t* p, size_t len, uint32_t src_ip, uint32_t dst_ip) {
  if (len < 20) return InvalidArgumentError("TCP: shorter than a header");
  size_t off = static_cast<size_t>(p[12] >> 4) * 4;
  if (off < 20 || off > len) return InvalidArgumentError("TCP: bad data offset");
  if (ChecksumFold(ChecksumAdd(PseudoHeader(src_ip, dst_ip, len), p, len)) != 0)
    return InvalidArgumentError("TCP: bad checksum");
  Segment s;
  s.src_port = Get16(p);
  s.dst_port = Get16(p + 2);
  s.seq = TcpSeq(Get32(p + 4));
  s.ack = TcpSeq(Get32(p + 8));
  s.flags = p[13] & 0x3f;
  s.window = Get16(p + 14);
  for (size_t i = 20; i < off;) {
    uint8_t kind = p[i];
    if (kind == 0) break;          // end of option list
    if (kind == 1) {               // no-operation
      ++i;
      continue;
    }
    if (i + 1 >= off) return InvalidArgumentError("TCP: truncated option");
    uint8_t olen = p[i + 1];
    if (olen < 2 || i + olen > off) return InvalidArgumentError("TCP: bad option length");
    const uint8_t* v = p + i + 2;
    switch (kind) {
      case 2:
        if (olen != 4) return InvalidArgumentError("TCP: bad MSS option");
        s.options.mss = Get16(v);
        break;
      case 3:
        if (olen != 3) return InvalidArgumentError("TCP: bad window scale option");
        s.options.wscale = std::min<int>(v[0], 14);
        break;
      case 4:
        if (olen != 2) return InvalidArgumentError("TCP: bad SACK-permitted option");
        s.options.sack_permitted = true;
        break;
      case 5: {   // SACK (RFC 2018 §3): 1-4 blocks of two sequence numbers
        if (olen < 10 || (olen - 2) % 8 != 0 || olen > 34) return InvalidArgumentError("TCP: bad SACK option");
        s.options.sack_count = static_cast<uint8_t>((olen - 2) / 8);
        for (int b = 0; b < s.options.sack_count; ++b)
          s.options.sack[b] = {TcpSeq(Get32(v + 8 * b)), TcpSeq(Get32(v + 8 * b + 4))};
        break;
      }
      case 8:
        if (olen != 10) return InvalidArgumentError("TCP: bad timestamps option");
        s.options.has_timestamps = true;
        s.options.ts_val = Get32(v);
        s.options.ts_ecr = Get32(v + 4);
        break;
      default:
        break;   // unknown (MD5, ...): skipped
    }
    i += olen;
  }
  s.payload = std::string_view(reinterpret_cast<const char*>(p + off), len - off);
  return s;
}

void BuildTcp4(const Segment& s, uint32_t src_ip, uint32_t dst_ip, std::string* out) {
  std::string opts;
  if (s.options.mss) {
    opts += "\x02\x04";
    Put16(&opts, s.options.mss);
  }
  if (s.options.sack_permitted) opts += std::string("\x04\x02", 2);
  if (s.options.has_timestamps) {
    opts += std::string("\x01\x01\x08\x0a", 4);
    Put32(&opts, s.options.ts_val);
    Put32(&opts, s.options.ts_ecr);
  }
  if (s.options.wscale >= 0) {
    opts += std::string("\x01\x03\x03", 3);
    opts.push_back(static_cast<char>(s.options.wscale));
  }
  // SACK blocks in the room left of the 40 option bytes (RFC 2018 §3: 3 beside timestamps).
  size_t room = opts.size() + 2 + 8 <= 40 ? (40 - opts.size() - 2) / 8 : 0;
  if (size_t n = std::min<size_t>({s.options.sack_count, 4, room}); n > 0) {
    opts += std::string("\x01\x01\x05", 3);
    opts.push_back(static_cast<char>(2 + 8 * n));
    for (size_t b = 0; b < n; ++b) {
      Put32(&opts, s.options.sack[b].left.raw());
      Put32(&opts, s.options.sack[b].right.raw());
    }
  }
  while (opts.size() % 4) opts.push_back('\0');
  size_t start = out->size();
  Put16(out, s.src_port);
  Put16(out, s.dst_port);
  Put32(out, s.seq.raw());
  Put32(out, s.ack.raw());
  out->push_back(static_cast<char>(((20 + opts.size()) / 4) << 4));
  out->push_back(static_cast<char>(s.flags));
  Put16(out, s.window);
  Put16(out, 0);   // checksum, below
  Put16(out, 0);   // urgent pointer
  out->append(opts);
  out->append(s.payload);
  size_t len = out->size() - start;
  auto* b = reinterpret_cast<uint8_t*>(out->data() + start);
  uint16_t sum = ChecksumFold(ChecksumAdd(PseudoHeader(src_ip, dst_ip, len), b, len));
  b[16] = static_cast<uint8_t>(sum >> 8);
  b[17] = static_cast<uint8_t>(sum & 0xff);
}

}  // namespace mailseal::net::tcp
