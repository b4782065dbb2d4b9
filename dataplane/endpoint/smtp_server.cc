// smtp_server.cc — see smtp_server.h.
#include "dataplane/endpoint/smtp_server.h"

#include <pthread.h>
#include <sys/statvfs.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>

#include "dataplane/base/clock.h"
#include "dataplane/base/log.h"
#include "dataplane/base/strings.h"
#include "dataplane/io/socket_util.h"
#include "dataplane/queue/dsn.h"
#include "dataplane/smtp/address.h"
#include "dataplane/tls/session.h"

namespace mailseal::endpoint {
using io::FormatAddress;
using io::FormatIp;
using base::Log;
using base::LogLevel;
using smtp::MakeReply;
using smtp::Reply;

namespace {
constexpr size_t kReadBurst = 64 * 1024;
constexpr size_t kMaxReadPerEvent = 256 * 1024;   // fairness between connections
constexpr size_t kMaxPendingOutput = 64 * 1024;   // client not reading: stop reading it
// While replies wait, read in small bites: a bite of pipelined NOOPs makes 2.4 times its size
// in replies (errors more, but they are counted and end the session), so the backlog stays
// near kMaxPendingOutput instead of a full burst's worth of replies above it.
constexpr size_t kReadBiteBacklogged = 4 * 1024;
constexpr int kMaxSpfChecksPerSession = 32;

int64_t WallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}
}  // namespace

class SmtpServer::Conn : public io::StreamHandler, public smtp::ServerHandler {
 public:
  // SessionOptions: STARTTLS is offered only with a TLS context (a reload that adds a tls
  // section takes effect at restart); a required TLS without one refuses all mail (fail closed).
  static smtp::ServerOptions SessionOptions(const policy::PolicySnapshot& snap, bool have_tls) {
    smtp::ServerOptions o = snap.smtp;
    o.starttls = o.starttls && have_tls;
    return o;
  }

  Conn(SmtpServer* t, uint64_t id, std::unique_ptr<io::Stream> stream,
       std::shared_ptr<const policy::PolicySnapshot> snap)
      : t_(t), id_(id), stream_(std::move(stream)), snap_(std::move(snap)),
        session_(SessionOptions(*snap_, t->ctx_.tls_ctx != nullptr), this) {
    const sockaddr* peer = reinterpret_cast<const sockaddr*>(&stream_->peer());
    peer_ = FormatAddress(peer);
    peer_ip_ = FormatIp(peer);
    trusted_ = snap_->IsTrusted(peer);
    last_activity_ms_ = t_->loop_->NowMs();
  }
  ~Conn() override {
    if (writer_) writer_->Abandon();
  }

  uint64_t id() const { return id_; }
  // Detach: no more readiness for this connection (it is being closed).
  void Detach() { stream_->Watch(nullptr, false, false); }
  int64_t last_activity_ms() const { return last_activity_ms_; }
  smtp::ServerSession& session() { return session_; }
  bool closing() const { return closing_; }
  bool handshaking() const { return tls_session_ && !tls_session_->established(); }

  void Begin() {
    Log(LogLevel::kInfo, "smtpd", "connect", {{"client", peer_}, {"trusted", trusted_ ? "yes" : "no"}});
    session_.Start();
    Flush();
    UpdateInterest();
  }

  void OnReady(bool readable, bool writable) override {
    if (closing_) return;
    if (writable) Flush();
    if (readable && WantsInput()) ReadInput();
    Flush();
    MaybeStartTls();
    Settle();
  }

  // CommitDone runs on this thread when the committer has finished our message.
  void CommitDone(const Status& st, const std::string& qid) {
    if (closing_) return;
    if (st.ok()) {
      Log(LogLevel::kInfo, "smtpd", "accepted",
          {{"qid", qid}, {"client", peer_}, {"from", from_}, {"rcpts", std::to_string(rcpts_)},
           {"size", std::to_string(size_)}});
      session_.CompleteData(MakeReply(250, "2.0.0", StrCat("Ok: queued as ", qid)));
    } else {
      session_.CompleteData(MakeReply(451, "4.3.0", "Error: queue file write error, try again later"));
    }
    Resume();
  }

