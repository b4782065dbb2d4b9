// server.cc — see server.h.
#include "control/server.h"

#include "control/cluster/cluster.h"
#include "dataplane/base/clock.h"
#include "dataplane/base/file.h"
#include "dataplane/base/strings.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpc/support/log.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <thread>
#include <atomic>
#include <map>
#include <mutex>
#include <fstream>
#include <sstream>

#include "control/guard.h"
#include "control/keys_service.h"
#include "control/tls_front.h"
#include "dataplane/base/log.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "mailseal/v1/control.grpc.pb.h"

namespace mailseal::control {
namespace {
using base::Log;
using base::LogLevel;
using grpc::ServerContext;
using grpc::Status;
using grpc::StatusCode;
namespace v1 = mailseal::v1;

// ParsePageToken: a numeric page token as this server writes them; false for anything else
// (a garbage token is an error, never silently the first page).
bool ParsePageToken(const std::string& token, uint64_t* out) {
  if (token.empty() || token.size() > 19 || token.find_first_not_of("0123456789") != std::string::npos) return false;
  *out = std::strtoull(token.c_str(), nullptr, 10);
  return true;
}

bool ValidQueueId(const std::string& id) {
  return !id.empty() && id.size() < 128 && id[0] != '.' &&
         std::all_of(id.begin(), id.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.'; });
}

constexpr queue::SpoolState kAllStates[] = {queue::SpoolState::kIncoming, queue::SpoolState::kActive,
                                            queue::SpoolState::kDeferred, queue::SpoolState::kHold,
                                            queue::SpoolState::kCorrupt};

// Summary fills the envelope summary of a spool file.
void Summary(const std::string& id, const Result<queue::SpoolMessage>& m, v1::QueuedMessage* q) {
  q->set_queue_id(id);
  if (!m.ok()) {
    q->set_hold_reason(StrCat("unreadable: ", m.status().message()));
    return;
  }
  q->set_mail_from(m->envelope.mail_from());
  for (const auto& r : m->envelope.recipients()) q->add_recipients(r.address());
  q->set_size(m->body_size);
  q->set_arrival_unix_ms(m->envelope.arrival_unix_ms());
  q->set_hold_reason(m->envelope.hold_reason());
}

class QueueServiceImpl final : public v1::QueueService::Service {
 public:
  QueueServiceImpl(const Guard* g, Deps d) : guard_(g), deps_(d) {}

  Status GetCounts(ServerContext* ctx, const v1::GetCountsRequest*, v1::GetCountsResponse* resp) override {
    std::string actor;
    if (Status st = guard_->Check(ctx, "mailseal.v1.QueueService.GetCounts", "", &actor); !st.ok()) return st;
    for (queue::SpoolState s : {queue::SpoolState::kIncoming, queue::SpoolState::kActive, queue::SpoolState::kDeferred,
                                queue::SpoolState::kHold, queue::SpoolState::kCorrupt}) {
      Result<std::vector<std::string>> ids = deps_.spool->List(s);
      (*resp->mutable_counts())[queue::StateDir(s)] = ids.ok() ? ids->size() : 0;
    }
    return Status::OK;
  }

  Status ListMessages(ServerContext* ctx, const v1::ListMessagesRequest* req, v1::ListMessagesResponse* resp) override {
    std::string actor;
    if (Status st = guard_->Check(ctx, "mailseal.v1.QueueService.ListMessages", req->state(), &actor); !st.ok())
      return st;
    const queue::SpoolState* state = nullptr;
    for (const auto& s : kAllStates)
      if (req->state() == queue::StateDir(s)) state = &s;
    if (!state) return Invalid("state", "one of incoming, active, deferred, hold, corrupt");
    Result<std::vector<std::string>> ids = deps_.spool->List(*state);
    if (!ids.ok()) return FromStatus(ids.status());
    std::sort(ids->begin(), ids->end());
    size_t page = req->page_size() == 0 ? 100 : std::min<size_t>(req->page_size(), 1000);
    if (!req->page_token().empty() && !ValidQueueId(req->page_token()))
      return Invalid("page_token", "not a token this server gave (issue #13: never page one instead)");
    auto it = std::upper_bound(ids->begin(), ids->end(), req->page_token());
    if (req->page_token().empty()) it = ids->begin();
    for (; it != ids->end() && static_cast<size_t>(resp->messages_size()) < page; ++it) {
      Summary(*it, queue::ReadSpoolFile(deps_.spool->PathOf(*state, *it)), resp->add_messages());
    }
    if (it != ids->end() && resp->messages_size() > 0) resp->set_next_page_token(resp->messages().rbegin()->queue_id());
    return Status::OK;
  }

  Status ReleaseMessage(ServerContext* ctx, const v1::ReleaseMessageRequest* req,
                        v1::ReleaseMessageResponse* resp) override {
    std::string actor;
    if (Status st = guard_->Check(ctx, "mailseal.v1.QueueService.ReleaseMessage", req->queue_id(), &actor); !st.ok())
      return st;
    const std::string& id = req->queue_id();
    if (!ValidQueueId(id))
      return guard_->Refuse(actor, "mailseal.v1.QueueService.ReleaseMessage", id, Invalid("queue_id", "not a queue id"));
    Result<queue::SpoolMessage> fresh = queue::RequeueHeld(deps_.spool, id);
    if (!fresh.ok() && fresh.status().code() == mailseal::StatusCode::kNotFound) {
      guard_->Failed(actor, "mailseal.v1.QueueService.ReleaseMessage", id, "no such held message");
      return Status(StatusCode::NOT_FOUND, fresh.status().message());
    }
    if (!fresh.ok()) return FromStatus(fresh.status());
    std::string qid = fresh->id;
    deps_.qmgr->Released(id);
    deps_.qmgr->Submit(std::move(fresh.value()));
    Log(LogLevel::kInfo, "control", "released from hold", {{"qid", id}, {"new_qid", qid}, {"actor", actor}});
    resp->set_queue_id(qid);
    return Status::OK;
  }

  Status GetMessage(ServerContext* ctx, const v1::GetMessageRequest* req, v1::GetMessageResponse* resp) override {
    std::string actor;
    if (Status st = guard_->Check(ctx, "mailseal.v1.QueueService.GetMessage", req->queue_id(), &actor); !st.ok())
      return st;
    if (!ValidQueueId(req->queue_id())) return Invalid("queue_id", "not a queue id");
    for (queue::SpoolState state : kAllStates) {
      std::string path = deps_.spool->PathOf(state, req->queue_id());
      if (!std::ifstream(path)) continue;
      Result<queue::SpoolMessage> m = queue::ReadSpoolFile(path);
      resp->set_state(queue::StateDir(state));
      Summary(req->queue_id(), m, resp->mutable_message());
      if (!m.ok()) return Status::OK;
      const auto& env = m->envelope;
      resp->set_derived_from(env.derived_from());
      resp->set_protection(env.protection());
      resp->set_client_address(env.client_address());
      resp->set_helo(env.helo());
      resp->set_tls(env.tls());
      resp->set_spf_result(env.spf_result());
      resp->set_spf_domain(env.spf_domain());
      for (const auto& r : env.recipients()) {
        auto* rs = resp->add_recipients();
        rs->set_address(r.address());
        rs->set_status("pending");
      }
      for (const auto& st : m->statuses) {
        if (st.recipient_index() >= static_cast<uint32_t>(resp->recipients_size())) continue;
        auto* rs = resp->mutable_recipients(static_cast<int>(st.recipient_index()));
        using K = mailseal::v1::SpoolStatus;
        const char* name = st.kind() == K::KIND_DELIVERED ? "delivered" : st.kind() == K::KIND_FAILED ? "failed"
                           : st.kind() == K::KIND_TRANSFERRED ? "transferred" : nullptr;
        if (!name) continue;
        rs->set_status(name);
        rs->set_detail(st.reply());
        rs->set_at_unix_ms(st.at_unix_ms());
      }
      // Deferral records cover every recipient still pending.
      for (const auto& st : m->statuses)
        if (st.kind() == mailseal::v1::SpoolStatus::KIND_DEFERRED)
          for (auto& rs : *resp->mutable_recipients())
            if (rs.status() == "pending" || rs.status() == "deferred") {
              rs.set_status("deferred");
              rs.set_detail(st.reply());
              rs.set_at_unix_ms(st.at_unix_ms());
            }
      return Status::OK;
    }
    return Status(StatusCode::NOT_FOUND, StrCat("no message ", req->queue_id(), " in the spool"));
  }

  Status DeleteMessage(ServerContext* ctx, const v1::DeleteMessageRequest* req,
                       v1::DeleteMessageResponse* resp) override {
    std::string actor;
    const char* method = "mailseal.v1.QueueService.DeleteMessage";
    if (Status st = guard_->Check(ctx, method, StrCat(req->queue_id(), " reason=", req->reason()), &actor); !st.ok())
      return st;
    const std::string& id = req->queue_id();
    if (!ValidQueueId(id)) return guard_->Refuse(actor, method, id, Invalid("queue_id", "not a queue id"));
    if (req->reason().empty())
      return guard_->Refuse(actor, method, id, Invalid("reason", "required (it goes to the audit trail)"));
    for (queue::SpoolState state : {queue::SpoolState::kHold, queue::SpoolState::kCorrupt}) {
      if (!std::ifstream(deps_.spool->PathOf(state, id))) continue;
      if (mailseal::Status st = deps_.spool->Remove(id, state); !st.ok()) {
        guard_->Failed(actor, method, id, st.message());
        return FromStatus(st);
      }
      Log(LogLevel::kInfo, "control", "deleted", {{"qid", id}, {"state", queue::StateDir(state)}, {"actor", actor}});
      resp->set_state(queue::StateDir(state));
      return Status::OK;
    }
    guard_->Failed(actor, method, id, "not in hold/ or corrupt/");
    return Status(StatusCode::FAILED_PRECONDITION,
                  StrCat(id, " is not in hold/ or corrupt/ (queued mail is withdrawn with recall)"));
  }

  Status RecallMessages(ServerContext* ctx, const v1::RecallMessagesRequest* req,
                        v1::RecallMessagesResponse* resp) override {
    std::string actor;
    const char* method = "mailseal.v1.QueueService.RecallMessages";
    std::string object = req->queue_id().empty()
                             ? StrCat("from=<", req->mail_from(), "> since=", req->since_unix_ms(), " until=", req->until_unix_ms())
                             : req->queue_id();
    if (Status st = guard_->Check(ctx, method, StrCat(object, " reason=", req->reason()), &actor); !st.ok()) return st;
    if (req->reason().empty())
      return guard_->Refuse(actor, method, object, Invalid("reason", "required (it goes to the audit trail)"));
    if (req->queue_id().empty() && req->mail_from().empty())
      return guard_->Refuse(actor, method, object,
                            Invalid("queue_id", "give a queue id, or mail_from (with an optional time window)"));
    if (!req->queue_id().empty() && !ValidQueueId(req->queue_id()))
      return guard_->Refuse(actor, method, object, Invalid("queue_id", "not a queue id"));
    // Select: by id, or every queued/held file from the sender within the window.
    std::vector<std::pair<queue::SpoolState, std::string>> targets;
    for (queue::SpoolState state : {queue::SpoolState::kActive, queue::SpoolState::kDeferred, queue::SpoolState::kHold}) {
      Result<std::vector<std::string>> ids = deps_.spool->List(state);
      if (!ids.ok()) continue;
      for (const std::string& id : *ids) {
        if (!req->queue_id().empty()) {
          if (id == req->queue_id()) targets.emplace_back(state, id);
          continue;
        }
        Result<queue::SpoolMessage> m = queue::ReadSpoolFile(deps_.spool->PathOf(state, id));
        if (!m.ok() || base::AsciiLower(m->envelope.mail_from()) != base::AsciiLower(req->mail_from())) continue;
        int64_t t = m->envelope.arrival_unix_ms();
        if ((req->since_unix_ms() && t < req->since_unix_ms()) || (req->until_unix_ms() && t > req->until_unix_ms()))
          continue;
        targets.emplace_back(state, id);
      }
    }
    if (targets.empty()) {
      guard_->Failed(actor, method, object, "nothing queued or held matched");
      return Status(StatusCode::NOT_FOUND, StrCat("nothing queued or held matches ", object));
    }
    std::vector<std::string> recalled;
    for (const auto& [state, id] : targets) {
      v1::RecalledMessage* out = resp->add_messages();
      out->set_queue_id(id);
      if (state == queue::SpoolState::kHold) {
        Result<queue::SpoolMessage> m = queue::ReadSpoolFile(deps_.spool->PathOf(state, id));
        if (m.ok())
          for (const auto& r : m->envelope.recipients()) out->add_recipients(r.address());
        mailseal::Status st = deps_.spool->Remove(id, state);
        if (!st.ok()) out->set_error(st.message());
        else recalled.push_back(id);
        continue;
      }
      std::future<Result<std::vector<std::string>>> f = deps_.qmgr->Recall(id, StrCat(req->reason(), " (by CN=", actor, ")"));
      if (f.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
        out->set_error("the queue manager did not answer in 10 s: the recall may still happen");
        continue;
      }
      Result<std::vector<std::string>> r = f.get();
      if (!r.ok()) {
        out->set_error(r.status().message());
        continue;
      }
      for (const std::string& a : *r) out->add_recipients(a);
      recalled.push_back(id);
    }
    v1::AuditRecord done;
    done.set_actor(StrCat("CN=", actor));
    done.set_action(method);
    done.set_object(object);
    done.set_outcome(recalled.empty() ? v1::AuditRecord::OUTCOME_FAILED : v1::AuditRecord::OUTCOME_DONE);
    for (const std::string& id : recalled) done.add_message_ids(id);
    done.set_detail(StrCat(recalled.size(), " of ", targets.size(), " recalled; reason: ", req->reason()));
    (void)deps_.audit->Append(done);
    Log(LogLevel::kInfo, "control", "recall", {{"selected", object}, {"recalled", std::to_string(recalled.size())}, {"actor", actor}});
    return Status::OK;
  }

 private:
  const Guard* guard_;
  Deps deps_;
};

class CertServiceImpl final : public v1::CertService::Service {
 public:
  CertServiceImpl(const Guard* g, const CertDeps* d) : guard_(g), deps_(d) {}

  Status ListCertificates(ServerContext* ctx, const v1::ListCertificatesRequest* req, v1::ListCertificatesResponse* resp) override {
    std::string actor;
    if (Status st = guard_->Check(ctx, "mailseal.v1.CertService.ListCertificates", req->domain(), &actor); !st.ok()) return st;
    std::string domain = base::AsciiLower(req->domain());
    if (!domain.empty() && !base::ValidDomainName(domain)) return Invalid("domain", "not a domain name");
    for (v1::CertificateInfo& c : deps_->list(domain)) *resp->add_certificates() = std::move(c);
    return Status::OK;
  }

  Status AddCertificate(ServerContext* ctx, const v1::AddCertificateRequest* req, v1::AddCertificateResponse* resp) override {
    std::string actor;
    const char* method = "mailseal.v1.CertService.AddCertificate";
    if (Status st = guard_->Check(ctx, method, req->domain(), &actor); !st.ok()) return st;
    std::string domain = base::AsciiLower(req->domain());
    if (!base::ValidDomainName(domain)) return guard_->Refuse(actor, method, req->domain(), Invalid("domain", "not a domain name"));
    if (req->certificate().empty() || req->certificate().size() > 256 * 1024)
      return guard_->Refuse(actor, method, domain, Invalid("certificate", "one certificate, PEM or DER, at most 256 KiB"));
    mailseal::Result<std::string> what = deps_->add(domain, req->certificate(), req->pin());
    if (!what.ok()) return guard_->Refuse(actor, method, domain, FromStatus(what.status()));
    resp->set_what(*what);
    Log(LogLevel::kInfo, "control", "partner certificate added", {{"actor", actor}, {"domain", domain}, {"what", *what},
                                                                  {"pinned", req->pin() ? "yes" : "no"}});
    return Status::OK;
  }

  Status ApproveCertificate(ServerContext* ctx, const v1::ApproveCertificateRequest* req,
                            v1::ApproveCertificateResponse* resp) override {
    std::string actor;
    const char* method = "mailseal.v1.CertService.ApproveCertificate";
    if (Status st = guard_->Check(ctx, method, req->domain(), &actor); !st.ok()) return st;
    std::string domain = base::AsciiLower(req->domain());
    if (!base::ValidDomainName(domain)) return guard_->Refuse(actor, method, req->domain(), Invalid("domain", "not a domain name"));
    mailseal::Result<std::string> what = deps_->approve(domain);
    if (!what.ok()) return guard_->Refuse(actor, method, domain, FromStatus(what.status()));
    resp->set_what(*what);
    Log(LogLevel::kInfo, "control", "discovered certificate approved", {{"actor", actor}, {"domain", domain}, {"what", *what}});
    return Status::OK;
  }

  Status RemoveCertificate(ServerContext* ctx, const v1::RemoveCertificateRequest* req, v1::RemoveCertificateResponse*) override {
    std::string actor;
    const char* method = "mailseal.v1.CertService.RemoveCertificate";
    std::string object = StrCat(req->domain(), " ", req->kind());
    if (Status st = guard_->Check(ctx, method, object, &actor); !st.ok()) return st;
    if (req->kind() != "dca" && req->kind() != "dsa") return guard_->Refuse(actor, method, object, Invalid("kind", "dca or dsa"));
    if (mailseal::Status st = deps_->remove(base::AsciiLower(req->domain()), req->kind()); !st.ok())
      return guard_->Refuse(actor, method, object, FromStatus(st));
    Log(LogLevel::kInfo, "control", "partner certificate removed", {{"actor", actor}, {"domain", req->domain()}, {"kind", req->kind()}});
    return Status::OK;
  }

  Status ListRevocationSources(ServerContext* ctx, const v1::ListRevocationSourcesRequest*,
                               v1::ListRevocationSourcesResponse* resp) override {
    std::string actor;
    if (Status st = guard_->Check(ctx, "mailseal.v1.CertService.ListRevocationSources", "", &actor); !st.ok()) return st;
    for (v1::RevocationSource& r : deps_->sources()) *resp->add_sources() = std::move(r);
    return Status::OK;
  }

  Status ReloadCertificates(ServerContext* ctx, const v1::ReloadCertificatesRequest*, v1::ReloadCertificatesResponse*) override {
    std::string actor;
    const char* method = "mailseal.v1.CertService.ReloadCertificates";
    if (Status st = guard_->Check(ctx, method, "trust list", &actor); !st.ok()) return st;
    if (mailseal::Status st = deps_->reload(); !st.ok())
      return guard_->Refuse(actor, method, "trust list",
                            FromStatus(mailseal::Status(mailseal::StatusCode::kFailedPrecondition, st.message())));
    Log(LogLevel::kInfo, "control", "trust list, CRL files and pinned partner certificates reloaded", {{"actor", actor}});
    return Status::OK;
  }

  Status RefreshCertificate(ServerContext* ctx, const v1::RefreshCertificateRequest* req,
                            v1::RefreshCertificateResponse* resp) override {
    std::string actor;
    const char* method = "mailseal.v1.CertService.RefreshCertificate";
    if (Status st = guard_->Check(ctx, method, req->domain(), &actor); !st.ok()) return st;
    if (!base::ValidDomainName(base::AsciiLower(req->domain())))
      return guard_->Refuse(actor, method, req->domain(), Invalid("domain", "not a domain name"));
    if (!deps_->refresh) return guard_->Refuse(actor, method, req->domain(),
                                               Status(StatusCode::FAILED_PRECONDITION, "certificate discovery is not running"));
    resp->set_outcome(deps_->refresh(base::AsciiLower(req->domain())));
    Log(LogLevel::kInfo, "control", "partner certificate looked up", {{"actor", actor}, {"domain", req->domain()}, {"outcome", resp->outcome()}});
    return Status::OK;
  }

  Status ListLookups(ServerContext* ctx, const v1::ListLookupsRequest*, v1::ListLookupsResponse* resp) override {
    std::string actor;
    if (Status st = guard_->Check(ctx, "mailseal.v1.CertService.ListLookups", "", &actor); !st.ok()) return st;
    if (deps_->lookups)
      for (v1::CertificateLookup& l : deps_->lookups()) *resp->add_lookups() = std::move(l);
    return Status::OK;
  }

  Status ExportSmimea(ServerContext* ctx, const v1::ExportSmimeaRequest* req, v1::ExportSmimeaResponse* resp) override {
    std::string actor;
    if (Status st = guard_->Check(ctx, "mailseal.v1.CertService.ExportSmimea", "", &actor); !st.ok()) return st;
    if (req->ttl() > 604800) return Invalid("ttl", "at most 604800 seconds");
    if (deps_->smimea)
      for (std::string& l : deps_->smimea(req->ttl() ? static_cast<int>(req->ttl()) : 3600)) resp->add_lines(std::move(l));
    return Status::OK;
  }

 private:
  const Guard* guard_;
  const CertDeps* deps_;
};

class PolicyServiceImpl final : public v1::PolicyService::Service {
 public:
  PolicyServiceImpl(const Guard* g, Deps d) : guard_(g), deps_(d) {}

  Status GetPolicy(ServerContext* ctx, const v1::GetPolicyRequest* req, v1::GetPolicyResponse* resp) override {
    std::string actor;
    if (Status st = guard_->Check(ctx, "mailseal.v1.PolicyService.GetPolicy", "", &actor); !st.ok()) return st;
    Result<v1::PolicyDocument> d = deps_.policy->Get(req->version());
    if (!d.ok()) return FromStatus(d.status());
    *resp->mutable_policy() = *d;
    return Status::OK;
  }

  Status SetPolicy(ServerContext* ctx, const v1::SetPolicyRequest* req, v1::SetPolicyResponse* resp) override {
    std::string actor;
    std::string object = StrCat("policy v", req->expected_version() + 1);
    if (Status st = guard_->Check(ctx, "mailseal.v1.PolicyService.SetPolicy", object, &actor); !st.ok()) return st;
    Result<uint64_t> v = deps_.policy->Set(req->policy(), req->expected_version(), StrCat("CN=", actor));
    if (!v.ok()) {   // an invalid or stale document is refused; anything else failed
      if (v.status().code() == mailseal::StatusCode::kInvalidArgument ||
          v.status().code() == mailseal::StatusCode::kFailedPrecondition)
        return guard_->Refuse(actor, "mailseal.v1.PolicyService.SetPolicy", object, FromStatus(v.status()));
      guard_->Failed(actor, "mailseal.v1.PolicyService.SetPolicy", object, v.status().message());
      return FromStatus(v.status());
    }
    Log(LogLevel::kInfo, "control", "policy set", {{"version", std::to_string(*v)}, {"actor", actor}});
    resp->set_version(*v);
    return Status::OK;
  }

  Status DiffPolicy(ServerContext* ctx, const v1::DiffPolicyRequest* req, v1::DiffPolicyResponse* resp) override {
    std::string actor;
    if (Status st = guard_->Check(ctx, "mailseal.v1.PolicyService.DiffPolicy", "", &actor); !st.ok()) return st;
    Result<std::vector<std::string>> d = deps_.policy->Diff(req->from_version(), req->to_version());
    if (!d.ok()) return FromStatus(d.status());
    for (const std::string& line : *d) resp->add_changes(line);
    return Status::OK;
  }

  Status ListPolicyHistory(ServerContext* ctx, const v1::ListPolicyHistoryRequest* req,
                           v1::ListPolicyHistoryResponse* resp) override {
    std::string actor;
    if (Status st = guard_->Check(ctx, "mailseal.v1.PolicyService.ListPolicyHistory", "", &actor); !st.ok())
      return st;
    std::vector<v1::PolicyVersionInfo> all = deps_.policy->History();
    size_t page = req->page_size() == 0 ? 100 : std::min<size_t>(req->page_size(), 1000);
    uint64_t start = 0;
    if (!req->page_token().empty() && !ParsePageToken(req->page_token(), &start))
      return Invalid("page_token", "not a token this server gave");
    for (size_t i = start; i < all.size() && static_cast<size_t>(resp->versions_size()) < page; ++i)
      *resp->add_versions() = all[i];
    if (start + resp->versions_size() < all.size()) resp->set_next_page_token(std::to_string(start + resp->versions_size()));
    return Status::OK;
  }

 private:
  const Guard* guard_;
  Deps deps_;
};

class ClusterServiceImpl final : public v1::ClusterService::Service {
 public:
  ClusterServiceImpl(const Guard* g, cluster::ClusterNode* c) : guard_(g), cluster_(c) {}

  Status ListMembers(ServerContext* ctx, const v1::ListMembersRequest*, v1::ListMembersResponse* resp) override {
    std::string actor;
    if (Status st = guard_->Check(ctx, "mailseal.v1.ClusterService.ListMembers", "", &actor); !st.ok()) return st;
    if (!cluster_) return Status(grpc::StatusCode::FAILED_PRECONDITION, "this appliance is not part of a cluster");
    bool cached = false;
    for (auto& m : cluster_->Members(&cached)) *resp->add_members() = std::move(m);
    resp->set_from_cache(cached);
    return Status::OK;
  }

  Status GetClusterStatus(ServerContext* ctx, const v1::GetClusterStatusRequest*,
                          v1::GetClusterStatusResponse* resp) override {
    std::string actor;
    if (Status st = guard_->Check(ctx, "mailseal.v1.ClusterService.GetClusterStatus", "", &actor); !st.ok()) return st;
    if (!cluster_) return Status::OK;   // enabled = false
    cluster::ClusterStatus s = cluster_->GetStatus();
    resp->set_enabled(true);
    resp->set_cluster(s.cluster);
    resp->set_node_id(s.node_id);
    resp->set_connected(s.connected);
    resp->set_degraded(s.degraded);
    resp->set_revision(s.revision);
    resp->set_policy_version(s.policy_version);
    for (const auto& [job, leader] : s.leaders) {
      auto* j = resp->add_jobs();
      j->set_job(job);
      j->set_leader(leader);
    }
    for (auto& a : s.alarms) *resp->add_alarms() = std::move(a);
    resp->set_members(static_cast<uint32_t>(s.members));
    return Status::OK;
  }

 private:
  const Guard* guard_;
  cluster::ClusterNode* cluster_;
};

class AuditServiceImpl final : public v1::AuditService::Service {
 public:
  AuditServiceImpl(const Guard* g, Deps d) : guard_(g), deps_(d) {}

  Status GetTreeHead(ServerContext* ctx, const v1::GetTreeHeadRequest*, v1::GetTreeHeadResponse* resp) override {
    std::string actor;
    if (Status st = guard_->Check(ctx, "mailseal.v1.AuditService.GetTreeHead", "", &actor); !st.ok()) return st;
    Result<v1::TreeHead> h = deps_.audit->SignHead();
    if (!h.ok()) return FromStatus(h.status());
    *resp->mutable_head() = *h;
    return Status::OK;
  }

  Status ListRecords(ServerContext* ctx, const v1::ListRecordsRequest* req, v1::ListRecordsResponse* resp) override {
    std::string actor;
    if (Status st = guard_->Check(ctx, "mailseal.v1.AuditService.ListRecords", "", &actor); !st.ok()) return st;
    uint64_t start = req->start_seq();
    if (!req->page_token().empty() && !ParsePageToken(req->page_token(), &start))
      return Invalid("page_token", "not a token this server gave");
    size_t page = req->page_size() == 0 ? 100 : std::min<size_t>(req->page_size(), 1000);
    auto matches = [req](const v1::AuditRecord& r) {
      if (!req->action_prefix().empty() && r.action().compare(0, req->action_prefix().size(), req->action_prefix()) != 0)
        return false;
      if (!req->actor().empty() && r.actor() != req->actor()) return false;
      if (req->outcome() != v1::AuditRecord::OUTCOME_UNSPECIFIED && r.outcome() != req->outcome()) return false;
      if (req->since_unix_ms() && r.time_unix_ms() < req->since_unix_ms()) return false;
      if (req->until_unix_ms() && r.time_unix_ms() > req->until_unix_ms()) return false;
      if (!req->message_id().empty() && r.object() != req->message_id() &&
          std::find(r.message_ids().begin(), r.message_ids().end(), req->message_id()) == r.message_ids().end())
        return false;
      return true;
    };
    // A filtered page scans at most 20,000 records, so one call stays bounded; the token says
    // where the next call goes on.
    uint64_t next = start, end = deps_.audit->size();
    uint64_t scan_limit = start + 20000;
    while (next < end && next < scan_limit && static_cast<size_t>(resp->records_size()) < page) {
      Result<std::vector<v1::AuditRecord>> recs = deps_.audit->ReadRecords(next, std::min<uint64_t>(500, scan_limit - next));
      if (!recs.ok()) return FromStatus(recs.status());
      if (recs->empty()) break;
      for (auto& r : *recs) {
        ++next;
        if (matches(r)) *resp->add_records() = std::move(r);
        if (static_cast<size_t>(resp->records_size()) >= page) break;
      }
    }
    if (next < end) resp->set_next_page_token(std::to_string(next));
    return Status::OK;
  }

  Status GetConsistencyProof(ServerContext* ctx, const v1::GetConsistencyProofRequest* req,
                             v1::GetConsistencyProofResponse* resp) override {
    std::string actor;
    if (Status st = guard_->Check(ctx, "mailseal.v1.AuditService.GetConsistencyProof", "", &actor); !st.ok())
      return st;
    Result<std::vector<audit::Hash>> p = deps_.audit->ConsistencyProofFor(req->old_size(), req->new_size());
    if (!p.ok()) return FromStatus(p.status());
    for (const auto& h : *p) resp->add_hashes(h);
    return Status::OK;
  }

  Status GetInclusionProof(ServerContext* ctx, const v1::GetInclusionProofRequest* req,
                           v1::GetInclusionProofResponse* resp) override {
    std::string actor;
    if (Status st = guard_->Check(ctx, "mailseal.v1.AuditService.GetInclusionProof", "", &actor); !st.ok()) return st;
    uint64_t size = req->tree_size() ? req->tree_size() : deps_.audit->size();
    if (req->seq() >= size) return Invalid("seq", StrCat("must be below the tree size (", size, ")"));
    if (size > deps_.audit->size()) return Invalid("tree_size", StrCat("the log has ", deps_.audit->size(), " records"));
    Result<std::string> bytes = deps_.audit->RecordBytes(req->seq());
    if (!bytes.ok()) return FromStatus(bytes.status());
    Result<std::vector<audit::Hash>> p = deps_.audit->InclusionProofFor(req->seq(), size);
    if (!p.ok()) return FromStatus(p.status());
    resp->set_leaf_hash(audit::LeafHash(*bytes));
    resp->set_tree_size(size);
    for (const auto& h : *p) resp->add_hashes(h);
    resp->mutable_record()->ParseFromString(*bytes);
    return Status::OK;
  }

  Status WatchRecords(ServerContext* ctx, const v1::WatchRecordsRequest* req,
                      grpc::ServerWriter<v1::WatchRecordsResponse>* writer) override {
    std::string actor;
    if (Status st = guard_->Check(ctx, "mailseal.v1.AuditService.WatchRecords", "", &actor); !st.ok()) return st;
    // Each stream holds a server thread: at most 8 at a time.
    if (watchers_.fetch_add(1) >= 8) {
      watchers_.fetch_sub(1);
      return Status(StatusCode::RESOURCE_EXHAUSTED, "8 audit streams are open already");
    }
    struct Release {
      std::atomic<int>* n;
      ~Release() { n->fetch_sub(1); }
    } release{&watchers_};
    uint64_t next = req->start_seq();
    while (!ctx->IsCancelled()) {
      if (next < deps_.audit->size()) {
        Result<std::vector<v1::AuditRecord>> recs = deps_.audit->ReadRecords(next, 500);
        if (!recs.ok()) return FromStatus(recs.status());
        v1::WatchRecordsResponse out;
        for (auto& r : *recs) *out.add_records() = std::move(r);
        next += out.records_size();
        if (!writer->Write(out)) break;   // the client went away
        continue;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return Status::OK;
  }

 private:
  const Guard* guard_;
  Deps deps_;
  std::atomic<int> watchers_{0};
};

}  // namespace

// State: what the services share, owned by the server and alive as long as they are.
struct ControlServer::State {
  ServerOptions options;
  std::unique_ptr<Guard> guard;
  std::vector<std::unique_ptr<grpc::Service>> services;
  std::atomic<grpc::HealthCheckServiceInterface*> health{nullptr};
  audit::AuditLog* audit = nullptr;
  // Refusals in the TLS handshake (issue #13): audited, at most one record per 10 s with the
  // number of those left out since.
  // Per kind of refusal: when the last record was written and how many were left out since.
  struct RefusalWindow {
    int64_t since_ms = 0;
    uint64_t left_out = 0;
  };
  std::mutex refused_mu;
  std::map<std::string, RefusalWindow> refused;
  std::unique_ptr<TlsFront> front;   // the management TLS (stopped before the services go)
};

namespace {
// AuditRefusal records a refusal below the RPC layer: at most one record per 10 s, with the
// number of those left out since (a hostile client must not fill the audit disk).
void AuditRefusal(ControlServer::State* st, const std::string& actor, const char* action, const std::string& reason,
                  const std::string& address) {
  std::lock_guard<std::mutex> l(st->refused_mu);
  int64_t now = base::SteadyMs();
  ControlServer::State::RefusalWindow& w = st->refused[action];
  if (w.since_ms != 0 && now - w.since_ms < 10000) {
    ++w.left_out;
    return;
  }
  v1::AuditRecord r;
  r.set_actor(actor);
  r.set_action(action);
  r.set_outcome(v1::AuditRecord::OUTCOME_DENIED);
  r.set_detail(w.left_out ? StrCat(reason, " (and ", w.left_out, " more refusals before this one)") : reason);
  r.set_client_address(address);
  if (st->audit) (void)st->audit->Append(r);
  w.since_ms = now;
  w.left_out = 0;
}

// GrpcLog: gRPC's own log lines go to ours.
void GrpcLog(gpr_log_func_args* args) {
  std::string msg = args->message ? args->message : "";
  LogLevel level = args->severity == GPR_LOG_SEVERITY_ERROR ? LogLevel::kError
                   : args->severity == GPR_LOG_SEVERITY_INFO ? LogLevel::kInfo : LogLevel::kDebug;
  Log(level, "grpc", msg, {{"at", StrCat(args->file ? args->file : "?", ":", args->line)}});
}

// UnparseableRequests: a request that is not the method's protobuf message answers
// INVALID_ARGUMENT (gRPC's own answer is INTERNAL, which would blame the server for the
// client's bytes) and is audited as refused, with the caller's name and address, rate-limited
// like the handshake refusals. gRPC hands an interceptor no message when it could not parse one.
class UnparseableRequests : public grpc::experimental::Interceptor {
 public:
  UnparseableRequests(grpc::experimental::ServerRpcInfo* info, ControlServer::State* st) : info_(info), st_(st) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* m) override {
    using grpc::experimental::InterceptionHookPoints;
    // Only where the request is one message: in a client stream, "no message" is its end.
    using Type = grpc::experimental::ServerRpcInfo::Type;
    bool single = info_->type() == Type::UNARY || info_->type() == Type::SERVER_STREAMING;
    if (single && m->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE) && m->GetRecvMessage() == nullptr)
      unparsed_ = true;
    if (m->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS) && unparsed_) {
      std::optional<Caller> who = st_->front ? st_->front->Lookup(info_->server_context()->peer()) : std::nullopt;
      std::string actor = who ? StrCat("CN=", who->common_name) : "unknown";
      std::string address = who ? who->client_address : "";
      std::string why = StrCat("the request is not a valid message for ", info_->method());
      Log(LogLevel::kWarning, "control", "unparseable management request refused",
          {{"method", info_->method()}, {"actor", actor}, {"client", address}});
      AuditRefusal(st_, actor, "control.request_unparseable", why, address);
      m->ModifySendStatus(Status(StatusCode::INVALID_ARGUMENT, why));
    }
    m->Proceed();
  }

 private:
  grpc::experimental::ServerRpcInfo* info_;
  ControlServer::State* st_;
  bool unparsed_ = false;
};

class UnparseableRequestsFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit UnparseableRequestsFactory(ControlServer::State* st) : st_(st) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    return new UnparseableRequests(info, st_);
  }

