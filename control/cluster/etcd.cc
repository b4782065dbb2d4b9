// etcd.cc — see etcd.h.
#include "control/cluster/etcd.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <functional>
#include <thread>

#include "dataplane/base/file.h"
#include "dataplane/base/strings.h"
#include "etcd/etcdserver/etcdserverpb/rpc.grpc.pb.h"

namespace mailseal::cluster {
namespace {
namespace pb = etcdserverpb;

Status FromGrpc(const grpc::Status& st, const char* what) {
  std::string m = StrCat("etcd ", what, ": ", st.error_message());
  switch (st.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::CANCELLED:
      return UnavailableError(std::move(m));
    case grpc::StatusCode::NOT_FOUND:
      return NotFoundError(std::move(m));
    case grpc::StatusCode::FAILED_PRECONDITION:
      return FailedPreconditionError(std::move(m));
    case grpc::StatusCode::PERMISSION_DENIED:
    case grpc::StatusCode::UNAUTHENTICATED:
      return PermissionDeniedError(std::move(m));
    default:
      return InternalError(std::move(m));
  }
}

KeyValue FromPb(const mvccpb::KeyValue& kv) {
  KeyValue out;
  out.key = kv.key();
  out.value = kv.value();
  out.create_revision = kv.create_revision();
  out.mod_revision = kv.mod_revision();
  out.version = kv.version();
  out.lease = kv.lease();
  return out;
}

void ToPb(const Op& op, pb::RequestOp* out) {
  switch (op.kind) {
    case Op::kPut: {
      auto* p = out->mutable_request_put();
      p->set_key(op.key);
      p->set_value(op.value);
      p->set_lease(op.lease);
      break;
    }
    case Op::kDelete:
      out->mutable_request_delete_range()->set_key(op.key);
      break;
    case Op::kDeletePrefix:
      out->mutable_request_delete_range()->set_key(op.key);
      out->mutable_request_delete_range()->set_range_end(EtcdClient::PrefixEnd(op.key));
      break;
  }
}

// Target: one gRPC target for every endpoint ("ipv4:a:1,b:2"), so the channel fails over.
Result<std::string> Target(const std::vector<std::string>& endpoints) {
  if (endpoints.empty()) return InvalidArgumentError("no etcd endpoint");
  bool v6 = !endpoints.front().empty() && endpoints.front().front() == '[';
  std::string t = v6 ? "ipv6:" : "ipv4:";
  for (size_t i = 0; i < endpoints.size(); ++i) {
    const std::string& e = endpoints[i];
    if (e.empty() || (e.front() == '[') != v6)
      return InvalidArgumentError(StrCat("etcd endpoint '", e, "': all endpoints must be IPv4 or all IPv6"));
    if (i) t += ",";
    t += e;
  }
  return t;
}
// Retry: runs a call again while etcd answers UNAVAILABLE (a member lost its leader, "leader
// changed" during an election, the connection moved to another member) — for at most `budget_ms`.
// Every call of this client may be repeated: reads, puts of a whole value, deletes, and
// transactions guarded by a compare (a repeat after a lost reply fails the compare, and the
// caller reads what is there).
grpc::Status Retry(int budget_ms, const std::function<grpc::Status()>& call) {
  auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(budget_ms);
  int backoff = 50;
  while (true) {
    grpc::Status st = call();
    if (st.error_code() != grpc::StatusCode::UNAVAILABLE || std::chrono::steady_clock::now() + std::chrono::milliseconds(backoff) >= end)
      return st;
    std::this_thread::sleep_for(std::chrono::milliseconds(backoff));
    backoff = std::min(backoff * 2, 400);
  }
}
}  // namespace

struct EtcdClient::Stubs {
  std::unique_ptr<pb::KV::Stub> kv;
  std::unique_ptr<pb::Lease::Stub> lease;
  std::unique_ptr<pb::Watch::Stub> watch;
};

std::string EtcdClient::PrefixEnd(const std::string& prefix) {
  std::string end = prefix;
  while (!end.empty()) {
    unsigned char c = static_cast<unsigned char>(end.back());
    if (c < 0xff) {
      end.back() = static_cast<char>(c + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');   // every key
}

Result<std::unique_ptr<EtcdClient>> EtcdClient::Connect(const EtcdOptions& options) {
  Result<std::string> target = Target(options.endpoints);
  if (!target.ok()) return target.status();
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (options.ca_file.empty()) {
    creds = grpc::InsecureChannelCredentials();
  } else {
    grpc::SslCredentialsOptions ssl;
    Result<std::string> ca = base::ReadFile(options.ca_file, 1 << 20);
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *ca;
    if (!options.cert_file.empty()) {
      Result<std::string> cert = base::ReadFile(options.cert_file, 1 << 20);
      Result<std::string> key = base::ReadFile(options.key_file, 1 << 20);
      if (!cert.ok()) return cert.status();
      if (!key.ok()) return key.status();
      ssl.pem_cert_chain = *cert;
      ssl.pem_private_key = *key;
    }
    creds = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetLoadBalancingPolicyName("pick_first");
  // etcd refuses pings more often than every 5 s (--grpc-keepalive-min-time).
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 3000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  args.SetMaxReceiveMessageSize(4 << 20);
  if (!options.server_name.empty()) args.SetSslTargetNameOverride(options.server_name);
  std::unique_ptr<EtcdClient> c(new EtcdClient());
  c->options_ = options;
  c->channel_ = grpc::CreateCustomChannel(*target, creds, args);
  c->stubs_ = std::make_unique<Stubs>();
  c->stubs_->kv = pb::KV::NewStub(c->channel_);
  c->stubs_->lease = pb::Lease::NewStub(c->channel_);
  c->stubs_->watch = pb::Watch::NewStub(c->channel_);
  return c;
}

EtcdClient::~EtcdClient() = default;

void EtcdClient::SetDeadline(grpc::ClientContext* ctx) const {
  // Wait for a connection (another endpoint after a failure) rather than failing fast.
  ctx->set_wait_for_ready(true);
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(options_.request_timeout_ms));
}

Result<RangeResult> EtcdClient::Range(const std::string& key, const std::string& end) {
  pb::RangeRequest req;
  req.set_key(key);
  if (!end.empty()) req.set_range_end(end);
  pb::RangeResponse resp;
  grpc::Status st = Retry(options_.request_timeout_ms, [&] {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    return stubs_->kv->Range(&ctx, req, &resp);
  });
  if (!st.ok()) return FromGrpc(st, "range");
  RangeResult out;
  out.revision = resp.header().revision();
  for (const auto& kv : resp.kvs()) out.kvs.push_back(FromPb(kv));
  return out;
}

Result<RangeResult> EtcdClient::Get(const std::string& key) { return Range(key, ""); }
Result<RangeResult> EtcdClient::GetPrefix(const std::string& prefix) { return Range(prefix, PrefixEnd(prefix)); }

Result<int64_t> EtcdClient::Put(const std::string& key, const std::string& value, int64_t lease) {
  pb::PutRequest req;
  req.set_key(key);
  req.set_value(value);
  req.set_lease(lease);
  pb::PutResponse resp;
  grpc::Status st = Retry(options_.request_timeout_ms, [&] {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    return stubs_->kv->Put(&ctx, req, &resp);
  });
  if (!st.ok()) return FromGrpc(st, "put");
  return resp.header().revision();
}

Result<int64_t> EtcdClient::Delete(const std::string& key) {
  pb::DeleteRangeRequest req;
  req.set_key(key);
  pb::DeleteRangeResponse resp;
  grpc::Status st = Retry(options_.request_timeout_ms, [&] {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    return stubs_->kv->DeleteRange(&ctx, req, &resp);
  });
  if (!st.ok()) return FromGrpc(st, "delete");
  return resp.header().revision();
}

Result<TxnResult> EtcdClient::Txn(const std::vector<Compare>& compares, const std::vector<Op>& success,
                                  const std::vector<Op>& failure) {
  pb::TxnRequest req;
  for (const Compare& c : compares) {
    pb::Compare* pc = req.add_compare();
    pc->set_key(c.key);
    pc->set_result(pb::Compare::EQUAL);
    switch (c.target) {
      case Compare::kModRevision:
        pc->set_target(pb::Compare::MOD);
        pc->set_mod_revision(c.number);
        break;
      case Compare::kCreateRevision:
        pc->set_target(pb::Compare::CREATE);
        pc->set_create_revision(c.number);
        break;
      case Compare::kVersion:
        pc->set_target(pb::Compare::VERSION);
        pc->set_version(c.number);
        break;
      case Compare::kValue:
        pc->set_target(pb::Compare::VALUE);
        pc->set_value(c.value);
        break;
    }
  }
  for (const Op& op : success) ToPb(op, req.add_success());
  for (const Op& op : failure) ToPb(op, req.add_failure());
  pb::TxnResponse resp;
  grpc::Status st = Retry(options_.request_timeout_ms, [&] {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    return stubs_->kv->Txn(&ctx, req, &resp);
  });
  if (!st.ok()) return FromGrpc(st, "txn");
  TxnResult out;
  out.succeeded = resp.succeeded();
  out.revision = resp.header().revision();
  return out;
}

Result<int64_t> EtcdClient::LeaseGrant(int64_t ttl_s) {
  pb::LeaseGrantRequest req;
  req.set_ttl(ttl_s);
  pb::LeaseGrantResponse resp;
  grpc::Status st = Retry(options_.request_timeout_ms, [&] {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    return stubs_->lease->LeaseGrant(&ctx, req, &resp);
  });
  if (!st.ok()) return FromGrpc(st, "lease grant");
  if (!resp.error().empty()) return InternalError(StrCat("etcd lease grant: ", resp.error()));
  return resp.id();
}

Result<int64_t> EtcdClient::LeaseKeepAlive(int64_t id) {
  Result<int64_t> r = UnavailableError("not tried");
  (void)Retry(options_.request_timeout_ms, [&] {
    r = LeaseKeepAliveOnce(id);
    return r.ok() || r.status().code() != StatusCode::kUnavailable ? grpc::Status::OK
                                                                     : grpc::Status(grpc::StatusCode::UNAVAILABLE, "");
  });
  return r;
}

Result<int64_t> EtcdClient::LeaseKeepAliveOnce(int64_t id) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  auto stream = stubs_->lease->LeaseKeepAlive(&ctx);
  pb::LeaseKeepAliveRequest req;
  req.set_id(id);
  pb::LeaseKeepAliveResponse resp;
  bool got = stream->Write(req) && stream->Read(&resp);
  stream->WritesDone();
  ctx.TryCancel();   // one renewal per stream: nothing more is read
  grpc::Status st = stream->Finish();
  if (!got) return FromGrpc(st.ok() ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "stream ended") : st, "lease keep-alive");
  if (resp.ttl() <= 0) return NotFoundError(StrCat("etcd lease ", id, " has expired"));
  return resp.ttl();
}

Status EtcdClient::LeaseRevoke(int64_t id) {
  pb::LeaseRevokeRequest req;
  req.set_id(id);
  pb::LeaseRevokeResponse resp;
  grpc::Status st = Retry(options_.request_timeout_ms, [&] {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    return stubs_->lease->LeaseRevoke(&ctx, req, &resp);
  });
  if (!st.ok()) return FromGrpc(st, "lease revoke");
  return OkStatus();
}

std::unique_ptr<Watch> EtcdClient::WatchPrefix(const std::string& prefix, int64_t start_revision,
                                               Watch::OnEvents on_events, Watch::OnState on_state,
                                               Watch::OnCompacted on_compacted) {
  std::unique_ptr<Watch> w(new Watch());
  w->client_ = this;
  w->prefix_ = prefix;
  w->on_events_ = std::move(on_events);
  w->on_state_ = std::move(on_state);
  w->on_compacted_ = std::move(on_compacted);
  w->next_rev_ = start_revision;
  w->thread_ = std::thread([p = w.get()] { p->Run(); });
  return w;
}

Watch::~Watch() { Stop(); }

void Watch::Stop() {
  stop_ = true;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (ctx_) ctx_->TryCancel();
  }
  if (thread_.joinable()) thread_.join();
}

void Watch::Run() {
  int backoff_ms = 100;
  while (!stop_) {
    grpc::ClientContext ctx;
    // A member that has lost its leader cancels the watch instead of going quiet (etcd's
    // "require leader"): the stream is then resumed on a member that has one.
    ctx.AddMetadata("hasleader", "true");
    ctx.set_wait_for_ready(true);
    {
      std::lock_guard<std::mutex> l(mu_);
      if (stop_) break;
      ctx_ = &ctx;
    }
    auto stream = client_->stubs_->watch->Watch(&ctx);
    pb::WatchRequest req;
    auto* create = req.mutable_create_request();
    create->set_key(prefix_);
    create->set_range_end(EtcdClient::PrefixEnd(prefix_));
    create->set_start_revision(next_rev_.load());
    std::string why = "stream ended";
    if (stream->Write(req)) {
      pb::WatchResponse resp;
      while (!stop_ && stream->Read(&resp)) {
        if (resp.compact_revision() > 0) {
          why = StrCat("revision ", next_rev_.load(), " compacted (at ", resp.compact_revision(), ")");
          int64_t from = on_compacted_ ? on_compacted_() : resp.compact_revision();
          next_rev_ = from;
          break;
        }
        if (resp.created()) {
          backoff_ms = 100;
          if (on_state_) on_state_(true, "");
        }
        if (resp.canceled()) {
          why = resp.cancel_reason().empty() ? "cancelled by etcd" : resp.cancel_reason();
          break;
        }
        if (resp.events_size() == 0) continue;
        std::vector<WatchEvent> events;
        events.reserve(resp.events_size());
        int64_t last = 0;
        for (const auto& e : resp.events()) {
          WatchEvent ev;
          ev.kind = e.type() == mvccpb::Event::DELETE ? WatchEvent::kDelete : WatchEvent::kPut;
          ev.kv = FromPb(e.kv());
          last = std::max(last, e.kv().mod_revision());
          events.push_back(std::move(ev));
        }
        on_events_(events, last);
        next_rev_ = last + 1;
      }
    }
    ctx.TryCancel();
    grpc::Status st = stream->Finish();
    {
      std::lock_guard<std::mutex> l(mu_);
      ctx_ = nullptr;
    }
    if (stop_) break;
    if (!st.ok() && st.error_code() != grpc::StatusCode::CANCELLED) why = st.error_message();
    if (on_state_) on_state_(false, why);
    for (int slept = 0; slept < backoff_ms && !stop_; slept += 20)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    backoff_ms = std::min(backoff_ms * 2, 1000);
  }
}

}  // namespace mailseal::cluster
