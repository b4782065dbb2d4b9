// address.cc — see address.h. STANDARDS: RFC 5321 §4.1.2, §4.5.3.1; RFC 6531; RFC 3461 §4.
#include "dataplane/smtp/address.h"
#include "dataplane/base/strings.h"

#include <cctype>

namespace mailseal::smtp {
namespace {
constexpr size_t kMaxPath = 256;
constexpr size_t kMaxLocal = 64;
constexpr size_t kMaxDomain = 255;

bool IsAtext(unsigned char c) {
  return std::isalnum(c) || std::string_view("!#$%&'*+-/=?^_`{|}~").find(static_cast<char>(c)) !=
                                std::string_view::npos || c >= 0x80;
}

bool ValidLocalPart(std::string_view local) {
  if (local.empty() || local.size() > kMaxLocal) return false;
  if (local.front() == '"') {
    if (local.size() < 2 || local.back() != '"') return false;
    for (size_t i = 1; i + 1 < local.size(); ++i) {
      unsigned char c = static_cast<unsigned char>(local[i]);
      if (c == '\\') {
        if (++i + 1 >= local.size()) return false;
        continue;
      }
      if (c < 32 || c == 127 || c == '"') return false;
    }
    return true;
  }
  bool dot_ok = false;
  for (unsigned char c : local) {
    if (c == '.') {
      if (!dot_ok) return false;
      dot_ok = false;
    } else if (IsAtext(c)) {
      dot_ok = true;
    } else {
      return false;
    }
  }
  return dot_ok;
}

bool ValidDomain(std::string_view d) {
  if (d.empty() || d.size() > kMaxDomain) return false;
  if (d.front() == '[') {  // address literal
    if (d.back() != ']') return false;
    for (unsigned char c : d.substr(1, d.size() - 2)) {
      if (!(std::isalnum(c) || c == '.' || c == ':')) return false;
    }
    return d.size() > 2;
  }
  size_t label = 0;
  char prev = '.';
  for (unsigned char c : d) {
    if (c == '.') {
      if (label == 0 || prev == '-') return false;
      label = 0;
    } else if (std::isalnum(c) || c == '-' || c >= 0x80) {
      if (label == 0 && c == '-') return false;
      if (++label > 63) return false;
    } else {
      return false;
    }
    prev = static_cast<char>(c);
  }
  return label > 0 && prev != '-';
}
}  // namespace

bool HasNonAscii(std::string_view s) {
  for (unsigned char c : s)
    if (c >= 0x80) return true;
  return false;
}

std::string DomainOf(std::string_view address) {
  size_t at = address.rfind('@');
  if (at == std::string_view::npos) return "";
  std::string d(address.substr(at + 1));
  d = base::AsciiLower(d);
  return d;
}

PathError ParsePathArgs(std::string_view args, bool allow_null, bool allow_utf8, PathArgs* out) {
  *out = PathArgs{};
  while (!args.empty() && args.front() == ' ') args.remove_prefix(1);  // "FROM: <a>" leniency
  if (args.empty() || args.front() != '<') return PathError::kSyntax;
  // Find the closing '>' outside a quoted local part.
  size_t i = 1;
  bool quoted = false;
  for (; i < args.size(); ++i) {
    char c = args[i];
    if (quoted && c == '\\') { ++i; continue; }
    if (c == '"') quoted = !quoted;
    else if (!quoted && c == '>') break;
  }
  if (i >= args.size()) return PathError::kSyntax;
  std::string_view path = args.substr(1, i - 1);
  std::string_view rest = args.substr(i + 1);
  if (path.size() + 2 > kMaxPath) return PathError::kTooLong;
  if (!allow_utf8 && HasNonAscii(path)) return PathError::kNeedsUtf8;
  if (!path.empty() && path.front() == '@') {  // source route: drop through ':'
    size_t colon = path.find(':');
    if (colon == std::string_view::npos) return PathError::kSyntax;
    path.remove_prefix(colon + 1);
  }
  if (path.empty()) {
    if (!allow_null) return PathError::kSyntax;
  } else {
    size_t at = path.rfind('@');
    if (at == std::string_view::npos) {
      // RFC 5321 §4.5.1: "Postmaster" without a domain must be accepted for RCPT.
      if (allow_null || base::AsciiLower(path) != "postmaster") return PathError::kSyntax;
    } else {
      if (!ValidLocalPart(path.substr(0, at)) || !ValidDomain(path.substr(at + 1)))
        return PathError::kSyntax;
    }
  }
  out->address = std::string(path);
  // Parameters: SP-separated keyword[=value].
  while (!rest.empty()) {
    if (rest.front() != ' ') return PathError::kSyntax;
    while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
    if (rest.empty()) break;
    size_t end = rest.find(' ');
    std::string_view tok = rest.substr(0, end);
    rest = end == std::string_view::npos ? std::string_view() : rest.substr(end);
    EsmtpParam p;
    size_t eq = tok.find('=');
    std::string_view kw = tok.substr(0, eq);
    if (kw.empty()) return PathError::kSyntax;
    for (char c : kw) {
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-') return PathError::kSyntax;
      p.keyword += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    }
    if (eq != std::string_view::npos) {
      p.has_value = true;
      p.value = std::string(tok.substr(eq + 1));
      for (unsigned char c : p.value)
        if (c < 33 || c == '=' || (c >= 0x7f && !allow_utf8)) return PathError::kSyntax;
    }
    if (out->params.size() >= 16) return PathError::kSyntax;
    out->params.push_back(std::move(p));
  }
  return PathError::kOk;
}

bool XtextDecode(std::string_view in, std::string* out) {
  out->clear();
  for (size_t i = 0; i < in.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(in[i]);
    if (c == '+') {
      auto hex = [](char h) -> int {
        if (h >= '0' && h <= '9') return h - '0';
        if (h >= 'A' && h <= 'F') return h - 'A' + 10;
        return -1;
      };
      if (i + 2 >= in.size()) return false;
      int hi = hex(in[i + 1]), lo = hex(in[i + 2]);
      if (hi < 0 || lo < 0) return false;
      *out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else if (c < 33 || c > 126 || c == '=') {
      return false;
    } else {
      *out += static_cast<char>(c);
    }
  }
  return true;
}

std::string XtextEncode(std::string_view in) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : in) {
    if (c < 33 || c > 126 || c == '+' || c == '=') {
      out += '+';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

}  // namespace mailseal::smtp
