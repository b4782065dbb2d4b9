// smtp_server.cc — see smtp_server.h.
#include "dataplane/io/smtp_server.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "dataplane/base/log.h"
#include "dataplane/io/socket_util.h"
#include "dataplane/queue/dsn.h"
#include "dataplane/smtp/address.h"

namespace mailseal::io {
using base::Log;
using base::LogLevel;
using smtp::MakeReply;
using smtp::Reply;

namespace {
constexpr size_t kReadBurst = 64 * 1024;
constexpr size_t kMaxReadPerEvent = 256 * 1024;   // fairness between connections
constexpr size_t kMaxPendingOutput = 256 * 1024;  // client not reading: stop reading it

int64_t WallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}
}  // namespace

Result<int> OpenListener(const std::string& ip, uint16_t* port) {
  sockaddr_storage ss;
  socklen_t len;
  if (!MakeAddress(ip, *port, &ss, &len)) return InvalidArgumentError(StrCat("bad listen address ", ip));
  int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return InternalError(StrCat("socket: ", std::strerror(errno)));
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || ::listen(fd, 1024) != 0) {
    int e = errno;
    ::close(fd);
    return UnavailableError(StrCat("listen on ", ip, ":", *port, ": ", std::strerror(e)));
  }
  sockaddr_storage bound{};
  socklen_t blen = sizeof bound;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &blen);
  *port = ntohs(bound.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&bound)->sin_port
                                           : reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
  return fd;
}

class NetThread::Listener : public EventHandler {
 public:
  Listener(NetThread* t, int fd) : t_(t), fd_(fd) {}
  void OnEvent(uint32_t) override { t_->Accept(fd_); }
  int fd() const { return fd_; }

 private:
  NetThread* t_;
  int fd_;
};

class NetThread::Conn : public EventHandler, public smtp::ServerHandler {
 public:
  Conn(NetThread* t, uint64_t id, int fd, const sockaddr_storage& peer,
       std::shared_ptr<const policy::PolicySnapshot> snap)
      : t_(t), id_(id), fd_(fd), snap_(std::move(snap)),
        session_(snap_->smtp, this) {
    peer_ = FormatAddress(reinterpret_cast<const sockaddr*>(&peer));
    trusted_ = snap_->IsTrusted(reinterpret_cast<const sockaddr*>(&peer));
    last_activity_ms_ = EventLoop::NowMs();
  }
  ~Conn() override {
    if (writer_) writer_->Abandon();
    if (fd_ >= 0) ::close(fd_);
  }

  uint64_t id() const { return id_; }
  int fd() const { return fd_; }
  int64_t last_activity_ms() const { return last_activity_ms_; }
  smtp::ServerSession& session() { return session_; }
  bool closing() const { return closing_; }

  void Begin() {
    Log(LogLevel::kInfo, "smtpd", "connect", {{"client", peer_}, {"trusted", trusted_ ? "yes" : "no"}});
    session_.Start();
    Flush();
    UpdateInterest();
  }

  void OnEvent(uint32_t ev) override {
    if (closing_) return;
    if (ev & (EPOLLERR | EPOLLHUP)) ev |= EPOLLIN;
    if (ev & EPOLLOUT) Flush();
    if ((ev & EPOLLIN) && WantsInput()) ReadInput();
    Flush();
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
    last_activity_ms_ = EventLoop::NowMs();
    Flush();
    Settle();
  }

