// smime_processor.cc — see smime_processor.h.
#include "dataplane/sealing/smime_processor.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>

#include "dataplane/base/log.h"
#include "hsm/lifecycle.h"
#include "dataplane/pki/validator.h"
#include "dataplane/base/strings.h"
#include "hsm/token_key.h"
#include "dataplane/scan/scanner.h"
#include <optional>
#include <set>

namespace mailseal::sealing {
using crypto::Completion;
using crypto::DerivedCopy;
using crypto::Job;
using crypto::JobProcessor;
using crypto::ProcessorFactory;
using crypto::Treatment;
using crypto::Verdict;
namespace {
Treatment TreatmentOf(smime::Treatment t) {
  switch (t) {
    case smime::Treatment::kSigned: return Treatment::kSigned;
    case smime::Treatment::kOpened: return Treatment::kOpened;
    case smime::Treatment::kMarked: return Treatment::kMarked;
    case smime::Treatment::kPingReply: return Treatment::kPingReply;
    case smime::Treatment::kCertAnswer: return Treatment::kCertAnswer;
    case smime::Treatment::kSealed:
    case smime::Treatment::kNone: break;
  }
  return Treatment::kSealed;
}
}  // namespace
namespace {
using base::Log;
using base::LogLevel;

std::vector<smime::X509Ref> ReadCerts(const std::string& path, std::string* error) {
  std::vector<smime::X509Ref> out;
  BIO* b = BIO_new_file(path.c_str(), "r");
  if (!b) {
    *error = StrCat(path, ": cannot be read");
    return out;
  }
  while (X509* x = PEM_read_bio_X509(b, nullptr, nullptr, nullptr)) out.push_back(smime::Ref(x));
  ERR_clear_error();
  BIO_free(b);
  if (out.empty()) *error = StrCat(path, ": no PEM certificate in it");
  return out;
}

class SmimeProcessor : public JobProcessor {
 public:
  SmimeProcessor(const SmimeShared* s, size_t index) : s_(s), gateway_(&s->policy, s->store.get(), s->ping_limiter.get()) {
    if (s->archive_key)
      archive_ = std::make_unique<records::ArchiveWriter>(s->archive_dir, s->archive_key.get(), s->archive_run,
                                                          static_cast<int>(index));
    for (const auto& sc : s->scanning.scanners())
      scanners_.push_back(sc.clamd().empty()
                              ? scan::MakeMilter(sc.name(), sc.milter())
                              : scan::MakeClamd(sc.name(), sc.clamd(),
                                                sc.reject_virus() ? scan::Verdict::kReject : scan::Verdict::kQuarantine));
  }
  ~SmimeProcessor() override { Drop(); }

  void Idle() override {
    std::shared_ptr<hsm::TokenHandle> h = s_->token ? s_->token->Handle() : nullptr;
    if (!h || h->generation != generation_) Drop();
  }