  // SpfDone runs on this thread with the verdict for the MAIL the session is waiting on.
  void SpfDone(const spf::Verdict& v) {
    if (closing_ || !session_.Paused()) return;
    spf_ = v;
    spf_checked_ = true;
    Reply r = SpfDecision(v);
    Log(r.code ? LogLevel::kWarning : LogLevel::kInfo, "smtpd", "spf",
        {{"client", peer_}, {"from", spf_request_.mail_from}, {"domain", v.domain},
         {"result", spf::ResultName(v.result)}, {"mechanism", v.mechanism}, {"problem", v.problem},
         {"reply", r.code ? r.OneLine() : "accepted"}});
    session_.CompleteMail(r);
    Resume();
  }

  // Resume: the session may take input again; TLS may hold plaintext already read.
  void Resume() {
    last_activity_ms_ = t_->loop_->NowMs();
    if (tls_session_ && tls_session_->established()) PumpTls();
    Flush();
    MaybeStartTls();
    Settle();
  }

  void Shutdown() {
    if (session_.TlsPending()) return;   // the handshake or the drain deadline ends it
    session_.Shutdown();
    Flush();
    Settle();
  }
  void ForceClose() {
    Log(LogLevel::kWarning, "smtpd", "drain deadline passed, closing", {{"client", peer_}});
    session_.Timeout();
    Flush();
    peer_gone_ = true;
    Settle();
  }
  void Timeout() {
    Log(LogLevel::kInfo, "smtpd", "timeout", {{"client", peer_}});
    session_.Timeout();
    Flush();
    Settle();
  }

  // ---- ServerHandler ----
  Reply OnMail(const smtp::Transaction& txn) override {
    if (t_->draining_) return MakeReply(421, "4.3.2", "Service shutting down, try again later");
    if (t_->ctx_.hsm_available && !t_->ctx_.hsm_available->load(std::memory_order_acquire))
      return MakeReply(451, "4.3.0", "Security module unavailable: mail is suspended, try again later");
    if (t_->ctx_.audit_available && !t_->ctx_.audit_available->load(std::memory_order_acquire))
      return MakeReply(451, "4.3.0", "Audit trail unavailable: mail is suspended, try again later");
    if (!t_->ctx_.qmgr->Accepting())
      return MakeReply(452, "4.3.1", "Insufficient system resources, try again later");
    // Room on the spool disk for this message (its SIZE, or the largest allowed) twice over —
    // the crypto stage writes a copy — plus the reserve (issue #13): refused now, not after
    // the whole message was sent.
    uint64_t want = 2 * (txn.declared_size ? txn.declared_size : snap_->smtp.limits.max_message_size) + snap_->min_free_spool_bytes;
    if (t_->spool_free_bytes_ < want)
      return MakeReply(452, "4.3.1", "Insufficient system storage, try again later");
    bool same = spf_checked_ && spf_request_.mail_from == txn.mail_from && spf_request_.helo == txn.helo;
    if (same && spf_.result != spf::Result::kTempError) return SpfDecision(spf_);   // RSET/MAIL loops cost no DNS
    spf_checked_ = false;
    spf_ = spf::Verdict{};
    if (trusted_ || !t_->ctx_.spf || snap_->spf == policy::PolicySnapshot::Spf::kOff) return {};
    // Each check may cost dozens of DNS questions: a session that keeps changing its sender
    // (MAIL, RSET, MAIL...) gets a bounded number of them.
    if (++spf_checks_ > kMaxSpfChecksPerSession)
      return MakeReply(451, "4.7.24", "Too many different senders in one session: SPF checks exhausted, reconnect");
    spf_request_ = spf::Request{};
    spf_request_.ip = peer_ip_;
    spf_request_.mail_from = txn.mail_from;
    spf_request_.helo = txn.helo;
    spf_request_.receiver = snap_->smtp.hostname;
    spf_request_.default_explanation = "see RFC 7208";
    spf_request_.now_unix = WallMs() / 1000;
    SmtpServer* t = t_;
    uint64_t id = id_;
    bool queued = t_->ctx_.spf->Submit(spf_request_, [t, id](const spf::Verdict& v) {
      t->loop_->Post([t, id, v] {
        auto it = t->conns_.find(id);
        if (it != t->conns_.end()) it->second->SpfDone(v);
      });
    });
    if (queued) return MakeReply(smtp::kReplyPending, "", "");
    spf::Verdict busy;
    busy.result = spf::Result::kTempError;
    busy.problem = "SPF checker overloaded";
    spf_ = busy;
    spf_checked_ = true;
    Log(LogLevel::kWarning, "smtpd", "spf checker queue full", {{"client", peer_}});
    return SpfDecision(busy);
  }

