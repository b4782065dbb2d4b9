// ceremony.cc — mailsealctl ceremony: quorum key ceremonies; a custodian signs here, with a
// key that never leaves this host.
#include <openssl/pem.h>

#include <cstdio>
#include <fstream>

#include "dataplane/base/sha256_sign.h"
#include "tools/mailsealctl/cli.h"

namespace mailsealctl {
namespace {
using CS = v1::CeremonyService::Stub;

struct CeremonyArgs {
  std::string id, kind = "destroy-key", label, dca_label, key_type, org, country, reason, custodian, custodian_key,
      transcript_out, csr_dir;
  std::vector<std::string> domains;
};

// WriteCsrs: each CSR of a finished initialise to <dir>/<label>.csr (for the CA); "" when done.
std::string WriteCsrs(const google::protobuf::RepeatedPtrField<v1::CeremonyCsr>& csrs, const std::string& dir) {
  for (const v1::CeremonyCsr& csr : csrs) {
    std::string path = dir + "/" + csr.key_label() + ".csr";
    std::ofstream out(path, std::ios::trunc);
    if (!(out << csr.csr_pem()) || !out.flush()) return path + ": cannot be written";
  }
  return "";
}

int Start(const Context& c, const CeremonyArgs& a) {
  if (a.kind == "destroy-key" && a.label.empty()) {
    std::fprintf(stderr, "mailsealctl: ceremony start --kind destroy-key needs --key\n");
    return kUsage;
  }
  if (a.kind == "initialise" && a.domains.empty()) {
    std::fprintf(stderr, "mailsealctl: ceremony start --kind initialise needs --domain (the served domains)\n");
    return kUsage;
  }
  auto cs = v1::CeremonyService::NewStub(c.channel);
  v1::StartCeremonyRequest req;
  req.set_kind(a.kind);
  req.set_key_label(a.label);
  req.set_reason(a.reason);
  req.set_dca_key_label(a.dca_label);
  for (const std::string& d : a.domains) req.add_domains(d);
  req.set_key_type(a.key_type);
  req.set_organization(a.org);
  req.set_country(a.country);
  v1::StartCeremonyResponse resp;
  if (int rc = Call(cs.get(), &CS::StartCeremony, req, &resp)) return rc;
  return c.Print(resp, [&] {
    std::string names;
    for (const auto& n : resp.custodians()) names += (names.empty() ? "" : ", ") + n;
    std::string what = a.kind == "initialise" ? "make the domain's key pairs in the token"
                                              : "destroy key pair '" + a.label + "'";
    std::printf("ceremony %s: %s once %u of %s approve\nstatement to sign:\n%s", resp.ceremony_id().c_str(), what.c_str(),
                resp.threshold(), names.c_str(), resp.statement().c_str());
  });
}

int Approve(const Context& c, const CeremonyArgs& a) {
  auto cs = v1::CeremonyService::NewStub(c.channel);
  v1::GetCeremonyRequest greq;
  greq.set_ceremony_id(a.id);
  v1::GetCeremonyResponse cur;
  if (int rc = Call(cs.get(), &CS::GetCeremony, greq, &cur)) return rc;
  if (cur.statement().empty()) {
    std::fprintf(stderr, "mailsealctl: ceremony %s is %s: nothing to approve\n", a.id.c_str(), cur.state().c_str());
    return kError;
  }
  // The custodian signs here; only the signature is sent.
  FILE* f = std::fopen(a.custodian_key.c_str(), "r");
  EVP_PKEY* pkey = f ? PEM_read_PrivateKey(f, nullptr, nullptr, nullptr) : nullptr;
  if (f) std::fclose(f);
  if (!pkey) {
    std::fprintf(stderr, "mailsealctl: %s: not a readable private key (PEM)\n", a.custodian_key.c_str());
    return kUsage;
  }
  mailseal::Result<std::string> signature = mailseal::base::Sha256Sign(pkey, cur.statement());
  EVP_PKEY_free(pkey);
  if (!signature.ok()) {
    std::fprintf(stderr, "mailsealctl: signing the statement failed: %s\n", signature.status().message().c_str());
    return kError;
  }
  std::printf("signing for key pair '%s':\n%s", cur.key_label().c_str(), cur.statement().c_str());
  v1::ApproveCeremonyRequest req;
  req.set_ceremony_id(a.id);
  req.set_custodian(a.custodian);
  req.set_signature(*signature);
  v1::ApproveCeremonyResponse resp;
  if (int rc = Call(cs.get(), &CS::ApproveCeremony, req, &resp)) return rc;
  c.Print(resp, [&] {
    std::printf("approvals %u; ceremony %s%s%s\n", resp.approvals(), resp.state().c_str(), resp.detail().empty() ? "" : ": ",
                resp.detail().c_str());
    for (const v1::CeremonyCsr& csr : resp.csrs())
      if (a.csr_dir.empty()) std::printf("%s (%s):\n%s", csr.key_label().c_str(), csr.purpose().c_str(), csr.csr_pem().c_str());
      else std::printf("%s (%s): %s/%s.csr\n", csr.key_label().c_str(), csr.purpose().c_str(), a.csr_dir.c_str(),
                       csr.key_label().c_str());
  });
  if (!a.csr_dir.empty())
    if (std::string err = WriteCsrs(resp.csrs(), a.csr_dir); !err.empty()) {
      std::fprintf(stderr, "mailsealctl: %s\n", err.c_str());
      return kError;
    }
  return resp.state() == "failed" ? kError : kOk;
}

int Status(const Context& c, const CeremonyArgs& a) {
  auto cs = v1::CeremonyService::NewStub(c.channel);
  v1::GetCeremonyRequest req;
  req.set_ceremony_id(a.id);
  v1::GetCeremonyResponse resp;
  if (int rc = Call(cs.get(), &CS::GetCeremony, req, &resp)) return rc;
  if (!a.transcript_out.empty()) {
    std::ofstream out(a.transcript_out, std::ios::binary | std::ios::trunc);
    out << resp.transcript();
  }
  return c.Print(resp, [&] { std::printf("state %s\n%s", resp.state().c_str(), resp.text().c_str()); });
}
}  // namespace

void AddCeremonyCommands(CLI::App& app, Runner* chosen) {
  auto a = std::make_shared<CeremonyArgs>();
  CLI::App* cer = app.add_subcommand("ceremony", "quorum key ceremonies")->require_subcommand(1);
  CLI::App* start = cer->add_subcommand(
      "start", "propose a ceremony (needs M custodians): destroy a key pair, or initialise — make the domain's "
               "signing and decryption key pairs in the token, CSRs out (first boot)");
  start->add_option("--kind", a->kind, "destroy-key (default) or initialise")
      ->check(CLI::IsMember({"destroy-key", "initialise"}));
  start->add_option("--key", a->label, "destroy-key: the key pair; initialise: the DSA pair's label (default dsa)");
  start->add_option("--dca-key", a->dca_label, "initialise: the DCA pair's label (default dca)");
  start->add_option("--domain", a->domains, "initialise: a served domain the CSRs name (repeat for more)");
  start->add_option("--key-type", a->key_type, "initialise: rsa:2048 (default), rsa:3072, rsa:4096, ec:P-256, ec:P-384");
  start->add_option("--org", a->org, "initialise: organisation in the CSRs' subject");
  start->add_option("--country", a->country, "initialise: two-letter country in the CSRs' subject");
  start->add_option("--reason", a->reason, "why (in the transcript)")->required();
  On(start, chosen, [a](const Context& c) { return Start(c, *a); });
  CLI::App* approve = cer->add_subcommand("approve", "sign the pending step with a custodian's key, here");
  approve->add_option("ceremony_id", a->id, "ceremony id")->required();
  approve->add_option("--custodian", a->custodian, "registered custodian name")->required();
  approve->add_option("--custodian-key", a->custodian_key, "the custodian's private key (PEM; stays on this host)")
      ->required();
  approve->add_option("--csr-out", a->csr_dir, "initialise: write the CSRs to DIR/<label>.csr when the quorum is met")
      ->check(CLI::ExistingDirectory);
  On(approve, chosen, [a](const Context& c) { return Approve(c, *a); });
  CLI::App* status = cer->add_subcommand("status", "state and transcript of a ceremony");
  status->add_option("ceremony_id", a->id, "ceremony id")->required();
  status->add_option("--transcript-out", a->transcript_out, "write the transcript (binary) here");
  On(status, chosen, [a](const Context& c) { return Status(c, *a); });
}

}  // namespace mailsealctl