  Completion Process(const Job& job) override {
    Completion c{job.queue_id, Verdict::kPlain, "", 0, {}};
    // The message as the job carries it (received, spooled, still in memory), else as the
    // spool file holds it.
    std::shared_ptr<const queue::SpoolMessage> m = job.message;
    std::shared_ptr<const std::string> carried = job.body;
    if (!m || !carried) {
      Result<queue::SpoolMessage> read = queue::ReadSpoolFile(job.spool_path);
      if (!read.ok()) {
        c.verdict = read.status().code() == StatusCode::kDataLoss ? Verdict::kCorrupt : Verdict::kTempFail;
        c.reason = read.status().message();
        return c;
      }
      m = std::make_shared<const queue::SpoolMessage>(std::move(read.value()));
      carried = nullptr;
    }
    const auto& env = m->envelope;
    if (env.crypto_done()) {
      c.reason = "copy made by the crypto stage";
      return c;
    }
    if (!carried) {
      auto body = std::make_shared<std::string>();
      body->reserve(m->body_size);
      Status rs = queue::ReadBody(job.spool_path, *m, [&](std::string_view chunk) {
        body->append(chunk);
        return OkStatus();
      });
      if (!rs.ok()) {
        c.verdict = rs.code() == StatusCode::kDataLoss ? Verdict::kCorrupt : Verdict::kTempFail;
        c.reason = rs.message();
        return c;
      }
      carried = std::move(body);
    }
    const std::string& body = *carried;
    std::vector<std::string> rcpts;
    for (const auto& r : env.recipients()) rcpts.push_back(r.address());
    smime::GatewayKeys keys = Keys();
    uint64_t token_failures = hsm::TokenFailuresOnThisThread();
    std::shared_ptr<const policy::CompiledPolicy> doc = s_->document.load(std::memory_order_acquire);
    smime::Inbound inbound{env.client_address(), env.helo(), env.tls(), env.spf_result(), env.spf_domain()};
    // The policy stage's typed decision first (no key used), then the crypto work it asks for.
    smime::Plan plan = gateway_.Decide(env.mail_from(), rcpts, body, doc.get(), env.require_seal(), env.require_signature());
    std::vector<smime::Output> outs = gateway_.Execute(plan, env.mail_from(), body, keys, doc.get(), &inbound);
    bool token_failed = hsm::TokenFailuresOnThisThread() != token_failures;
    bool any_hold = false;
    for (const smime::Output& o : outs) {
      if (o.action == smime::Action::kTempFail) {
        c.verdict = Verdict::kTempFail;
        c.reason = o.reason;
        return c;
      }
      any_hold = any_hold || o.action == smime::Action::kHold;
    }
    if (any_hold && s_->token && (token_failed || !SessionAlive())) {
      Drop();
      c.verdict = Verdict::kTempFail;
      c.reason = token_failed ? "the security module refused a key operation: deferred, not held (SEE-AG-4)"
                              : "security module stopped answering during sealing/opening (SEE-AG-4)";
      return c;
    }
    // Content scanning (DE-15): the plaintext, before it is sealed or after it was opened.
    std::vector<bool> rejected(outs.size(), false);
    if (!scanners_.empty()) {
      if (std::optional<std::string> defer = ScanOutputs(job.queue_id, *m, body, &outs, &rejected)) {
        c.verdict = Verdict::kTempFail;
        c.reason = *defer;
        return c;
      }
    }
    // The e-records archive (DE-21): what goes on, before it goes on.
    if (archive_) {
      if (Status st = Archive(job.queue_id, *m, body, plan, outs, rejected); !st.ok()) {
        c.verdict = Verdict::kTempFail;
        c.reason = StrCat("archive copy could not be written (kept, tried again): ", st.message());
        return c;
      }
    }
    for (size_t k = 0; k < outs.size(); ++k) {
      const smime::Output& o = outs[k];
      if (rejected[k]) {   // refused by a scanner: these recipients fail (a DSN), nothing is written
        DerivedCopy d;
        d.queue_id = StrCat(job.queue_id, "-", k);
        d.rcpts = o.rcpts;
        d.policy_version = o.policy_version;
        d.treatment = Treatment::kRejected;
        d.what = o.reason;
        c.derived.push_back(std::move(d));
        continue;
      }
      if (o.action == smime::Action::kPass) continue;
      DerivedCopy d;
      d.queue_id = StrCat(job.queue_id, "-", k);
      d.rcpts = o.rcpts;
      d.policy_version = o.policy_version;
      if (o.action == smime::Action::kConsume) {   // nothing to write: the recipients are done with
        d.treatment = Treatment::kConsumed;
        d.what = o.reason;
        c.derived.push_back(std::move(d));
        continue;
      }
      d.treatment = o.action == smime::Action::kHold ? Treatment::kHeld : TreatmentOf(o.treatment);
      d.warned = o.warned;
      d.what = d.held() ? o.reason : (o.reason.empty() ? o.protection : StrCat(o.protection, "; ", o.reason));
      if (d.held()) d.cert_domain = o.cert_domain;
      Status st = WriteCopy(*m, body, o, d);
      if (!st.ok()) {
        c.verdict = Verdict::kTempFail;
        c.reason = StrCat("cannot write crypto-stage copy: ", st.message());
        return c;
      }
      c.derived.push_back(std::move(d));
    }
    c.verdict = c.derived.empty() ? Verdict::kPlain : Verdict::kTransformed;
    for (const smime::Output& o : outs)
      if (o.action == smime::Action::kPass && !o.reason.empty()) c.reason = o.reason;   // why it went as it was
    c.policy_version = doc->version;
    return c;
  }

 private:
  // GoesOn: an output that delivers the message's content on — not held as it is, consumed,
  // deferred, nor a message of our own (a ping reply): what is scanned and archived.
  static bool GoesOn(const smime::Output& o) {
    return o.action != smime::Action::kHold && o.action != smime::Action::kConsume &&
           o.action != smime::Action::kTempFail && o.envelope_to.empty();
  }

  // Archive appends the message once per direction it goes in: inbound (recipients in our
  // domains) as it is delivered — opened when it was sealed — and outbound as it was received
  // from our side, before sealing. Held, rejected and consumed outputs are not archived (a
  // held message is archived when it is released and goes on); nor are our own notices.
  Status Archive(const std::string& qid, const queue::SpoolMessage& m, const std::string& original, const smime::Plan& plan,
                 const std::vector<smime::Output>& outs, const std::vector<bool>& rejected) {
    std::set<uint32_t> local(plan.local.begin(), plan.local.end());
    const std::string* inbound = nullptr;
    std::vector<std::string> in_rcpts, out_rcpts;
    bool outbound = false;
    for (size_t k = 0; k < outs.size(); ++k) {
      const smime::Output& o = outs[k];
      if (rejected[k] || !GoesOn(o)) continue;
      bool opened = o.action == smime::Action::kDeliver && o.treatment == smime::Treatment::kOpened;
      for (uint32_t i : o.rcpts) {
        if (i >= static_cast<uint32_t>(m.envelope.recipients_size())) continue;
        const std::string& a = m.envelope.recipients(static_cast<int>(i)).address();
        if (local.count(i)) {
          in_rcpts.push_back(a);
          if (opened || !inbound) inbound = opened ? &o.body : &original;
        } else {
          out_rcpts.push_back(a);
          outbound = true;
        }
      }
    }
    auto append = [&](const char* direction, const std::string& bytes, const std::vector<std::string>& rcpts) {
      mailseal::v1::ArchiveRecord r;
      r.set_time_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch()).count());
      r.set_direction(direction);
      r.set_queue_id(qid);
      r.set_mail_from(m.envelope.mail_from());
      for (const std::string& a : rcpts) r.add_recipients(a);
      r.set_message(bytes);
      return archive_->Append(r);
    };
    if (inbound && s_->archive_inbound)
      if (Status st = append("inbound", *inbound, in_rcpts); !st.ok()) return st;
    if (outbound && s_->archive_outbound)
      if (Status st = append("outbound", original, out_rcpts); !st.ok()) return st;
    return OkStatus();
  }