  // SpfDecision: the reply SM-5b/SM-6.1 and the policy give for a verdict (code 0: accept).
  Reply SpfDecision(const spf::Verdict& v) const {
    using R = spf::Result;
    if (snap_->spf == policy::PolicySnapshot::Spf::kMark && !snap_->securemail) return {};
    if (v.result == R::kTempError && !snap_->spf_accept_temperror)
      return MakeReply(451, "4.7.24", StrCat("SPF check of ", v.domain, " failed temporarily (", v.problem, "), try again later"));
    if (v.result == R::kFail) {
      std::string exp;
      for (char ch : v.explanation) exp += (ch == '\r' || ch == '\n') ? ' ' : ch;
      if (exp.size() > 200) exp.resize(200);
      bool helo = v.identity == "helo" && !spf_request_.mail_from.empty();
      return MakeReply(550, "5.7.23", StrCat("SPF: ", v.domain, helo ? " (your HELO name)" : "", " does not allow ",
                                             peer_ip_, helo ? " to use its name: " : " to send its mail: ", exp));
    }
    if (snap_->securemail && !(v.result == R::kPass && v.ends_in_hard_all))
      return MakeReply(550, "5.7.23", StrCat("SecureMail host (SM-6.1): mail is accepted only when the sender's SPF record "
                                             "ends in -all and passes; ", v.domain, " gave ", spf::ResultName(v.result),
                                             v.result == R::kPass ? " without -all" : ""));
    return {};
  }
  Reply OnRcpt(const smtp::Transaction& txn, const smtp::Recipient& rcpt) override {
    std::string domain = smtp::DomainOf(rcpt.address);
    if (domain.empty()) return {};   // bare "postmaster" is ours
    if (snap_->IsLocalDomain(domain)) return CheckDirectory(rcpt.address, domain);
    if (trusted_) return {};
    Log(LogLevel::kWarning, "smtpd", "relay denied", {{"client", peer_}, {"to", rcpt.address}});
    return MakeReply(554, "5.7.1", StrCat("<", rcpt.address, ">: Relay access denied"));
  }

  // CheckDirectory: a local recipient against the directory (DE-11): known → accepted, unknown
  // → 550 5.1.1 now (no bounce later, no backscatter), directory down → 451 4.4.3 (never 5xx).
  Reply CheckDirectory(const std::string& address, const std::string& domain) {
    directory::RecipientDirectory* dir = t_->ctx_.directory;
    if (!dir) return {};
    const auto& only = t_->ctx_.directory_domains;
    if (!only.empty() && !base::DomainListCovers(only, base::AsciiLower(domain))) return {};
    std::string local = address.substr(0, address.rfind('@'));
    if (base::AsciiLower(local) == "postmaster") return {};   // RFC 5321 §4.5.1: always
    if (std::optional<directory::Answer> a = dir->Cached(address)) return DirectoryReply(address, *a);
    SmtpServer* t = t_;
    uint64_t id = id_;
    bool queued = dir->Submit(address, [t, id, address](const directory::Answer& a) {
      t->loop_->Post([t, id, address, a] {
        auto it = t->conns_.find(id);
        if (it != t->conns_.end()) it->second->DirectoryDone(address, a);
      });
    });
    if (queued) return MakeReply(smtp::kReplyPending, "", "");
    Log(LogLevel::kWarning, "smtpd", "recipient directory queue full", {{"client", peer_}, {"to", address}});
    return MakeReply(451, "4.3.2", "Recipient directory busy, try again later");
  }

  Reply DirectoryReply(const std::string& address, const directory::Answer& a) {
    switch (a.result) {
      case directory::Lookup::kKnown:
        return {};
      case directory::Lookup::kUnknown:
        Log(LogLevel::kInfo, "smtpd", "recipient unknown in the directory",
            {{"client", peer_}, {"to", address}, {"detail", a.detail}});
        return MakeReply(550, "5.1.1", StrCat("<", address, ">: Recipient address rejected: user unknown"));
      case directory::Lookup::kUnavailable:
        break;
    }
    Log(LogLevel::kWarning, "smtpd", "recipient directory unavailable: 451",
        {{"client", peer_}, {"to", address}, {"error", a.detail}});
    return MakeReply(451, "4.4.3", "Recipient directory unavailable, try again later");
  }

