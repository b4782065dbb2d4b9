// classify.cc — see classify.h.
#include "dataplane/policy/classify.h"
#include "dataplane/base/strings.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cctype>

#include "dataplane/base/status.h"
#include "dataplane/mime/parser.h"

namespace mailseal::policy {
namespace {

char Upper(char c) { return static_cast<char>(std::toupper(static_cast<unsigned char>(c))); }
int HexVal(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  c = Upper(c);
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

int B64Val(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

// DecodeWord decodes the text of one encoded word; false when it is not one.
bool DecodeWord(char enc, std::string_view text, std::string* out) {
  if (enc == 'Q' || enc == 'q') {
    for (size_t i = 0; i < text.size(); ++i) {
      char c = text[i];
      if (c == '_') out->push_back(' ');
      else if (c == '=' && i + 2 < text.size() && HexVal(text[i + 1]) >= 0 && HexVal(text[i + 2]) >= 0) {
        out->push_back(static_cast<char>(HexVal(text[i + 1]) * 16 + HexVal(text[i + 2])));
        i += 2;
      } else out->push_back(c);
    }
    return true;
  }
  if (enc == 'B' || enc == 'b') {
    uint32_t acc = 0;
    int bits = 0;
    for (char c : text) {
      if (c == '=') break;
      int v = B64Val(c);
      if (v < 0) continue;   // lenient, as many mail clients are: a stray byte never hides a word
      acc = (acc << 6) | static_cast<uint32_t>(v);
      bits += 6;
      if (bits >= 8) {
        bits -= 8;
        out->push_back(static_cast<char>((acc >> bits) & 0xFF));
      }
    }
    return true;
  }
  return false;
}

bool IsSeparator(char c) { return c == ' ' || c == '-' || c == '_'; }

// MatchWord: `word` at s[i..] (case-insensitive, separators interchangeable); returns the
// length matched or 0.
size_t MatchWord(std::string_view s, size_t i, std::string_view word) {
  size_t j = i;
  for (char w : word) {
    if (j >= s.size()) return 0;
    if (IsSeparator(w)) {
      if (!IsSeparator(s[j])) return 0;
    } else if (Upper(s[j]) != Upper(w)) {
      return 0;
    }
    ++j;
  }
  return j - i;
}

const std::vector<std::string>& DefaultWords() {
  static const std::vector<std::string> kWords = {"SEEMAIL", "IN-CONFIDENCE", "SENSITIVE", "RESTRICTED"};
  return kWords;
}

// Covers: the most specific entry of `list` for an address — the address itself, else its
// domain or the nearest parent domain.
template <typename V>
bool Covers(const std::map<std::string, V>& list, const std::string& address, const std::string& domain,
            std::string* which) {
  if (list.count(address)) {
    *which = address;
    return true;
  }
  for (std::string_view d = domain; !d.empty();) {
    if (list.count(std::string(d))) {
      *which = std::string(d);
      return true;
    }
    size_t dot = d.find('.');
    if (dot == std::string_view::npos) break;
    d = d.substr(dot + 1);
  }
  return false;
}

}  // namespace

std::string DecodeRfc2047(std::string_view v) {
  std::string out;
  size_t i = 0;
  bool last_was_word = false;
  std::string pending_space;
  // Linear in the value: once a search for a word's parts finds nothing, no later "=?" can
  // complete either, and the end of a word is looked for only when its encoding is in place
  // (a hostile Subject of half a million "=?" costs one pass, not one pass each).
  bool words_possible = true;
  while (i < v.size()) {
    if (words_possible && v.compare(i, 2, "=?") == 0) {
      size_t q1 = v.find('?', i + 2);
      size_t q2 = q1 == std::string_view::npos ? q1 : v.find('?', q1 + 1);
      size_t end = q2 != std::string_view::npos && q2 == q1 + 2 ? v.find("?=", q2 + 1) : std::string_view::npos;
      if (q2 == std::string_view::npos || (q2 == q1 + 2 && end == std::string_view::npos)) words_possible = false;
      if (end != std::string_view::npos) {
        std::string decoded;
        if (DecodeWord(v[q1 + 1], v.substr(q2 + 1, end - q2 - 1), &decoded)) {
          if (!last_was_word) out += pending_space;   // space between encoded words is dropped
          pending_space.clear();
          // UTF-16/UTF-32 words carry ASCII as a byte and NULs: without the NULs a mail client's
          // "[RESTRICTED]" is ours too (trigger words are ASCII).
          decoded.erase(std::remove(decoded.begin(), decoded.end(), '\0'), decoded.end());
          out += decoded;
          last_was_word = true;
          i = end + 2;
          continue;
        }
      }
    }
    if (v[i] == ' ' || v[i] == '\t') {
      pending_space.push_back(v[i]);
      ++i;
      continue;
    }
    out += pending_space;
    pending_space.clear();
    out.push_back(v[i]);
    last_was_word = false;
    ++i;
  }
  out += pending_space;
  return out;
}

std::string FindTriggerWord(std::string_view s, const std::vector<std::string>& words_in) {
  const std::vector<std::string>& words = words_in.empty() ? DefaultWords() : words_in;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '[' && s[i] != '{') continue;
    for (const std::string& w : words) {
      size_t n = MatchWord(s, i + 1, w);
      if (n == 0 || i + 1 + n >= s.size()) continue;
      char close = s[i + 1 + n];
      if (close == ']' || close == '}') return StrCat("[", w, "]");
    }
  }
  return "";
}

std::string Classify(std::string_view message, const std::vector<std::string>& words) {
  // Every Subject field counts, not only the first: a message with two (RFC 5322 §3.6 allows
  // one) is shown by some clients with the first and by others with the last (issue #12).
  size_t body_at = 0;
  // Each as decoded (RFC 2047) and as written: a reader that does not decode sees the latter.
  auto find = [&](const std::string& subject) {
    std::string word = FindTriggerWord(DecodeRfc2047(subject), words);
    return word.empty() ? FindTriggerWord(subject, words) : word;
  };
  for (const std::string& subject : mime::HeaderValues(message, "Subject", &body_at)) {
    std::string word = find(subject);
    if (!word.empty()) return word;
  }
  // RFC 9788: the protected headers are those of the wrapped inner message — whichever of
  // several Content-Type fields a reader believes.
  for (const std::string& ct : mime::HeaderValues(message, "Content-Type")) {
    std::string lower = base::AsciiLower(ct);
    if (lower.rfind("message/rfc822", 0) != 0 || lower.find("forwarded=\"no\"") == std::string::npos) continue;
    for (const std::string& subject : mime::HeaderValues(message.substr(body_at), "Subject")) {
      std::string word = find(subject);
      if (!word.empty()) return word;
    }
    break;
  }
  return "";
}

std::string Label(const std::string& message, const std::string& header, const std::string& word) {
  if (header.empty()) return message;
  // Drop every field of that name from the header block (folded lines included).
  std::string out;
  size_t pos = 0;
  bool dropping = false;
  while (pos < message.size()) {
    size_t eol = message.find('\n', pos);
    size_t next = eol == std::string::npos ? message.size() : eol + 1;
    std::string_view line(message.data() + pos, next - pos);
    if (line == "\r\n" || line == "\n") {
      out.append(message, pos, std::string::npos);
      pos = message.size();
      break;
    }
    if (line[0] == ' ' || line[0] == '\t') {
      if (!dropping) out.append(line);
    } else {
      // The name, then blanks allowed before the colon (RFC 5322 §4.5.3): "X-Label :" is the
      // same field to a mail client, so it is dropped too.
      size_t colon = header.size();
      while (colon < line.size() && (line[colon] == ' ' || line[colon] == '\t')) ++colon;
      dropping = colon < line.size() && line[colon] == ':' && MatchWord(line, 0, header) == header.size();
      if (!dropping) out.append(line);
    }
    pos = next;
  }
  if (word.empty()) return out;
  std::string bare = word.size() > 2 && word.front() == '[' && word.back() == ']' ? word.substr(1, word.size() - 2) : word;
  // A malformed block may begin with continuation lines: ours goes after them, so that they
  // never read as a fold of our field.
  size_t at = 0;
  while (at < out.size() && (out[at] == ' ' || out[at] == '\t')) {
    size_t eol = out.find('\n', at);
    at = eol == std::string::npos ? out.size() : eol + 1;
  }
  bool needs_eol = at > 0 && out[at - 1] != '\n';   // continuation lines ran to the end without one
  return StrCat(out.substr(0, at), needs_eol ? "\r\n" : "", header, ": ", bare, "\r\n", out.substr(at));
}

const char* ProtectionName(Protection p) {
  switch (p) {
    case Protection::kPass: return "pass";
    case Protection::kSign: return "sign";
    case Protection::kSealIfKnown: return "seal-if-known";
    case Protection::kSealRequired: return "seal-required";
    case Protection::kHold: return "hold";
  }
  return "?";
}

namespace {
int Rank(Protection p) {
  switch (p) {
    case Protection::kPass: return 0;
    case Protection::kSign: return 1;
    case Protection::kSealIfKnown: return 2;
    case Protection::kSealRequired: return 3;
    case Protection::kHold: return 4;
  }
  return 0;
}
}  // namespace

Decision CompiledPolicy::Decide(const std::string& recipient, const std::string& classification, bool partner,
                                bool seal_when_known, const std::string& sender) const {
  Decision d = DecideRecipient(recipient, classification, partner, seal_when_known);
  if (sender_rules.empty() || sender.empty()) return d;
  std::string from = base::AsciiLower(sender);
  size_t at = from.rfind('@');
  std::string entry;
  if (!Covers(sender_rules, from, at == std::string::npos ? from : from.substr(at + 1), &entry)) return d;
  const mailseal::v1::DomainRule& r = sender_rules.at(entry);
  using R = mailseal::v1::DomainRule;
  Protection p = r.protection() == R::PROTECTION_SEAL_REQUIRED    ? Protection::kSealRequired
                 : r.protection() == R::PROTECTION_SEAL_WHEN_POSSIBLE ? Protection::kSealIfKnown
                 : r.protection() == R::PROTECTION_SIGN               ? Protection::kSign
                                                                      : Protection::kPass;
  d.triple_wrap = d.triple_wrap || r.triple_wrap();
  if (Rank(p) > Rank(d.protection)) {
    d.protection = p;
    d.reason = StrCat("sender rule for ", entry, ": ", ProtectionName(p), " (raised from: ", d.reason, ")");
  }
  return d;
}

Decision CompiledPolicy::DecideRecipient(const std::string& recipient, const std::string& classification, bool partner,
                                         bool seal_when_known) const {
  std::string address = base::AsciiLower(recipient);
  size_t at = address.rfind('@');
  std::string domain = at == std::string::npos ? address : address.substr(at + 1);
  std::string seemail_entry, trusted_entry;
  bool on_seemail = Covers(seemail, address, domain, &seemail_entry);
  bool on_trusted = Covers(trusted, address, domain, &trusted_entry);
  // The most specific rule: the address, then the domain and its parents.
  const mailseal::v1::DomainRule* rule = nullptr;
  std::string rule_entry;
  if (Covers(rules, address, domain, &rule_entry)) rule = &rules.at(rule_entry);
  Decision d;
  d.triple_wrap = rule && rule->triple_wrap();
  using R = mailseal::v1::DomainRule;
  if (!classification.empty()) {
    if (!on_seemail && !on_trusted && !partner) {
      d.protection = Protection::kHold;
      d.reason = StrCat(classification, " mail to ", domain, ", which is on neither the SEEMAIL nor the TRUSTED list "
                        "(SEE-2.1b: held, never sent)");
      return d;
    }
    d.protection = Protection::kSealRequired;
    d.reason = StrCat(classification, " mail to ", on_seemail ? StrCat("SEEMAIL-listed ", seemail_entry)
                                                 : on_trusted ? StrCat("TRUSTED-listed ", trusted_entry)
                                                              : StrCat("partner ", domain),
                      ": signed and encrypted only (SEE-2.1b)");
    return d;
  }
  if (partner || on_seemail || (rule && rule->protection() == R::PROTECTION_SEAL_REQUIRED)) {
    d.protection = Protection::kSealRequired;
    d.reason = partner      ? StrCat("partner domain ", domain, ": always sealed (SEE-AG-3)")
               : on_seemail ? StrCat("SEEMAIL-listed ", seemail_entry, ": always sealed (SEE-AG-3)")
                            : StrCat("rule for ", rule_entry, ": seal required");
    return d;
  }
  if (rule && rule->protection() == R::PROTECTION_NONE) {
    d.reason = StrCat("rule for ", rule_entry, ": sent as is");
    return d;
  }
  if (rule && rule->protection() == R::PROTECTION_SIGN) {
    d.protection = Protection::kSign;
    d.reason = StrCat("rule for ", rule_entry, ": signed, and encrypted when a certificate is known");
    return d;
  }
  if (on_trusted || (rule && rule->protection() == R::PROTECTION_SEAL_WHEN_POSSIBLE) || seal_when_known) {
    d.protection = Protection::kSealIfKnown;
    d.reason = on_trusted ? StrCat("TRUSTED-listed ", trusted_entry, ": sealed when a valid certificate is known")
               : rule     ? StrCat("rule for ", rule_entry, ": sealed when a valid certificate is known")
                          : "sealed when a valid certificate is known (seal_when_known, SEE-2.9)";
    return d;
  }
  d.reason = "no protection rule applies (SEE-AG-1)";
  return d;
}

bool CompiledPolicy::RequiresTls(const std::string& recipient) const {
  if (rules.empty()) return false;
  std::string address = base::AsciiLower(recipient);
  size_t at = address.rfind('@');
  std::string entry;
  if (!Covers(rules, address, at == std::string::npos ? address : address.substr(at + 1), &entry)) return false;
  return rules.at(entry).require_tls();
}

const CompiledPolicy::Server* CompiledPolicy::TrustedServerFor(const std::string& client_address,
                                                               const std::string& helo) const {
  if (trusted_servers.empty() || client_address.empty()) return nullptr;
  std::string ip = client_address;
  if (!ip.empty() && ip[0] == '[') {
    ip = ip.substr(1, ip.find(']') == std::string::npos ? std::string::npos : ip.find(']') - 1);
  } else if (std::count(ip.begin(), ip.end(), ':') == 1) {
    ip = ip.substr(0, ip.find(':'));
  }
  sockaddr_storage ss{};
  auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, ip.c_str(), &v4->sin_addr) == 1) v4->sin_family = AF_INET;
  else if (inet_pton(AF_INET6, ip.c_str(), &v6->sin6_addr) == 1) v6->sin6_family = AF_INET6;
  else return nullptr;
  std::string name = base::AsciiLower(helo);
  for (const Server& s : trusted_servers)
    if (Contains(s.block, reinterpret_cast<const sockaddr*>(&ss)) && (s.name.empty() || s.name == name)) return &s;
  return nullptr;
}

