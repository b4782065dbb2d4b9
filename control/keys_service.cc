// keys_service.cc — see keys_service.h.
#include "control/keys_service.h"

#include "dataplane/base/file.h"

#include <google/protobuf/text_format.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <ctime>
#include <fstream>
#include <cstdio>
#include <sys/stat.h>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>

#include <openssl/crypto.h>

#include "dataplane/records/archive.h"
#include "hsm/ceremony.h"
#include "hsm/csr.h"
#include "hsm/keys.h"
#include "hsm/lifecycle.h"
#include "hsm/token_key.h"
#include "mailseal/v1/control.grpc.pb.h"

namespace mailseal::control {
namespace {
using base::Log;
using base::LogLevel;
using grpc::ServerContext;
using grpc::Status;
using grpc::StatusCode;
namespace v1 = mailseal::v1;

// WithSession runs `f` with a session of the token's pool; UNAVAILABLE while the token is down.
template <typename F>
auto WithSession(const KeyDeps* d, F f) -> decltype(f(std::declval<hsm::Session&>())) {
  std::shared_ptr<hsm::TokenHandle> h = d->token ? d->token->Handle() : nullptr;
  if (!h) return UnavailableError("the security module is unavailable");
  hsm::SessionPool::Lease lease = h->pool->Acquire();
  return f(*lease);
}

// FromConfig: subject and notAfter of the certificate the configuration names for `label`
// (keys made before the API, whose certificates are files rather than token objects).
void FromConfig(const KeyDeps* d, const std::string& label, hsm::KeyInfo* k) {
  auto it = d->config_certs.find(label);
  if (it == d->config_certs.end() || !k->cert_subject.empty()) return;
  BIO* b = BIO_new_mem_buf(it->second.data(), static_cast<int>(it->second.size()));
  X509* x = PEM_read_bio_X509(b, nullptr, nullptr, nullptr);
  BIO_free(b);
  if (!x) return;
  char buf[512];
  X509_NAME_oneline(X509_get_subject_name(x), buf, sizeof buf);
  k->cert_subject = buf;
  std::tm tm{};
  ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm);
  k->cert_not_after_unix_s = static_cast<int64_t>(timegm(&tm));
  X509_free(x);
}

void Fill(hsm::KeyInfo k, const KeyDeps* d, hsm::Session& s, v1::KeyInfo* out) {
  FromConfig(d, k.label, &k);
  int64_t now = static_cast<int64_t>(std::time(nullptr));
  out->set_label(k.label);
  out->set_id(k.id_hex);
  out->set_purpose(hsm::PurposeName(k.purpose));
  out->set_key_type(k.key_type);
  out->set_created_unix_s(k.created_unix_s);
  out->set_age_days(k.created_unix_s ? (now - k.created_unix_s) / hsm::kDay : 0);
  out->set_certificate_subject(k.cert_subject);
  out->set_certificate_not_after_unix_s(k.cert_not_after_unix_s);
  out->set_expiry_warning(k.cert_not_after_unix_s ? hsm::ExpiryWarning(k.cert_not_after_unix_s, now) : 0);
  out->set_in_use(d->in_use.count(k.label) > 0);
  Result<hsm::KeyPair> kp = hsm::FindKeyPair(s, k.label);
  out->set_may_sign(kp.ok() && hsm::CheckMaySign(s, *kp).ok());
  out->set_may_recertify(kp.ok() && hsm::CheckMayRecertify(s, *kp).ok());
}

Result<v1::KeyInfo> Describe(const KeyDeps* d, hsm::Session& s, const std::string& label) {
  Result<std::vector<hsm::KeyInfo>> all = hsm::ListKeys(s);
  if (!all.ok()) return all.status();
  for (const hsm::KeyInfo& k : *all)
    if (k.label == label) {
      v1::KeyInfo out;
      Fill(k, d, s, &out);
      return out;
    }
  return NotFoundError(StrCat("no key labelled '", label, "' on the token"));
}

Result<hsm::CsrRequest> CsrFor(hsm::Purpose p, const google::protobuf::RepeatedPtrField<std::string>& domains,
                               const std::string& org, const std::string& country) {
  if (p != hsm::Purpose::kDsaSign && p != hsm::Purpose::kDcaEncrypt && p != hsm::Purpose::kTls)
    return InvalidArgumentError("field 'purpose': dsa-sign, dca-encrypt or tls");
  if (domains.empty())
    return InvalidArgumentError(p == hsm::Purpose::kTls ? "field 'domains': the host names (or addresses) the TLS certificate names"
                                                        : "field 'domains': at least one served domain");
  if (!country.empty() && country.size() != 2) return InvalidArgumentError("field 'country': two letters");
  return hsm::CsrRequest{p, {domains.begin(), domains.end()}, org, country};
}

Result<std::string> SignCsr(hsm::Session& s, const hsm::KeyPair& kp, const hsm::CsrRequest& req) {
  Result<EVP_PKEY*> key = hsm::TokenPrivateKey(&s, kp);
  if (!key.ok()) return key.status();
  Result<std::string> csr = hsm::BuildCsrPem(*key, req);
  EVP_PKEY_free(*key);
  return csr;
}

}  // namespace

