// spf.cc — see spf.h. Section numbers are RFC 7208's.
#include "dataplane/spf/spf.h"

#include "dataplane/base/strings.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <string_view>

namespace mailseal::spf {
namespace {

constexpr int kMaxDnsTerms = 10;        // §4.6.4
constexpr int kMaxVoidLookups = 2;      // §4.6.4
constexpr size_t kMaxNames = 10;        // MX and PTR names per term, §4.6.4
constexpr size_t kMaxRecord = 4096;     // a TXT policy longer than this is refused (permerror)
constexpr size_t kMaxExpansion = 2048;  // a macro expansion (explanations included)
constexpr size_t kMaxDomain = 253;

char Lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }
std::string LowerStr(std::string_view s) {
  std::string o(s);
  for (char& c : o) c = Lower(c);
  return o;
}
bool IEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (Lower(a[i]) != Lower(b[i])) return false;
  return true;
}
bool IsAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsAlnum(char c) { return IsAlpha(c) || IsDigit(c); }

std::string StripDot(std::string_view d) {
  if (!d.empty() && d.back() == '.') d.remove_suffix(1);
  return std::string(d);
}

std::vector<std::string_view> Split(std::string_view s, std::string_view delims) {
  std::vector<std::string_view> out;
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); ++i) {
    if (i == s.size() || delims.find(s[i]) != std::string_view::npos) {
      out.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  }
  return out;
}

// ValidDomain: §4.3 — labels of 1..63 octets, at least two of them, ≤ 253 in all.
bool ValidDomain(std::string_view d) {
  std::string s = StripDot(d);
  if (s.empty() || s.size() > kMaxDomain) return false;
  std::vector<std::string_view> labels = Split(s, ".");
  if (labels.size() < 2) return false;
  for (std::string_view l : labels)
    if (l.empty() || l.size() > 63) return false;
  return true;
}

// ValidTopLabel: toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum ).
bool ValidTopLabel(std::string_view t) {
  if (t.empty() || !IsAlnum(t.front()) || !IsAlnum(t.back())) return false;
  bool alpha = false, dash = false;
  for (char c : t) {
    if (IsAlpha(c)) alpha = true;
    else if (c == '-') dash = true;
    else if (!IsDigit(c)) return false;
  }
  return alpha || dash;
}

struct Ip {
  bool v6 = false;
  unsigned char b[16] = {};
};

std::optional<Ip> ParseIp(const std::string& text) {
  Ip ip;
  if (inet_pton(AF_INET, text.c_str(), ip.b) == 1) return ip;
  if (inet_pton(AF_INET6, text.c_str(), ip.b) == 1) {
    static const unsigned char kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(ip.b, kMapped, 12) == 0) {   // §5: an IPv4-mapped address is IPv4
      std::memmove(ip.b, ip.b + 12, 4);
      std::memset(ip.b + 4, 0, 12);
      return ip;
    }
    ip.v6 = true;
    return ip;
  }
  return std::nullopt;
}

bool PrefixMatch(const unsigned char* a, const unsigned char* b, int bits) {
  int full = bits / 8, rest = bits % 8;
  if (std::memcmp(a, b, static_cast<size_t>(full)) != 0) return false;
  if (rest == 0) return true;
  unsigned char mask = static_cast<unsigned char>(0xff << (8 - rest));
  return (a[full] & mask) == (b[full] & mask);
}

// CidrLength: ip4-cidr-length / ip6-cidr-length digits: "0" or no leading zero, ≤ max.
bool CidrLength(std::string_view digits, int max, int* out) {
  if (digits.empty() || digits.size() > 3) return false;
  for (char c : digits)
    if (!IsDigit(c)) return false;
  if (digits.size() > 1 && digits[0] == '0') return false;
  int v = 0;
  for (char c : digits) v = v * 10 + (c - '0');
  if (v > max) return false;
  *out = v;
  return true;
}

std::string Nibbles(const Ip& ip) {   // "2.0.0.1.0.d.b.8..." (§7.3 'i' for IPv6)
  static const char kHex[] = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < 16; ++i) {
    if (i) s += '.';
    s += kHex[ip.b[i] >> 4];
    s += '.';
    s += kHex[ip.b[i] & 15];
  }
  return s;
}