  // ScanOutputs runs the scanners over the plaintext each output would deliver: an opened
  // body, or the original (to be sealed, signed, marked or passed as it is). The first verdict
  // that is not a pass decides for the whole message: reject marks the outputs `rejected`;
  // quarantine, and unavailable under SCAN_HOLD, turn them into holds with the reason;
  // unavailable under SCAN_DEFER returns the reason to defer the whole message.
  std::optional<std::string> ScanOutputs(const std::string& qid, const queue::SpoolMessage& m, const std::string& original,
                                         std::vector<smime::Output>* outs, std::vector<bool>* rejected) {
    scan::Limits limits;
    limits.timeout_ms = static_cast<long>(s_->scanning.timeout_ms());
    limits.max_bytes = s_->scanning.max_bytes();
    scan::Message msg;
    msg.mail_from = m.envelope.mail_from();
    for (const auto& r : m.envelope.recipients()) msg.rcpts.push_back(r.address());
    msg.client_address = m.envelope.client_address();
    msg.helo = m.envelope.helo();
    msg.queue_id = qid;
    std::optional<scan::Outcome> decided;
    bool original_scanned = false;
    for (const smime::Output& o : *outs) {
      if (decided) break;
      if (!GoesOn(o)) continue;
      bool opened = o.action == smime::Action::kDeliver && o.treatment == smime::Treatment::kOpened;
      if (!opened && original_scanned) continue;
      original_scanned = original_scanned || !opened;
      msg.bytes = opened ? std::string_view(o.body) : std::string_view(original);
      for (const auto& sc : scanners_) {
        scan::Outcome r = sc->Scan(msg, limits);
        Log(r.verdict == scan::Verdict::kPass ? LogLevel::kDebug : LogLevel::kWarning, "scan", "scanned",
            {{"qid", qid}, {"scanner", r.scanner}, {"verdict", scan::VerdictName(r.verdict)}, {"reason", r.reason},
             {"content", opened ? "opened" : "as received"}});
        if (r.verdict != scan::Verdict::kPass) {
          decided = std::move(r);
          break;
        }
      }
    }
    if (!decided) return std::nullopt;
    const scan::Outcome& r = *decided;
    using W = mailseal::v1::Scanning;
    if (r.verdict == scan::Verdict::kUnavailable && s_->scanning.when_unavailable() == W::SCAN_DEFER)
      return StrCat("scanner unavailable (", r.scanner, ": ", r.reason, "): deferred");
    if (r.verdict == scan::Verdict::kUnavailable && s_->scanning.when_unavailable() == W::SCAN_PASS) {
      Log(LogLevel::kWarning, "scan", "scanner unavailable: passed unscanned (scanning.when_unavailable SCAN_PASS)",
          {{"qid", qid}, {"scanner", r.scanner}, {"reason", r.reason}});
      return std::nullopt;
    }
    std::string reason =
        r.verdict == scan::Verdict::kReject       ? StrCat("rejected by the content scanner ", r.scanner, ": ", r.reason)
        : r.verdict == scan::Verdict::kQuarantine ? StrCat("quarantined by the content scanner ", r.scanner, ": ", r.reason)
                                                  : StrCat("scanner unavailable (", r.scanner, ": ", r.reason, ")");
    for (size_t k = 0; k < outs->size(); ++k) {
      smime::Output& o = (*outs)[k];
      if (!GoesOn(o)) continue;
      o.reason = reason;
      o.cert_domain.clear();
      if (r.verdict == scan::Verdict::kReject) {
        (*rejected)[k] = true;
      } else {
        o.action = smime::Action::kHold;
        o.treatment = smime::Treatment::kNone;
        o.body.clear();
      }
    }
    return std::nullopt;
  }

