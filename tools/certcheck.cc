// mailseal-certcheck — validates one certificate with the gateway's own validator
// (dataplane/pki/validator.h) and prints the verdict and its reason: what an operator runs to
// ask "why is this partner certificate refused?", and what the PKITS and x509-limbo
// conformance runs drive (tests/pki/).
//
// SECURITY: reads certificate and CRL files named on the command line (DER, PEM or PKCS#7),
// each at most 32 MiB; trusts only the --anchor files (never the system store). No secrets.
//
// Exit codes: 0 valid, 1 not valid (the verdict says why), 2 bad arguments or unreadable input.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <ctime>
#include <iostream>
#include <string>
#include <vector>

#include "dataplane/base/file.h"
#include "dataplane/pki/validator.h"

namespace pki = mailseal::pki;

namespace {

// ParseTime: seconds since the epoch, or RFC 3339 "YYYY-MM-DDTHH:MM:SSZ".
bool ParseTime(const std::string& s, int64_t* out) {
  if (!s.empty() && s.find_first_not_of("0123456789") == std::string::npos) {
    *out = std::stoll(s);
    return true;
  }
  std::tm tm{};
  const char* end = strptime(s.c_str(), "%Y-%m-%dT%H:%M:%S", &tm);
  if (!end) return false;
  if (*end == '.') {
    ++end;
    while (*end >= '0' && *end <= '9') ++end;
  }
  if (*end != 'Z' && *end != 'z' && std::string(end) != "+00:00") return false;
  *out = timegm(&tm);
  return true;
}

std::string JsonString(const std::string& s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') o += '\\', o += static_cast<char>(c);
    else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      o += buf;
    } else o += static_cast<char>(c);
  }
  return o + "\"";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Validate a certificate the way mailseal does: the trust list only, intermediates in any order, "
               "CRLs, purpose, policies, validation time. Prints the verdict and its reason."};
  std::string cert_file, time_text, purpose_text = "any", email, host, ip;
  std::vector<std::string> anchors, untrusted, crls, policies;
  bool revocation = false, deltas = false, policy_check = false, explicit_policy = false, inhibit_mapping = false,
       inhibit_any = false, json = false;
  int max_depth = pki::kMaxDepth;
  app.add_option("--cert", cert_file, "the certificate to validate (DER or PEM)")->required();
  app.add_option("--anchor", anchors, "a trust anchor file (DER, PEM bundle or PKCS#7); repeatable")->required();
  app.add_option("--untrusted", untrusted, "an intermediate candidate file; repeatable");
  app.add_option("--crl", crls, "a CRL file (DER or PEM); repeatable");
  app.add_option("--time", time_text, "validation time: seconds since the epoch or RFC 3339 (default now)");
  app.add_option("--purpose", purpose_text, "any | smime-sign | smime-encrypt | tls-server | tls-client")
      ->check(CLI::IsMember({"any", "smime-sign", "smime-encrypt", "tls-server", "tls-client"}));
  app.add_flag("--revocation", revocation, "check every certificate of the path against CRLs");
  app.add_flag("--deltas", deltas, "use delta CRLs");
  app.add_option("--policy", policies, "an initial acceptable policy OID (turns policy checking on); repeatable");
  app.add_flag("--policy-check", policy_check, "run RFC 5280 policy processing (initial set anyPolicy)");
  app.add_flag("--explicit-policy", explicit_policy, "require an acceptable policy (implies --policy-check)");
  app.add_flag("--inhibit-mapping", inhibit_mapping, "inhibit policy mapping (implies --policy-check)");
  app.add_flag("--inhibit-any", inhibit_any, "inhibit anyPolicy (implies --policy-check)");
  app.add_option("--email", email, "the rfc822Name the certificate must carry");
  app.add_option("--host", host, "the DNS name the certificate must carry");
  app.add_option("--ip", ip, "the IP address the certificate must carry");
  app.add_option("--max-depth", max_depth, "intermediates allowed between certificate and anchor")->check(CLI::Range(0, pki::kMaxDepth));
  app.add_flag("--json", json, "print one JSON object");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  auto fail = [](const std::string& what) {
    std::cerr << "mailseal-certcheck: " << what << "\n";
    return 2;
  };
  pki::TrustList trust;
  for (const std::string& f : anchors)
    if (mailseal::Status st = trust.LoadFile(f, /*anchors=*/true, /*crls=*/false); !st.ok()) return fail(st.message());
  auto read_certs = [&](const std::string& f, std::vector<pki::X509Ptr>* out) -> mailseal::Status {
    mailseal::Result<std::string> data = mailseal::base::ReadFile(f, 32u << 20);
    if (!data.ok()) return data.status();
    // Read more than the validator considers, so that it — not the reader — refuses a bag of
    // too many intermediates, with its verdict and reason.
    mailseal::Result<std::vector<pki::X509Ptr>> certs = pki::ParseCertificates(*data, 4096);
    if (!certs.ok()) return mailseal::Status(certs.status().code(), f + ": " + certs.status().message());
    out->insert(out->end(), certs->begin(), certs->end());
    return mailseal::OkStatus();
  };
  std::vector<pki::X509Ptr> leaf, inter;
  std::vector<pki::CrlPtr> crl_list;
  if (mailseal::Status st = read_certs(cert_file, &leaf); !st.ok()) return fail(st.message());
  for (const std::string& f : untrusted)
    if (mailseal::Status st = read_certs(f, &inter); !st.ok()) return fail(st.message());
  for (const std::string& f : crls) {
    mailseal::Result<std::string> data = mailseal::base::ReadFile(f, 32u << 20);
    if (!data.ok()) return fail(data.status().message());
    mailseal::Result<std::vector<pki::CrlPtr>> list = pki::ParseCrls(*data);
    if (!list.ok()) return fail(f + ": " + list.status().message());
    crl_list.insert(crl_list.end(), list->begin(), list->end());
  }

  pki::Request r;
  r.leaf = leaf.front().get();
  for (const pki::X509Ptr& c : inter) r.untrusted.push_back(c.get());
  for (const pki::CrlPtr& c : crl_list) r.crls.push_back(c.get());
  if (!time_text.empty() && !ParseTime(time_text, &r.at_unix)) return fail("--time: not a time: " + time_text);
  r.purpose = purpose_text == "smime-sign" ? pki::Purpose::kSmimeSign
            : purpose_text == "smime-encrypt" ? pki::Purpose::kSmimeEncrypt
            : purpose_text == "tls-server" ? pki::Purpose::kTlsServer
            : purpose_text == "tls-client" ? pki::Purpose::kTlsClient : pki::Purpose::kAny;
  r.revocation = revocation;
  r.delta_crls = deltas;
  r.policy.check = policy_check || explicit_policy || inhibit_mapping || inhibit_any || !policies.empty();
  r.policy.initial_policy_set = policies;
  r.policy.explicit_policy = explicit_policy;
  r.policy.inhibit_mapping = inhibit_mapping;
  r.policy.inhibit_any = inhibit_any;
  r.max_depth = max_depth;
  r.email = email;
  r.host = host;
  r.ip = ip;
  pki::Outcome o = pki::Validate(trust, r);

  if (json) {
    std::string chain, pol;
    for (const pki::X509Ptr& c : o.chain) chain += (chain.empty() ? "" : ",") + JsonString(pki::Describe(c.get()));
    for (const std::string& p : o.user_constrained_policies) pol += (pol.empty() ? "" : ",") + JsonString(p);
    std::cout << "{\"verdict\":" << JsonString(pki::VerdictName(o.verdict)) << ",\"valid\":" << (o.ok() ? "true" : "false")
              << ",\"reason\":" << JsonString(o.reason) << ",\"error\":" << o.error << ",\"chain\":[" << chain
              << "],\"user_constrained_policies\":[" << pol << "]}\n";
  } else {
    std::cout << pki::VerdictName(o.verdict) << (o.reason.empty() ? "" : ": " + o.reason) << "\n";
    for (const pki::X509Ptr& c : o.chain) std::cout << "  chain: " << pki::Describe(c.get()) << "\n";
    for (const std::string& p : o.user_constrained_policies) std::cout << "  policy: " << p << "\n";
  }
  return o.ok() ? 0 : 1;
}