std::string Dotted(const Ip& ip) {
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(ip.v6 ? AF_INET6 : AF_INET, ip.b, buf, sizeof buf);
  return buf;
}

std::string ReverseName(const Ip& ip) {
  std::string s;
  if (!ip.v6) {
    for (int i = 3; i >= 0; --i) s += std::to_string(ip.b[i]) + ".";
    return s + "in-addr.arpa";
  }
  static const char kHex[] = "0123456789abcdef";
  for (int i = 15; i >= 0; --i) {
    s += kHex[ip.b[i] & 15];
    s += '.';
    s += kHex[ip.b[i] >> 4];
    s += '.';
  }
  return s + "ip6.arpa";
}

struct Term {
  bool modifier = false;
  char qualifier = '+';
  std::string name;        // lower case
  std::string arg;         // domain-spec, network or modifier value; may be empty
  bool has_arg = false;
  int cidr4 = 32, cidr6 = 128;
  Ip network;
  std::string text;        // as written, for the verdict
};

struct HostResult {
  Result result = Result::kNone;
  std::string mechanism;
  std::string explanation;
  std::string problem;
  bool hard_all = false;
};

HostResult Perm(std::string why) {
  HostResult r;
  r.result = Result::kPermError;
  r.problem = std::move(why);
  return r;
}
HostResult Temp(std::string why) {
  HostResult r;
  r.result = Result::kTempError;
  r.problem = std::move(why);
  return r;
}

class Evaluator {
 public:
  Evaluator(const Request& req, Dns& dns, Ip ip, std::string sender)
      : req_(req), dns_(dns), ip_(ip), sender_(std::move(sender)) {
    size_t at = sender_.rfind('@');
    local_ = sender_.substr(0, at);
    sender_domain_ = sender_.substr(at + 1);
  }

  int dns_terms() const { return terms_; }

  // CheckHost is check_host(<ip>, domain, <sender>) (§4); want_exp: compute the explanation
  // on fail (not for include:, whose fail is only "no match").
  HostResult CheckHost(const std::string& domain, bool want_exp) {
    Answer a = dns_.Query(domain, RrType::kTxt);
    if (a.rcode == Answer::Rcode::kTempFail) return Temp("DNS error looking up the SPF record of " + domain);
    if (a.rcode == Answer::Rcode::kNxDomain) {
      HostResult r;
      r.problem = domain + " does not exist";
      return r;
    }
    const std::string* record = nullptr;
    for (const std::string& t : a.records) {
      if (t.size() < 6 || !IEquals(std::string_view(t).substr(0, 6), "v=spf1")) continue;
      if (t.size() > 6 && t[6] != ' ') continue;
      if (record) return Perm("more than one SPF record at " + domain);
      record = &t;
    }
    if (!record) {
      HostResult r;
      r.problem = "no SPF record at " + domain;
      return r;
    }
    if (record->size() > kMaxRecord) return Perm("SPF record of " + domain + " is too long");
    for (unsigned char c : *record)
      if (c < 0x20 || c > 0x7e) return Perm("SPF record of " + domain + " is not 7-bit ASCII text");
    std::vector<Term> terms;
    const Term* redirect = nullptr;
    const Term* exp = nullptr;
    std::string err;
    for (std::string_view raw : Split(std::string_view(*record).substr(6), " ")) {
      if (raw.empty()) continue;
      Term t;
      if (!ParseTerm(raw, &t, &err)) return Perm(err + " in the SPF record of " + domain);
      terms.push_back(std::move(t));
    }
    for (const Term& t : terms) {
      if (!t.modifier) continue;
      if (t.name == "redirect") {
        if (redirect) return Perm("two redirect= modifiers at " + domain);
        redirect = &t;
      } else if (t.name == "exp") {
        if (exp) return Perm("two exp= modifiers at " + domain);
        exp = &t;
      }
    }
    bool hard_all = false;
    for (const Term& t : terms)
      if (!t.modifier) hard_all = t.name == "all" && t.qualifier == '-';

    for (const Term& t : terms) {
      if (t.modifier) continue;
      bool matched = false;
      if (Status s = Match(t, domain, &matched); s.stop) return s.result;
      if (!matched) continue;
      HostResult r;
      r.mechanism = t.text;
      r.hard_all = hard_all;
      switch (t.qualifier) {
        case '-': r.result = Result::kFail; break;
        case '~': r.result = Result::kSoftFail; break;
        case '?': r.result = Result::kNeutral; break;
        default: r.result = Result::kPass; break;
      }
      if (r.result == Result::kFail && want_exp) r.explanation = Explain(exp, domain);
      return r;
    }
    if (redirect) {   // §6.1: only when no mechanism matched (an "all" makes it unreachable)
      if (++terms_ > kMaxDnsTerms) return Perm("more than 10 DNS-querying terms (RFC 7208 §4.6.4)");
      std::string target;
      if (!ExpandDomain(redirect->arg, domain, &target, &err)) return Perm(err + " in redirect= at " + domain);
      if (!ValidDomain(target)) return Perm("redirect= to an invalid domain '" + target + "'");
      HostResult r = CheckHost(target, want_exp);
      if (r.result == Result::kNone) return Perm("redirect= to " + target + ", which has no SPF record");
      return r;
    }
    HostResult r;
    r.result = Result::kNeutral;
    r.mechanism = "default";
    r.hard_all = hard_all;
    return r;
  }