  // DirectoryDone runs on this thread with the answer for the RCPT the session waits on.
  void DirectoryDone(const std::string& address, const directory::Answer& a) {
    if (closing_ || !session_.Paused()) return;
    session_.CompleteRcpt(DirectoryReply(address, a));
    Resume();
  }
  Reply OnDataStart(const smtp::Transaction& txn) override {
    mailseal::v1::SpoolEnvelope env;
    env.set_mail_from(txn.mail_from);
    for (const smtp::Recipient& r : txn.recipients) {
      auto* er = env.add_recipients();
      er->set_address(r.address);
      er->set_notify(r.notify);
      er->set_orcpt(r.orcpt);
    }
    env.set_arrival_unix_ms(base::QueueNowMs());   // the queue's clock: ages survive clock steps
    env.set_client_address(peer_);
    env.set_helo(txn.helo);
    env.set_body_type(txn.body_type);
    env.set_smtputf8(txn.smtputf8);
    env.set_ret(txn.ret);
    env.set_envid(txn.envid);
    env.set_tls(tls_);
    if (spf_checked_) {
      env.set_spf_result(spf::ResultName(spf_.result));
      env.set_spf_domain(spf_.domain);
    }
    writer_ = std::make_unique<queue::SpoolWriter>();
    Status st = writer_->Open(t_->ctx_.spool, env);
    if (st.ok()) {
      // Our trace header comes first (RFC 5321 §4.4).
      // RFC 3848: ESMTPS / UTF8SMTPS when the session ran over TLS.
      std::string received = StrCat(
          "Received: from ", txn.helo, " (", peer_, ")\r\n\t",
          tls_.empty() ? "" : StrCat("(using ", tls_, ")\r\n\t"), "by ", snap_->smtp.hostname,
          " (mailseal) with ", txn.smtputf8 ? "UTF8SMTP" : "ESMTP", tls_.empty() ? "" : "S", " id ", writer_->id(), "\r\n\t",
          txn.recipients.size() == 1 ? StrCat("for <", txn.recipients[0].address, ">") : "",
          "; ", queue::Rfc5322Date(env.arrival_unix_ms()), "\r\n");
      if (spf_checked_) received += spf::ReceivedSpf(spf_, spf_request_);
      st = writer_->Append(received);
    }
    if (!st.ok()) {
      Log(LogLevel::kError, "smtpd", "cannot create queue file", {{"error", st.message()}});
      writer_->Abandon();
      writer_.reset();
      return MakeReply(451, "4.3.0", "Error: queue file write error, try again later");
    }
    write_failed_ = false;
    from_ = txn.mail_from;
    rcpts_ = txn.recipients.size();
    return {};
  }
  void OnDataChunk(std::string_view bytes) override {
    if (!writer_ || write_failed_) return;
    if (Status st = writer_->Append(bytes); !st.ok()) {
      Log(LogLevel::kError, "smtpd", "queue file write failed", {{"error", st.message()}});
      write_failed_ = true;
    }
  }
  void OnDataEnd(const smtp::Transaction& txn) override {
    if (!writer_ || write_failed_) {
      if (writer_) writer_->Abandon();
      writer_.reset();
      session_.CompleteData(MakeReply(451, "4.3.0", "Error: queue file write error, try again later"));
      return;
    }
    size_ = writer_->body_size();
    SmtpServer* t = t_;
    uint64_t id = id_;
    t_->ctx_.committer->Commit(std::move(writer_), [t, id](const Status& st, const std::string& qid) {
      t->loop_->Post([t, id, st, qid] {
        auto it = t->conns_.find(id);
        if (it != t->conns_.end()) it->second->CommitDone(st, qid);
      });
    });
  }
  void OnRefused(const smtp::Transaction& txn, const Reply& r) override {
    Log(LogLevel::kWarning, "smtpd", "message refused",
        {{"client", peer_}, {"from", txn.mail_from}, {"reply", r.OneLine()}});
  }
  void OnDataAbort() override {
    if (writer_) writer_->Abandon();
    writer_.reset();
  }