  Status WriteCopy(const queue::SpoolMessage& m, const std::string& original, const smime::Output& o,
                   DerivedCopy& d) {
    for (queue::SpoolState st : {queue::SpoolState::kActive, queue::SpoolState::kDeferred, queue::SpoolState::kHold}) {
      if (::access(s_->spool->PathOf(st, d.queue_id).c_str(), F_OK) == 0) {
        if (st == queue::SpoolState::kHold) d.treatment = Treatment::kHeld;
        return OkStatus();   // made before a crash; the original now records the transfer
      }
    }
    mailseal::v1::SpoolEnvelope env;
    env.set_queue_id(d.queue_id);
    env.set_mail_from(m.envelope.mail_from());
    if (!o.envelope_to.empty()) {   // a message of our own (seemail-ping reply): it goes through sealing
      env.set_mail_from(o.envelope_from);
      env.add_recipients()->set_address(o.envelope_to);
      env.set_arrival_unix_ms(m.envelope.arrival_unix_ms());
      env.set_require_seal(o.require_seal);
      env.set_require_signature(o.require_signature);
      env.set_derived_from(m.id);
      for (uint32_t i : o.rcpts) env.add_derived_rcpts(i);
      env.set_protection(o.protection);
      return queue::WriteWholeMessage(s_->spool, env, o.body, queue::SpoolState::kActive).status();
    }
    for (uint32_t i : o.rcpts) *env.add_recipients() = m.envelope.recipients(static_cast<int>(i));
    env.set_arrival_unix_ms(m.envelope.arrival_unix_ms());
    env.set_client_address(m.envelope.client_address());
    env.set_helo(m.envelope.helo());
    env.set_tls(m.envelope.tls());
    env.set_spf_result(m.envelope.spf_result());
    env.set_spf_domain(m.envelope.spf_domain());
    env.set_body_type(m.envelope.body_type());
    env.set_smtputf8(m.envelope.smtputf8());
    env.set_ret(m.envelope.ret());
    env.set_envid(m.envelope.envid());
    env.set_is_dsn(m.envelope.is_dsn());
    env.set_crypto_done(true);
    env.set_derived_from(m.id);
    for (uint32_t i : o.rcpts) env.add_derived_rcpts(i);
    if (d.held()) env.set_hold_reason(o.reason);
    if (d.held() && !o.cert_domain.empty()) env.set_hold_cert_domain(o.cert_domain);
    env.set_protection(o.protection);
    // A held copy keeps the message exactly as it arrived, for the operator to inspect or release.
    // Neither the file nor its directory entry is synced here: the queue manager syncs the
    // spool once for a batch of completions before it relies on any copy (issue #14: sealed
    // copies committed in groups, so that no worker waits for the journal).
    Result<std::string> id = queue::WriteWholeMessage(s_->spool, env, d.held() ? original : o.body,
                                                      d.held() ? queue::SpoolState::kHold : queue::SpoolState::kActive,
                                                      queue::Durability::kGroup);
    return id.status();
  }

  // Keys binds the DSA and DCA to this worker's session for the token's current opening.
  // A key or certificate missing from the token (before the initialise ceremony, or while an
  // operator installs a certificate) is looked for again this often.
  static constexpr int64_t kMissingRetryS = 5;
  static constexpr int64_t kCertRereadS = 10;

