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
    std::printf("%-6s %-24s %-7s %-10s %-14s %-10s %s\n", "KIND", "DOMAIN", "SLOT", "SOURCE", "STATUS", "NOT AFTER", "SUBJECT");
    for (const auto& i : resp.certificates()) {
      std::printf("%-6s %-24s %-7s %-10s %-14s %-10s %s\n", i.kind().c_str(), i.domain().empty() ? "-" : i.domain().c_str(),
                  i.slot().empty() ? "-" : i.slot().c_str(), i.source().c_str(), i.status().c_str(),
                  Day(i.not_after_unix()).c_str(), i.subject().c_str());
      if (!i.reason().empty()) std::printf("       why: %s\n", i.reason().c_str());
    }
  });
}

int Show(const Context& c, const std::string& domain) {
  auto cs = v1::CertService::NewStub(c.channel);
  v1::ListCertificatesRequest req;
  req.set_domain(domain);
  v1::ListCertificatesResponse resp;
  if (int rc = Call(cs.get(), &CS::ListCertificates, req, &resp)) return rc;
  if (resp.certificates().empty()) {
    std::fprintf(stderr, "mailsealctl: no certificate is held for %s\n", domain.c_str());
    return kError;
  }
  return c.Print(resp, [&] {
    for (const auto& i : resp.certificates()) {
      std::printf("%s %s (%s%s)\n  subject:   %s\n  serial:    %s\n  not after: %s\n  status:    %s%s%s\n",
                  i.kind().c_str(), i.slot().c_str(), i.source().c_str(), i.pinned_by_config() ? ", in the configuration" : "",
                  i.subject().c_str(), i.serial().c_str(), Day(i.not_after_unix()).c_str(), i.status().c_str(),
                  i.reason().empty() ? "" : " — ", i.reason().c_str());
      for (int k = 0; k < i.chain_size(); ++k) std::printf("  %s %s\n", k == 0 ? "chain:    " : "          ", i.chain(k).c_str());
      std::printf("%s\n", i.pem().c_str());
    }
  });
}

int Add(const Context& c, const std::string& domain, const std::string& file, bool pin) {
  v1::AddCertificateRequest req;
  req.set_domain(domain);
  req.set_pin(pin);
  if (!Slurp(file, req.mutable_certificate())) {
    std::fprintf(stderr, "mailsealctl: cannot read %s\n", file.c_str());
    return kUsage;
  }
  auto cs = v1::CertService::NewStub(c.channel);
  v1::AddCertificateResponse resp;
  if (int rc = Call(cs.get(), &CS::AddCertificate, req, &resp)) return rc;
  return c.Print(resp, [&] { std::printf("%s: %s%s\n", domain.c_str(), resp.what().c_str(), pin ? " (pinned)" : ""); });
}

int Approve(const Context& c, const std::string& domain) {
  v1::ApproveCertificateRequest req;
  req.set_domain(domain);
  auto cs = v1::CertService::NewStub(c.channel);
  v1::ApproveCertificateResponse resp;
  if (int rc = Call(cs.get(), &CS::ApproveCertificate, req, &resp)) return rc;
  return c.Print(resp, [&] { std::printf("%s: %s (approved)\n", domain.c_str(), resp.what().c_str()); });
}

int Remove(const Context& c, const std::string& domain, const std::string& kind) {
  v1::RemoveCertificateRequest req;
  req.set_domain(domain);
  req.set_kind(kind);
  auto cs = v1::CertService::NewStub(c.channel);
  v1::RemoveCertificateResponse resp;
  if (int rc = Call(cs.get(), &CS::RemoveCertificate, req, &resp)) return rc;
  return c.Print(resp, [&] { std::printf("%s: %s certificates removed\n", domain.c_str(), kind.c_str()); });
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
  struct Args {
    std::string domain, file, kind = "dca";
    bool pin = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* show = certs->add_subcommand("show", "a partner's certificates (current, old, next) with chain and status");
  show->add_option("domain", a->domain, "the partner domain")->required();
  On(show, chosen, [a](const Context& c) { return Show(c, a->domain); });
  CLI::App* add = certs->add_subcommand("add", "store a partner's DCA or DSA certificate (validated first)");
  add->add_option("domain", a->domain, "the partner domain")->required();
  add->add_option("file", a->file, "the certificate (PEM or DER)")->required();
  add->add_flag("--pin", a->pin, "a DCA that learning never replaces");
  On(add, chosen, [a](const Context& c) { return Add(c, a->domain, a->file, a->pin); });
  CLI::App* pin = certs->add_subcommand("pin", "store a partner's DCA certificate and pin it (= add --pin)");
  pin->add_option("domain", a->domain, "the partner domain")->required();
  pin->add_option("file", a->file, "the certificate (PEM or DER)")->required();
  On(pin, chosen, [a](const Context& c) { return Add(c, a->domain, a->file, true); });
  CLI::App* approve = certs->add_subcommand("approve", "use a discovered certificate that waits for approval");
  approve->add_option("domain", a->domain, "the partner domain")->required();
  On(approve, chosen, [a](const Context& c) { return Approve(c, a->domain); });
  CLI::App* remove = certs->add_subcommand("remove", "forget a partner's certificates of one kind");
  remove->add_option("domain", a->domain, "the partner domain")->required();
  remove->add_option("--kind", a->kind, "dca or dsa")->capture_default_str();
  On(remove, chosen, [a](const Context& c) { return Remove(c, a->domain, a->kind); });
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