Result<std::vector<v1::KeyInfo>> DescribeKeys(const KeyDeps* d) {
  std::vector<v1::KeyInfo> out;
  mailseal::Status st = WithSession(d, [&](hsm::Session& s) -> mailseal::Status {
    Result<std::vector<hsm::KeyInfo>> all = hsm::ListKeys(s);
    if (!all.ok()) return all.status();
    for (const hsm::KeyInfo& k : *all) Fill(k, d, s, &out.emplace_back());
    return OkStatus();
  });
  if (!st.ok()) return st;
  return out;
}

namespace {

class KeyServiceImpl final : public v1::KeyService::Service {
 public:
  KeyServiceImpl(const Guard* g, const KeyDeps* d) : guard_(g), d_(d) {}

  Status ListKeys(ServerContext* ctx, const v1::ListKeysRequest*, v1::ListKeysResponse* resp) override {
    std::string actor;
    if (Status st = guard_->Check(ctx, "mailseal.v1.KeyService.ListKeys", "", &actor); !st.ok()) return st;
    mailseal::Status st = WithSession(d_, [&](hsm::Session& s) -> mailseal::Status {
      Result<std::vector<hsm::KeyInfo>> all = hsm::ListKeys(s);
      if (!all.ok()) return all.status();
      for (const hsm::KeyInfo& k : *all) Fill(k, d_, s, resp->add_keys());
      return OkStatus();
    });
    return FromStatus(st);
  }

  Status GenerateKey(ServerContext* ctx, const v1::GenerateKeyRequest* req, v1::GenerateKeyResponse* resp) override {
    std::string actor;
    const char* method = "mailseal.v1.KeyService.GenerateKey";
    std::string object = StrCat(req->label(), " ", req->purpose(), " ", req->key_type());
    if (Status st = guard_->Check(ctx, method, object, &actor); !st.ok()) return st;
    static const std::map<std::string, hsm::KeyType> kTypes = {
        {"", hsm::KeyType::kRsa2048},         {"rsa:2048", hsm::KeyType::kRsa2048}, {"rsa:3072", hsm::KeyType::kRsa3072},
        {"rsa:4096", hsm::KeyType::kRsa4096}, {"ec:P-256", hsm::KeyType::kEcP256},  {"ec:P-384", hsm::KeyType::kEcP384}};
    auto type = kTypes.find(req->key_type());
    hsm::Purpose purpose = req->purpose() == "dca-encrypt" ? hsm::Purpose::kDcaEncrypt
                           : req->purpose() == "tls"       ? hsm::Purpose::kTls
                                                           : hsm::Purpose::kDsaSign;
    if (d_->keys_only_in_ceremony)
      return guard_->Refuse(actor, method, object,
                            Status(StatusCode::FAILED_PRECONDITION,
                                   "keys are made only in a ceremony here (control.ceremony.keys_only_in_ceremony): "
                                   "mailsealctl ceremony start --kind initialise"));
    mailseal::Status st = OkStatus();
    if (type == kTypes.end()) st = InvalidArgumentError("field 'key_type': rsa:2048, rsa:3072, rsa:4096, ec:P-256 or ec:P-384");
    else if (req->purpose() != "dsa-sign" && req->purpose() != "dca-encrypt" && req->purpose() != "tls")
      st = InvalidArgumentError("field 'purpose': dsa-sign, dca-encrypt or tls");
    Result<hsm::CsrRequest> csr_req = CsrFor(purpose, req->domains(), req->organization(), req->country());
    if (st.ok() && !csr_req.ok()) st = csr_req.status();
    if (st.ok())
      st = WithSession(d_, [&](hsm::Session& s) -> mailseal::Status {
        Result<hsm::KeyPair> kp = hsm::GenerateKeyPair(s, {type->second, purpose, req->label()});
        if (!kp.ok()) return kp.status();
        Result<std::string> csr = SignCsr(s, *kp, *csr_req);
        if (!csr.ok()) return csr.status();
        resp->set_csr_pem(*csr);
        Result<v1::KeyInfo> info = Describe(d_, s, req->label());
        if (info.ok()) *resp->mutable_key() = *info;
        return OkStatus();
      });
    if (!st.ok()) {
      guard_->Failed(actor, method, object, st.message());
      return FromStatus(st);
    }
    Log(LogLevel::kInfo, "control", "key generated in the token", {{"label", req->label()}, {"actor", actor}});
    return Status::OK;
  }

