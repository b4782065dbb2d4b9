// ceremony.cc — mailsealctl ceremony: quorum key ceremonies; a custodian signs here, with a
// key that never leaves this host.
#include <openssl/pem.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <sys/stat.h>
#include <ctime>

#include <openssl/crypto.h>

#include "dataplane/records/archive.h"

#include "dataplane/base/sha256_sign.h"
#include "tools/mailsealctl/cli.h"

namespace mailsealctl {
namespace {
using CS = v1::CeremonyService::Stub;

struct CeremonyArgs {
  std::string id, kind = "destroy-key", label, dca_label, key_type, org, country, reason, custodian, custodian_key,
      transcript_out, csr_dir;
  std::vector<std::string> domains;
  // open-archive (DE-21)
  std::string since, until, sender, recipient, format = "mbox", share_file, export_out;
};

// UnixSeconds: "1767225600", "2026-12-01" or "2026-12-01T10:00:00" (UTC); -1 when neither.
int64_t UnixSeconds(const std::string& v) {
  if (v.empty()) return 0;
  if (v.find_first_not_of("0123456789") == std::string::npos) return std::stoll(v);
  tm t{};
  const char* end = strptime(v.c_str(), v.size() > 10 ? "%Y-%m-%dT%H:%M:%S" : "%Y-%m-%d", &t);
  if (!end || *end) return -1;
  return static_cast<int64_t>(timegm(&t));
}

// WriteExport: an open-archive export to a file (mbox) or a directory (Maildir: cur/, new/, tmp/).
std::string WriteExport(const v1::ApproveCeremonyResponse& r, const std::string& out) {
  if (r.archive_files_size() == 0) {
    std::ofstream f(out, std::ios::binary | std::ios::trunc);
    if (!(f << r.archive_mbox()) || !f.flush()) return out + ": cannot be written";
    return "";
  }
  for (const char* sub : {"", "/cur", "/new", "/tmp"}) ::mkdir((out + sub).c_str(), 0700);
  for (const v1::ArchiveFile& file : r.archive_files()) {
    if (file.name().find("..") != std::string::npos || file.name().front() == '/') return file.name() + ": refused name";
    std::ofstream f(out + "/" + file.name(), std::ios::binary | std::ios::trunc);
    if (!(f << file.content()) || !f.flush()) return out + "/" + file.name() + ": cannot be written";
  }
  return "";
}

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
  if (a.kind == "open-archive") {
    int64_t since = UnixSeconds(a.since), until = UnixSeconds(a.until);
    if (since < 0 || until < 0) {
      std::fprintf(stderr, "mailsealctl: --since/--until: unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS (UTC)\n");
      return kUsage;
    }
    req.set_archive_since_unix_s(since);
    req.set_archive_until_unix_s(until);
    req.set_archive_sender(a.sender);
    req.set_archive_recipient(a.recipient);
    req.set_archive_format(a.format);
  }
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
    std::string what = a.kind == "initialise"     ? "make the domain's key pairs in the token"
                       : a.kind == "open-archive" ? "export from the archive (each approval brings its share)"
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
  if (cur.kind() == "open-archive") {   // the share is opened here, with the custodian's key
    if (a.share_file.empty()) {
      std::fprintf(stderr, "mailsealctl: an open-archive approval needs --archive-share (your share file)\n");
      return kUsage;
    }
    std::ifstream in(a.share_file, std::ios::binary);
    std::stringstream pem;
    pem << in.rdbuf();
    FILE* kf = std::fopen(a.custodian_key.c_str(), "r");
    EVP_PKEY* key = kf ? PEM_read_PrivateKey(kf, nullptr, nullptr, nullptr) : nullptr;
    if (kf) std::fclose(kf);
    mailseal::Result<std::string> share = key ? mailseal::records::DecryptShare(pem.str(), key, "")
                                              : mailseal::Result<std::string>(mailseal::InvalidArgumentError("no key"));
    EVP_PKEY_free(key);
    if (!share.ok()) {
      std::fprintf(stderr, "mailsealctl: %s: %s\n", a.share_file.c_str(), share.status().message().c_str());
      return kError;
    }
    req.set_archive_share(*share);
    OPENSSL_cleanse(share->data(), share->size());
  }
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
  if (resp.state() == "done" && cur.kind() == "open-archive") {
    if (a.export_out.empty()) {
      std::fprintf(stderr, "mailsealctl: the export was returned but no --export-out was given: it is not kept anywhere\n");
      return kError;
    }
    if (std::string err = WriteExport(resp, a.export_out); !err.empty()) {
      std::fprintf(stderr, "mailsealctl: %s\n", err.c_str());
      return kError;
    }
    std::printf("%u message(s) written to %s\n", resp.archive_messages(), a.export_out.c_str());
  }
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
  start->add_option("--kind", a->kind, "destroy-key (default), initialise or open-archive")
      ->check(CLI::IsMember({"destroy-key", "initialise", "open-archive"}));
  start->add_option("--since", a->since, "open-archive: archived at or after (unix s, YYYY-MM-DD[THH:MM:SS] UTC)");
  start->add_option("--until", a->until, "open-archive: archived before");
  start->add_option("--sender", a->sender, "open-archive: only from this address");
  start->add_option("--recipient", a->recipient, "open-archive: only to this address");
  start->add_option("--format", a->format, "open-archive: mbox (default) or maildir")
      ->check(CLI::IsMember({"mbox", "maildir"}));
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
  approve->add_option("--archive-share", a->share_file,
                      "open-archive: your share file (<archive>/shares/<you>.pem), opened here with --custodian-key");
  approve->add_option("--export-out", a->export_out,
                      "open-archive: where the export goes when your approval meets the quorum (a file for mbox, a "
                      "directory for maildir)");
  approve->add_option("--csr-out", a->csr_dir, "initialise: write the CSRs to DIR/<label>.csr when the quorum is met")
      ->check(CLI::ExistingDirectory);
  On(approve, chosen, [a](const Context& c) { return Approve(c, *a); });
  CLI::App* status = cer->add_subcommand("status", "state and transcript of a ceremony");
  status->add_option("ceremony_id", a->id, "ceremony id")->required();
  status->add_option("--transcript-out", a->transcript_out, "write the transcript (binary) here");
  On(status, chosen, [a](const Context& c) { return Status(c, *a); });
}

}  // namespace mailsealctl