 private:
  struct Status {
    bool stop = false;
    HostResult result;
  };
  static Status Stop(HostResult r) { return {true, std::move(r)}; }

  // ParseTerm: §4.6.1 and §5; syntax only (expansion happens when a term is evaluated).
  bool ParseTerm(std::string_view raw, Term* t, std::string* err) {
    t->text = std::string(raw);
    // A modifier: name "=" macro-string, name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." ).
    size_t eq = raw.find('=');
    size_t first_sep = raw.find_first_of(":/");
    if (eq != std::string_view::npos && (first_sep == std::string_view::npos || eq < first_sep)) {
      std::string_view name = raw.substr(0, eq);
      bool ok = !name.empty() && IsAlpha(name[0]);
      for (char c : name) ok = ok && (IsAlnum(c) || c == '-' || c == '_' || c == '.');
      if (!ok) return *err = "invalid modifier '" + t->text + "'", false;
      t->modifier = true;
      t->name = LowerStr(name);
      t->arg = std::string(raw.substr(eq + 1));
      t->has_arg = true;
      // c, r and t belong to explanation text only, not to any modifier's value (§7.1).
      if (!MacroSyntax(t->arg, false, err)) return false;
      if (t->name == "redirect" || t->name == "exp") {
        if (!DomainSpecSyntax(t->arg)) return *err = "invalid domain in '" + t->text + "'", false;
      }
      return true;
    }
    std::string_view rest = raw;
    if (rest[0] == '+' || rest[0] == '-' || rest[0] == '~' || rest[0] == '?') {
      t->qualifier = rest[0];
      rest.remove_prefix(1);
    }
    size_t n = 0;
    while (n < rest.size() && IsAlnum(rest[n])) ++n;
    t->name = LowerStr(rest.substr(0, n));
    rest.remove_prefix(n);
    const std::string& m = t->name;
    auto bad = [&](const char* what) { return *err = std::string(what) + " '" + t->text + "'", false; };
    if (m == "all") {
      if (!rest.empty()) return bad("invalid mechanism");
      return true;
    }
    if (m == "ip4" || m == "ip6") {
      if (rest.empty() || rest[0] != ':') return bad("missing network in");
      rest.remove_prefix(1);
      size_t slash = rest.rfind('/');
      std::string net(rest.substr(0, slash));
      if (slash != std::string_view::npos &&
          !CidrLength(rest.substr(slash + 1), m == "ip4" ? 32 : 128, m == "ip4" ? &t->cidr4 : &t->cidr6))
        return bad("invalid prefix length in");
      t->network = Ip{};
      if (m == "ip4") {
        if (inet_pton(AF_INET, net.c_str(), t->network.b) != 1) return bad("invalid IPv4 network in");
      } else {
        if (inet_pton(AF_INET6, net.c_str(), t->network.b) != 1) return bad("invalid IPv6 network in");
        t->network.v6 = true;
      }
      return true;
    }
    if (m == "a" || m == "mx") {
      // dual-cidr-length at the end: [ "/" ip4-cidr ] [ "//" ip6-cidr ].
      // A '/' followed by anything but digits belongs to the domain-spec ("a:foo:bar/baz.com").
      auto digits_after = [](std::string_view s, size_t pos) {
        return pos < s.size() && s.find_first_not_of("0123456789", pos) == std::string_view::npos;
      };
      size_t dbl = rest.rfind("//");
      if (dbl != std::string_view::npos && digits_after(rest, dbl + 2)) {
        if (!CidrLength(rest.substr(dbl + 2), 128, &t->cidr6)) return bad("invalid IPv6 prefix length in");
        rest = rest.substr(0, dbl);
      }
      size_t sl = rest.rfind('/');
      if (sl != std::string_view::npos && digits_after(rest, sl + 1)) {
        if (!CidrLength(rest.substr(sl + 1), 32, &t->cidr4)) return bad("invalid IPv4 prefix length in");
        rest = rest.substr(0, sl);
      }
    }
    if (m == "a" || m == "mx" || m == "ptr" || m == "include" || m == "exists") {
      if (rest.empty()) {
        if (m == "include" || m == "exists") return bad("missing domain in");
        return true;
      }
      if (rest[0] != ':') return bad("invalid mechanism");
      t->arg = std::string(rest.substr(1));
      t->has_arg = true;
      if (!MacroSyntax(t->arg, false, err)) return false;
      if (!DomainSpecSyntax(t->arg)) return bad("invalid domain in");
      return true;
    }
    return bad("unknown mechanism");
  }