  void Shutdown() {
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
    if (!t_->ctx_.qmgr->Accepting())
      return MakeReply(452, "4.3.1", "Insufficient system resources, try again later");
    return {};
  }
  Reply OnRcpt(const smtp::Transaction& txn, const smtp::Recipient& rcpt) override {
    if (trusted_) return {};
    std::string domain = smtp::DomainOf(rcpt.address);
    if (domain.empty() || snap_->IsLocalDomain(domain)) return {};  // bare "postmaster" is ours
    Log(LogLevel::kWarning, "smtpd", "relay denied", {{"client", peer_}, {"to", rcpt.address}});
    return MakeReply(554, "5.7.1", StrCat("<", rcpt.address, ">: Relay access denied"));
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
    env.set_arrival_unix_ms(WallMs());
    env.set_client_address(peer_);
    env.set_helo(txn.helo);
    env.set_body_type(txn.body_type);
    env.set_smtputf8(txn.smtputf8);
    env.set_ret(txn.ret);
    env.set_envid(txn.envid);
    writer_ = std::make_unique<queue::SpoolWriter>();
    Status st = writer_->Open(t_->ctx_.spool, env);
    if (st.ok()) {
      // Our trace header comes first (RFC 5321 §4.4).
      std::string received = StrCat(
          "Received: from ", txn.helo, " (", peer_, ")\r\n\tby ", snap_->smtp.hostname,
          " (mailseal) with ", txn.smtputf8 ? "UTF8SMTP" : "ESMTP", " id ", writer_->id(), "\r\n\t",
          txn.recipients.size() == 1 ? StrCat("for <", txn.recipients[0].address, ">; ") : "",
          queue::Rfc5322Date(env.arrival_unix_ms()), "\r\n");
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
    NetThread* t = t_;
    uint64_t id = id_;
    t_->ctx_.committer->Commit(std::move(writer_), [t, id](const Status& st, const std::string& qid) {
      t->loop_.Post([t, id, st, qid] {
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
    return !session_.Paused() && !session_.Closed() && out_.size() - out_off_ < kMaxPendingOutput;
  }

  void ReadInput() {
    char buf[kReadBurst];
    size_t total = 0;
    while (total < kMaxReadPerEvent && WantsInput()) {
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n > 0) {
        total += static_cast<size_t>(n);
        last_activity_ms_ = EventLoop::NowMs();
        session_.Feed(std::string_view(buf, static_cast<size_t>(n)));
        out_ += session_.TakeOutput();
        if (static_cast<size_t>(n) < sizeof buf) break;
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      // Peer closed or reset.
      if (session_.InTransaction())
        Log(LogLevel::kInfo, "smtpd", "lost connection in transaction", {{"client", peer_}});
      peer_gone_ = true;
      break;
    }
  }

  void Flush() {
    out_ += session_.TakeOutput();
    while (out_off_ < out_.size()) {
      ssize_t n = ::send(fd_, out_.data() + out_off_, out_.size() - out_off_, MSG_NOSIGNAL);
      if (n > 0) {
        out_off_ += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      peer_gone_ = true;
      break;
    }
    if (out_off_ == out_.size()) {
      out_.clear();
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
    uint32_t ev = 0;
    if (WantsInput()) ev |= EPOLLIN;
    if (!out_.empty()) ev |= EPOLLOUT;
    if (ev != interest_) {
      t_->loop_.Modify(fd_, ev, this);
      interest_ = ev;
    }
  }

 public:
  uint32_t interest_ = EPOLLIN;

 private:
  NetThread* t_;
  uint64_t id_;
  int fd_;
  std::shared_ptr<const policy::PolicySnapshot> snap_;
  smtp::ServerSession session_;
  std::string peer_;
  bool trusted_ = false;
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

NetThread::NetThread(int index, ServerContext ctx, std::vector<int> listen_fds)
    : index_(index), ctx_(ctx), listen_fds_(std::move(listen_fds)) {}

NetThread::~NetThread() {
  Join();
  for (auto& l : listeners_) ::close(l->fd());
}

void NetThread::Start() {
  for (int fd : listen_fds_) {
    listeners_.push_back(std::make_unique<Listener>(this, fd));
    loop_.Add(fd, EPOLLIN, listeners_.back().get());
  }
  thread_ = std::thread([this] { loop_.Run(1000, [this] { Tick(); }, [this] { AfterBatch(); }); });
  std::string name = "net" + std::to_string(index_);
  pthread_setname_np(thread_.native_handle(), name.c_str());
}

void NetThread::Join() {
  if (thread_.joinable()) thread_.join();
}

void NetThread::BeginDrain(int64_t deadline_ms) {
  loop_.Post([this, deadline_ms] {
    draining_ = true;
    drain_deadline_ms_ = deadline_ms;
    for (auto& l : listeners_) loop_.Remove(l->fd());
    Tick();
  });
}

void NetThread::Accept(int listen_fd) {
  if (draining_) return;
  auto snap = ctx_.policy->Load();
  for (int i = 0; i < 64; ++i) {
    sockaddr_storage peer{};
    socklen_t len = sizeof peer;
    int fd = ::accept4(listen_fd, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        Log(LogLevel::kWarning, "smtpd", "accept failed", {{"error", std::strerror(errno)}});
      return;
    }
    if (conns_.size() >= snap->max_connections) {
      static const char kBusy[] = "421 4.7.0 Too many connections, try again later\r\n";
      ssize_t ignored = ::send(fd, kBusy, sizeof kBusy - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
      (void)ignored;
      ::close(fd);
      continue;
    }
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    uint64_t id = next_conn_id_++;
    auto c = std::make_unique<Conn>(this, id, fd, peer, snap);
    Conn* raw = c.get();
    conns_[id] = std::move(c);
    loop_.Add(fd, EPOLLIN, raw);
    raw->Begin();
  }
}

void NetThread::CloseConn(Conn* c) {
  loop_.Remove(c->fd());
  auto it = conns_.find(c->id());
  if (it == conns_.end()) return;
  dead_.push_back(std::move(it->second));  // freed after this batch of events
  conns_.erase(it);
}

void NetThread::AfterBatch() {
  dead_.clear();
  if (draining_ && conns_.empty()) loop_.Stop();
}

void NetThread::Tick() {
  int64_t now = EventLoop::NowMs();
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
    if (!c->session().Paused() && now - c->last_activity_ms() > snap->idle_timeout_ms) c->Timeout();
  }
}

}  // namespace mailseal::io
