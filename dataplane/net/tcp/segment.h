// segment.h — a TCP segment as the TCP core sees it, and its wire form over IPv4.
//
// The core (connection.h) works on Segment values: the back end parses what arrives
// (ParseTcp4) and builds what leaves (BuildTcp4). Parsing checks every length against the
// bytes present and the checksum over the IPv4 pseudo-header; options are read with their
// lengths checked (a malformed option list refuses the segment); unknown options are skipped.
//
// SECURITY: the bytes come from the network, untrusted. Nothing is read past `len`; the
// payload is a view into the caller's buffer.
//
// STANDARDS: RFC 9293 §3.1 (header, options), RFC 1071 (checksum), RFC 6691 (MSS), RFC 7323
// (window scale, timestamps), RFC 2018 (SACK-permitted, SACK blocks).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "dataplane/base/status.h"
#include "dataplane/net/tcp/seq.h"

namespace mailseal::net::tcp {

enum Flag : uint8_t { kFin = 0x01, kSyn = 0x02, kRst = 0x04, kPsh = 0x08, kAck = 0x10, kUrg = 0x20 };

struct SackBlock {
  TcpSeq left, right;        // [left, right): received, RFC 2018 §3
};

struct Options {
  uint16_t mss = 0;          // 0: absent
  int wscale = -1;           // -1: absent; else the shift (capped at 14, RFC 7323 §2.3)
  bool sack_permitted = false;
  bool has_timestamps = false;
  uint32_t ts_val = 0, ts_ecr = 0;
  uint8_t sack_count = 0;    // SACK blocks (at most 4 fit; 3 beside timestamps)
  SackBlock sack[4];
};

struct Segment {
  uint16_t src_port = 0, dst_port = 0;
  TcpSeq seq, ack;
  uint8_t flags = 0;
  uint16_t window = 0;       // as on the wire (unscaled)
  Options options;
  std::string_view payload;  // a view into the packet

  bool has(Flag f) const { return (flags & f) != 0; }
  // seg_len of RFC 9293: payload plus one for SYN and one for FIN.
  uint32_t length() const {
    return static_cast<uint32_t>(payload.size()) + (has(kSyn) ? 1 : 0) + (has(kFin) ? 1 : 0);
  }
};

// InternetChecksum: RFC 1071 over `data`, continuing from `sum` (not yet folded).
uint32_t ChecksumAdd(uint32_t sum, const uint8_t* data, size_t len);
uint16_t ChecksumFold(uint32_t sum);

// ParseTcp4: the TCP header and payload in `tcp` (the IPv4 payload), checked against the
// pseudo-header of src/dst (host order). The returned payload views `tcp`.
Result<Segment> ParseTcp4(const uint8_t* tcp, size_t len, uint32_t src_ip, uint32_t dst_ip);

// BuildTcp4 appends the wire form of `s` (header, options, payload) with its checksum to `out`.
void BuildTcp4(const Segment& s, uint32_t src_ip, uint32_t dst_ip, std::string* out);

}  // namespace mailseal::net::tcp