  // DomainSpecSyntax: domain-spec = macro-string domain-end (§7.1).
  static bool DomainSpecSyntax(std::string_view spec) {
    if (spec.empty()) return false;
    if (spec.back() == '}') return true;   // ends in a macro-expand
    std::string_view s = spec;
    if (s.back() == '.') s.remove_suffix(1);
    size_t dot = s.rfind('.');
    if (dot == std::string_view::npos) return false;
    return ValidTopLabel(s.substr(dot + 1));
  }

  // MacroSyntax: every '%' is a valid macro (§7.1); exp_letters: c, r, t allowed.
  static bool MacroSyntax(std::string_view s, bool exp_letters, std::string* err) {
    std::string ignored;
    return ExpandImpl(s, exp_letters, nullptr, &ignored, err);
  }

  // ExpandImpl: macro expansion; ev null only checks syntax.
  static bool ExpandImpl(std::string_view s, bool exp_context, Evaluator* ev, std::string* out,
                         std::string* err, const std::string* domain = nullptr) {
    out->clear();
    for (size_t i = 0; i < s.size(); ++i) {
      char c = s[i];
      if (static_cast<unsigned char>(c) < 0x21 && !(exp_context && c == ' ')) {
        return *err = "invalid character", false;
      }
      if (c != '%') {
        *out += c;
      } else {
        if (i + 1 >= s.size()) return *err = "'%' at the end of a macro string", false;
        char n = s[++i];
        if (n == '%') *out += '%';
        else if (n == '_') *out += ' ';
        else if (n == '-') *out += "%20";
        else if (n != '{') return *err = std::string("invalid macro '%") + n + "'", false;
        else {
          size_t close = s.find('}', i);
          if (close == std::string_view::npos) return *err = "unterminated macro", false;
          std::string_view body = s.substr(i + 1, close - i - 1);
          i = close;
          if (body.empty()) return *err = "empty macro", false;
          char letter = body[0];
          char ll = Lower(letter);
          if (std::string_view("slodiphv").find(ll) == std::string_view::npos &&
              !(exp_context && std::string_view("crt").find(ll) != std::string_view::npos))
            return *err = std::string("invalid macro letter '") + letter + "'", false;
          size_t k = 1;
          int digits = -1;
          if (k < body.size() && IsDigit(body[k])) {
            digits = 0;
            while (k < body.size() && IsDigit(body[k])) {
              digits = std::min(digits * 10 + (body[k] - '0'), 1000);
              ++k;
            }
            if (digits == 0) return *err = "macro keeps zero labels", false;
          }
          bool reverse = false;
          if (k < body.size() && Lower(body[k]) == 'r') {
            reverse = true;
            ++k;
          }
          std::string delims;
          for (; k < body.size(); ++k) {
            if (std::string_view(".-+,/_=").find(body[k]) == std::string_view::npos)
              return *err = "invalid macro delimiter", false;
            delims += body[k];
          }
          if (!ev) continue;
          std::string value = ev->LetterValue(ll, domain ? *domain : std::string());
          std::vector<std::string_view> parts = Split(value, delims.empty() ? "." : delims);
          if (reverse) std::reverse(parts.begin(), parts.end());
          if (digits > 0 && static_cast<size_t>(digits) < parts.size())
            parts.erase(parts.begin(), parts.end() - digits);
          std::string joined;
          for (size_t p = 0; p < parts.size(); ++p) {
            if (p) joined += '.';
            joined += parts[p];
          }
          *out += IsAlpha(letter) && letter != ll ? base::PercentEncode(joined) : joined;
        }
      }
      if (out->size() > kMaxExpansion) return *err = "macro expansion too long", false;
    }
    return true;
  }