std::shared_ptr<const CompiledPolicy> Compile(const mailseal::v1::PolicyDocument& doc) {
  auto p = std::make_shared<CompiledPolicy>();
  p->version = doc.version();
  for (const std::string& w : doc.trigger_words()) {
    std::string u;
    for (char c : w) u.push_back(Upper(c));
    p->trigger_words.push_back(u);
  }
  for (const auto& l : doc.seemail_list()) p->seemail[base::AsciiLower(l.domain())] = l.note();
  for (const auto& l : doc.trusted_list()) p->trusted[base::AsciiLower(l.domain())] = l.note();
  for (const auto& r : doc.domain_rules()) p->rules[base::AsciiLower(r.domain())] = r;
  for (const auto& r : doc.sender_rules()) p->sender_rules[base::AsciiLower(r.domain())] = r;
  p->notifications = doc.notifications();
  p->hold_expiry_s = doc.hold_expiry_s();
  p->classification_header = doc.classification_header();
  p->seemail_version_header = doc.seemail_version_header();
  for (const auto& t : doc.trusted_servers()) {
    CompiledPolicy::Server srv;
    if (!ParseCidr(t.address(), &srv.block)) continue;   // validated on set
    srv.name = base::AsciiLower(t.name());
    srv.kind = t.kind();
    srv.shown = StrCat(t.kind() == mailseal::v1::TrustedServer::KIND_LISTSERV ? "trusted list server " : "trusted server ",
                       srv.name.empty() ? "" : StrCat(srv.name, " "), "[", t.address(), "]");
    p->trusted_servers.push_back(std::move(srv));
  }
  return p;
}

}  // namespace mailseal::policy