  smime::GatewayKeys Keys() {
    smime::GatewayKeys k{s_->dsa_cert, s_->dca_cert, s_->chain, nullptr, nullptr, {}, {}};
    std::shared_ptr<hsm::TokenHandle> h = s_->token ? s_->token->Handle() : nullptr;
    if (!h) {
      Drop();
      return k;
    }
    int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                      std::chrono::steady_clock::now().time_since_epoch()).count();
    bool incomplete = !Complete();
    if (h->generation != generation_ || !lease_ || (incomplete && now - looked_up_ >= kMissingRetryS)) {
      Drop();
      handle_ = h;
      lease_ = std::make_unique<hsm::SessionPool::Lease>(h->pool->Acquire());
      generation_ = h->generation;
      looked_up_ = now;
      Result<hsm::KeyPair> dsa = hsm::FindKeyPair(**lease_, s_->dsa_label);
      Result<hsm::KeyPair> dca = hsm::FindKeyPair(**lease_, s_->dca_label);
      if (dsa.ok()) {
        dsa_pair_ = *dsa;
        Result<EVP_PKEY*> key = hsm::TokenPrivateKey(&**lease_, *dsa);
        if (key.ok()) dsa_ = *key;
      }
      if (dca.ok()) {
        dca_pair_ = *dca;
        Result<EVP_PKEY*> key = hsm::TokenPrivateKey(&**lease_, *dca);
        if (key.ok()) dca_ = *key;
      }
      dsa_cert_ = s_->dsa_cert ? s_->dsa_cert : TokenCertificate(dsa);
      dca_cert_ = s_->dca_cert ? s_->dca_cert : TokenCertificate(dca);
      certs_read_ = now;
      for (const auto& [label, cert] : s_->previous_dca) {
        Result<hsm::KeyPair> old = hsm::FindKeyPair(**lease_, label);
        Result<EVP_PKEY*> key = old.ok() ? hsm::TokenPrivateKey(&**lease_, *old) : Result<EVP_PKEY*>(old.status());
        if (key.ok()) previous_dca_.emplace_back(cert, *key);
        else Log(LogLevel::kWarning, "crypto", "previous DCA key not usable: mail sealed to it will not open",
                 {{"label", label}, {"error", key.status().message()}});
      }
      bool missing = !Complete();
      unusable_.clear();
      if (missing) {
        auto why = [](const Result<hsm::KeyPair>& pair, EVP_PKEY* key, const smime::X509Ref& cert) -> std::string {
          return !pair.ok() ? pair.status().message() : !key ? "key not usable" : !cert ? "no certificate installed" : "ok";
        };
        std::string dsa_why = why(dsa, dsa_, dsa_cert_), dca_why = why(dca, dca_, dca_cert_);
        unusable_ = StrCat("domain keys not ready on the token (dsa '", s_->dsa_label, "': ", dsa_why, "; dca '",
                           s_->dca_label, "': ", dca_why, ")");
        if (!s_->keys_missing_reported.exchange(true))   // once for all workers, not every retry
          Log(LogLevel::kError, "crypto", "domain keys not usable on the token: sealing/opening deferred",
              {{"dsa", dsa_why}, {"dca", dca_why}});
      }
      if (!missing && s_->keys_missing_reported.exchange(false))
        Log(LogLevel::kInfo, "crypto", "domain keys and certificates found on the token: sealing/opening resumed",
            {{"dsa", s_->dsa_label}, {"dca", s_->dca_label}});
      may_sign_checked_ = 0;
    }
    // Certificates kept on the token are read again every kCertRereadS: a renewal installed
    // over the API (same key, new certificate) is in use within seconds, with no restart.
    if (!incomplete && (!s_->dsa_cert || !s_->dca_cert) && now - certs_read_ >= kCertRereadS) {
      certs_read_ = now;
      for (auto [configured, pair, cert] : {std::tuple{&s_->dsa_cert, &dsa_pair_, &dsa_cert_},
                                            std::tuple{&s_->dca_cert, &dca_pair_, &dca_cert_}}) {
        if (*configured) continue;
        if (smime::X509Ref fresh = TokenCertificate(*pair); fresh && X509_cmp(fresh.get(), cert->get()) != 0) {
          Log(LogLevel::kInfo, "crypto", "certificate on the token replaced: the new one is in use",
              {{"label", pair->label}, {"serial", pki::SerialHex(fresh.get())}});
          *cert = fresh;
        }
      }
    }
    k.dsa_cert = dsa_cert_;
    k.dca_cert = dca_cert_;
    k.unusable = unusable_;
    // Key age (SEE-2.3) is re-checked once a minute: an old DSA stops signing.
    if (dsa_ && now - may_sign_checked_ >= 60) {
      Status st = hsm::CheckMaySign(**lease_, dsa_pair_);
      may_sign_ = st.ok();
      may_sign_checked_ = now;
      if (!st.ok())
        Log(LogLevel::kError, "crypto", "DSA may not sign: sealing deferred until it is renewed", {{"reason", st.message()}});
    }
    k.dsa_key = may_sign_ ? dsa_ : nullptr;
    k.dca_key = dca_;
    k.previous_dca = previous_dca_;
    return k;
  }

  bool Complete() const { return dsa_ && dca_ && dsa_cert_ && dca_cert_; }

  smime::X509Ref TokenCertificate(const Result<hsm::KeyPair>& pair) {
    return pair.ok() ? sealing::TokenCertificate(**lease_, *pair) : smime::X509Ref{};
  }

  bool SessionAlive() {
    if (!lease_) return false;
    CK_SESSION_INFO info{};
    return (*lease_)->fn()->C_GetSessionInfo((*lease_)->handle(), &info) == CKR_OK;
  }

  void Drop() {
    EVP_PKEY_free(dsa_);
    EVP_PKEY_free(dca_);
    dsa_ = dca_ = nullptr;
    for (auto& [cert, key] : previous_dca_) EVP_PKEY_free(key);
    previous_dca_.clear();
    lease_.reset();   // before the handle that owns its pool
    handle_.reset();
    generation_ = 0;
  }

  const SmimeShared* s_;
  std::vector<std::unique_ptr<scan::Scanner>> scanners_;   // this worker's (DE-15)
  std::unique_ptr<records::ArchiveWriter> archive_;        // this worker's (DE-21)
  smime::Gateway gateway_;
  std::shared_ptr<hsm::TokenHandle> handle_;
  std::unique_ptr<hsm::SessionPool::Lease> lease_;
  uint64_t generation_ = 0;
  hsm::KeyPair dsa_pair_;
  EVP_PKEY* dsa_ = nullptr;
  EVP_PKEY* dca_ = nullptr;
  hsm::KeyPair dca_pair_;
  smime::X509Ref dsa_cert_, dca_cert_;   // the configured files' or the token's
  int64_t looked_up_ = 0;
  int64_t certs_read_ = 0;
  std::string unusable_;   // what is missing, for the deferral's reason
  std::vector<std::pair<smime::X509Ref, EVP_PKEY*>> previous_dca_;   // owned keys
  bool may_sign_ = false;
  int64_t may_sign_checked_ = 0;
};

}  // namespace

ProcessorFactory SmimeProcessorFactory(const SmimeShared* shared) {
  return [shared](size_t index) -> std::unique_ptr<JobProcessor> { return std::make_unique<SmimeProcessor>(shared, index); };
}

}  // namespace mailseal::sealing