  Status CreateCsr(ServerContext* ctx, const v1::CreateCsrRequest* req, v1::CreateCsrResponse* resp) override {
    std::string actor;
    const char* method = "mailseal.v1.KeyService.CreateCsr";
    if (Status st = guard_->Check(ctx, method, req->label(), &actor); !st.ok()) return st;
    mailseal::Status st = WithSession(d_, [&](hsm::Session& s) -> mailseal::Status {
      Result<hsm::KeyPair> kp = hsm::FindKeyPair(s, req->label());
      if (!kp.ok()) return kp.status();
      if (mailseal::Status age = hsm::CheckMayRecertify(s, *kp); !age.ok()) return age;
      Result<hsm::CsrRequest> csr_req = CsrFor(kp->purpose, req->domains(), req->organization(), req->country());
      if (!csr_req.ok()) return csr_req.status();
      Result<std::string> csr = SignCsr(s, *kp, *csr_req);
      if (!csr.ok()) return csr.status();
      resp->set_csr_pem(*csr);
      return OkStatus();
    });
    if (!st.ok()) {
      guard_->Failed(actor, method, req->label(), st.message());
      return FromStatus(st);
    }
    return Status::OK;
  }

  Status InstallCertificate(ServerContext* ctx, const v1::InstallCertificateRequest* req,
                            v1::InstallCertificateResponse* resp) override {
    std::string actor;
    const char* method = "mailseal.v1.KeyService.InstallCertificate";
    if (Status st = guard_->Check(ctx, method, req->label(), &actor); !st.ok()) return st;
    mailseal::Status st = OkStatus();
    if (req->domains().empty()) st = InvalidArgumentError("field 'domains': the served domains the certificate must name");
    else if (d_->anchors_pem.empty()) st = FailedPreconditionError(
        "no trust anchors configured (smime.trust_anchors_file, or control.domain_trust_anchors_file before the smime section exists)");
    if (st.ok())
      st = WithSession(d_, [&](hsm::Session& s) -> mailseal::Status {
        hsm::InstallRequest in{req->label(), req->certificate_pem(), {req->chain_pem().begin(), req->chain_pem().end()},
                               d_->anchors_pem, {req->domains().begin(), req->domains().end()}, 0};
        Result<CK_OBJECT_HANDLE> h = hsm::InstallCertificate(s, in);
        if (!h.ok()) return h.status();
        Result<v1::KeyInfo> info = Describe(d_, s, req->label());
        if (info.ok()) *resp->mutable_key() = *info;
        return OkStatus();
      });
    if (!st.ok()) {
      guard_->Failed(actor, method, req->label(), st.message());
      return FromStatus(st);
    }
    Log(LogLevel::kInfo, "control", "certificate installed", {{"label", req->label()}, {"actor", actor}});
    return Status::OK;
  }

 private:
  const Guard* guard_;
  const KeyDeps* d_;
};

class CeremonyServiceImpl final : public v1::CeremonyService::Service {
 public:
  CeremonyServiceImpl(const Guard* g, const KeyDeps* d, audit::AuditLog* a) : guard_(g), d_(d), audit_(a) { LoadPending(); }