 private:
  ControlServer::State* st_;
};
}  // namespace

Result<std::unique_ptr<ControlServer>> ControlServer::Start(const ServerOptions& options, Deps deps) {
  Result<std::string> cert = base::ReadFile(options.cert_file);
  Result<std::string> key = options.token_key ? Result<std::string>(std::string()) : base::ReadFile(options.key_file);
  Result<std::string> ca = base::ReadFile(options.client_ca_file);
  if (!cert.ok() || !key.ok() || !ca.ok())
    return InvalidArgumentError(StrCat("field 'control': ", !cert.ok() ? cert.status().message()
                                                            : !key.ok() ? key.status().message() : ca.status().message()));
  // The gRPC server listens only on a Unix socket in a directory only we may enter; the TLS
  // front (tls_front.h) is the one way in from the network.
  if (::mkdir(options.private_dir.c_str(), 0700) != 0 && errno != EEXIST)
    return UnavailableError(StrCat("management API: cannot make ", options.private_dir, ": ", std::strerror(errno)));
  struct stat sb{};
  if (::stat(options.private_dir.c_str(), &sb) != 0 || !S_ISDIR(sb.st_mode) || sb.st_uid != ::geteuid() ||
      (sb.st_mode & 077) != 0)
    return FailedPreconditionError(StrCat("management API: ", options.private_dir,
                                          " must be a directory owned by us with mode 0700"));
  std::string backend = StrCat(options.private_dir, "/api.sock");
  if (backend.size() >= sizeof(sockaddr_un::sun_path))
    return InvalidArgumentError(StrCat("management API: the socket path ", backend, " is too long (spool_dir shorter)"));
  ::unlink(backend.c_str());   // left by a stopped daemon
  std::unique_ptr<ControlServer> s(new ControlServer());
  s->state_ = std::make_unique<State>();
  State* st = s->state_.get();
  st->options = options;
  st->audit = deps.audit;
  st->guard = std::make_unique<Guard>(&st->options.roles, deps.audit, [st](grpc::ServerContextBase* ctx) {
    return st->front ? st->front->Lookup(ctx->peer()) : std::nullopt;
  });
  // grpc.health.v1: SERVING while the audit trail can be written; NOT_SERVING once it cannot
  // (changes are refused then; mail keeps flowing). Set before the first call can arrive.
  audit::AuditLog* log = deps.audit;
  st->guard->on_audit_failure = [st, log] {
    if (grpc::HealthCheckServiceInterface* h = st->health.load()) h->SetServingStatus(log->healthy());
  };
  st->services.push_back(std::make_unique<QueueServiceImpl>(st->guard.get(), deps));
  st->services.push_back(std::make_unique<AuditServiceImpl>(st->guard.get(), deps));
  if (deps.policy) st->services.push_back(std::make_unique<PolicyServiceImpl>(st->guard.get(), deps));
  st->services.push_back(std::make_unique<ClusterServiceImpl>(st->guard.get(), deps.cluster));
  if (deps.certs) st->services.push_back(std::make_unique<CertServiceImpl>(st->guard.get(), deps.certs));
  if (deps.keys) {
    st->services.push_back(NewKeyService(st->guard.get(), deps.keys));
    st->services.push_back(NewCeremonyService(st->guard.get(), deps.keys, deps.audit));
  }
  gpr_set_log_function(GrpcLog);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();   // generic clients (grpcurl-style)
  grpc::ServerBuilder b;
  b.AddListeningPort(StrCat("unix:", backend), grpc::InsecureServerCredentials());
  for (auto& svc : st->services) b.RegisterService(svc.get());
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<UnparseableRequestsFactory>(st));
  b.experimental().SetInterceptorCreators(std::move(interceptors));
  s->server_ = b.BuildAndStart();
  if (!s->server_) return UnavailableError(StrCat("management API cannot listen on ", backend));
  st->health.store(s->server_->GetHealthCheckService());
  TlsFrontOptions fo;
  fo.listen = options.listen;
  fo.cert_pem = *cert;
  fo.key_pem = *key;
  fo.key = options.token_key;
  fo.client_ca_pem = *ca;
  fo.backend_path = backend;
  fo.on_refused = [st](const std::string& address, const std::string& reason) {
    Log(LogLevel::kWarning, "control", "management connection refused", {{"client", address}, {"reason", reason}});
    AuditRefusal(st, StrCat("unauthenticated ", address), "control.connection_refused", reason, address);
  };
  Result<std::unique_ptr<TlsFront>> front = TlsFront::Start(std::move(fo));
  if (!front.ok()) {
    s->server_->Shutdown();
    return front.status();
  }
  st->front = std::move(front.value());
  s->port_ = st->front->port();
  st->guard->on_audit_failure();
  Log(LogLevel::kInfo, "control", "management API listening (mTLS)",
      {{"address", options.listen}, {"port", std::to_string(s->port_)}, {"roles", std::to_string(options.roles.size())}});
  return s;
}

ControlServer::~ControlServer() { Stop(); }

void ControlServer::SetServing(const std::string& service, bool serving) {
  if (grpc::HealthCheckServiceInterface* h = state_->health.load()) h->SetServingStatus(service, serving);
}

void ControlServer::Stop() {
  if (state_ && state_->front) state_->front->Stop();   // no new calls, open ones end
  if (server_) server_->Shutdown();
  server_.reset();
}

}  // namespace mailseal::control
