// delivery_agent.cc — see delivery_agent.h.
#include "dataplane/queue/delivery_agent.h"

#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "dataplane/base/log.h"
#include "dataplane/config/config.h"
#include "dataplane/io/socket_util.h"
#include "dataplane/smtp/address.h"
#include <arpa/inet.h>

#include <ctime>

#include "dataplane/pki/fetch.h"
#include "dataplane/tls/session.h"

namespace mailseal::queue {
using base::Log;
using base::LogLevel;
using smtp::ClientSession;
using smtp::MakeReply;
using smtp::Reply;

namespace {
constexpr int kIdleKeepMs = 2000;
constexpr size_t kReadChunk = 16 * 1024;
}  // namespace

DeliveryAgent::DeliveryAgent(QueueManager* qmgr, int index, io::Backend* network)
    : qmgr_(qmgr), index_(index), network_(network) {}

namespace {
// Waiter records the readiness a stream reported while the agent waits for it.
class Waiter : public io::StreamHandler {
 public:
  void OnReady(bool readable, bool writable) override {
    readable_ |= readable;
    writable_ |= writable;
  }
  bool ready(bool read) const { return read ? readable_ : writable_; }

 private:
  bool readable_ = false, writable_ = false;
};
}  // namespace

Status DeliveryAgent::Wait(bool read, int timeout_ms) {
  Waiter w;
  conn_.stream->Watch(&w, read, !read);
  int64_t deadline = loop_->NowMs() + timeout_ms;
  Status st;
  while (!w.ready(read)) {
    int64_t left = deadline - loop_->NowMs();
    if (aborted_.load(std::memory_order_acquire)) st = UnavailableError("delivery broken off (shutting down)");
    else if (left <= 0) st = UnavailableError(read ? "timed out waiting for next hop's reply" : "timed out sending to next hop");
    if (!st.ok()) break;
    loop_->RunOnce(static_cast<int>(left));
  }
  conn_.stream->Watch(nullptr, false, false);
  return st;
}

Status DeliveryAgent::RawWrite(std::string_view data, int timeout_ms) {
  while (!data.empty()) {
    io::IoResult r = conn_.stream->Write(data);
    if (r.kind == io::IoResult::kOk && r.bytes > 0) {
      data.remove_prefix(r.bytes);
      continue;
    }
    if (r.kind == io::IoResult::kOk || r.kind == io::IoResult::kWouldBlock) {
      if (Status st = Wait(false, timeout_ms); !st.ok()) return st;
      continue;
    }
    return UnavailableError(StrCat("lost connection while sending: ", r.error));
  }
  return OkStatus();
}

Result<size_t> DeliveryAgent::RawRead(char* buf, size_t cap, int timeout_ms) {
  while (true) {
    io::IoResult r = conn_.stream->Read(buf, cap);
    if (r.kind == io::IoResult::kOk) return r.bytes;
    if (r.kind == io::IoResult::kClosed) return size_t{0};
    if (r.kind == io::IoResult::kFailed) return UnavailableError(StrCat("lost connection: ", r.error));
    if (Status st = Wait(true, timeout_ms); !st.ok()) return st;
  }
}

Result<std::unique_ptr<io::Stream>> DeliveryAgent::Open(const sockaddr_storage& to, int timeout_ms) {
  if (!loop_) {   // a loop lives as long as a connection: an idle agent holds no descriptor
    std::lock_guard<std::mutex> l(loop_mu_);
    loop_ = network_->NewLoop();
  }
  bool done = false;
  Result<std::unique_ptr<io::Stream>> out = UnavailableError("connect did not finish");
  network_->Connect(loop_.get(), to, timeout_ms, [&](Result<std::unique_ptr<io::Stream>> r) {
    out = std::move(r);
    done = true;
  });
  while (!done) loop_->RunOnce(100);   // the back end answers within timeout_ms
  return out;
}

DeliveryAgent::~DeliveryAgent() {
  Join();
  tls::FreeContext(tls_ctx_);
}

namespace {
// LevelOr: a configured level (checked when the configuration loaded), or `fallback`.
tls::Level LevelOr(const std::string& s, tls::Level fallback) {
  Result<tls::Level> l = tls::ParseLevel(s);
  return l.ok() ? *l : fallback;
}
}  // namespace

DeliveryAgent::TlsNeed DeliveryAgent::LevelFor(const DeliveryJob& job) const {
  const auto& d = qmgr_->options().delivery;
  TlsNeed need;
  // The default: dane where DNSSEC validation is configured (TLSA records where published, else
  // as may), else may (SM-5).
  need.level = d.tls().empty() && !d.dnssec_trust_anchor_file().empty() ? tls::Level::kDane
                                                                        : LevelOr(d.tls(), tls::Level::kMay);
  need.match.assign(d.tls_match().begin(), d.tls_match().end());
  bool configured = false;
  for (const auto& p : d.tls_policies()) {
    const std::string& pd = p.domain();
    bool covers = pd == job.destination ||
                  (!pd.empty() && pd.front() == '.' && job.destination.size() > pd.size() && job.destination.ends_with(pd));
    if (!covers) continue;
    need.level = LevelOr(p.level(), tls::Level::kMay);
    need.match.assign(p.match().begin(), p.match().end());
    configured = true;
    break;
  }
  // MTA-STS (RFC 8461) where the operator set no level for the destination.
  if (!configured && d.mta_sts() && job.destination != "[relay]" && resolver_) {
    io::Resolver* r = resolver_.get();
    std::vector<std::string> connect_to(d.mta_sts_connect_to().begin(), d.mta_sts_connect_to().end());
    std::string ca = d.tls_ca_file();
    auto txt = [r](const std::string& name) -> Result<std::vector<std::string>> {
      spf::Answer a = r->Query(name, spf::RrType::kTxt);
      if (a.rcode == spf::Answer::Rcode::kTempFail) return UnavailableError(StrCat("TXT lookup for ", name, " failed"));
      return a.records;
    };
    auto fetch = [ca, connect_to](const std::string& url) {
      pki::FetchLimits l;
      l.total_timeout_ms = 10000;
      l.max_bytes = 64 * 1024;
      return pki::FetchHttpsStrict(url, l, ca, connect_to);
    };
    Result<tls::StsPolicy> p = tls::StsPolicyFor(job.destination, txt, fetch, static_cast<int64_t>(std::time(nullptr)));
    if (p.ok() && p->mode != tls::StsPolicy::Mode::kNone) {
      need.has_sts = true;
      need.sts = *p;
      if (p->mode == tls::StsPolicy::Mode::kEnforce) need.level = std::max(need.level, tls::Level::kVerify);
    } else if (!p.ok() && p.status().code() != StatusCode::kNotFound) {
      Log(LogLevel::kWarning, "smtp", "MTA-STS policy not had: delivering as without one",
          {{"destination", job.destination}, {"why", p.status().message()}});
    }
  }
  // A require_tls rule (and a SecureMail host, SM-6.1): TLS or nothing — authenticated when
  // the next hops' CAs are configured.
  if (job.require_tls) {
    tls::Level floor = d.tls_ca_file().empty() ? tls::Level::kEncrypt : tls::Level::kVerify;
    if (need.level < floor) need.level = floor;
  }
  return need;
}

Result<const pki::TrustList*> DeliveryAgent::VerifyTrust() {
  if (!verify_trust_) {
    const std::string& file = qmgr_->options().delivery.tls_ca_file();
    if (file.empty()) return FailedPreconditionError("no delivery.tls_ca_file: nothing to verify next hops against");
    auto t = std::make_unique<pki::TrustList>();
    if (Status st = t->LoadFile(file, /*anchors=*/true, /*crls=*/false); !st.ok()) return st;
    verify_trust_ = std::move(t);
  }
  return verify_trust_.get();
}

// StartTls: the client side of the TLS core (tls/session.h) over the connection, every wait
// with a deadline; the same core the SMTP server uses.
Status DeliveryAgent::StartTls(const std::string& host, int timeout_ms) {
  if (!tls_ctx_) {
    Result<SSL_CTX*> ctx = tls::MakeClientContext();
    if (!ctx.ok()) return ctx.status();
    tls_ctx_ = *ctx;
  }
  Result<std::unique_ptr<tls::Session>> s = tls::Session::Start(tls_ctx_, tls::Session::Role::kClient, host);
  if (!s.ok()) return s.status();
  conn_.tls_session = std::move(s.value());
  tls::Session& t = *conn_.tls_session;
  char buf[kReadChunk];
  while (!t.Handshake()) {
    std::string out = t.TakeCiphertext();   // our flight, or the alert
    if (!out.empty())
      if (Status st = RawWrite(out, timeout_ms); !st.ok()) return st;
    if (t.failed()) return UnavailableError(t.error());
    Result<size_t> n = RawRead(buf, sizeof buf, timeout_ms);
    if (!n.ok()) return n.status();
    if (*n == 0) return UnavailableError("next hop closed the connection during the TLS handshake");
    t.FeedCiphertext(std::string_view(buf, *n));
  }
  conn_.tls = t.description();
  return RawWrite(t.TakeCiphertext(), timeout_ms);   // our Finished
}

Status DeliveryAgent::Write(std::string_view data, int timeout_ms) {
  if (!conn_.tls_session) return RawWrite(data, timeout_ms);
  if (!conn_.tls_session->WritePlain(data)) return UnavailableError(conn_.tls_session->error());
  return RawWrite(conn_.tls_session->TakeCiphertext(), timeout_ms);
}

Result<size_t> DeliveryAgent::Read(char* buf, size_t cap, int timeout_ms) {
  if (!conn_.tls_session) return RawRead(buf, cap, timeout_ms);
  tls::Session& t = *conn_.tls_session;
  std::string plain;
  char wire[kReadChunk];
  while (true) {
    tls::Session::Read r = t.ReadPlain(&plain, cap);
    // What reading made OpenSSL say (a key update's answer, an alert) goes out at once.
    if (t.HasCiphertext())
      if (Status st = RawWrite(t.TakeCiphertext(), timeout_ms); !st.ok()) return st;
    if (r == tls::Session::Read::kData) {
      std::memcpy(buf, plain.data(), plain.size());
      return plain.size();
    }
    if (r == tls::Session::Read::kClosed) return size_t{0};
    if (r == tls::Session::Read::kFailed) return UnavailableError(t.error());
    Result<size_t> n = RawRead(wire, sizeof wire, timeout_ms);
    if (!n.ok()) return n.status();
    if (*n == 0) return size_t{0};
    t.FeedCiphertext(std::string_view(wire, *n));
  }
}

void DeliveryAgent::Start() {
  thread_ = std::thread([this] { Run(); });
  std::string name = "smtp" + std::to_string(index_);
  pthread_setname_np(thread_.native_handle(), name.c_str());
}

void DeliveryAgent::Join() {
  if (thread_.joinable()) thread_.join();
}

void DeliveryAgent::Abort() {
  aborted_.store(true, std::memory_order_release);
  std::lock_guard<std::mutex> l(loop_mu_);
  if (loop_) loop_->Post([] {});   // wakes a wait; the owner sees aborted_ and gives up
}

void DeliveryAgent::CloseConnection(bool quit) {
  if (conn_.stream) {
    if (quit && conn_.session) {
      conn_.session->Quit();
      (void)Write(conn_.session->TakeOutput(), 1000);
    }
    if (conn_.tls_session) {   // close_notify, best effort
      conn_.tls_session->Close();
      (void)conn_.stream->Write(conn_.tls_session->TakeCiphertext());
    }
    conn_ = Connection{};   // the stream closes (before its loop)
  }
  std::lock_guard<std::mutex> l(loop_mu_);
  loop_.reset();
}

void DeliveryAgent::Run() {
  const auto& d = qmgr_->options().delivery;
  std::vector<std::string> zones(d.dns_local_zones().begin(), d.dns_local_zones().end());
  std::vector<std::string> local_data(d.dns_local_data().begin(), d.dns_local_data().end());
  resolver_ = std::make_unique<io::Resolver>(d.dns_forwarder(), zones, local_data);
  if (!d.dnssec_trust_anchor_file().empty())
    if (Status st = resolver_->AddTrustAnchorFile(d.dnssec_trust_anchor_file()); !st.ok())
      Log(LogLevel::kError, "smtp", "DNSSEC validation off: DANE destinations are deferred", {{"error", st.message()}});
  std::string held;  // destination whose connection slot we hold
  while (!qmgr_->stopping()) {
    DeliveryJob job;
    if (!qmgr_->TakeJob(held, kIdleKeepMs, &job)) {
      CloseConnection(true);  // idle: give the connection and its slot back
      if (!held.empty()) qmgr_->ReleaseSlot(held);
      held.clear();
      continue;
    }
    held = job.destination;
    DeliveryResult r = Deliver(job);
    qmgr_->PostResult(std::move(r));
    if (!conn_.stream) {  // no connection kept: the slot goes back at once
      qmgr_->ReleaseSlot(held);
      held.clear();
    }
  }
  CloseConnection(true);
  if (!held.empty()) qmgr_->ReleaseSlot(held);
}

Status DeliveryAgent::Pump(int timeout_ms) {
  std::string out = conn_.session->TakeOutput();
  if (!out.empty()) {
    if (Status s = Write(out, timeout_ms); !s.ok()) return s;
  }
  char buf[kReadChunk];
  Result<size_t> n = Read(buf, sizeof buf, timeout_ms);
  if (!n.ok()) return n.status();
  if (*n == 0) return UnavailableError("next hop closed the connection");
  conn_.session->Feed(std::string_view(buf, *n));
  return OkStatus();
}

Reply DeliveryAgent::Connect(const DeliveryJob& job, const TlsNeed& need) {
  const auto& d = qmgr_->options().delivery;
  struct Hop {
    std::string host;
    uint16_t port;
  };
  std::vector<Hop> hops;
  std::string fixed = job.destination == "[relay]" ? d.relay_host() : "";
  for (const auto& r : d.routes())
    if (r.domain() == job.destination) fixed = r.next_hop();
  // DANE (RFC 7672 §2.2): the MX answer must be secure for its host names to be trusted; a
  // configured route is our own word.
  bool mx_secure = false, routed = false;
  if (!fixed.empty()) {
    routed = true;
    std::string h;
    uint16_t p = 25;
    config::ParseHostPort(fixed, &h, &p);
    hops.push_back({h, p});
    mx_secure = true;
  } else {
    Result<std::vector<io::MxHost>> mx = resolver_->LookupMx(job.destination, &mx_secure);
    if (!mx.ok()) {
      StatusCode c = mx.status().code();
      if (c == StatusCode::kNotFound || c == StatusCode::kFailedPrecondition)
        return MakeReply(550, c == StatusCode::kNotFound ? "5.1.2" : "5.1.10", mx.status().message());
      return MakeReply(451, "4.4.3", mx.status().message());
    }
    for (const auto& m : *mx) hops.push_back({m.host, 25});
  }
  Reply last = MakeReply(451, "4.4.1", "no next hop could be reached");
  int connect_timeout = static_cast<int>(d.connect_timeout_ms());
  int cmd_timeout = static_cast<int>(d.command_timeout_ms());
  // RFC 8460: every session to a destination with a TLS policy is counted, with why it failed.
  auto report = [&](const std::string& host, const std::string& ip, const std::string& failure,
                    const std::vector<tls::Tlsa>* tlsa) {
    tls::Reporter* rep = qmgr_->tls_reporter();
    if (!rep || job.destination == "[relay]" || (!need.has_sts && need.level < tls::Level::kEncrypt)) return;
    std::vector<std::string> policy;
    std::string type = "no-policy-found";
    if (need.has_sts) {
      type = "sts";
      policy = {"version: STSv1", StrCat("mode: ", tls::StsModeName(need.sts.mode))};
      for (const std::string& m : need.sts.mx) policy.push_back(StrCat("mx: ", m));
      policy.push_back(StrCat("max_age: ", need.sts.max_age_s));
    } else if (need.level == tls::Level::kDane && tlsa && !tlsa->empty()) {
      type = "tlsa";
      static const char kHex[] = "0123456789abcdef";
      for (const tls::Tlsa& t : *tlsa) {
        std::string hex;
        for (unsigned char ch : t.data) {
          hex += kHex[ch >> 4];
          hex += kHex[ch & 15];
        }
        policy.push_back(StrCat(int{t.usage}, " ", int{t.selector}, " ", int{t.matching}, " ", hex));
      }
    }
    // "host [192.0.2.1:25]" -> "192.0.2.1"; "host [[2001:db8::1]:25]" -> "2001:db8::1".
    std::string addr = ip;
    if (size_t lb = addr.find('['); lb != std::string::npos) addr = addr.substr(lb + 1, addr.rfind(']') - lb - 1);
    if (!addr.empty() && addr.front() == '[') addr = addr.substr(1, addr.find(']') - 1);
    else if (size_t colon = addr.rfind(':'); colon != std::string::npos && addr.find(':') == colon) addr = addr.substr(0, colon);
    rep->Record(job.destination, type, policy, host, addr, failure);
  };
  for (const Hop& hop : hops) {
    // Decided per hop before it is contacted: MTA-STS's MX list (RFC 8461 §4.1), DANE's TLSA
    // records (RFC 7672 §2.2).
    bool sts_enforce = need.has_sts && need.sts.mode == tls::StsPolicy::Mode::kEnforce;
    bool sts_listed = false;
    for (const std::string& pat : need.sts.mx) sts_listed = sts_listed || tls::StsMxMatches(pat, hop.host);
    if (sts_enforce && !sts_listed) {
      last = MakeReply(451, "4.7.5", StrCat("MTA-STS (enforce): ", hop.host, " is not an MX the policy of ", job.destination,
                                            " names; nothing sent to it"));
      Log(LogLevel::kWarning, "smtp", "next hop not tried: not in the destination's MTA-STS policy",
          {{"hop", hop.host}, {"destination", job.destination}});
      report(hop.host, "", "validation-failure", nullptr);
      continue;
    }
    // The level for this hop: dane becomes dane (usable secure TLSA records), encrypt (secure
    // but none usable) or may (none, or insecure answers).
    tls::Level hop_level = need.level;
    std::vector<tls::Tlsa> tlsa;
    if (need.level == tls::Level::kDane) {
      hop_level = job.require_tls ? tls::Level::kEncrypt : tls::Level::kMay;
      if (!resolver_->validating()) {
        last = MakeReply(451, "4.7.5", StrCat("TLS level dane: DNSSEC validation is not available; nothing sent to ", hop.host));
        continue;
      }
      unsigned char literal[16];
      bool address_literal = inet_pton(AF_INET, hop.host.c_str(), literal) == 1 ||
                             inet_pton(AF_INET6, hop.host.c_str(), literal) == 1;
      if (mx_secure && !address_literal) {   // an address literal has no TLSA name: as may
        Result<io::Resolver::TlsaAnswer> t = resolver_->LookupTlsa(hop.host, hop.port);
        // A configured route's host outside any signed zone can fail to resolve TLSA at all:
        // as may, unless the answer was bogus (an attack: never).
        if (!t.ok() && routed && t.status().code() != StatusCode::kFailedPrecondition) {
          Log(LogLevel::kInfo, "smtp", "TLSA lookup failed for a routed hop: delivered as may",
              {{"hop", hop.host}, {"destination", job.destination}, {"why", t.status().message()}});
        } else if (!t.ok()) {
          last = MakeReply(451, "4.7.5", StrCat("TLS level dane: ", t.status().message(), "; nothing sent to ", hop.host));
          Log(LogLevel::kWarning, "smtp", "next hop not tried: its TLSA records cannot be had",
              {{"hop", hop.host}, {"destination", job.destination}, {"why", t.status().message()}});
          report(hop.host, "", "dnssec-invalid", nullptr);
          continue;
        }
        if (t.ok() && t->secure && !t->rdata.empty()) {
          for (const std::string& rd : t->rdata) {
            tls::Tlsa r;
            r.usage = static_cast<uint8_t>(rd[0]);
            r.selector = static_cast<uint8_t>(rd[1]);
            r.matching = static_cast<uint8_t>(rd[2]);
            r.data = rd.substr(3);
            if (tls::Usable(r)) tlsa.push_back(std::move(r));
          }
          hop_level = tlsa.empty() ? tls::Level::kEncrypt : tls::Level::kDane;
        }
      }
    }
    Result<std::vector<sockaddr_storage>> addrs = resolver_->LookupAddresses(hop.host);
    if (!addrs.ok()) {
      last = MakeReply(451, "4.4.3", addrs.status().message());
      continue;
    }
    for (sockaddr_storage a : *addrs) {
      io::SetPort(&a, hop.port);
      std::string where = StrCat(hop.host, " [", io::FormatAddress(reinterpret_cast<sockaddr*>(&a)), "]");
      Result<std::unique_ptr<io::Stream>> stream = Open(a, connect_timeout);
      if (!stream.ok()) {
        last = MakeReply(451, "4.4.1", stream.status().message());
        continue;
      }
      conn_.stream = std::move(stream.value());
      conn_.destination = job.destination;
      conn_.remote = where;
      ClientSession::Tls tls_mode = hop_level >= tls::Level::kEncrypt ? ClientSession::Tls::kRequired
                                    : hop_level == tls::Level::kNone     ? ClientSession::Tls::kNever
                                                                         : ClientSession::Tls::kOpportunistic;
      conn_.session = std::make_unique<ClientSession>(qmgr_->options().hostname, tls_mode);
      conn_.level = tls::Level::kNone;
      conn_.asked = need.level;
      bool refused = false, reported = false;
      while (true) {
        ClientSession::State st = conn_.session->state();
        if (st == ClientSession::State::kTlsReady) {
          if (Status t = StartTls(hop.host, cmd_timeout); !t.ok()) {
            conn_.session->Fail(MakeReply(451, "4.7.5", StrCat("STARTTLS with ", where, ": ", t.message())));
            report(hop.host, where, "validation-failure", &tlsa);
            reported = true;
            break;
          }
          conn_.level = hop_level == tls::Level::kMay ? tls::Level::kMay : tls::Level::kEncrypt;
          if (need.has_sts && need.sts.mode == tls::StsPolicy::Mode::kTesting) {
            // MTA-STS testing (RFC 8461 §5): delivered anyway; what enforce would have said is logged.
            Result<const pki::TrustList*> trust = VerifyTrust();
            tls::PeerCheck pc = !sts_listed ? tls::PeerCheck{false, "", "the host is not an MX the policy names"}
                                : trust.ok() ? tls::CheckPeer(**trust, conn_.tls_session->PeerChain(), {hop.host})
                                             : tls::PeerCheck{false, "", std::string(trust.status().message())};
            Log(pc.ok ? LogLevel::kInfo : LogLevel::kWarning, "smtp",
                pc.ok ? "MTA-STS testing: the hop would pass enforce" : "MTA-STS testing: the hop would fail enforce (delivered anyway)",
                {{"hop", where}, {"destination", job.destination}, {"why", pc.reason}});
          }
          if (hop_level == tls::Level::kDane) {
            std::vector<std::string> names = {hop.host};
            if (job.destination != "[relay]") names.push_back(job.destination);
            tls::DaneCheck dc = tls::CheckDane(tlsa, conn_.tls_session->PeerChain(), names);
            if (!dc.ok) {
              last = MakeReply(451, "4.7.5", StrCat("TLS level dane: ", where, " does not match its TLSA records: ", dc.reason,
                                                    "; nothing sent to it"));
              Log(LogLevel::kWarning, "smtp", "next hop not authenticated: nothing sent",
                  {{"hop", where}, {"destination", job.destination}, {"why", dc.reason}});
              report(hop.host, where, "tlsa-invalid", &tlsa);
              refused = true;
              break;
            }
            conn_.level = tls::Level::kDane;
            conn_.tls = StrCat(conn_.tls, ", ", dc.how);
          }
          if (hop_level == tls::Level::kVerify) {
            // Authenticate the hop before anything else goes to it (RFC 7817 §3): the MX (or
            // route) host's name or the recipient domain, or the configured names.
            std::vector<std::string> names = need.match;
            if (sts_enforce) {
              names = {hop.host};   // RFC 8461 §4.2: the MX host's name
            } else if (names.empty()) {
              names.push_back(hop.host);
              if (job.destination != "[relay]") names.push_back(job.destination);
            }
            Result<const pki::TrustList*> trust = VerifyTrust();
            tls::PeerCheck pc = trust.ok() ? tls::CheckPeer(**trust, conn_.tls_session->PeerChain(), names)
                                           : tls::PeerCheck{false, "", std::string(trust.status().message())};
            if (!pc.ok) {
              last = MakeReply(451, "4.7.5", StrCat("TLS level verify: ", where, " not authenticated: ", pc.reason,
                                                    "; nothing sent to it"));
              Log(LogLevel::kWarning, "smtp", "next hop not authenticated: nothing sent",
                  {{"hop", where}, {"destination", job.destination}, {"why", pc.reason}});
              report(hop.host, where,
                     pc.reason.find("names none of") != std::string::npos ? "certificate-host-mismatch" : "certificate-not-trusted",
                     &tlsa);
              refused = true;
              break;
            }
            conn_.level = tls::Level::kVerify;
            conn_.tls = StrCat(conn_.tls, ", verified as ", pc.matched, sts_enforce ? " (MTA-STS enforce)" : "");
          }
          report(hop.host, where, "", &tlsa);
          conn_.session->TlsStarted();
          continue;
        }
        if (st != ClientSession::State::kGreeting && st != ClientSession::State::kEhlo &&
            st != ClientSession::State::kHelo && st != ClientSession::State::kStartTls)
          break;
        if (Status s = Pump(cmd_timeout); !s.ok()) {
          conn_.session->Fail(MakeReply(451, "4.4.2", s.message()));
          break;
        }
      }
      if (refused) {
        CloseConnection(false);
        continue;
      }
      if (conn_.session->state() == ClientSession::State::kReady) return Reply{};
      if (!reported && hop_level >= tls::Level::kEncrypt && !conn_.session->tls_active() && conn_.tls.empty())
        report(hop.host, where, "starttls-not-supported", &tlsa);
      Reply f = conn_.session->failure();
      last = MakeReply(451, "4.4.2", StrCat(where, " refused the session: ", f.OneLine()));
      CloseConnection(false);
    }
  }
  return last;
}

bool DeliveryAgent::Transact(const DeliveryJob& job, DeliveryResult* result, bool* stale) {
  *stale = false;
  const auto& env = job.msg->envelope;
  int timeout = static_cast<int>(qmgr_->options().delivery.command_timeout_ms());
  smtp::ClientMessage m;
  m.mail_from = env.mail_from();
  for (uint32_t i : job.rcpts) {
    const auto& r = env.recipients(static_cast<int>(i));
    m.recipients.push_back({r.address(), r.notify(), r.orcpt()});
  }
  m.body_type = env.body_type();
  m.smtputf8 = env.smtputf8();
  m.ret = env.ret();
  m.envid = env.envid();
  m.size = job.msg->body_size;
  ClientSession& s = *conn_.session;
  s.StartMessage(m);
  Status st;
  while (st.ok() && s.state() == ClientSession::State::kInMessage) st = Pump(timeout);
  if (st.ok() && s.state() == ClientSession::State::kSendBody) {
    smtp::BodyEncoder enc;
    std::string wire;
    st = ReadBody(job.path, *job.msg, [&](std::string_view chunk) {
      wire.clear();
      enc.Encode(chunk, &wire);
      return Write(wire, timeout);
    });
    if (st.code() == StatusCode::kDataLoss) {
      // The spool file went bad under us: never send a damaged message. The manager moves it.
      for (uint32_t i : job.rcpts)
        result->results.push_back({i, MakeReply(451, "4.3.0", st.message())});
      result->spool_corrupt = true;
      return false;
    }
    if (st.ok()) {
      wire.clear();
      enc.Finish(&wire);
      st = Write(wire, timeout);
    }
    if (st.ok()) {
      s.BodyDone();
      while (st.ok() && s.state() == ClientSession::State::kBodySent) st = Pump(timeout);
    }
  }
  if (!st.ok() || s.state() != ClientSession::State::kMessageDone) {
    *stale = s.result().mail.code == 0;  // not even MAIL was answered: a dead cached session
    std::string why = !st.ok() ? st.message() : s.failure().OneLine();
    for (uint32_t i : job.rcpts)
      result->results.push_back(
          {i, MakeReply(451, "4.4.2", StrCat("conversation with ", conn_.remote, " failed: ", why))});
    return false;
  }
  for (size_t k = 0; k < job.rcpts.size(); ++k)
    result->results.push_back({job.rcpts[k], s.result().RecipientOutcome(k)});
  return true;
}

DeliveryResult DeliveryAgent::Deliver(const DeliveryJob& job) {
  DeliveryResult result;
  result.queue_id = job.msg->id;
  result.destination = job.destination;
  // The TLS level is decided once per job (an MTA-STS policy may need a TXT lookup).
  const TlsNeed need = LevelFor(job);
  const tls::Level wanted = need.level;
  // Reuse a cached session to the same destination; if it turns out dead, connect anew once.
  for (int attempt = 0; attempt < 2; ++attempt) {
    // A cached session serves only a job whose TLS level it reached (issue #16).
    bool reused = conn_.stream && conn_.destination == job.destination && conn_.session &&
                  (wanted <= tls::Level::kMay || conn_.asked == wanted) &&
                  (conn_.session->state() == ClientSession::State::kReady ||
                   conn_.session->state() == ClientSession::State::kMessageDone);
    if (!reused) {
      CloseConnection(true);
      Reply r = Connect(job, need);
      if (r.code != 0) {
        for (uint32_t i : job.rcpts) result.results.push_back({i, r});
        return result;
      }
    }
    // The level asked and what was reached go with every result: delivery log, queue status,
    // audit record (issue #16).
    result.remote_mta = StrCat(conn_.remote, " (", conn_.tls.empty() ? "no TLS" : conn_.tls, "; TLS level ",
                               tls::LevelName(wanted), ")");
    result.results.clear();
    bool stale = false;
    bool ok = Transact(job, &result, &stale);
    if (conn_.session) result.peer_dsn = conn_.session->capabilities().dsn;
    if (ok) return result;
    CloseConnection(false);
    if (!reused || !stale || result.spool_corrupt) return result;
    Log(LogLevel::kDebug, "smtp", "cached connection failed, reconnecting",
        {{"qid", job.msg->id}});
  }
  return result;
}

}  // namespace mailseal::queue