  Status StartCeremony(ServerContext* ctx, const v1::StartCeremonyRequest* req,
                       v1::StartCeremonyResponse* resp) override {
    std::string actor;
    const char* method = "mailseal.v1.CeremonyService.StartCeremony";
    std::string object = StrCat(req->kind(), " ", req->key_label());
    if (Status st = guard_->Check(ctx, method, StrCat(object, " reason=", req->reason()), &actor); !st.ok()) return st;
    const bool init = req->kind() == "initialise";
    const bool archive = req->kind() == "open-archive";
    if (req->kind() != "destroy-key" && !init && !archive)
      return guard_->Refuse(actor, method, object, Invalid("kind", "destroy-key, initialise or open-archive"));
    if (req->reason().empty())
      return guard_->Refuse(actor, method, object,
                            Invalid("reason", "required (it goes to the transcript and the audit trail)"));
    if (d_->threshold == 0)
      return guard_->Refuse(actor, method, object,
                            Status(StatusCode::FAILED_PRECONDITION, "no ceremony custodians configured (control.ceremony)"));
    Params p;
    p.kind = req->kind();
    p.dsa_label = req->key_label();
    std::string action_object;   // what the custodians' statement names
    if (archive) {   // DE-21: the query is fixed now; the custodians approve exactly this export
      if (d_->archive_dir.empty())
        return guard_->Refuse(actor, method, object, Status(StatusCode::FAILED_PRECONDITION, "no archive is configured"));
      p.kind = "open-archive";
      p.format = req->archive_format().empty() ? "mbox" : req->archive_format();
      if (p.format != "mbox" && p.format != "maildir")
        return guard_->Refuse(actor, method, object, Invalid("archive_format", "mbox or maildir"));
      if (req->archive_since_unix_s() < 0 || req->archive_until_unix_s() < 0 ||
          (req->archive_until_unix_s() && req->archive_until_unix_s() <= req->archive_since_unix_s()))
        return guard_->Refuse(actor, method, object, Invalid("archive_until_unix_s", "after archive_since_unix_s"));
      p.query.since_unix_ms = req->archive_since_unix_s() * 1000;
      p.query.until_unix_ms = req->archive_until_unix_s() * 1000;
      p.query.sender = req->archive_sender();
      p.query.recipient = req->archive_recipient();
      action_object = StrCat("since=", req->archive_since_unix_s(), " until=", req->archive_until_unix_s(), " sender=",
                             p.query.sender.empty() ? "*" : p.query.sender, " recipient=",
                             p.query.recipient.empty() ? "*" : p.query.recipient, " format=", p.format);
      p.object = action_object;
    } else if (init) {
      Result<Params> made = InitialiseParams(*req);
      if (!made.ok()) return guard_->Refuse(actor, method, object, FromStatus(made.status()));
      p = std::move(made.value());
      action_object = StrCat("dsa=", p.dsa_label, " dca=", p.dca_label, " key_type=", p.key_type_name, " domains=",
                             Join(p.domains), p.organization.empty() ? "" : StrCat(" O=", p.organization),
                             p.country.empty() ? "" : StrCat(" C=", p.country));
      // Both labels must be free: a ceremony makes keys, it never replaces one.
      for (const std::string& label : {p.dsa_label, p.dca_label}) {
        mailseal::Status taken = WithSession(d_, [&](hsm::Session& s) -> mailseal::Status {
          Result<hsm::KeyPair> kp = hsm::FindKeyPair(s, label);
          if (kp.ok()) return AlreadyExistsError(StrCat("a key pair labelled '", label, "' is on the token already"));
          return kp.status().code() == mailseal::StatusCode::kNotFound ? OkStatus() : kp.status();
        });
        if (!taken.ok()) return guard_->Refuse(actor, method, object, FromStatus(taken));
      }
    } else {
      if (d_->in_use.count(req->key_label()))
        return guard_->Refuse(actor, method, object,
                              Status(StatusCode::FAILED_PRECONDITION, StrCat("'", req->key_label(),
                                                                              "' is in use by the configuration: retire it there first")));
      mailseal::Status exists = WithSession(d_, [&](hsm::Session& s) { return hsm::FindKeyPair(s, req->key_label()).status(); });
      if (!exists.ok()) return FromStatus(exists);
      action_object = req->key_label();
    }
    std::lock_guard<std::mutex> l(mu_);
    size_t pending = 0;
    for (const auto& [id, c] : ceremonies_) pending += c.state == "pending";
    if (pending >= 16) return Status(StatusCode::RESOURCE_EXHAUSTED, "16 ceremonies are pending already");
    Result<hsm::Ceremony> c = hsm::Ceremony::Begin(archive ? "open-archive" : init ? "initialise" : "destroy", d_->threshold, d_->custodians,
                                                   StrCat("started by CN=", actor, ": ", req->reason()));
    if (!c.ok()) return FromStatus(c.status());
    Result<std::string> statement = c->Propose(req->kind(), action_object);
    if (!statement.ok()) return FromStatus(statement.status());
    std::string id = c->transcript().ceremony_id();
    // Finished ceremonies stay readable (their transcripts are also on disk); at most 256 are
    // kept in memory, the oldest finished ones go first.
    while (ceremonies_.size() >= 256) {
      auto oldest = ceremonies_.end();
      for (auto it = ceremonies_.begin(); it != ceremonies_.end(); ++it)
        if (it->second.state != "pending" && (oldest == ceremonies_.end() || it->second.seq < oldest->second.seq)) oldest = it;
      if (oldest == ceremonies_.end()) break;
      ceremonies_.erase(oldest);
    }
    ceremonies_.emplace(id, Entry{std::move(c.value()), archive ? "archive" : init ? p.dsa_label : req->key_label(), "pending",
                                  "", ++seq_, std::move(p), {}, {}, {}, {}, 0, *req});
    if (!archive) {
      if (mailseal::Status kept = KeepPending(ceremonies_.at(id)); !kept.ok()) {
        ceremonies_.erase(id);   // a ceremony a restart would silently drop is not started
        return FromStatus(kept);
      }
    }
    resp->set_ceremony_id(id);
    resp->set_statement(*statement);
    resp->set_threshold(d_->threshold);
    for (const auto& cu : d_->custodians) resp->add_custodians(cu.name());
    Log(LogLevel::kInfo, "control", "ceremony started", {{"id", id}, {"kind", req->kind()}, {"actor", actor}});
    return Status::OK;
  }