  std::string LetterValue(char l, const std::string& domain) {
    switch (l) {
      case 's': return sender_;
      case 'l': return local_;
      case 'o': return sender_domain_;
      case 'd': return domain;
      case 'i': return ip_.v6 ? Nibbles(ip_) : Dotted(ip_);
      case 'p': return ValidatedName(domain);
      case 'v': return ip_.v6 ? "ip6" : "in-addr";
      case 'h': return req_.helo;
      case 'c': return Dotted(ip_);
      case 'r': return req_.receiver;
      case 't': return std::to_string(req_.now_unix);
    }
    return "";
  }

  // ExpandDomain: a domain-spec expanded, truncated from the left to 253 octets (§7.3).
  bool ExpandDomain(const std::string& spec, const std::string& domain, std::string* out, std::string* err) {
    if (!ExpandImpl(spec, false, this, out, err, &domain)) return false;
    *out = StripDot(*out);
    while (out->size() > kMaxDomain) {
      size_t dot = out->find('.');
      if (dot == std::string::npos) break;
      out->erase(0, dot + 1);
    }
    return true;
  }

  // Addresses of `name` in the client's family; nullopt on a DNS failure.
  std::optional<std::vector<std::string>> Addresses(const std::string& name, bool* is_void) {
    Answer a = dns_.Query(name, ip_.v6 ? RrType::kAaaa : RrType::kA);
    if (a.rcode == Answer::Rcode::kTempFail) return std::nullopt;
    if (is_void) *is_void = a.rcode == Answer::Rcode::kNxDomain || a.records.empty();
    return a.records;
  }

  // AddressMatches: one of `addrs` covers the client within the prefix lengths (a term's
  // dual-cidr; 32/128 for an exact match).
  bool AddressMatches(const std::vector<std::string>& addrs, int cidr4 = 32, int cidr6 = 128) const {
    size_t len = ip_.v6 ? 16 : 4;
    for (const std::string& r : addrs)
      if (r.size() == len && PrefixMatch(reinterpret_cast<const unsigned char*>(r.data()), ip_.b, ip_.v6 ? cidr6 : cidr4))
        return true;
    return false;
  }

  // ValidatedNames: §5.5 — PTR names whose forward lookup contains the client's address.
  std::vector<std::string> ValidatedNames() {
    if (validated_) return *validated_;
    validated_.emplace();
    Answer ptr = dns_.Query(ReverseName(ip_), RrType::kPtr);
    if (ptr.rcode != Answer::Rcode::kOk) return *validated_;
    size_t looked = 0;
    for (const std::string& name : ptr.records) {
      if (++looked > kMaxNames) break;
      std::optional<std::vector<std::string>> addrs = Addresses(StripDot(name), nullptr);
      if (addrs && AddressMatches(*addrs)) validated_->push_back(StripDot(name));
    }
    return *validated_;
  }

  static bool UnderDomain(const std::string& name, const std::string& domain) {
    std::string n = LowerStr(name), d = LowerStr(StripDot(domain));
    return n == d || (n.size() > d.size() && n.compare(n.size() - d.size(), d.size(), d) == 0 &&
                      n[n.size() - d.size() - 1] == '.');
  }

