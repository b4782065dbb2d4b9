// fuzz_tcp — arbitrary segment sequences (and application reads, writes, closes and time)
// fed to one flow of the user-space TCP core (issue #17), after a passive open. The first
// bytes also go through the wire parser. Checked on every step, besides ASan/UBSan: the
// receive side never holds more than its buffer and the send side never more than its own.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "dataplane/net/tcp/connection.h"
#include "dataplane/net/tcp/segment.h"

using namespace mailseal::net::tcp;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)ParseTcp4(data, size, 0x0a000001, 0x0a000002);
  Limits l;
  l.rcv_buf = 4096;
  l.snd_buf = 4096;
  l.max_ooo_segments = 8;
  l.history = 1024;
  l.time_wait_ms = 1000;
  Segment syn;
  syn.seq = TcpSeq(1000);
  syn.flags = kSyn;
  syn.window = 512;
  syn.options.mss = 100;
  syn.options.wscale = size ? data[0] % 16 : -1;
  syn.options.sack_permitted = size && (data[0] & 0x10);   // SACK agreed in half the runs
  auto c = Connection::FromSyn(l, syn, TcpSeq(0xfffffff0), 0);
  if (!c) std::abort();
  int64_t now = 0;
  std::string read;
  size_t i = 1;
  auto take = [&](size_t n) -> const uint8_t* {
    if (i + n > size) return nullptr;
    const uint8_t* p = data + i;
    i += n;
    return p;
  };
  while (i < size) {
    const uint8_t* op = take(1);
    if (!op) break;
    switch (*op % 6) {
      case 0:
      case 1: {   // a segment: flags, seq/ack offsets from what the core expects, window, payload
        const uint8_t* h = take(8);
        if (!h) break;
        Segment s;
        s.flags = h[0] & 0x3f;
        s.seq = TcpSeq(1001 + static_cast<uint32_t>(static_cast<int16_t>(h[1] << 8 | h[2])) * 16 +
                       static_cast<uint32_t>(read.size()));
        s.ack = TcpSeq(0xfffffff1 + static_cast<uint32_t>(static_cast<int16_t>(h[3] << 8 | h[4])));
        s.window = static_cast<uint16_t>(h[5] << 8 | h[6]);
        size_t len = h[7] % 120;
        const uint8_t* p = take(len);
        if (!p) break;
        s.payload = std::string_view(reinterpret_cast<const char*>(p), len);
        if (h[0] & 0x40) {   // SACK blocks near what was sent (peer's, so arbitrary)
          const uint8_t* b = take(9);
          if (!b) break;
          s.options.sack_count = static_cast<uint8_t>(b[0] % 5);
          for (int k = 0; k < s.options.sack_count; ++k) {
            uint32_t left = 0xfffffff1 + static_cast<uint32_t>(static_cast<int16_t>(b[1 + 2 * k] << 8 | b[2 + 2 * k]));
            s.options.sack[k] = {TcpSeq(left), TcpSeq(left + b[2 + 2 * k] * 8u)};
          }
        }
        c->Receive(s, now);
        break;
      }
      case 2: {   // the application reads
        char buf[300];
        size_t n = c->Read(buf, sizeof buf, now);
        read.append(buf, n);
        break;
      }
      case 3: {   // the application writes
        std::string out(static_cast<size_t>(op[0]) * 7, 'w');
        c->Send(out, now);
        break;
      }
      case 4:   // time passes
        now += 1 + (op[0] >> 3) * 50;
        c->Tick(now);
        break;
      case 5:
        c->Close(now);
        break;
    }
    c->TakeOutput();
    if (c->readable_bytes() > l.rcv_buf) std::abort();
    if (c->send_space() > l.snd_buf) std::abort();   // unsigned: wraps if the buffer overran
  }
  return 0;
}
