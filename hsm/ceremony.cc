// ceremony.cc — see ceremony.h.
#include "hsm/ceremony.h"
#include "dataplane/base/sha256_sign.h"

#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include <chrono>
#include <cstring>
#include <set>

namespace mailseal::hsm {
namespace {
using mailseal::v1::CeremonyStep;
using mailseal::v1::CeremonyTranscript;
using mailseal::v1::CustodianRecord;

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string Hex(const std::string& b) {
  static const char k[] = "0123456789abcdef";
  std::string o;
  for (unsigned char c : b) o += {k[c >> 4], k[c & 15]};
  return o;
}

void PutBe(std::string* s, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

std::string StepHash(const std::string& prev, const CeremonyStep& st) {
  std::string in = prev;
  PutBe(&in, st.seq(), 4);
  PutBe(&in, static_cast<uint64_t>(st.at_unix_ms()), 8);
  PutBe(&in, st.action().size(), 4);
  in += st.action();
  PutBe(&in, st.detail().size(), 4);
  in += st.detail();
  in.push_back(st.requires_approval() ? 1 : 0);
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(in.data()), in.size(), md);
  return std::string(reinterpret_cast<char*>(md), sizeof md);
}

EVP_PKEY* CertKey(const std::string& pem) {
  BIO* b = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509* x = PEM_read_bio_X509(b, nullptr, nullptr, nullptr);
  BIO_free(b);
  if (!x) return nullptr;
  EVP_PKEY* k = X509_get_pubkey(x);
  X509_free(x);
  return k;
}

// Checks one approval of `step` against the transcript's custodians.
Status CheckApproval(const CeremonyTranscript& t, const CeremonyStep& step, const mailseal::v1::Approval& a) {
  for (const CustodianRecord& c : t.custodians()) {
    if (c.name() != a.custodian()) continue;
    EVP_PKEY* k = CertKey(c.cert_pem());
    if (!k) return InvalidArgumentError(StrCat("custodian ", c.name(), ": unreadable certificate"));
    bool ok = base::Sha256Verify(k, ApprovalStatement(t.ceremony_id(), step.hash()), a.signature());
    EVP_PKEY_free(k);
    if (!ok)
      return Status(StatusCode::kPermissionDenied,
                    StrCat("step ", step.seq(), ": approval by ", a.custodian(), " does not verify"));
    return OkStatus();
  }
  return Status(StatusCode::kPermissionDenied, StrCat("step ", step.seq(), ": ", a.custodian(), " is not a registered custodian"));
}
}  // namespace

std::string ApprovalStatement(const std::string& ceremony_id, const std::string& step_hash) {
  return StrCat("mailseal ceremony approval v1\n", ceremony_id, "\n", Hex(step_hash), "\n");
}

Result<std::string> SignApproval(EVP_PKEY* key, const std::string& statement) {
  return base::Sha256Sign(key, statement);
}

Result<Ceremony> Ceremony::Begin(const std::string& kind, unsigned threshold,
                                 const std::vector<CustodianRecord>& custodians, const std::string& detail) {
  std::set<std::string> names;
  for (const CustodianRecord& c : custodians) {
    if (c.name().empty() || !names.insert(c.name()).second)
      return InvalidArgumentError(StrCat("custodian names must be unique and not empty ('", c.name(), "')"));
    EVP_PKEY* k = CertKey(c.cert_pem());
    if (!k) return InvalidArgumentError(StrCat("custodian ", c.name(), ": unreadable certificate"));
    EVP_PKEY_free(k);
  }
  if (threshold < 2 || threshold > custodians.size())
    return InvalidArgumentError(StrCat("a quorum needs 2 <= M <= N (M=", threshold, ", N=", custodians.size(), ")"));
  Ceremony c;
  unsigned char id[12];
  RAND_bytes(id, sizeof id);
  c.t_.set_ceremony_id(Hex(std::string(reinterpret_cast<char*>(id), sizeof id)));
  c.t_.set_kind(kind);
  c.t_.set_threshold(threshold);
  for (const CustodianRecord& r : custodians) *c.t_.add_custodians() = r;
  c.Add("begin", StrCat(kind, ": ", detail, " (", threshold, " of ", custodians.size(), " custodians)"), false);
  return c;
}

CeremonyStep& Ceremony::Add(const std::string& action, const std::string& detail, bool needs_approval) {
  std::string prev = t_.steps_size() ? t_.steps(t_.steps_size() - 1).hash() : t_.ceremony_id();
  CeremonyStep* st = t_.add_steps();
  st->set_seq(static_cast<uint32_t>(t_.steps_size() - 1));
  st->set_at_unix_ms(NowMs());
  st->set_action(action);
  st->set_detail(detail);
  st->set_requires_approval(needs_approval);
  st->set_hash(StepHash(prev, *st));
  return *st;
}

void Ceremony::Note(const std::string& action, const std::string& detail) { Add(action, detail, false); }

Result<std::string> Ceremony::Propose(const std::string& action, const std::string& detail) {
  const CeremonyStep& st = Add(action, detail, true);
  return ApprovalStatement(t_.ceremony_id(), st.hash());
}

Status Ceremony::Approve(const std::string& custodian, const std::string& signature) {
  if (!t_.steps_size() || !t_.steps(t_.steps_size() - 1).requires_approval())
    return FailedPreconditionError("no step is waiting for approval");
  CeremonyStep* st = t_.mutable_steps(t_.steps_size() - 1);
  for (const auto& a : st->approvals())
    if (a.custodian() == custodian)
      return Status(StatusCode::kAlreadyExists, StrCat(custodian, " has already approved step ", st->seq()));
  mailseal::v1::Approval a;
  a.set_custodian(custodian);
  a.set_signature(signature);
  if (Status s = CheckApproval(t_, *st, a); !s.ok()) return s;
  *st->add_approvals() = a;
  return OkStatus();
}

Status Ceremony::Execute(const std::function<Result<std::string>()>& action) {
  if (!t_.steps_size() || !t_.steps(t_.steps_size() - 1).requires_approval())
    return FailedPreconditionError("no step is waiting for approval");
  const CeremonyStep& st = t_.steps(t_.steps_size() - 1);
  unsigned have = static_cast<unsigned>(st.approvals_size());
  if (have < t_.threshold()) {
    std::string why = StrCat("step ", st.seq(), " (", st.action(), ") needs ", t_.threshold(), " approvals, has ", have);
    Add("refused", why, false);
    return Status(StatusCode::kPermissionDenied, why);
  }
  Result<std::string> r = action();
  if (!r.ok()) {
    Add("failed", r.status().ToString(), false);
    return r.status();
  }
  Add("result", *r, false);
  return OkStatus();
}

Result<CeremonyTranscript> Ceremony::Finish(Session& s, const KeyPair& audit_key) {
  Add("end", "", false);
  Result<std::string> kt = Attribute(s, audit_key.priv, CKA_KEY_TYPE);
  if (!kt.ok()) return kt.status();
  CK_KEY_TYPE t = 0;
  std::memcpy(&t, kt->data(), std::min(kt->size(), sizeof t));
  const std::string& last = t_.steps(t_.steps_size() - 1).hash();
  Result<std::string> sig = Sign(s, audit_key.priv, t == CKK_EC ? SignMechanism::kEcdsaSha256 : SignMechanism::kRsaPkcs1Sha256, last);
  if (!sig.ok()) return sig.status();
  Result<EVP_PKEY*> pub = PublicKey(s, audit_key.pub);
  if (!pub.ok()) return pub.status();
  unsigned char* der = nullptr;
  int n = i2d_PUBKEY(*pub, &der);
  EVP_PKEY_free(*pub);
  t_.set_audit_public_key_der(std::string(reinterpret_cast<char*>(der), static_cast<size_t>(n)));
  OPENSSL_free(der);
  t_.set_audit_signature(*sig);
  return t_;
}

// CheckChain: the steps' order, hash chain and approvals (what a transcript proves before its
// audit signature).
Status CheckChain(const CeremonyTranscript& t) {
  if (t.steps_size() == 0) return DataLossError("transcript has no steps");
  std::string prev = t.ceremony_id();
  for (int i = 0; i < t.steps_size(); ++i) {
    const CeremonyStep& st = t.steps(i);
    if (st.seq() != static_cast<uint32_t>(i)) return DataLossError(StrCat("step ", i, ": out of order"));
    if (StepHash(prev, st) != st.hash())
      return DataLossError(StrCat("step ", i, " (", st.action(), "): hash does not match its content or its predecessor"));
    std::set<std::string> approvers;
    for (const auto& a : st.approvals()) {
      if (!st.requires_approval()) return DataLossError(StrCat("step ", i, ": approvals on a step that needs none"));
      if (!approvers.insert(a.custodian()).second)
        return DataLossError(StrCat("step ", i, ": ", a.custodian(), " approved twice"));
      if (Status s = CheckApproval(t, st, a); !s.ok()) return s;
    }
    bool executed = i + 1 < t.steps_size() &&
                    (t.steps(i + 1).action() == "result" || t.steps(i + 1).action() == "failed");
    if (st.requires_approval() && executed && approvers.size() < t.threshold())
      return DataLossError(StrCat("step ", i, " ran with ", approvers.size(), " of ", t.threshold(), " approvals"));
    prev = st.hash();
  }
  return OkStatus();
}

Result<Ceremony> Ceremony::Resume(const CeremonyTranscript& t, unsigned threshold,
                                  const std::vector<CustodianRecord>& custodians) {
  if (Status st = CheckChain(t); !st.ok()) return st;
  if (t.threshold() != threshold || t.custodians_size() != static_cast<int>(custodians.size()))
    return FailedPreconditionError("the custodians or the quorum changed since the ceremony began");
  for (int i = 0; i < t.custodians_size(); ++i)
    if (t.custodians(i).name() != custodians[i].name() || t.custodians(i).cert_pem() != custodians[i].cert_pem())
      return FailedPreconditionError(StrCat("custodian ", custodians[i].name(), " changed since the ceremony began"));
  const CeremonyStep& last = t.steps(t.steps_size() - 1);
  if (!last.requires_approval() || static_cast<unsigned>(last.approvals_size()) >= threshold || !t.audit_signature().empty())
    return FailedPreconditionError("the ceremony is not waiting for approvals");
  Ceremony c;
  c.t_ = t;
  return c;
}

Status VerifyTranscript(const CeremonyTranscript& t, const std::string& trusted_audit_key_der) {
  if (Status st = CheckChain(t); !st.ok()) return st;
  std::string prev = t.steps(t.steps_size() - 1).hash();
  if (!trusted_audit_key_der.empty() && trusted_audit_key_der != t.audit_public_key_der())
    return Status(StatusCode::kPermissionDenied, "transcript signed by a different audit key");
  const unsigned char* p = reinterpret_cast<const unsigned char*>(t.audit_public_key_der().data());
  EVP_PKEY* k = d2i_PUBKEY(nullptr, &p, static_cast<long>(t.audit_public_key_der().size()));
  if (!k) return DataLossError("transcript has no readable audit key");
  bool ok = base::Sha256Verify(k, prev, t.audit_signature());
  EVP_PKEY_free(k);
  if (!ok) return DataLossError("the audit signature over the transcript does not verify");
  return OkStatus();
}

}  // namespace mailseal::hsm
