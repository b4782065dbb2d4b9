// server.cc — see server.h.
#include "control/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <sstream>

#include "control/tls13.h"
#include "dataplane/base/log.h"
#include "mailseal/v1/control.grpc.pb.h"

namespace mailseal::control {
namespace {
using base::Log;
using base::LogLevel;
using grpc::ServerContext;
using grpc::Status;
using grpc::StatusCode;
namespace v1 = mailseal::v1;

Result<std::string> Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError(StrCat(path, ": cannot be read"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Guard authorises one call: who is calling (the client certificate's CN), which role that
// is, whether the method (by its declaration in control.proto) allows it, and — for mutating
// methods and refusals — the audit record that must be written first.
class Guard {
 public:
  Guard(const ServerOptions* o, audit::AuditLog* a) : options_(o), audit_(a) {}
  // on_audit_failure: called when the audit log refuses a record (health goes NOT_SERVING).
  std::function<void()> on_audit_failure;

  // Outcome records how an allowed mutating call ended when it did not succeed (the ALLOWED
  // record was written before it ran).
  void Failed(const std::string& actor, const char* method, const std::string& object, const std::string& why) const {
    v1::AuditRecord r;
    r.set_actor(StrCat("CN=", actor));
    r.set_action(method);
    r.set_object(object);
    r.set_outcome(v1::AuditRecord::OUTCOME_FAILED);
    r.set_detail(why);
    (void)audit_->Append(r);
  }

  Status Check(ServerContext* ctx, const char* method, const std::string& object, std::string* actor) const {
    std::vector<grpc::string_ref> cn = ctx->auth_context()->FindPropertyValues(GRPC_X509_CN_PROPERTY_NAME);
    *actor = cn.empty() ? "" : std::string(cn[0].data(), cn[0].size());
    auto role_it = options_->roles.find(*actor);
    v1::Role role = role_it == options_->roles.end() ? v1::ROLE_UNSPECIFIED : role_it->second;
    const google::protobuf::MethodDescriptor* md =
        google::protobuf::DescriptorPool::generated_pool()->FindMethodByName(method);
    bool allowed = false, mutating = false;
    if (md) {
      const auto& opts = md->options();
      for (int i = 0; i < opts.ExtensionSize(v1::allowed_roles); ++i)
        allowed = allowed || (role != v1::ROLE_UNSPECIFIED && opts.GetExtension(v1::allowed_roles, i) == role);
      mutating = opts.GetExtension(v1::mutating);
    }
    if (!allowed || mutating) {
      v1::AuditRecord r;
      r.set_actor(StrCat("CN=", *actor));
      r.set_action(method);
      r.set_object(object);
      r.set_outcome(allowed ? v1::AuditRecord::OUTCOME_ALLOWED : v1::AuditRecord::OUTCOME_DENIED);
      if (!allowed) r.set_detail(StrCat("role ", v1::Role_Name(role), " may not call it"));
      Result<uint64_t> seq = audit_->Append(r);
      if (!seq.ok()) {
        if (on_audit_failure) on_audit_failure();
        Log(LogLevel::kError, "control", "audit log unavailable: management call refused",
            {{"method", method}, {"actor", *actor}, {"error", seq.status().message()}});
        return Status(StatusCode::UNAVAILABLE, StrCat("the audit log cannot be written (", seq.status().message(),
                                                      "): refused, nothing changed"));
      }
    }
    if (!allowed) {
      Log(LogLevel::kWarning, "control", "permission denied", {{"method", method}, {"actor", *actor}});
      return Status(StatusCode::PERMISSION_DENIED,
                    StrCat("role ", v1::Role_Name(role), " of '", *actor, "' may not call ", method));
    }
    return Status::OK;
  }

 private:
  const ServerOptions* options_;
  audit::AuditLog* audit_;
};

Status FromStatus(const mailseal::Status& s) {
  if (s.ok()) return Status::OK;
  return Status(static_cast<StatusCode>(static_cast<int>(s.code())), s.message());
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
    static const queue::SpoolState kStates[] = {queue::SpoolState::kIncoming, queue::SpoolState::kActive,
                                                queue::SpoolState::kDeferred, queue::SpoolState::kHold,
                                                queue::SpoolState::kCorrupt};
    for (const auto& s : kStates)
      if (req->state() == queue::StateDir(s)) state = &s;
    if (!state) return Status(StatusCode::INVALID_ARGUMENT, "field 'state': one of incoming, active, deferred, hold, corrupt");
    Result<std::vector<std::string>> ids = deps_.spool->List(*state);
    if (!ids.ok()) return FromStatus(ids.status());
    std::sort(ids->begin(), ids->end());
    size_t page = req->page_size() == 0 ? 100 : std::min<size_t>(req->page_size(), 1000);
    auto it = std::upper_bound(ids->begin(), ids->end(), req->page_token());
    if (req->page_token().empty()) it = ids->begin();
    for (; it != ids->end() && static_cast<size_t>(resp->messages_size()) < page; ++it) {
      Result<queue::SpoolMessage> m = queue::ReadSpoolFile(deps_.spool->PathOf(*state, *it));
      v1::QueuedMessage* q = resp->add_messages();
      q->set_queue_id(*it);
      if (!m.ok()) {
        q->set_hold_reason(StrCat("unreadable: ", m.status().message()));
        continue;
      }
      q->set_mail_from(m->envelope.mail_from());
      for (const auto& r : m->envelope.recipients()) q->add_recipients(r.address());
      q->set_size(m->body_size);
      q->set_arrival_unix_ms(m->envelope.arrival_unix_ms());
      q->set_hold_reason(m->envelope.hold_reason());
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
    if (id.empty() || id.find('/') != std::string::npos || id[0] == '.')
      return Status(StatusCode::INVALID_ARGUMENT, "field 'queue_id': not a queue id");
    std::string path = deps_.spool->PathOf(queue::SpoolState::kHold, id);
    Result<queue::SpoolMessage> m = queue::ReadSpoolFile(path);
    if (!m.ok()) {
      guard_->Failed(actor, "mailseal.v1.QueueService.ReleaseMessage", id, "no such held message");
      return Status(StatusCode::NOT_FOUND, StrCat("no held message ", id, ": ", m.status().message()));
    }
    std::string body;
    mailseal::Status rs = queue::ReadBody(path, *m, [&](std::string_view c) {
      body.append(c);
      return OkStatus();
    });
    if (!rs.ok()) return FromStatus(rs);
    // Queued again as a fresh message: policy and the crypto stage decide anew (a held copy is
    // never sent on as it is — it may be for a partner that must only get sealed mail).
    mailseal::v1::SpoolEnvelope env = m->envelope;
    env.clear_queue_id();
    env.set_crypto_done(false);
    env.clear_derived_from();
    env.clear_derived_rcpts();
    env.clear_hold_reason();
    env.clear_protection();
    Result<std::string> qid = queue::WriteWholeMessage(deps_.spool, env, body);
    if (!qid.ok()) return FromStatus(qid.status());
    Result<queue::SpoolMessage> fresh = queue::ReadSpoolFile(deps_.spool->PathOf(queue::SpoolState::kActive, *qid));
    if (!fresh.ok()) return FromStatus(fresh.status());
    if (mailseal::Status st = deps_.spool->Remove(id, queue::SpoolState::kHold); !st.ok())
      Log(LogLevel::kError, "control", "released message not removed from hold/", {{"qid", id}, {"error", st.message()}});
    deps_.qmgr->Submit(std::move(fresh.value()));
    Log(LogLevel::kInfo, "control", "released from hold", {{"qid", id}, {"new_qid", *qid}, {"actor", actor}});
    resp->set_queue_id(*qid);
    return Status::OK;
  }

 private:
  const Guard* guard_;
  Deps deps_;
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
    if (!v.ok()) {
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
    size_t start = req->page_token().empty() ? 0 : std::strtoull(req->page_token().c_str(), nullptr, 10);
    for (size_t i = start; i < all.size() && static_cast<size_t>(resp->versions_size()) < page; ++i)
      *resp->add_versions() = all[i];
    if (start + resp->versions_size() < all.size()) resp->set_next_page_token(std::to_string(start + resp->versions_size()));
    return Status::OK;
  }

 private:
  const Guard* guard_;
  Deps deps_;
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
    if (!req->page_token().empty()) start = std::strtoull(req->page_token().c_str(), nullptr, 10);
    size_t page = req->page_size() == 0 ? 100 : std::min<size_t>(req->page_size(), 1000);
    Result<std::vector<v1::AuditRecord>> recs = deps_.audit->ReadRecords(start, page);
    if (!recs.ok()) return FromStatus(recs.status());
    for (auto& r : *recs) *resp->add_records() = std::move(r);
    if (start + resp->records_size() < deps_.audit->size())
      resp->set_next_page_token(std::to_string(start + resp->records_size()));
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

 private:
  const Guard* guard_;
  Deps deps_;
};

}  // namespace

// State: what the services share, owned by the server and alive as long as they are.
struct ControlServer::State {
  ServerOptions options;
  std::unique_ptr<Guard> guard;
  std::vector<std::unique_ptr<grpc::Service>> services;
  std::atomic<grpc::HealthCheckServiceInterface*> health{nullptr};
};

Result<std::unique_ptr<ControlServer>> ControlServer::Start(const ServerOptions& options, Deps deps) {
  Result<std::string> cert = Slurp(options.cert_file);
  Result<std::string> key = Slurp(options.key_file);
  Result<std::string> ca = Slurp(options.client_ca_file);
  if (!cert.ok() || !key.ok() || !ca.ok())
    return InvalidArgumentError(StrCat("field 'control': ", !cert.ok() ? cert.status().message()
                                                            : !key.ok() ? key.status().message() : ca.status().message()));
  std::unique_ptr<ControlServer> s(new ControlServer());
  s->state_ = std::make_unique<State>();
  State* st = s->state_.get();
  st->options = options;
  st->guard = std::make_unique<Guard>(&st->options, deps.audit);
  // grpc.health.v1: SERVING while the audit trail can be written; NOT_SERVING once it cannot
  // (changes are refused then; mail keeps flowing). Set before the first call can arrive.
  audit::AuditLog* log = deps.audit;
  st->guard->on_audit_failure = [st, log] {
    if (grpc::HealthCheckServiceInterface* h = st->health.load()) h->SetServingStatus(log->healthy());
  };
  st->services.push_back(std::make_unique<QueueServiceImpl>(st->guard.get(), deps));
  st->services.push_back(std::make_unique<AuditServiceImpl>(st->guard.get(), deps));
  if (deps.policy) st->services.push_back(std::make_unique<PolicyServiceImpl>(st->guard.get(), deps));
  Result<std::shared_ptr<grpc::ServerCredentials>> creds = Tls13ServerCredentials(*cert, *key, *ca);
  if (!creds.ok()) return creds.status();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();   // generic clients (grpcurl-style)
  grpc::ServerBuilder b;
  b.AddListeningPort(options.listen, *creds, &s->port_);
  for (auto& svc : st->services) b.RegisterService(svc.get());
  s->server_ = b.BuildAndStart();
  if (!s->server_ || s->port_ == 0) return UnavailableError(StrCat("management API cannot listen on ", options.listen));
  st->health.store(s->server_->GetHealthCheckService());
  st->guard->on_audit_failure();
  Log(LogLevel::kInfo, "control", "management API listening (mTLS)",
      {{"address", options.listen}, {"port", std::to_string(s->port_)}, {"roles", std::to_string(options.roles.size())}});
  return s;
}

ControlServer::~ControlServer() { Stop(); }

void ControlServer::Stop() {
  if (server_) server_->Shutdown();
  server_.reset();
}

}  // namespace mailseal::control