  Status ApproveCeremony(ServerContext* ctx, const v1::ApproveCeremonyRequest* req,
                         v1::ApproveCeremonyResponse* resp) override {
    std::string actor;
    const char* method = "mailseal.v1.CeremonyService.ApproveCeremony";
    std::string object = StrCat(req->ceremony_id(), " custodian=", req->custodian());
    if (Status st = guard_->Check(ctx, method, object, &actor); !st.ok()) return st;
    std::lock_guard<std::mutex> l(mu_);
    auto it = ceremonies_.find(req->ceremony_id());
    if (it == ceremonies_.end())
      return guard_->Refuse(actor, method, object, Status(StatusCode::NOT_FOUND, StrCat("no ceremony ", req->ceremony_id())));
    Entry& e = it->second;
    if (e.state != "pending")
      return guard_->Refuse(actor, method, object, Status(StatusCode::FAILED_PRECONDITION, StrCat("the ceremony is ", e.state)));
    // open-archive: every approval brings its custodian's share (read before the approval
    // counts; wiped whatever happens once the quorum acts).
    std::optional<hsm::Share> share;
    if (e.params.kind == "open-archive") {
      Result<hsm::Share> parsed = records::ParseShare(req->archive_share());
      if (!parsed.ok())
        return guard_->Refuse(actor, method, object, Invalid("archive_share", StrCat("required for open-archive: ", parsed.status().message())));
      share = std::move(parsed.value());
    }
    if (mailseal::Status st = e.ceremony.Approve(req->custodian(), req->signature()); !st.ok()) {
      guard_->Failed(actor, method, object, st.message());
      if (share) OPENSSL_cleanse(share->y.data(), share->y.size());
      return FromStatus(st);
    }
    if (share) e.shares.push_back(std::move(*share));
    const auto& steps = e.ceremony.transcript().steps();
    unsigned approvals = static_cast<unsigned>(steps.rbegin()->approvals_size());
    resp->set_approvals(approvals);
    if (approvals < d_->threshold) {
      if (e.params.kind != "open-archive") {
        if (mailseal::Status kept = KeepPending(e); !kept.ok())
          Log(LogLevel::kError, "control", "pending ceremony not kept on disk (a restart would lose this approval)",
              {{"id", req->ceremony_id()}, {"error", kept.message()}});
      }
      resp->set_state("pending");
      return Status::OK;
    }
    // The quorum is there: act, then close the transcript with the audit key's signature.
    mailseal::Status done = WithSession(d_, [&](hsm::Session& s) -> mailseal::Status {
      mailseal::Status acted = e.ceremony.Execute([&]() -> Result<std::string> {
        if (e.params.kind == "initialise") return Initialise(s, e);
        if (e.params.kind == "open-archive") return OpenArchive(e);
        Result<hsm::KeyPair> kp = hsm::FindKeyPair(s, e.key_label);
        if (!kp.ok()) return kp.status();
        if (mailseal::Status st = hsm::DestroyKeyPair(s, *kp); !st.ok()) return st;
        return StrCat("key pair '", e.key_label, "' and its certificate destroyed in the token");
      });
      e.state = acted.ok() ? "done" : "failed";
      e.detail = acted.ok() ? e.ceremony.transcript().steps().rbegin()->detail() : acted.message();
      Result<hsm::KeyPair> audit_key = hsm::FindKeyPair(s, d_->audit_key_label);
      if (!audit_key.ok()) return audit_key.status();
      Result<v1::CeremonyTranscript> t = e.ceremony.Finish(s, *audit_key);
      if (!t.ok()) return t.status();
      std::string path = StrCat(d_->transcript_dir, "/", t->ceremony_id(), ".transcript");
      std::ofstream out(path, std::ios::binary | std::ios::trunc);
      if (!out || !t->SerializeToOstream(&out)) return FailedPreconditionError(StrCat(path, ": cannot be written"));
      return OkStatus();
    });
    v1::AuditRecord r;
    r.set_actor(StrCat("CN=", actor));
    r.set_action(StrCat("ceremony.", e.params.kind));
    r.set_object(e.params.kind == "initialise" ? StrCat(e.params.dsa_label, ",", e.params.dca_label)
                 : e.params.kind == "open-archive" ? StrCat("archive ", e.params.object)
                                                   : e.key_label);
    r.set_outcome(e.state == "done" && done.ok() ? v1::AuditRecord::OUTCOME_DONE : v1::AuditRecord::OUTCOME_FAILED);
    r.set_detail(StrCat("ceremony ", req->ceremony_id(), ": ", e.detail, done.ok() ? "" : StrCat("; transcript: ", done.message())));
    (void)audit_->Append(r);
    Log(LogLevel::kInfo, "control", "ceremony finished", {{"id", req->ceremony_id()}, {"state", e.state}, {"detail", e.detail}});
    std::remove(PendingPath(req->ceremony_id()).c_str());
    resp->set_state(e.state);
    resp->set_detail(done.ok() ? e.detail : StrCat(e.detail, "; transcript not kept: ", done.message()));
    for (const v1::CeremonyCsr& csr : e.csrs) *resp->add_csrs() = csr;
    // The export goes to this caller only and is not kept.
    if (e.params.kind == "open-archive" && e.state == "done") {
      resp->set_archive_messages(e.exported);
      resp->set_archive_mbox(std::move(e.mbox));
      for (records::ExportFile& f : e.files) {
        v1::ArchiveFile* out = resp->add_archive_files();
        out->set_name(std::move(f.name));
        out->set_content(std::move(f.content));
      }
    }
    e.mbox.clear();
    e.files.clear();
    return Status::OK;
  }

