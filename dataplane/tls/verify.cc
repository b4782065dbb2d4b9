// verify.cc — see verify.h.
#include "dataplane/tls/verify.h"

#include <arpa/inet.h>

#include "dataplane/base/strings.h"

namespace mailseal::tls {

Result<Level> ParseLevel(std::string_view s) {
  std::string l = base::AsciiLower(s);
  if (l == "none" || l == "never") return Level::kNone;
  if (l.empty() || l == "may" || l == "opportunistic") return Level::kMay;
  if (l == "encrypt") return Level::kEncrypt;
  if (l == "dane") return Level::kDane;
  if (l == "verify") return Level::kVerify;
  return InvalidArgumentError(StrCat("'", s, "' is not a TLS level (none, may, encrypt, dane, verify)"));
}

const char* LevelName(Level l) {
  switch (l) {
    case Level::kNone: return "none";
    case Level::kMay: return "may";
    case Level::kEncrypt: return "encrypt";
    case Level::kDane: return "dane";
    case Level::kVerify: return "verify";
  }
  return "?";
}

PeerCheck CheckPeer(const pki::TrustList& trust, const std::vector<X509*>& chain, const std::vector<std::string>& names,
                    int64_t at_unix) {
  PeerCheck out;
  if (chain.empty() || !chain.front()) {
    out.reason = "the server sent no certificate";
    return out;
  }
  std::vector<std::string> tried;
  for (const std::string& name : names) {
    unsigned char buf[16];
    if (name.empty() || inet_pton(AF_INET, name.c_str(), buf) == 1 || inet_pton(AF_INET6, name.c_str(), buf) == 1)
      continue;   // an address literal is no name to authenticate (RFC 7817 §3)
    pki::Request r;
    r.leaf = chain.front();
    for (size_t i = 1; i < chain.size() && r.untrusted.size() < static_cast<size_t>(pki::kMaxUntrusted); ++i)
      r.untrusted.push_back(chain[i]);
    r.purpose = pki::Purpose::kTlsServer;
    r.host = base::AsciiLower(name);
    r.at_unix = at_unix;
    pki::Outcome o = pki::Validate(trust, r);
    if (o.ok()) {
      out.ok = true;
      out.matched = r.host;
      return out;
    }
    tried.push_back(r.host);
    // A reason about the path (not the name) is the same for every name: say it once.
    if (o.error != X509_V_ERR_HOSTNAME_MISMATCH) {
      out.reason = o.reason;
      return out;
    }
    out.reason = o.reason;
  }
  if (tried.empty()) {
    out.reason = "no host name to authenticate the server by (an address literal as next hop)";
    return out;
  }
  std::string list;
  for (const std::string& t : tried) list += (list.empty() ? "" : ", ") + t;
  out.reason = StrCat("its certificate names none of ", list, " (", out.reason, ")");
  return out;
}

}  // namespace mailseal::tls