  std::string ValidatedName(const std::string& domain) {   // %{p}
    std::vector<std::string> names = ValidatedNames();
    for (const std::string& n : names)
      if (UnderDomain(n, domain)) return n;
    return names.empty() ? "unknown" : names.front();
  }

  Status Match(const Term& t, const std::string& domain, bool* matched) {
    const std::string& m = t.name;
    if (m == "all") {
      *matched = true;
      return {};
    }
    if (m == "ip4" || m == "ip6") {
      *matched = (m == "ip6") == ip_.v6 && PrefixMatch(t.network.b, ip_.b, ip_.v6 ? t.cidr6 : t.cidr4);
      return {};
    }
    if (++terms_ > kMaxDnsTerms) return Stop(Perm("more than 10 DNS-querying terms (RFC 7208 §4.6.4)"));
    std::string target = domain, err;
    if (t.has_arg) {
      if (!ExpandDomain(t.arg, domain, &target, &err)) return Stop(Perm(err + " in '" + t.text + "'"));
      if (m != "ptr" && !ValidDomain(target)) {
        // An expanded name that is not a domain cannot exist: a void lookup (§4.6.4 note).
        if (m == "include") return Stop(Perm("include: of an invalid domain '" + target + "'"));
        return Void(t);
      }
    }
    if (m == "include") {
      HostResult r = CheckHost(target, false);
      switch (r.result) {
        case Result::kPass: *matched = true; return {};
        case Result::kFail: case Result::kSoftFail: case Result::kNeutral: return {};
        case Result::kNone: return Stop(Perm("include:" + target + " has no SPF record"));
        default: return Stop(r);
      }
    }
    if (m == "a") {
      bool is_void = false;
      std::optional<std::vector<std::string>> addrs = Addresses(target, &is_void);
      if (!addrs) return Stop(Temp("DNS error looking up " + target));
      if (is_void) return Void(t);
      *matched = AddressMatches(*addrs, t.cidr4, t.cidr6);
      return {};
    }
    if (m == "mx") {
      Answer mx = dns_.Query(target, RrType::kMx);
      if (mx.rcode == Answer::Rcode::kTempFail) return Stop(Temp("DNS error looking up the MX of " + target));
      if (mx.rcode == Answer::Rcode::kNxDomain || mx.records.empty()) return Void(t);
      if (mx.records.size() > kMaxNames) return Stop(Perm("more than 10 MX names for " + target + " (RFC 7208 §4.6.4)"));
      for (const std::string& host : mx.records) {
        if (StripDot(host).empty()) continue;   // null MX
        std::optional<std::vector<std::string>> addrs = Addresses(StripDot(host), nullptr);
        if (!addrs) return Stop(Temp("DNS error looking up " + host));
        if (AddressMatches(*addrs, t.cidr4, t.cidr6)) {
          *matched = true;
          return {};
        }
      }
      return {};
    }
    if (m == "ptr") {
      for (const std::string& n : ValidatedNames())
        if (UnderDomain(n, target)) {
          *matched = true;
          return {};
        }
      return {};
    }
    if (m == "exists") {
      Answer a = dns_.Query(target, RrType::kA);   // always A, whatever the client's family (§5.7)
      if (a.rcode == Answer::Rcode::kTempFail) return Stop(Temp("DNS error looking up " + target));
      if (a.rcode == Answer::Rcode::kNxDomain || a.records.empty()) return Void(t);
      *matched = true;
      return {};
    }
    return Stop(Perm("unknown mechanism '" + t.text + "'"));
  }

  Status Void(const Term& t) {
    if (++voids_ > kMaxVoidLookups) return Stop(Perm("more than 2 void DNS lookups (RFC 7208 §4.6.4), last '" + t.text + "'"));
    return {};
  }

