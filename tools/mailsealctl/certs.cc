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
}  // namespace

void AddCertCommands(CLI::App& app, Runner* chosen) {
  CLI::App* certs = app.add_subcommand("certs", "the trust list and partner certificates")->require_subcommand(1);
  On(certs->add_subcommand("list", "every anchor and partner certificate, with its status now"), chosen, List);
  On(certs->add_subcommand("crls", "the CRL distribution points followed and their last fetch"), chosen, Crls);
  On(certs->add_subcommand("reload", "put the configured trust list, CRL files and pins in force"), chosen, Reload);
}

}  // namespace mailsealctl
