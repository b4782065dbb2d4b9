// smtp_seam_test.cc — the SMTP server endpoint and the TLS core end to end over the in-memory
// back end (issue #14: the proof that the transport seam is real). No socket is opened: the
// endpoint, the spool, the committer and the TLS core are the product's; the client is a
// sans-I/O smtp::ClientSession with its own TLS core, fed through memory pipes that split,
// delay and reset on demand.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "dataplane/base/clock.h"
#include "dataplane/config/config.h"
#include "dataplane/endpoint/smtp_server.h"
#include "dataplane/memory/backend.h"
#include "dataplane/policy/snapshot.h"
#include "dataplane/queue/committer.h"
#include "dataplane/smtp/client_session.h"
#include "dataplane/tls/session.h"
#include "tests/common/self_signed.h"

namespace mailseal {
namespace {
using smtp::ClientSession;

// Client: a test SMTP client over a memory stream — ClientSession plus the TLS core, polled
// from the test thread with a deadline on every wait.
class Client {
 public:
  Client(std::unique_ptr<io::Stream> s, SSL_CTX* tls_ctx, ClientSession::Tls tls)
      : stream_(std::move(s)), tls_ctx_(tls_ctx), session_("client.test", tls) {}

  // Until the session is ready for a message (or failed). False on timeout.
  bool Greet() {
    return Drive([&] {
      auto st = session_.state();
      return st == ClientSession::State::kReady || st == ClientSession::State::kFailed || st == ClientSession::State::kClosed;
    });
  }

  // Send one message; the final state says how it went.
  bool Send(const std::string& from, const std::string& to, const std::string& body) {
    smtp::ClientMessage m;
    m.mail_from = from;
    m.recipients.push_back({to, "", ""});
    session_.StartMessage(m);
    bool ok = Drive([&] {
      auto st = session_.state();
      return st != ClientSession::State::kInMessage;
    });
    if (!ok || session_.state() != ClientSession::State::kSendBody) return ok;
    smtp::BodyEncoder enc;
    std::string wire;
    enc.Encode(body, &wire);
    enc.Finish(&wire);
    Write(wire);
    session_.BodyDone();
    return Drive([&] { return session_.state() != ClientSession::State::kBodySent; });
  }

  ClientSession& session() { return session_; }
  bool tls_up() const { return tls_ && tls_->established(); }
  const std::string& tls_description() const { return tls_->description(); }
  bool lost() const { return lost_; }

 private:
  // Drive exchanges bytes until done() or 10 s pass.
  template <typename Done>
  bool Drive(Done done) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      Write(session_.TakeOutput());
      if (session_.state() == ClientSession::State::kTlsReady && !tls_) {
        tls_ = std::move(tls::Session::Start(tls_ctx_, tls::Session::Role::kClient, "gw.test").value());
        tls_->Handshake();
        Flush();
      }
      if (tls_ && !tls_->established() && tls_->Handshake()) {
        Flush();
        session_.TlsStarted();
        continue;
      }
      if (done()) return true;
      if (lost_) return false;
      char buf[4096];
      io::IoResult r = stream_->Read(buf, sizeof buf);
      if (r.kind == io::IoResult::kOk) {
        if (!tls_) {
          session_.Feed(std::string_view(buf, r.bytes));
        } else {
          tls_->FeedCiphertext(std::string_view(buf, r.bytes));
          std::string plain;
          if (tls_->established() && tls_->ReadPlain(&plain, 1 << 20) == tls::Session::Read::kData) session_.Feed(plain);
          Flush();
        }
        continue;
      }
      if (r.kind != io::IoResult::kWouldBlock) {
        lost_ = true;
        session_.Fail(smtp::MakeReply(451, "4.4.2", "connection lost"));
        return done();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return false;
  }
  void Write(const std::string& plain) {
    if (plain.empty()) return;
    if (tls_ && tls_->established()) {
      tls_->WritePlain(plain);
      Flush();
    } else {
      Raw(plain);
    }
  }
  void Flush() {
    if (tls_) Raw(tls_->TakeCiphertext());
  }
  void Raw(std::string_view bytes) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!bytes.empty() && std::chrono::steady_clock::now() < deadline) {
      io::IoResult r = stream_->Write(bytes);
      if (r.kind == io::IoResult::kOk) {
        bytes.remove_prefix(r.bytes);
        continue;
      }
      if (r.kind == io::IoResult::kWouldBlock) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        continue;
      }
      lost_ = true;
      return;
    }
  }

  std::unique_ptr<io::Stream> stream_;
  SSL_CTX* tls_ctx_;
  ClientSession session_;
  std::unique_ptr<tls::Session> tls_;
  bool lost_ = false;
};

