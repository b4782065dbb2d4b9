// net_bench — the DPDK back end's receive path in memory (issue #17; a benchmark, not a test).
//
// One lcore's work for an SMTP DATA stream: prebuilt Ethernet frames (1460-byte TCP payloads
// of a message's lines, checksummed as a NIC would deliver them) go through net::Stack::Input
// (Ethernet, IPv4 and TCP checksums, the flow lookup, sequence checks and reassembly), the
// in-order bytes are read out as the endpoint does and scanned for the end of DATA
// ("\r\n.\r\n", as the SMTP server's parser must). Reported: Gbit/s of payload and cycles per
// packet, beside the limit of the same machine in the same run — copying the same payload
// bytes once (memcpy), the least any receive path must do. Reordering: every 8th pair of frames
// is swapped (every 16th frame with the next), so the out-of-order path is part of the figure.
//
// Prints one JSON object.
#include <x86intrin.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "dataplane/net/frame.h"
#include "dataplane/net/stack.h"
#include "dataplane/net/tcp/segment.h"

using namespace mailseal;
using namespace mailseal::net;

namespace {
constexpr uint32_t kA = 0x0a000001, kB = 0x0a000002;

}  // namespace

int main(int argc, char** argv) {
  size_t megabytes = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 256;
  const Mac ma = {2, 0, 0, 0, 0, 1}, mb = {2, 0, 0, 0, 0, 2};
  StackConfig ca, cb;
  ca.ip = kA, ca.mac = ma, ca.netmask = 0xffffff00;
  cb.ip = kB, cb.mac = mb, cb.netmask = 0xffffff00;
  cb.tcp.rcv_buf = 4 << 20;   // a window that is not the limit
  cb.tcp.wscale = 7;
  Stack a(ca), b(cb);
  b.Listen(25);
  int64_t now = 0;
  std::optional<FlowId> c = a.Connect(kB, 25, now);
  for (int i = 0; i < 20; ++i) {   // handshake (and ARP) in memory
    for (auto& f : a.TakeFrames()) b.Input(f, now);
    for (auto& f : b.TakeFrames()) a.Input(f, now);
  }
  FlowId server = 0;
  for (auto& [f, e] : b.TakeEvents())
    if (e == Stack::Event::kAccepted) server = f;
  if (!c || !server) {
    std::fprintf(stderr, "net_bench: no connection\n");
    return 1;
  }
  // The client's next sequence number and the server's, from the client's last ACK.
  a.Send(*c, "x", now);
  auto probe = a.TakeFrames();
  std::string_view t(probe.back());
  t.remove_prefix(34);
  uint32_t seq = Get32(t.data() + 4) + 1, ack = Get32(t.data() + 8);
  b.Input(probe.back(), now);
  char sink[1 << 16];
  while (b.Read(server, sink, sizeof sink, now)) {
  }
  b.TakeFrames();
  uint16_t cport = Get16(t.data());   // the client's local port

  // The message: 78-byte lines, the end of DATA at the very end.
  std::string data;
  while (data.size() < megabytes << 20) data += "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123\r\n";
  data += ".\r\n";
  std::vector<std::string> frames;
  for (size_t off = 0; off < data.size(); off += 1460) {
    tcp::Segment s;
    s.src_port = cport;
    s.dst_port = 25;
    s.seq = tcp::TcpSeq(seq + static_cast<uint32_t>(off));
    s.ack = tcp::TcpSeq(ack);
    s.flags = tcp::kAck;
    s.window = 0xffff;
    s.payload = std::string_view(data).substr(off, 1460);
    std::string seg;
    tcp::BuildTcp4(s, kA, kB, &seg);
    frames.push_back(EthernetFrame(mb, ma, kEtherIpv4, Ipv4Packet(kA, kB, kProtoTcp, seg)));
  }
  for (size_t i = 0; i + 1 < frames.size(); i += 16) std::swap(frames[i], frames[i + 1]);

  // The limit: the payload bytes copied once.
  std::string copy(1460, '\0');
  auto t0 = std::chrono::steady_clock::now();
  uint64_t c0 = __rdtsc();
  uint64_t checksum = 0;
  for (const std::string& f : frames) {
    std::memcpy(copy.data(), f.data() + 54, f.size() - 54);
    checksum += static_cast<uint8_t>(copy[7]);
  }
  uint64_t c1 = __rdtsc();
  double copy_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // The receive path.
  size_t got = 0;
  bool end_seen = false;
  std::string tail;
  t0 = std::chrono::steady_clock::now();
  uint64_t r0 = __rdtsc();
  for (size_t i = 0; i < frames.size(); ++i) {
    b.Input(frames[i], now);
    if ((i & 31) == 31 || i + 1 == frames.size()) {
      while (size_t n = b.Read(server, sink, sizeof sink, now)) {
        got += n;
        std::string_view v(sink, n);
        // End of DATA across reads: look in the last 4 bytes of before plus this piece.
        std::string join = tail + std::string(v.substr(0, std::min<size_t>(v.size(), 4)));
        if (join.find("\r\n.\r\n") != std::string::npos || v.find("\r\n.\r\n") != std::string_view::npos) end_seen = true;
        tail = std::string(v.substr(v.size() >= 4 ? v.size() - 4 : 0));
      }
      b.TakeFrames();   // the ACKs
    }
  }
  uint64_t r1 = __rdtsc();
  double rx_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double bits = 8.0 * static_cast<double>(data.size());
  std::printf("{\"bytes\": %zu, \"delivered\": %zu, \"end_of_data_seen\": %s, \"packets\": %zu, "
              "\"rx_gbit_s\": %.2f, \"rx_cycles_per_packet\": %.0f, \"copy_gbit_s\": %.2f, \"copy_cycles_per_packet\": %.0f, "
              "\"ratio_to_copy\": %.3f, \"checksum\": %llu}\n",
              data.size(), got, end_seen ? "true" : "false", frames.size(), bits / rx_s / 1e9,
              static_cast<double>(r1 - r0) / static_cast<double>(frames.size()), bits / copy_s / 1e9,
              static_cast<double>(c1 - c0) / static_cast<double>(frames.size()), copy_s / rx_s,
              static_cast<unsigned long long>(checksum));
  return got == data.size() && end_seen ? 0 : 1;
}