  // Explain: §6.2 — the exp= TXT record expanded; the default on any problem.
  std::string Explain(const Term* exp, const std::string& domain) {
    if (!exp) return req_.default_explanation;
    std::string target, err, text;
    if (!ExpandDomain(exp->arg, domain, &target, &err) || !ValidDomain(target)) return req_.default_explanation;
    Answer a = dns_.Query(target, RrType::kTxt);
    if (a.rcode != Answer::Rcode::kOk || a.records.size() != 1) return req_.default_explanation;
    for (unsigned char c : a.records[0])
      if (c < 0x20 || c > 0x7e) return req_.default_explanation;
    if (!ExpandImpl(a.records[0], true, this, &text, &err, &domain)) return req_.default_explanation;
    return text;
  }

  const Request& req_;
  Dns& dns_;
  Ip ip_;
  std::string sender_, local_, sender_domain_;
  int terms_ = 0;
  int voids_ = 0;
  std::optional<std::vector<std::string>> validated_;
};

std::string Quoted(std::string_view v) {   // a Received-SPF key-value value, never breaking the field
  std::string o = "\"";
  for (char c : v) {
    if (c == '\r' || c == '\n') c = ' ';
    if (c == '"' || c == '\\') o += '\\';
    o += c;
  }
  return o + "\"";
}

}  // namespace

const char* ResultName(Result r) {
  switch (r) {
    case Result::kNone: return "none";
    case Result::kNeutral: return "neutral";
    case Result::kPass: return "pass";
    case Result::kFail: return "fail";
    case Result::kSoftFail: return "softfail";
    case Result::kTempError: return "temperror";
    case Result::kPermError: return "permerror";
  }
  return "none";
}

Verdict Check(const Request& req, Dns& dns) {
  Verdict v;
  std::string sender = req.mail_from;
  v.identity = "mailfrom";
  if (sender.empty()) {   // §2.4: the null sender: postmaster@<HELO>
    v.identity = "helo";
    sender = "postmaster@" + req.helo;
  }
  size_t at = sender.rfind('@');
  if (at == std::string::npos) sender = "postmaster@" + sender;
  else if (at == 0) sender = "postmaster" + sender;   // §4.3: no local part
  v.sender = sender;
  v.domain = StripDot(sender.substr(sender.rfind('@') + 1));
  std::optional<Ip> ip = ParseIp(req.ip);
  if (!ip) {
    v.problem = "the client address is not an IP address";
    return v;
  }
  if (v.domain.empty() || v.domain.front() == '[' || !ValidDomain(v.domain)) {   // §4.3
    v.problem = "'" + v.domain + "' is not a domain name";
    return v;
  }
  Evaluator ev(req, dns, *ip, sender);
  HostResult r = ev.CheckHost(v.domain, true);
  v.result = r.result;
  v.mechanism = r.mechanism;
  v.explanation = r.explanation;
  v.problem = r.problem;
  v.ends_in_hard_all = r.hard_all;
  v.dns_terms = ev.dns_terms();
  return v;
}

std::string ReceivedSpf(const Verdict& v, const Request& req) {
  std::string comment;
  switch (v.result) {
    case Result::kPass: comment = "domain of " + v.sender + " designates " + req.ip + " as permitted sender"; break;
    case Result::kFail: comment = "domain of " + v.sender + " does not designate " + req.ip + " as permitted sender"; break;
    case Result::kSoftFail: comment = "domain of transitioning " + v.sender + " does not designate " + req.ip + " as permitted sender"; break;
    case Result::kNeutral: comment = req.ip + " is neither permitted nor denied by domain of " + v.sender; break;
    default: comment = v.problem.empty() ? "no SPF policy" : v.problem; break;
  }
  for (char& c : comment)
    if (c == '(' || c == ')' || c == '\r' || c == '\n') c = ' ';
  std::string out = std::string("Received-SPF: ") + ResultName(v.result) + " (" + req.receiver + ": " + comment +
                    ")\r\n\tclient-ip=" + req.ip + "; envelope-from=" + Quoted(req.mail_from) +
                    "; helo=" + Quoted(req.helo) + "; receiver=" + Quoted(req.receiver) +
                    "; identity=" + v.identity;
  if (!v.mechanism.empty()) out += "; mechanism=" + Quoted(v.mechanism);
  if (!v.problem.empty() && v.result != Result::kPass) out += ";\r\n\tproblem=" + Quoted(v.problem);
  return out + "\r\n";
}

}  // namespace mailseal::spf