// Node: one gateway's receiving side (endpoint, spool, committer, queue) on the memory back end.
struct Node {
  std::filesystem::path root;
  policy::SnapshotStore policy;
  std::unique_ptr<queue::Spool> spool;
  std::unique_ptr<queue::QueueManager> qmgr;
  std::unique_ptr<queue::Committer> committer;
  std::unique_ptr<endpoint::SmtpServer> server;
  SSL_CTX* tls = nullptr;

  // Start on listener `index`; `deliver`: run the queue (deliveries through `backend`).
  void Start(memory::MemBackend* backend, const std::filesystem::path& dir, int index, bool with_tls, bool deliver) {
    root = dir;
    std::filesystem::create_directories(root);
    std::string text = "hostname: \"gw" + std::to_string(index) + ".test\"\nlisten { address: \"127.0.0.1:25\" }\nspool_dir: \"" +
                       (root / "spool").string() + "\"\ntrusted_networks: \"127.0.0.0/8\"\nlocal_domains: \"agency-a.test\"\n"
                       "spf { mode: SPF_OFF }\nlimits { min_free_spool_mib: 1 }\n"
                       "delivery { relay_host: \"127.0.0.1:25\" agents: 1 min_backoff_s: 1 max_backoff_s: 1 queue_scan_interval_ms: 100 }\n";
    if (with_tls) {
      test_support::WriteSelfSigned((root / "cert.pem").string(), (root / "key.pem").string(), "gw.test");
      text += "tls { cert_file: \"" + (root / "cert.pem").string() + "\" key_file: \"" + (root / "key.pem").string() + "\" }\n";
      tls = tls::MakeServerContext((root / "cert.pem").string(), (root / "key.pem").string()).value();
    }
    Result<v1::Config> cfg = config::ParseConfigText(text, "seam.conf");
    ASSERT_TRUE(cfg.ok()) << cfg.status().message();
    policy.Publish(policy::BuildSnapshot(*cfg, 1));
    spool = std::make_unique<queue::Spool>(cfg->spool_dir());
    ASSERT_TRUE(spool->Init().ok());
    queue::QueueOptions qo;
    qo.hostname = cfg->hostname();
    qo.delivery = cfg->delivery();
    qo.network = backend;
    qmgr = std::make_unique<queue::QueueManager>(spool.get(), qo);
    if (deliver) {   // else mail stays queued for the test to read
      ASSERT_TRUE(qmgr->Start().ok());
    }
    committer = std::make_unique<queue::Committer>(spool.get(), qmgr.get());
    committer->Start();
    endpoint::ServerContext ctx;
    ctx.policy = &policy;
    ctx.spool = spool.get();
    ctx.committer = committer.get();
    ctx.qmgr = qmgr.get();
    ctx.tls_ctx = tls;
    server = std::make_unique<endpoint::SmtpServer>(index, ctx, backend);
    ASSERT_TRUE(server->Start().ok());
  }
  void Stop() {
    if (server) {
      server->BeginDrain(base::SteadyMs() + 2000);
      server->Join();
      server.reset();
    }
    if (committer) committer->Stop();
    if (qmgr) qmgr->Stop();
    tls::FreeContext(tls);
    tls = nullptr;
  }
  bool Empty(queue::SpoolState state) {
    Result<std::vector<std::string>> ids = spool->List(state);
    return ids.ok() && ids->empty();
  }
  // Files: the messages in `state`, waiting up to 10 s for `n` of them.
  std::vector<std::string> Files(queue::SpoolState state, size_t n) {
    std::vector<std::string> out;
    for (int i = 0; i < 1000; ++i) {
      out.clear();
      Result<std::vector<std::string>> ids = spool->List(state);
      if (!ids.ok()) break;
      for (const std::string& id : *ids) {
        std::ifstream f(spool->PathOf(state, id), std::ios::binary);
        out.emplace_back(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
      }
      if (out.size() >= n) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return out;
  }
};

class SeamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = std::filesystem::temp_directory_path() / ("seam-" + std::to_string(::getpid()) + "-" +
                                                      ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(root_);
    std::filesystem::create_directories(root_);
    client_thread_ = std::thread([this] { client_loop_.Run(1000, [] {}, [] {}); });
    client_tls_ = tls::MakeClientContext().value();
  }
  void StartServer(bool with_tls) { gw_.Start(&backend_, root_ / "gw", 0, with_tls, false); }
  void TearDown() override {
    gw_.Stop();
    hop_.Stop();
    client_loop_.Stop();
    client_thread_.join();
    tls::FreeContext(client_tls_);
    std::filesystem::remove_all(root_);
  }
  std::unique_ptr<Client> Connect(memory::Faults to_server = {}, memory::Faults to_client = {},
                                  ClientSession::Tls tls = ClientSession::Tls::kOpportunistic,
                                  const std::string& from_ip = "127.0.0.1") {
    Result<std::unique_ptr<io::Stream>> s = backend_.Dial(&client_loop_, 0, from_ip, to_server, to_client);
    EXPECT_TRUE(s.ok()) << s.status().message();
    return std::make_unique<Client>(std::move(s.value()), client_tls_, tls);
  }
  std::vector<std::string> Queued(size_t n) { return gw_.Files(queue::SpoolState::kActive, n); }
  bool Empty(queue::SpoolState state) { return gw_.Empty(state); }

  std::filesystem::path root_;
  memory::MemBackend backend_;
  memory::MemLoop client_loop_;   // delivers the server's bytes; the test thread polls the stream
  std::thread client_thread_;
  Node gw_, hop_;
  SSL_CTX* client_tls_ = nullptr;
};

const char kBody[] = "From: alice@agency-a.test\r\nSubject: seam\r\n\r\nline one\r\n.leading dot\r\nlast\r\n";

TEST_F(SeamTest, PlainTransactionIsQueuedAfter250) {
  StartServer(false);
  auto c = Connect();
  ASSERT_TRUE(c->Greet());
  ASSERT_TRUE(c->Send("alice@agency-a.test", "bob@partner.test", kBody));
  EXPECT_EQ(c->session().result().data.code, 250) << c->session().result().data.OneLine();
  std::vector<std::string> q = Queued(1);
  ASSERT_EQ(q.size(), 1u);
  EXPECT_NE(q[0].find("Received: from client.test"), std::string::npos);
  EXPECT_NE(q[0].find(".leading dot\r\nlast\r\n"), std::string::npos) << "dot-stuffing undone exactly once";
}

TEST_F(SeamTest, OneByteAtATimeBothWaysWithDelays) {
  StartServer(false);
  auto c = Connect({1, 1, -1}, {1, 1, -1});
  ASSERT_TRUE(c->Greet());
  ASSERT_TRUE(c->Send("alice@agency-a.test", "bob@partner.test", kBody));
  EXPECT_EQ(c->session().result().data.code, 250);
  ASSERT_EQ(Queued(1).size(), 1u);
}

TEST_F(SeamTest, StartTlsEndToEndThroughTheTlsCore) {
  StartServer(true);
  auto c = Connect({}, {}, ClientSession::Tls::kRequired);
  ASSERT_TRUE(c->Greet());
  ASSERT_TRUE(c->tls_up());
  EXPECT_NE(c->tls_description().find("TLSv1.3"), std::string::npos);
  ASSERT_TRUE(c->Send("alice@agency-a.test", "bob@partner.test", kBody));
  EXPECT_EQ(c->session().result().data.code, 250);
  std::vector<std::string> q = Queued(1);
  ASSERT_EQ(q.size(), 1u);
  EXPECT_NE(q[0].find("with ESMTPS"), std::string::npos) << "RFC 3848: the trace says TLS was used";
}

TEST_F(SeamTest, StartTlsWithRecordsSplitAndDelayed) {
  StartServer(true);
  auto c = Connect({7, 2, -1}, {5, 1, -1}, ClientSession::Tls::kRequired);
  ASSERT_TRUE(c->Greet());
  ASSERT_TRUE(c->tls_up());
  ASSERT_TRUE(c->Send("alice@agency-a.test", "bob@partner.test", std::string(kBody) + std::string(20000, 'x') + "\r\n"));
  EXPECT_EQ(c->session().result().data.code, 250);
  ASSERT_EQ(Queued(1).size(), 1u);
}

TEST_F(SeamTest, ResetInTheMiddleOfDataLosesNothingAcknowledgedAndQueuesNothing) {
  StartServer(false);
  // The connection dies 400 bytes into the client's stream: after DATA, before the end.
  auto c = Connect({0, 0, 400});
  ASSERT_TRUE(c->Greet());
  c->Send("alice@agency-a.test", "bob@partner.test", std::string(kBody) + std::string(5000, 'y') + "\r\n");
  EXPECT_NE(c->session().result().data.code, 250) << "no 250 for a message that never ended";
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_TRUE(Empty(queue::SpoolState::kActive)) << "nothing half-received is queued";
  EXPECT_TRUE(Empty(queue::SpoolState::kIncoming)) << "the partial file is removed";
  // The endpoint is still serving.
  auto again = Connect();
  ASSERT_TRUE(again->Greet());
  ASSERT_TRUE(again->Send("alice@agency-a.test", "bob@partner.test", kBody));
  EXPECT_EQ(again->session().result().data.code, 250);
}

TEST_F(SeamTest, RelayIsDeniedToClientsOutsideTrustedNetworks) {
  StartServer(false);
  auto c = Connect({}, {}, ClientSession::Tls::kOpportunistic, "192.0.2.7");
  ASSERT_TRUE(c->Greet());
  c->Send("mallory@example.net", "victim@elsewhere.test", kBody);
  ASSERT_FALSE(c->session().result().rcpt.empty());
  EXPECT_EQ(c->session().result().rcpt[0].code, 554);
  EXPECT_TRUE(Empty(queue::SpoolState::kActive));
}

}  // namespace
}  // namespace mailseal

