// libFuzzer target for the MIME parser (issue #4). Invariants beyond "no crash, no sanitizer
// report": whole and chunked input give the same parts; every part's offsets are ordered and
// inside the input and inside its parent; canonicalisation yields 7-bit-safe output.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "dataplane/mime/canonical.h"
#include "dataplane/mime/parser.h"

using namespace mailseal::mime;

namespace {
Limits Small() {
  Limits l;
  l.max_depth = 8;
  l.max_parts = 64;
  l.max_header_bytes = 4096;
  l.max_header_fields = 64;
  return l;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  Parser whole(Small()), chunked(Small());
  bool ok1 = whole.Feed(in).ok() && whole.Finish().ok();
  bool ok2 = true;
  size_t step = 1 + data[0] % 31;
  for (size_t i = 0; i < in.size() && ok2; i += step) ok2 = chunked.Feed(in.substr(i, step)).ok();
  ok2 = ok2 && chunked.Finish().ok();
  if (ok1 != ok2) std::abort();
  if (!ok1) return 0;
  const auto& a = whole.parts();
  const auto& b = chunked.parts();
  if (a.size() != b.size()) std::abort();
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].begin != b[i].begin || a[i].body_begin != b[i].body_begin || a[i].end != b[i].end) std::abort();
    if (!(a[i].begin <= a[i].body_begin && a[i].body_begin <= a[i].end && a[i].end <= in.size())) std::abort();
    if (a[i].parent >= 0) {
      const Part& p = a[static_cast<size_t>(a[i].parent)];
      if (a[i].begin < p.body_begin || a[i].end > p.end) std::abort();
    }
  }
  // Canonicalisation for detached signatures: when it succeeds the result is 7-bit safe, and
  // 7-bit input comes back unchanged.
  mailseal::Result<std::string> c = ToSevenBit(in, Small());
  if (c.ok() && !IsSevenBitSafe(*c)) std::abort();
  if (IsSevenBitSafe(in) && (!c.ok() || *c != in)) std::abort();
  return 0;
}
