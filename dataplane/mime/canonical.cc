// canonical.cc — see canonical.h.
#include "dataplane/mime/canonical.h"

#include <algorithm>
#include <vector>

namespace mailseal::mime {
namespace {

bool NeedsEncoding(std::string_view body) { return !IsSevenBitSafe(body); }

struct Edit {
  uint64_t begin, end;   // replaced range of the input
  std::string with;
};

constexpr char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

}  // namespace

bool IsSevenBitSafe(std::string_view s) {
  size_t line = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == 0 || c >= 0x80) return false;
    if (c == '\r') {
      if (i + 1 >= s.size() || s[i + 1] != '\n') return false;
      ++i;
      line = 0;
      continue;
    }
    if (c == '\n') return false;
    if (++line > 998) return false;
  }
  return true;
}

void AppendBase64Lines(std::string* out, std::string_view data) {
  // Sized once and written through a pointer: this runs over every sealed message (twice).
  size_t n = data.size();
  size_t quads = (n + 2) / 3;
  size_t lines = (quads + 18) / 19;  // 19 quads = 76 characters a line
  size_t old = out->size();
  out->resize(old + quads * 4 + lines * 2);
  char* w = out->data() + old;
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  size_t i = 0, col = 0;
  for (; i + 3 <= n; i += 3) {
    uint32_t v = (static_cast<uint32_t>(p[i]) << 16) | (static_cast<uint32_t>(p[i + 1]) << 8) | p[i + 2];
    w[0] = kB64[v >> 18];
    w[1] = kB64[(v >> 12) & 63];
    w[2] = kB64[(v >> 6) & 63];
    w[3] = kB64[v & 63];
    w += 4;
    if (++col == 19) {
      *w++ = '\r';
      *w++ = '\n';
      col = 0;
    }
  }
  if (i < n) {
    uint32_t v = static_cast<uint32_t>(p[i]) << 16;
    if (i + 1 < n) v |= static_cast<uint32_t>(p[i + 1]) << 8;
    w[0] = kB64[v >> 18];
    w[1] = kB64[(v >> 12) & 63];
    w[2] = i + 1 < n ? kB64[(v >> 6) & 63] : '=';
    w[3] = '=';
    w += 4;
    ++col;
  }
  if (col) {
    *w++ = '\r';
    *w++ = '\n';
  }
  out->resize(static_cast<size_t>(w - out->data()));
}

std::string EncodeBase64Lines(std::string_view data) {
  std::string out;
  AppendBase64Lines(&out, data);
  return out;
}

std::string EncodeQuotedPrintable(std::string_view text) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size() + text.size() / 8);
  size_t col = 0;
  auto emit = [&](std::string_view piece) {
    if (col + piece.size() > 75) {  // soft line break keeps lines within 76
      out += "=\r\n";
      col = 0;
    }
    out += piece;
    col += piece.size();
  };
  for (size_t i = 0; i < text.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') {
      out += "\r\n";  // a hard line break
      col = 0;
      ++i;
      continue;
    }
    bool at_line_end = i + 1 == text.size() || (text[i + 1] == '\r' && i + 2 < text.size() && text[i + 2] == '\n');
    bool literal = (c >= 33 && c <= 126 && c != '=') || ((c == ' ' || c == '\t') && !at_line_end);
    // A leading "." or "From " could be mangled by relays; encoding the first byte avoids it.
    if (col == 0 && (c == '.' || (c == 'F' && text.substr(i, 5) == "From "))) literal = false;
    if (literal) {
      char one[1] = {static_cast<char>(c)};
      emit(std::string_view(one, 1));
    } else {
      char enc[3] = {'=', kHex[c >> 4], kHex[c & 15]};
      emit(std::string_view(enc, 3));
    }
  }
  return out;
}

Result<std::string> ToSevenBit(std::string_view entity, const Limits& limits) {
  if (IsSevenBitSafe(entity)) return std::string(entity);
  Parser parser(limits);
  if (Status st = parser.Feed(entity); !st.ok()) return st;
  if (Status st = parser.Finish(); !st.ok()) return st;
  const std::vector<Part>& parts = parser.parts();
  std::vector<Edit> edits;
  for (size_t i = 0; i < parts.size(); ++i) {
    const Part& p = parts[i];
    if (p.IsMultipart() || !p.children.empty() || !p.header_complete) continue;
    std::string_view body = entity.substr(p.body_begin, p.end - p.body_begin);
    if (!NeedsEncoding(body)) continue;
    for (int a = static_cast<int>(i); a >= 0; a = parts[static_cast<size_t>(a)].parent)
      if (parts[static_cast<size_t>(a)].IsSigned())
        return FailedPreconditionError("8-bit content inside a signed part cannot be made 7-bit without breaking "
                                       "its signature");
    std::string_view header = entity.substr(p.begin, p.body_begin - p.begin);
    if (!IsSevenBitSafe(header))
      return FailedPreconditionError("a header is not 7-bit (RFC 6532 UTF-8 headers need opaque signing)");
    bool text = p.type == "text";
    // A body already labelled quoted-printable/base64 that is still not 7-bit is damaged:
    // encoding it again keeps every byte (the recipient sees the damage, not our change).
    std::string encoded = text ? EncodeQuotedPrintable(body) : EncodeBase64Lines(body);
    if (!encoded.empty() && encoded.size() >= 2 && encoded.compare(encoded.size() - 2, 2, "\r\n") == 0 &&
        !(body.size() >= 2 && body.substr(body.size() - 2) == "\r\n"))
      encoded.resize(encoded.size() - 2);  // the delimiter's CRLF follows the body
    std::string cte = StrCat("Content-Transfer-Encoding: ", text ? "quoted-printable" : "base64", "\r\n");
    if (const HeaderField* f = p.Find("Content-Transfer-Encoding")) {
      size_t at = header.find(f->raw);
      if (at == std::string_view::npos) return InternalError("header field not found in its part");
      edits.push_back({p.begin + at, p.begin + at + f->raw.size(), cte});
    } else {
      uint64_t blank = p.body_begin >= 2 && entity.substr(p.body_begin - 2, 2) == "\r\n" ? p.body_begin - 2 : p.body_begin;
      edits.push_back({blank, blank, cte});
    }
    edits.push_back({p.body_begin, p.end, std::move(encoded)});
  }
  std::sort(edits.begin(), edits.end(), [](const Edit& a, const Edit& b) { return a.begin < b.begin; });
  std::string out;
  out.reserve(entity.size() * 4 / 3 + 256);
  uint64_t pos = 0;
  for (const Edit& e : edits) {
    if (e.begin < pos) return InternalError("overlapping canonicalisation edits");
    out.append(entity.substr(pos, e.begin - pos));
    out += e.with;
    pos = e.end;
  }
  out.append(entity.substr(pos));
  if (!IsSevenBitSafe(out))
    return FailedPreconditionError("8-bit bytes or long lines outside any re-encodable part (header, preamble)");
  return out;
}

}  // namespace mailseal::mime