namespace mailseal::sealing {

Result<std::unique_ptr<SmimeShared>> LoadSmime(const mailseal::v1::Config& cfg, queue::Spool* spool,
                                               hsm::TokenManager* token, bool check_only) {
  const auto& c = cfg.smime();
  auto need = [](const std::string& v, const char* field) -> Status {
    return v.empty() ? InvalidArgumentError(StrCat("field 'smime.", field, "': required")) : OkStatus();
  };
  if (!cfg.has_hsm()) return InvalidArgumentError("field 'smime': needs 'hsm' (the domain keys live on the token)");
  for (auto [v, f] : {std::pair<const std::string&, const char*>{c.dsa_key_label(), "dsa_key_label"},
                      {c.dca_key_label(), "dca_key_label"}, {c.trust_anchors_file(), "trust_anchors_file"}})
    if (Status st = need(v, f); !st.ok()) return st;
  auto s = std::make_unique<SmimeShared>();
  s->spool = spool;
  s->token = token;
  s->dsa_label = c.dsa_key_label();
  s->dca_label = c.dca_key_label();
  std::string err;
  // A certificate file left empty: the certificate installed on the token beside the key
  // (KeyService.InstallCertificate, checked against the trust anchors there), looked up by
  // the crypto workers — an appliance whose keys come from the initialise ceremony.
  for (auto [file, cert, field] : {std::tuple{&c.dsa_cert_file(), &s->dsa_cert, "dsa_cert_file"},
                                   std::tuple{&c.dca_cert_file(), &s->dca_cert, "dca_cert_file"}}) {
    if (file->empty()) continue;
    std::vector<smime::X509Ref> read = ReadCerts(*file, &err);
    if (read.empty()) return InvalidArgumentError(StrCat("field 'smime.", field, "': ", err));
    *cert = read[0];
  }
  if (c.previous_dca_size() > 2) return InvalidArgumentError("field 'smime.previous_dca': at most 2");
  for (int i = 0; i < c.previous_dca_size(); ++i) {
    const auto& p = c.previous_dca(i);
    std::string field = StrCat("field 'smime.previous_dca[", i, "].");
    if (p.key_label().empty()) return InvalidArgumentError(StrCat(field, "key_label': required"));
    if (p.key_label() == c.dca_key_label()) return InvalidArgumentError(StrCat(field, "key_label': is the current DCA key"));
    std::vector<smime::X509Ref> pc = ReadCerts(p.cert_file(), &err);
    if (pc.empty()) return InvalidArgumentError(StrCat(field, "cert_file': ", err));
    s->previous_dca.emplace_back(p.key_label(), pc[0]);
  }
  if (!c.chain_file().empty()) {
    s->chain = ReadCerts(c.chain_file(), &err);
    if (s->chain.empty()) return InvalidArgumentError(StrCat("field 'smime.chain_file': ", err));
  }
  std::string dir = c.cert_store_dir().empty() ? StrCat(cfg.spool_dir(), "/certs") : c.cert_store_dir();
  Result<std::unique_ptr<smime::CertStore>> store = smime::CertStore::Open(
      dir, c.trust_anchors_file(), {c.crl_files().begin(), c.crl_files().end()}, !check_only);
  if (!store.ok()) return InvalidArgumentError(StrCat("field 'smime': ", store.status().message()));
  s->store = std::move(store.value());
  // Revocation (SEE-2.8): CRLs named by the certificates themselves are fetched in the
  // background; with crl_files configured every certificate of a path must have a CRL.
  if (!check_only) {
    pki::CrlCache::Options o;
    o.dir = StrCat(dir, "/crls");
    Result<std::unique_ptr<pki::CrlCache>> crls = pki::CrlCache::Open(std::move(o));
    if (!crls.ok()) return InvalidArgumentError(StrCat("field 'smime.cert_store_dir': ", crls.status().message()));
    s->crls = std::move(crls.value());
    s->crls->Attach(s->store->trust()->store(), c.crl_files().empty() ? pki::Revocation::kWhereNamed : pki::Revocation::kRequired);
    s->crls->Start();
  }
  // Our own certificates must be what they claim: domain authorities that chain to the trust
  // list (a partner would refuse them otherwise).
  for (auto [cert, purpose, field] :
       {std::tuple{s->dsa_cert.get(), X509_PURPOSE_SMIME_SIGN, "dsa_cert_file"},
        std::tuple{s->dca_cert.get(), X509_PURPOSE_SMIME_ENCRYPT, "dca_cert_file"}}) {
    if (!cert) continue;   // on the token: checked when it was installed
    std::vector<X509*> chain;
    for (const auto& x : s->chain) chain.push_back(x.get());
    auto [st, why] = smime::CheckPath(cert, chain, s->store->trust()->store(), purpose);
    if (st != smime::CertStatus::kValid && st != smime::CertStatus::kStatusUnknown)
      return InvalidArgumentError(StrCat("field 'smime.", field, "': our certificate is ", smime::CertStatusName(st),
                                         why.empty() ? "" : StrCat(" (", why, ")")));
  }
  // Directories to look partner certificates up in (SEE-2.8b). A server URL names only the
  // server: the search comes from the other fields.
  auto server_url = [](const std::string& u) {
    std::string url = base::AsciiLower(u);
    size_t rest = url.find("://");
    return rest != std::string::npos && (url.substr(0, rest) == "ldap" || url.substr(0, rest) == "ldaps") &&
           url.size() > rest + 3 && url.find('/', rest + 3) == std::string::npos;
  };
  smime::DiscoveryOptions dopts;
  dopts.retry_ms = static_cast<int64_t>(c.directory_retry_s() ? c.directory_retry_s() : 300) * 1000;
  for (int i = 0; i < c.directories_size(); ++i) {
    const auto& d = c.directories(i);
    std::string field = StrCat("field 'smime.directories[", i, "].");
    if (!server_url(d.url()))
      return InvalidArgumentError(StrCat(field, "url': '", d.url(), "' is not ldap://host[:port] or ldaps://host[:port]"));
    smime::Directory ldap;
    ldap.query.server = d.url();
    ldap.query.base = d.base().empty() ? "c=NZ" : d.base();
    ldap.query.filter = d.filter().empty() ? "(mail=domain-confidentiality-authority@%s)" : d.filter();
    ldap.query.attribute = d.attribute().empty() ? "userCertificate;binary" : d.attribute();
    if (ldap.query.filter.find("%s") == std::string::npos || ldap.query.filter.front() != '(' || ldap.query.filter.back() != ')')
      return InvalidArgumentError(StrCat(field, "filter': '", ldap.query.filter, "' must be a parenthesised filter with %s for the domain"));
    if (!d.ca_file().empty()) {
      std::vector<smime::X509Ref> ca = ReadCerts(d.ca_file(), &err);
      if (ca.empty()) return InvalidArgumentError(StrCat(field, "ca_file': ", err));
      bool anchored = false;
      std::shared_ptr<const pki::TrustList> trust = s->store->trust();
      STACK_OF(X509_OBJECT)* objs = X509_STORE_get0_objects(trust->store());
      for (int k = 0; k < sk_X509_OBJECT_num(objs); ++k)
        if (X509* a = X509_OBJECT_get0_X509(sk_X509_OBJECT_value(objs, k)); a && X509_cmp(a, ca[0].get()) == 0) anchored = true;
      if (!anchored) return InvalidArgumentError(StrCat(field, "ca_file': ", d.ca_file(), " is not on the trust list (smime.trust_anchors_file)"));
      ldap.ca = ca[0];
    }
    if (d.timeout_ms()) {
      dopts.limits.total_timeout_ms = d.timeout_ms();
      dopts.limits.connect_timeout_ms = std::min<long>(d.timeout_ms(), dopts.limits.connect_timeout_ms);
    } else {
      dopts.limits.total_timeout_ms = 10000;
    }
    dopts.directories.push_back(std::move(ldap));
  }
  dopts.send_requests = c.certificate_requests();
  dopts.request_interval_ms = static_cast<int64_t>(c.certificate_request_interval_s() ? c.certificate_request_interval_s() : 3600) * 1000;
  if (c.has_seemail_directory()) {
    const auto& sd = c.seemail_directory();
    if (!server_url(sd.url()))
      return InvalidArgumentError(StrCat("field 'smime.seemail_directory.url': '", sd.url(), "' is not ldap://host[:port] or ldaps://host[:port]"));
    dopts.seemail_query.server = sd.url();
    dopts.seemail_query.base = sd.base().empty() ? "c=NZ" : sd.base();
    dopts.seemail_query.filter = sd.filter().empty() ? "(associatedDomain=*)" : sd.filter();
    dopts.seemail_query.attribute = sd.attribute().empty() ? "associatedDomain" : sd.attribute();
    dopts.seemail_refresh_ms = static_cast<int64_t>(sd.refresh_s() ? sd.refresh_s() : 3600) * 1000;
  }
  if (c.has_smimea()) {
    pki::SmimeaOptions so;
    so.forwarder = c.smimea().resolver();
    so.trust_anchor_file = c.smimea().trust_anchor_file().empty() ? "/usr/share/dns/root.key" : c.smimea().trust_anchor_file();
    so.timeout_ms = c.smimea().timeout_ms() ? c.smimea().timeout_ms() : 10000;
    Result<std::unique_ptr<pki::SmimeaResolver>> r = pki::SmimeaResolver::Create(so);
    if (!r.ok()) return InvalidArgumentError(StrCat("field 'smime.smimea': ", r.status().message()));
    dopts.smimea = std::move(r.value());
  }
  if (c.discovery_approval() != mailseal::v1::DISCOVERY_APPROVAL_AUTOMATIC) {
    SmimeShared* sp = s.get();
    bool manual = c.discovery_approval() == mailseal::v1::DISCOVERY_APPROVAL_MANUAL;
    s->store->SetApprovalRule([sp, manual](const std::string& domain) {
      if (manual) return true;
      std::shared_ptr<const policy::CompiledPolicy> doc = sp->document.load(std::memory_order_acquire);
      for (std::string_view d = domain; !d.empty();) {   // the domain or a parent on the SEEMAIL list
        if (doc->seemail.count(std::string(d))) return false;
        size_t dot = d.find('.');
        if (dot == std::string_view::npos) break;
        d = d.substr(dot + 1);
      }
      return true;
    });
  }
  {
    SmimeShared* sp = s.get();
    s->discovery = std::make_unique<smime::Discovery>(s->store.get(), std::move(dopts), [sp](const std::string& domain) -> size_t {
      return sp->release_holds ? sp->release_holds(domain) : 0;
    });
    s->store->SetWatcher(s->discovery.get());
  }
  for (const std::string& d : cfg.local_domains()) s->policy.local_domains.push_back(base::AsciiLower(d));
  for (int i = 0; i < c.partners_size(); ++i) {
    const auto& p = c.partners(i);
    std::string d = p.domain();
    d = base::AsciiLower(d);
    if (!smime::ValidDomainName(d))
      return InvalidArgumentError(StrCat("field 'smime.partners[", i, "].domain': '", p.domain(), "' is not a domain"));
    s->policy.partners[d] = {p.triple_wrap(), p.detached_signature()};
    if (!p.dca_cert_file().empty()) {
      if (Status st = s->store->Pin(d, p.dca_cert_file()); !st.ok())
        return InvalidArgumentError(StrCat("field 'smime.partners[", i, "].dca_cert_file': ", st.message()));
    }
  }
  s->policy.seal_when_known = c.seal_when_known();
  if (!c.outer_subject().empty()) s->policy.outer_subject = c.outer_subject();
  s->policy.keep_subject = c.keep_subject();
  s->policy.show_classification = c.show_classification();
  if (!c.seemail_version().empty()) s->policy.seemail_version = c.seemail_version();
  s->policy.authserv_id = c.authserv_id().empty() ? cfg.hostname() : c.authserv_id();
  s->policy.gateway_name = cfg.hostname();
  return s;
}

smime::X509Ref TokenCertificate(hsm::Session& session, const hsm::KeyPair& pair) {
  Result<std::string> der = hsm::StoredCertificate(session, pair);
  if (!der.ok()) return {};
  const unsigned char* p = reinterpret_cast<const unsigned char*>(der->data());
  X509* x = d2i_X509(nullptr, &p, static_cast<long>(der->size()));
  return x ? smime::Ref(x) : smime::X509Ref{};
}

Status DomainKeysReady(const SmimeShared* s) {
  if (!s || !s->token || s->dsa_label.empty()) return OkStatus();
  std::shared_ptr<hsm::TokenHandle> h = s->token->Handle();
  if (!h) return UnavailableError("security module unavailable");
  hsm::SessionPool::Lease lease = h->pool->Acquire();
  for (auto [label, configured] : {std::pair{&s->dsa_label, &s->dsa_cert}, std::pair{&s->dca_label, &s->dca_cert}}) {
    Result<hsm::KeyPair> kp = hsm::FindKeyPair(*lease, *label);
    if (!kp.ok()) return kp.status();
    if (!*configured)
      if (Result<std::string> der = hsm::StoredCertificate(*lease, *kp); !der.ok()) return der.status();
  }
  return OkStatus();
}

Status ReloadCertificates(SmimeShared* s, const mailseal::v1::Config& cfg) {
  if (!s || !s->store || !cfg.has_smime()) return OkStatus();
  const auto& c = cfg.smime();
  Result<std::shared_ptr<pki::TrustList>> trust =
      smime::CertStore::LoadTrust(c.trust_anchors_file(), {c.crl_files().begin(), c.crl_files().end()});
  if (!trust.ok()) return InvalidArgumentError(StrCat("field 'smime': ", trust.status().message()));
  if (s->crls)
    s->crls->Attach(trust.value()->store(), c.crl_files().empty() ? pki::Revocation::kWhereNamed : pki::Revocation::kRequired);
  for (int i = 0; i < c.partners_size(); ++i)
    if (!c.partners(i).dca_cert_file().empty())
      if (Status st = s->store->Pin(c.partners(i).domain(), c.partners(i).dca_cert_file()); !st.ok())
        return InvalidArgumentError(StrCat("field 'smime.partners[", i, "].dca_cert_file': ", st.message()));
  s->store->SetTrust(std::move(trust.value()));
  // A pinned or newly trusted certificate may be what held mail waits for.
  if (smime::CertWatcher* w = s->store->watcher())
    for (const smime::CertStore::Listed& l : s->store->List())
      if (l.kind == "dca") w->Found(l.domain);
  return OkStatus();
}

namespace {
void PublishLocked(SmimeShared* s) {
  if (!s->document_base) s->document_base = s->document.load(std::memory_order_acquire);
  if (s->directory_seemail.empty()) {
    s->document.store(s->document_base, std::memory_order_release);
    return;
  }
  auto merged = std::make_shared<policy::CompiledPolicy>(*s->document_base);
  for (const std::string& e : s->directory_seemail) merged->seemail.emplace(e, "SEEMAIL list (directory)");
  s->document.store(std::move(merged), std::memory_order_release);
}
}  // namespace

void PublishPolicy(SmimeShared* s, std::shared_ptr<const policy::CompiledPolicy> compiled) {
  std::lock_guard<std::mutex> l(s->publish_mu);
  s->document_base = std::move(compiled);
  PublishLocked(s);
}

void SetDirectorySeemail(SmimeShared* s, std::vector<std::string> list) {
  std::lock_guard<std::mutex> l(s->publish_mu);
  s->directory_seemail = std::move(list);
  PublishLocked(s);
}

void StartDiscovery(SmimeShared* s, std::function<size_t(const std::string& domain)> release) {
  if (!s || !s->discovery) return;
  s->release_holds = std::move(release);
  s->discovery->Start();
}

std::unique_ptr<SmimeShared> PolicyOnly(const mailseal::v1::Config& cfg, queue::Spool* spool) {
  auto s = std::make_unique<SmimeShared>();
  s->spool = spool;
  for (const std::string& d : cfg.local_domains()) s->policy.local_domains.push_back(base::AsciiLower(d));
  s->policy.authserv_id = cfg.hostname();
  s->policy.gateway_name = cfg.hostname();
  return s;
}

}  // namespace mailseal::sealing