 private:
  bool WantsInput() const {
    if (session_.Closed() || out_.size() - out_off_ >= kMaxPendingOutput) return false;
    return handshaking() || !session_.Paused();
  }

  // MaybeStartTls: the session accepted STARTTLS and its 220 went out in clear: begin the
  // server side of the handshake (the TLS core, tls/session.h).
  void MaybeStartTls() {
    if (tls_session_ || !session_.TlsPending() || closing_ || peer_gone_) return;
    if (!t_->ctx_.tls_ctx) {
      peer_gone_ = true;
      return;
    }
    Result<std::unique_ptr<tls::Session>> s = tls::Session::Start(t_->ctx_.tls_ctx, tls::Session::Role::kServer);
    if (!s.ok()) {
      Log(LogLevel::kError, "smtpd", "TLS session setup failed", {{"client", peer_}, {"error", s.status().message()}});
      peer_gone_ = true;
      return;
    }
    tls_session_ = std::move(s.value());
  }

  // ClientCertificate: ", client certificate verified: <subject>" (or "not verified") for the
  // TLS description — it travels into Received and Authentication-Results comments, so the
  // subject is reduced to characters that cannot end or nest a comment.
  std::string ClientCertificate() {
    std::vector<X509*> chain = tls_session_->PeerChain();
    if (chain.empty()) return "";
    pki::Request r;
    r.leaf = chain.front();
    r.untrusted.assign(chain.begin() + 1, chain.end());
    r.purpose = pki::Purpose::kTlsClient;
    pki::Outcome o = pki::Validate(*t_->ctx_.client_trust, r);
    std::string subject;
    for (char ch : pki::SubjectOf(chain.front()))
      if (std::isalnum(static_cast<unsigned char>(ch)) || std::strchr(" =.,@-_/", ch)) subject += ch;
    if (subject.size() > 120) subject.resize(120);
    if (!o.ok())
      Log(LogLevel::kInfo, "smtpd", "client certificate not verified", {{"client", peer_}, {"why", o.reason}});
    return StrCat(", client certificate ", o.ok() ? "verified" : "not verified", ": ", subject);
  }

  // PumpTls: ciphertext already fed → handshake progress or plaintext for the session.
  void PumpTls() {
    if (!tls_session_->established()) {
      if (!tls_session_->Handshake()) {
        if (tls_session_->failed())
          Log(LogLevel::kWarning, "smtpd", "TLS handshake failed", {{"client", peer_}, {"error", tls_session_->error()}});
        return;   // the alert, if any, goes out with the next flush
      }
      tls_ = tls_session_->description();
      if (t_->ctx_.client_trust) tls_ += ClientCertificate();
      Log(LogLevel::kInfo, "smtpd", "TLS established", {{"client", peer_}, {"tls", tls_}});
      session_.TlsStarted();
    }
    // No byte cap here: what was fed was read under ReadInput's cap, and plaintext left in
    // OpenSSL would wait for a socket event that may never come (the client awaits our reply).
    std::string plain;
    while (!session_.Paused() && !session_.Closed()) {
      plain.clear();
      tls::Session::Read r = tls_session_->ReadPlain(&plain, 16 * 1024);
      if (r == tls::Session::Read::kData) {
        session_.Feed(plain);
        continue;
      }
      if (r == tls::Session::Read::kWouldBlock) break;
      if (r == tls::Session::Read::kFailed)
        Log(LogLevel::kInfo, "smtpd", "TLS read failed", {{"client", peer_}, {"error", tls_session_->error()}});
      peer_gone_ = true;
      break;
    }
  }

  void ReadInput() {
    char buf[kReadBurst];
    size_t total = 0;
    while (total < kMaxReadPerEvent && WantsInput()) {
      size_t want = out_.size() > out_off_ ? kReadBiteBacklogged : sizeof buf;
      io::IoResult r = stream_->Read(buf, want);
      if (r.kind == io::IoResult::kOk) {
        size_t n = r.bytes;
        total += n;
        last_activity_ms_ = t_->loop_->NowMs();
        if (tls_session_) {
          tls_session_->FeedCiphertext(std::string_view(buf, n));
          PumpTls();
          if (tls_session_->failed()) {
            peer_gone_ = true;
            break;
          }
        } else {
          session_.Feed(std::string_view(buf, n));
        }
        TakeSessionOutput();
        if (n < want) break;   // drained (readiness is level-triggered: more is reported)
        continue;
      }
      if (r.kind == io::IoResult::kWouldBlock) break;
      // Peer closed or reset.
      if (session_.InTransaction())
        Log(LogLevel::kInfo, "smtpd", "lost connection in transaction", {{"client", peer_}, {"why", r.error}});
      peer_gone_ = true;
      break;
    }
  }