  Status GetCeremony(ServerContext* ctx, const v1::GetCeremonyRequest* req, v1::GetCeremonyResponse* resp) override {
    std::string actor;
    if (Status st = guard_->Check(ctx, "mailseal.v1.CeremonyService.GetCeremony", req->ceremony_id(), &actor); !st.ok())
      return st;
    std::lock_guard<std::mutex> l(mu_);
    auto it = ceremonies_.find(req->ceremony_id());
    if (it == ceremonies_.end()) return Status(StatusCode::NOT_FOUND, StrCat("no ceremony ", req->ceremony_id()));
    resp->set_state(it->second.state);
    it->second.ceremony.transcript().SerializeToString(resp->mutable_transcript());
    const v1::CeremonyTranscript& t = it->second.ceremony.transcript();
    google::protobuf::TextFormat::PrintToString(t, resp->mutable_text());
    resp->set_key_label(it->second.key_label);
    resp->set_kind(it->second.params.kind);
    for (const v1::CeremonyCsr& csr : it->second.csrs) *resp->add_csrs() = csr;
    if (it->second.state == "pending" && t.steps_size() && t.steps().rbegin()->requires_approval())
      resp->set_statement(hsm::ApprovalStatement(t.ceremony_id(), t.steps().rbegin()->hash()));
    return Status::OK;
  }

 private:
  // Params: what a ceremony acts on, fixed when it starts (the statement names it).
  struct Params {
    std::string kind;
    std::string dsa_label, dca_label;   // initialise: the pairs made; destroy-key: dsa_label unused
    hsm::KeyType key_type = hsm::KeyType::kRsa2048;
    std::string key_type_name = "rsa:2048";
    std::vector<std::string> domains;
    std::string organization, country;
    records::Query query;   // open-archive
    std::string format;     // open-archive: mbox or maildir
    std::string object;     // open-archive: the query as the statement names it
  };
  struct Entry {
    hsm::Ceremony ceremony;
    std::string key_label;
    std::string state;   // pending, done, failed
    std::string detail;
    uint64_t seq = 0;    // start order
    Params params;
    std::vector<v1::CeremonyCsr> csrs;   // initialise, done
    std::vector<hsm::Share> shares;      // open-archive: brought with the approvals, wiped after
    std::string mbox;                    // open-archive, done: the export until it is answered
    std::vector<records::ExportFile> files;
    uint32_t exported = 0;
    v1::StartCeremonyRequest request;    // as accepted (kept with a pending ceremony)
  };

