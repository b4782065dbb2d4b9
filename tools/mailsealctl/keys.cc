// keys.cc — mailsealctl keys: key pairs on the token, their CSRs and certificates.
#include <fstream>
#include <vector>

#include "tools/mailsealctl/cli.h"

namespace mailsealctl {
namespace {
using KS = v1::KeyService::Stub;

struct KeyArgs {
  std::string label, purpose, key_type, cert_file, chain_file, csr_out;
  std::vector<std::string> domains;
};

// WriteCsr prints the CSR, or writes it to --csr-out.
int WriteCsr(const KeyArgs& a, const std::string& csr) {
  if (a.csr_out.empty()) {
    std::fputs(csr.c_str(), stdout);
    return kOk;
  }
  std::ofstream out(a.csr_out, std::ios::trunc);
  out << csr;
  if (!out) {
    std::fprintf(stderr, "mailsealctl: %s: cannot be written\n", a.csr_out.c_str());
    return kError;
  }
  std::printf("CSR written to %s\n", a.csr_out.c_str());
  return kOk;
}

int List(const Context& c) {
  auto ks = v1::KeyService::NewStub(c.channel);
  v1::ListKeysResponse resp;
  if (int rc = Call(ks.get(), &KS::ListKeys, v1::ListKeysRequest(), &resp)) return rc;
  return c.Print(resp, [&] {
    std::printf("%-20s %-12s %-9s %7s  %-3s %-40s %s\n", "LABEL", "PURPOSE", "TYPE", "AGE", "USE", "CERTIFICATE", "NOT AFTER");
    for (const auto& k : resp.keys()) PrintKey(k);
  });
}

int Generate(const Context& c, const KeyArgs& a) {
  auto ks = v1::KeyService::NewStub(c.channel);
  v1::GenerateKeyRequest req;
  req.set_label(a.label);
  req.set_purpose(a.purpose);
  req.set_key_type(a.key_type);
  for (const auto& d : a.domains) req.add_domains(d);
  v1::GenerateKeyResponse resp;
  if (int rc = Call(ks.get(), &KS::GenerateKey, req, &resp)) return rc;
  if (c.json) return c.Print(resp, [] {});
  PrintKey(resp.key());
  return WriteCsr(a, resp.csr_pem());
}

int Csr(const Context& c, const KeyArgs& a) {
  auto ks = v1::KeyService::NewStub(c.channel);
  v1::CreateCsrRequest req;
  req.set_label(a.label);
  for (const auto& d : a.domains) req.add_domains(d);
  v1::CreateCsrResponse resp;
  if (int rc = Call(ks.get(), &KS::CreateCsr, req, &resp)) return rc;
  if (c.json) return c.Print(resp, [] {});
  return WriteCsr(a, resp.csr_pem());
}

int Install(const Context& c, const KeyArgs& a) {
  auto ks = v1::KeyService::NewStub(c.channel);
  v1::InstallCertificateRequest req;
  req.set_label(a.label);
  std::string chain;
  if (!Slurp(a.cert_file, req.mutable_certificate_pem()) || (!a.chain_file.empty() && !Slurp(a.chain_file, &chain))) {
    std::fprintf(stderr, "mailsealctl: certificate or chain file cannot be read\n");
    return kUsage;
  }
  if (!chain.empty()) req.add_chain_pem(chain);
  for (const auto& d : a.domains) req.add_domains(d);
  v1::InstallCertificateResponse resp;
  if (int rc = Call(ks.get(), &KS::InstallCertificate, req, &resp)) return rc;
  return c.Print(resp, [&] { PrintKey(resp.key()); });
}
}  // namespace

void AddKeyCommands(CLI::App& app, Runner* chosen) {
  auto a = std::make_shared<KeyArgs>();
  CLI::App* keys = app.add_subcommand("keys", "key pairs on the token")->require_subcommand(1);
  On(keys->add_subcommand("list", "labels, purposes, ages and certificates"), chosen, List);
  CLI::App* gen = keys->add_subcommand("generate", "new key pair inside the token, with its CSR");
  gen->add_option("label", a->label, "label of the new pair")->required();
  gen->add_option("--purpose", a->purpose, "dsa-sign, dca-encrypt or tls (SMTP / API server key)")->required();
  CLI::App* rot = keys->add_subcommand("rotate", "new key pair for PURPOSE (then install its certificate, "
                                                 "and name it in the configuration)");
  rot->add_option("purpose", a->purpose, "dsa-sign, dca-encrypt or tls")->required();
  rot->add_option("--label", a->label, "label of the new pair")->required();
  for (CLI::App* sub : {gen, rot}) {
    sub->add_option("--type", a->key_type, "rsa:2048 (default), rsa:3072, rsa:4096, ec:P-256, ec:P-384");
    sub->add_option("--domain", a->domains, "served domain; for tls a host name or address (repeat)")->required();
    sub->add_option("--csr-out", a->csr_out, "write the CSR here (default: print it)");
    On(sub, chosen, [a](const Context& c) { return Generate(c, *a); });
  }
  CLI::App* csr = keys->add_subcommand("csr", "new CSR for an existing key");
  csr->add_option("label", a->label, "key pair label")->required();
  csr->add_option("--domain", a->domains, "served domain (repeat)")->required();
  csr->add_option("--csr-out", a->csr_out, "write the CSR here (default: print it)");
  On(csr, chosen, [a](const Context& c) { return Csr(c, *a); });
  CLI::App* inst = keys->add_subcommand("install", "install the CA's certificate for a key");
  inst->add_option("label", a->label, "key pair label")->required();
  inst->add_option("certificate", a->cert_file, "certificate (PEM)")->required();
  inst->add_option("--chain", a->chain_file, "intermediate certificates (PEM)");
  inst->add_option("--domain", a->domains, "served domain the certificate must name (repeat)")->required();
  On(inst, chosen, [a](const Context& c) { return Install(c, *a); });
}

}  // namespace mailsealctl