  // TakeSessionOutput: replies go out in clear before STARTTLS (its 220 included), through TLS
  // after the handshake, and nowhere during it (a timeout's 421 cannot be sent then).
  void TakeSessionOutput() {
    std::string plain = session_.TakeOutput();
    if (!tls_session_) {
      out_ += plain;
      return;
    }
    if (tls_session_->established() && !plain.empty() && !tls_session_->WritePlain(plain)) peer_gone_ = true;
    if (tls_session_->established() && session_.Closed()) tls_session_->Close();   // close_notify after 221/421
    out_ += tls_session_->TakeCiphertext();
  }

  void Flush() {
    TakeSessionOutput();
    while (out_off_ < out_.size()) {
      io::IoResult r = stream_->Write(std::string_view(out_).substr(out_off_));
      if (r.kind == io::IoResult::kOk && r.bytes > 0) {
        out_off_ += r.bytes;
        continue;
      }
      if (r.kind == io::IoResult::kOk || r.kind == io::IoResult::kWouldBlock) break;
      peer_gone_ = true;
      break;
    }
    if (out_off_ == out_.size()) {
      out_.clear();
      out_off_ = 0;
    } else if (out_off_ >= kMaxPendingOutput) {
      // A client that reads slowly but never all of it: without this, what it has read would
      // stay in front of what it has not, and grow with every reply.
      out_.erase(0, out_off_);
      out_off_ = 0;
    }
  }

  void Settle() {
    if (peer_gone_ || (session_.Closed() && out_.empty())) {
      Log(LogLevel::kInfo, "smtpd", "disconnect", {{"client", peer_}});
      closing_ = true;
      t_->CloseConn(this);
      return;
    }
    UpdateInterest();
  }

  void UpdateInterest() {
    int want = (WantsInput() ? 1 : 0) | (out_.empty() ? 0 : 2);
    if (want != interest_) {
      stream_->Watch(this, want & 1, want & 2);
      interest_ = want;
    }
  }

  int interest_ = -1;
  SmtpServer* t_;
  uint64_t id_;
  std::unique_ptr<io::Stream> stream_;
  std::shared_ptr<const policy::PolicySnapshot> snap_;
  smtp::ServerSession session_;
  std::string peer_;
  std::string peer_ip_;
  bool trusted_ = false;
  std::unique_ptr<tls::Session> tls_session_;   // after STARTTLS
  std::string tls_;       // "TLSv1.3 TLS_AES_256_GCM_SHA384" once established
  spf::Request spf_request_;
  spf::Verdict spf_;
  bool spf_checked_ = false;
  int spf_checks_ = 0;
  std::string out_;
  size_t out_off_ = 0;
  bool peer_gone_ = false;
  bool closing_ = false;
  int64_t last_activity_ms_ = 0;
  std::unique_ptr<queue::SpoolWriter> writer_;
  bool write_failed_ = false;
  std::string from_;
  size_t rcpts_ = 0;
  uint64_t size_ = 0;
};

SmtpServer::SmtpServer(int index, ServerContext ctx, io::Backend* backend)
    : index_(index), ctx_(ctx), backend_(backend) {}

SmtpServer::~SmtpServer() {
  Join();
  conns_.clear();
  dead_.clear();
  listener_.reset();
}

Status SmtpServer::Start() {
  UpdateSpoolFree();
  loop_ = backend_->NewLoop();
  Result<std::unique_ptr<io::Listener>> l = backend_->Listen(loop_.get(), index_, [this](std::unique_ptr<io::Stream> s) {
    Accept(std::move(s));
  });
  if (!l.ok()) return l.status();
  listener_ = std::move(l.value());
  thread_ = std::thread([this] { loop_->Run(1000, [this] { Tick(); }, [this] { AfterBatch(); }); });
  std::string name = "net" + std::to_string(index_);
  pthread_setname_np(thread_.native_handle(), name.c_str());
  return OkStatus();
}