namespace mailseal {
namespace {

// The whole relay without a socket: a client hands a message to the gateway (listener 0); the
// gateway's queue delivers it through the same back end to a next hop (listener 1) that offers
// STARTTLS — the delivery agent's SMTP client and the TLS core run over memory streams.
TEST_F(SeamTest, RelayEndToEndWithoutSocketsDeliveryOverTls) {
  backend_.SetConnectTarget(1);
  hop_.Start(&backend_, root_ / "hop", 1, /*with_tls=*/true, /*deliver=*/false);
  gw_.Start(&backend_, root_ / "gw", 0, /*with_tls=*/false, /*deliver=*/true);
  auto c = Connect();
  ASSERT_TRUE(c->Greet());
  ASSERT_TRUE(c->Send("alice@agency-a.test", "bob@partner.test", kBody));
  EXPECT_EQ(c->session().result().data.code, 250);
  std::vector<std::string> got = hop_.Files(queue::SpoolState::kActive, 1);
  ASSERT_EQ(got.size(), 1u) << "the next hop received the relayed message";
  EXPECT_NE(got[0].find("by gw1.test (mailseal) with ESMTPS"), std::string::npos)
      << "the delivery ran STARTTLS through the TLS core";
  EXPECT_NE(got[0].find("by gw0.test (mailseal) with ESMTP id"), std::string::npos);
  EXPECT_NE(got[0].find(".leading dot\r\nlast\r\n"), std::string::npos);
  for (int i = 0; i < 500 && !(gw_.Empty(queue::SpoolState::kActive) && gw_.Empty(queue::SpoolState::kDeferred)); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(gw_.Empty(queue::SpoolState::kActive) && gw_.Empty(queue::SpoolState::kDeferred)) << "retired after delivery";
}

// A next hop whose connection resets in the middle of the body: the gateway defers and delivers
// on the next attempt, complete.
TEST_F(SeamTest, RelayRetriesAfterAResetMidBody) {
  backend_.SetConnectTarget(1);
  backend_.SetConnectFaults({0, 0, 600}, {});
  hop_.Start(&backend_, root_ / "hop", 1, false, false);
  gw_.Start(&backend_, root_ / "gw", 0, false, true);
  auto c = Connect();
  ASSERT_TRUE(c->Greet());
  ASSERT_TRUE(c->Send("alice@agency-a.test", "bob@partner.test", std::string(kBody) + std::string(4000, 'z') + "\r\n"));
  EXPECT_EQ(c->session().result().data.code, 250);
  EXPECT_FALSE(gw_.Files(queue::SpoolState::kDeferred, 1).empty()) << "deferred after the reset";
  backend_.SetConnectFaults({}, {});
  std::vector<std::string> got = hop_.Files(queue::SpoolState::kActive, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_NE(got[0].find(std::string(4000, 'z')), std::string::npos) << "delivered complete on retry";
}

}  // namespace
}  // namespace mailseal
