// certs.cc — mailsealctl certs: the certificates the gateway decides with (issue #15).
#include "tools/mailsealctl/cli.h"

namespace mailsealctl {
namespace {
using CS = v1::CertService::Stub;

std::string Day(int64_t unix_s) { return unix_s ? Time(unix_s * 1000).substr(0, 10) : "-"; }

int List(const Context& c) {
  auto cs = v1::CertService::NewStub(c.channel);
  v1::ListCertificatesResponse resp;
  if (int rc = Call(cs.get(), &CS::ListCertificates, v1::ListCertificatesRequest(), &resp)) return rc;
  return c.Print(resp, [&] {
    std::printf("%-6s %-24s %-10s %-14s %-10s %s\n", "KIND", "DOMAIN", "SOURCE", "STATUS", "NOT AFTER", "SUBJECT");
    for (const auto& i : resp.certificates()) {
      std::printf("%-6s %-24s %-10s %-14s %-10s %s\n", i.kind().c_str(), i.domain().empty() ? "-" : i.domain().c_str(),
                  i.source().c_str(), i.status().c_str(), Day(i.not_after_unix()).c_str(), i.subject().c_str());
      if (!i.reason().empty()) std::printf("       why: %s\n", i.reason().c_str());
    }
  });
}

int Crls(const Context& c) {
  auto cs = v1::CertService::NewStub(c.channel);
  v1::ListRevocationSourcesResponse resp;
  if (int rc = Call(cs.get(), &CS::ListRevocationSources, v1::ListRevocationSourcesRequest(), &resp)) return rc;
  return c.Print(resp, [&] {
    std::printf("%-10s %-10s %-8s %s\n", "FETCHED", "NEXT", "FAILURES", "URL");
    for (const auto& s : resp.sources()) {
      std::printf("%-10s %-10s %-8d %s\n", Day(s.fetched_at_unix()).c_str(), Day(s.next_update_unix()).c_str(),
                  s.failures(), s.url().c_str());
      if (!s.last_error().empty()) std::printf("           last error: %s\n", s.last_error().c_str());
    }
  });
}

int Reload(const Context& c) {
  auto cs = v1::CertService::NewStub(c.channel);
  v1::ReloadCertificatesResponse resp;
  if (int rc = Call(cs.get(), &CS::ReloadCertificates, v1::ReloadCertificatesRequest(), &resp)) return rc;
  return c.Print(resp, [] { std::printf("trust list, CRL files and pinned partner certificates reloaded\n"); });
}

int Refresh(const Context& c, const std::string& domain) {
  auto cs = v1::CertService::NewStub(c.channel);
  v1::RefreshCertificateRequest req;
  req.set_domain(domain);
  v1::RefreshCertificateResponse resp;
  if (int rc = Call(cs.get(), &CS::RefreshCertificate, req, &resp)) return rc;
  return c.Print(resp, [&] { std::printf("%s: %s\n", domain.c_str(), resp.outcome().c_str()); });
}

int Lookups(const Context& c) {
  auto cs = v1::CertService::NewStub(c.channel);
  v1::ListLookupsResponse resp;
  if (int rc = Call(cs.get(), &CS::ListLookups, v1::ListLookupsRequest(), &resp)) return rc;
  return c.Print(resp, [&] {
    std::printf("%-20s %-28s %s\n", "LAST TRY", "DOMAIN", "STATE");
    for (const auto& l : resp.lookups())
      std::printf("%-20s %-28s %s\n", l.last_try_unix_ms() ? Time(l.last_try_unix_ms()).substr(0, 19).c_str() : "-",
                  l.domain().c_str(), l.state().c_str());
  });
}

int Smimea(const Context& c, uint32_t ttl) {
  auto cs = v1::CertService::NewStub(c.channel);
  v1::ExportSmimeaRequest req;
  req.set_ttl(ttl);
  v1::ExportSmimeaResponse resp;
  if (int rc = Call(cs.get(), &CS::ExportSmimea, req, &resp)) return rc;
  return c.Print(resp, [&] {
    for (const std::string& l : resp.lines()) std::printf("%s\n", l.c_str());
  });
}
}  // namespace

void AddCertCommands(CLI::App& app, Runner* chosen) {
  CLI::App* certs = app.add_subcommand("certs", "the trust list and partner certificates")->require_subcommand(1);
  On(certs->add_subcommand("list", "every anchor and partner certificate, with its status now"), chosen, List);
  On(certs->add_subcommand("crls", "the CRL distribution points followed and their last fetch"), chosen, Crls);
  On(certs->add_subcommand("reload", "put the configured trust list, CRL files and pins in force"), chosen, Reload);
  auto domain = std::make_shared<std::string>();
  CLI::App* refresh = certs->add_subcommand("refresh", "look a partner's certificate up now (LDAP directories, SMIMEA) and release mail held for it");
  refresh->add_option("domain", *domain, "the partner domain")->required();
  On(refresh, chosen, [domain](const Context& c) { return Refresh(c, *domain); });
  On(certs->add_subcommand("lookups", "partner domains whose certificates are being looked for"), chosen, Lookups);
  auto ttl = std::make_shared<uint32_t>(3600);
  CLI::App* smimea = certs->add_subcommand("smimea", "our DSA and DCA certificates as SMIMEA zone-file lines (RFC 8162)");
  smimea->add_option("--ttl", *ttl, "TTL of the lines (seconds)")->capture_default_str();
  On(smimea, chosen, [ttl](const Context& c) { return Smimea(c, *ttl); });
}

}  // namespace mailsealctl