  // Pending ceremonies are kept in <transcript_dir>/pending/<id>.pending (written durably) until
  // they finish, and read back at start: a restart no longer drops them (issue #20).
  std::string PendingPath(const std::string& id) const { return StrCat(d_->transcript_dir, "/pending/", id, ".pending"); }

  mailseal::Status KeepPending(const Entry& e) {
    if (d_->transcript_dir.empty()) return OkStatus();
    ::mkdir(StrCat(d_->transcript_dir, "/pending").c_str(), 0700);
    v1::PendingCeremony pc;
    *pc.mutable_transcript() = e.ceremony.transcript();
    pc.set_start_request(e.request.SerializeAsString());
    pc.set_seq(e.seq);
    return base::WriteFileDurably(PendingPath(e.ceremony.transcript().ceremony_id()), pc.SerializeAsString());
  }

  void LoadPending() {
    if (d_->transcript_dir.empty() || d_->threshold == 0) return;
    std::error_code ec;
    std::filesystem::directory_iterator it(StrCat(d_->transcript_dir, "/pending"), ec);
    if (ec) return;
    for (const auto& f : it) {
      const std::string path = f.path().string();
      if (f.path().extension() != ".pending") continue;
      auto refuse = [&](const std::string& why) {
        Log(LogLevel::kError, "control", "pending ceremony not resumed (set aside as .refused)", {{"file", path}, {"why", why}});
        std::rename(path.c_str(), StrCat(path, ".refused").c_str());
      };
      Result<std::string> bytes = base::ReadFile(path, 4 << 20);
      v1::PendingCeremony pc;
      v1::StartCeremonyRequest req;
      if (!bytes.ok() || !pc.ParseFromString(*bytes) || !req.ParseFromString(pc.start_request())) {
        refuse(bytes.ok() ? "does not parse" : bytes.status().message());
        continue;
      }
      Result<hsm::Ceremony> c = hsm::Ceremony::Resume(pc.transcript(), d_->threshold, d_->custodians);
      if (!c.ok()) {
        refuse(c.status().message());
        continue;
      }
      Params p;
      p.kind = req.kind();
      p.dsa_label = req.key_label();
      if (req.kind() == "initialise") {
        Result<Params> made = InitialiseParams(req);
        if (!made.ok()) {
          refuse(made.status().message());
          continue;
        }
        p = std::move(made.value());
      } else if (req.kind() != "destroy-key") {
        refuse(StrCat("kind '", req.kind(), "' is not kept across restarts"));
        continue;
      }
      std::string id = pc.transcript().ceremony_id();
      if (f.path().stem().string() != id) {
        refuse("file name and ceremony id differ");
        continue;
      }
      seq_ = std::max<uint64_t>(seq_, pc.seq());
      std::string label = req.kind() == "initialise" ? p.dsa_label : req.key_label();
      Entry e{std::move(c.value()), label, "pending", "", pc.seq(), std::move(p), {}, {}, {}, {}, 0, req};
      ceremonies_.emplace(id, std::move(e));
      Log(LogLevel::kInfo, "control", "pending ceremony resumed",
          {{"id", id}, {"kind", req.kind()},
           {"approvals", std::to_string(pc.transcript().steps(pc.transcript().steps_size() - 1).approvals_size())}});
    }
  }

  // OpenArchive: the quorum's shares rebuild the archive key (checked against its public half);
  // the export is read with it; key and shares are wiped before this returns.
  Result<std::string> OpenArchive(Entry& e) {
    Result<records::Pkey> key = records::RebuildArchiveKey(d_->archive_dir, e.shares, d_->threshold);
    for (hsm::Share& sh : e.shares) OPENSSL_cleanse(sh.y.data(), sh.y.size());
    e.shares.clear();
    if (!key.ok()) return key.status();
    Result<records::Export> x = records::Read(d_->archive_dir, key->get(), e.params.query, d_->archive_max_bytes);
    key->reset();
    if (!x.ok()) return x.status();
    e.exported = static_cast<uint32_t>(x->records.size());
    if (e.params.format == "maildir") e.files = records::ToMaildir(*x);
    else e.mbox = records::ToMbox(*x);
    return StrCat("archive opened: ", x->records.size(), " message(s) exported as ", e.params.format, " from ", x->files_read,
                  " file(s)", x->torn ? StrCat(", ", x->torn, " torn record(s) skipped") : "");
  }