void SmtpServer::Join() {
  if (thread_.joinable()) thread_.join();
}

void SmtpServer::BeginDrain(int64_t deadline_ms) {
  loop_->Post([this, deadline_ms] {
    draining_ = true;
    drain_deadline_ms_ = deadline_ms;
    listener_->Pause();
    Tick();
  });
}

void SmtpServer::Refuse(std::unique_ptr<io::Stream> stream, const char* reply) {
  (void)stream->Write(reply);   // best effort; the stream closes when it goes
}

void SmtpServer::LogRefusal(const std::string& what, const std::string& client) {
  // Rate-limited: a flood of refusals must not become a flood of log lines.
  ++refusals_since_log_;
  int64_t now = loop_->NowMs();
  if (now - last_refusal_log_ms_ < 10000) return;
  Log(LogLevel::kWarning, "smtpd", "connections refused",
      {{"why", what}, {"client", client}, {"refused_since_last_line", std::to_string(refusals_since_log_)}});
  last_refusal_log_ms_ = now;
  refusals_since_log_ = 0;
}

void SmtpServer::Accept(std::unique_ptr<io::Stream> stream) {
  if (draining_) {
    Refuse(std::move(stream), "421 4.3.2 Service shutting down, try again later\r\n");
    return;
  }
  auto snap = ctx_.policy->Load();
  const sockaddr* sa = reinterpret_cast<const sockaddr*>(&stream->peer());
  bool trusted = snap->IsTrusted(sa);
  // Trusted networks keep 1/8 of the connections: an outside flood cannot lock them out.
  size_t cap = trusted ? snap->max_connections : snap->max_connections - snap->max_connections / 8;
  if (conns_.size() >= cap) {
    LogRefusal("too many connections", FormatAddress(sa));
    Refuse(std::move(stream), "421 4.7.0 Too many connections, try again later\r\n");
    return;
  }
  std::string key;
  if (!trusted && ctx_.limiter) {
    key = io::ClientLimiter::ClientKey(sa);
    std::string why;
    if (!ctx_.limiter->Admit(key, snap->max_connections_per_client, snap->max_connection_rate_per_client,
                             loop_->NowMs(), &why)) {
      LogRefusal(why, FormatAddress(sa));
      Refuse(std::move(stream), "421 4.7.0 Too many connections from your address, try again later\r\n");
      return;
    }
  }
  uint64_t id = next_conn_id_++;
  if (!key.empty()) limited_[id] = key;
  auto c = std::make_unique<Conn>(this, id, std::move(stream), snap);
  Conn* raw = c.get();
  conns_[id] = std::move(c);
  raw->Begin();
}

void SmtpServer::CloseConn(Conn* c) {
  auto it = conns_.find(c->id());
  if (it == conns_.end()) return;
  c->Detach();
  if (auto l = limited_.find(c->id()); l != limited_.end()) {
    ctx_.limiter->Release(l->second);
    limited_.erase(l);
  }
  dead_.push_back(std::move(it->second));  // freed after this batch of events
  conns_.erase(it);
}

void SmtpServer::AfterBatch() {
  dead_.clear();
  if (draining_ && conns_.empty()) loop_->Stop();
}

void SmtpServer::UpdateSpoolFree() {
  struct statvfs vfs {};
  spool_free_bytes_ = ::statvfs(ctx_.spool->root().c_str(), &vfs) == 0
                          ? static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize
                          : UINT64_MAX;   // cannot tell: the writes themselves will say
}

void SmtpServer::Tick() {
  int64_t now = loop_->NowMs();
  UpdateSpoolFree();
  auto snap = ctx_.policy->Load();
  std::vector<Conn*> snapshot;
  for (auto& [id, c] : conns_) snapshot.push_back(c.get());
  for (Conn* c : snapshot) {
    if (c->closing()) continue;
    if (draining_ && now >= drain_deadline_ms_) {
      c->ForceClose();
      continue;
    }
    if (draining_ && !c->session().InTransaction()) {
      c->Shutdown();
      continue;
    }
    if ((!c->session().Paused() || c->handshaking()) && now - c->last_activity_ms() > snap->idle_timeout_ms)
      c->Timeout();
  }
}

}  // namespace mailseal::endpoint