  static std::string Join(const std::vector<std::string>& v) {
    std::string out;
    for (const std::string& x : v) out += (out.empty() ? "" : ",") + x;
    return out;
  }

  // InitialiseParams: the request's fields for an initialise ceremony, checked.
  static Result<Params> InitialiseParams(const v1::StartCeremonyRequest& req) {
    static const std::map<std::string, hsm::KeyType> kTypes = {
        {"", hsm::KeyType::kRsa2048},         {"rsa:2048", hsm::KeyType::kRsa2048}, {"rsa:3072", hsm::KeyType::kRsa3072},
        {"rsa:4096", hsm::KeyType::kRsa4096}, {"ec:P-256", hsm::KeyType::kEcP256},  {"ec:P-384", hsm::KeyType::kEcP384}};
    Params p;
    p.kind = "initialise";
    p.dsa_label = req.key_label().empty() ? "dsa" : req.key_label();
    p.dca_label = req.dca_key_label().empty() ? "dca" : req.dca_key_label();
    if (p.dsa_label == p.dca_label) return InvalidArgumentError("fields 'key_label' and 'dca_key_label': two different labels");
    auto type = kTypes.find(req.key_type());
    if (type == kTypes.end()) return InvalidArgumentError("field 'key_type': rsa:2048, rsa:3072, rsa:4096, ec:P-256 or ec:P-384");
    p.key_type = type->second;
    p.key_type_name = req.key_type().empty() ? "rsa:2048" : req.key_type();
    p.domains.assign(req.domains().begin(), req.domains().end());
    // The CSR checks, once for each purpose, now rather than after the quorum.
    for (hsm::Purpose purpose : {hsm::Purpose::kDsaSign, hsm::Purpose::kDcaEncrypt})
      if (Result<hsm::CsrRequest> r = CsrFor(purpose, req.domains(), req.organization(), req.country()); !r.ok())
        return r.status();
    p.organization = req.organization();
    p.country = req.country();
    return p;
  }

  // Initialise: the quorum is there — both key pairs made inside the token, their CSRs kept
  // for the response; what it did, for the transcript.
  Result<std::string> Initialise(hsm::Session& s, Entry& e) {
    std::string done;
    google::protobuf::RepeatedPtrField<std::string> domains(e.params.domains.begin(), e.params.domains.end());
    for (auto [label, purpose] : {std::pair{e.params.dsa_label, hsm::Purpose::kDsaSign},
                                  std::pair{e.params.dca_label, hsm::Purpose::kDcaEncrypt}}) {
      Result<hsm::KeyPair> kp = hsm::GenerateKeyPair(s, {e.params.key_type, purpose, label});
      if (!kp.ok()) return kp.status();
      Result<hsm::CsrRequest> req = CsrFor(purpose, domains, e.params.organization, e.params.country);
      if (!req.ok()) return req.status();
      Result<std::string> csr = SignCsr(s, *kp, *req);
      if (!csr.ok()) return csr.status();
      v1::CeremonyCsr out;
      out.set_key_label(label);
      out.set_purpose(hsm::PurposeName(purpose));
      out.set_csr_pem(*csr);
      e.csrs.push_back(std::move(out));
      done += StrCat(done.empty() ? "" : "; ", hsm::PurposeName(purpose), " key pair '", label, "' (", e.params.key_type_name,
                     ") made in the token, CSR for ", Join(e.params.domains));
    }
    return done;
  }
  const Guard* guard_;
  const KeyDeps* d_;
  audit::AuditLog* audit_;
  std::mutex mu_;
  std::map<std::string, Entry> ceremonies_;
  uint64_t seq_ = 0;
};

}  // namespace

std::unique_ptr<grpc::Service> NewKeyService(const Guard* guard, const KeyDeps* deps) {
  return std::make_unique<KeyServiceImpl>(guard, deps);
}
std::unique_ptr<grpc::Service> NewCeremonyService(const Guard* guard, const KeyDeps* deps, audit::AuditLog* audit) {
  return std::make_unique<CeremonyServiceImpl>(guard, deps, audit);
}

}  // namespace mailseal::control
