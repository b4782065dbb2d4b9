// etcd_client_test.cc — the etcd v3 client (control/cluster/etcd.h) against a real etcd
// (Debian's etcd-server, one member on loopback per test suite), issue #20: KV with revisions,
// compare-and-swap, leases, watches from a revision, a watch resumed after its connection is cut
// without missing or repeating an event, and a watch told when etcd has compacted its revision.
// A small TCP relay in the test stands between the watching client and etcd so the connection
// can be cut while etcd keeps taking writes (a real etcd cannot be told to drop one client).
#include "control/cluster/etcd.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace mailseal::cluster {
namespace {

int Listen(int* port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::listen(fd, 64);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  *port = ntohs(a.sin_port);
  return fd;
}

int FreePort() {
  int port = 0;
  ::close(Listen(&port));
  return port;
}

// Relay: forwards loopback connections to `target`; Cut() closes them all and refuses new ones
// until Mend().
class Relay {
 public:
  explicit Relay(int target) : target_(target) {
    listen_fd_ = Listen(&port_);
    accept_ = std::thread([this] { AcceptLoop(); });
  }
  ~Relay() {
    stop_ = true;
    ::shutdown(listen_fd_, SHUT_RDWR);
    ::close(listen_fd_);
    Cut();
    accept_.join();
    for (auto& t : pumps_) t.join();
  }
  int port() const { return port_; }
  void Cut() {
    cut_ = true;
    std::lock_guard<std::mutex> l(mu_);
    for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
  }
  void Mend() { cut_ = false; }

 private:
  void AcceptLoop() {
    while (!stop_) {
      int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) return;
      if (cut_) {
        ::close(c);
        continue;
      }
      int u = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      a.sin_port = htons(static_cast<uint16_t>(target_));
      if (::connect(u, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(c);
        ::close(u);
        continue;
      }
      std::lock_guard<std::mutex> l(mu_);
      fds_.push_back(c);
      fds_.push_back(u);
      pumps_.emplace_back([c, u] { Pump(c, u); });
    }
  }
  static void Pump(int a, int b) {
    char buf[16384];
    pollfd p[2] = {{a, POLLIN, 0}, {b, POLLIN, 0}};
    while (::poll(p, 2, -1) > 0) {
      bool done = false;
      for (int i = 0; i < 2 && !done; ++i) {
        if (!p[i].revents) continue;
        ssize_t n = ::read(p[i].fd, buf, sizeof buf);
        if (n <= 0 || ::write(p[1 - i].fd, buf, static_cast<size_t>(n)) != n) done = true;
      }
      if (done) break;
    }
    ::shutdown(a, SHUT_RDWR);
    ::shutdown(b, SHUT_RDWR);
  }
  int target_, port_ = 0, listen_fd_ = -1;
  std::atomic<bool> cut_{false}, stop_{false};
  std::mutex mu_;
  std::vector<int> fds_;
  std::vector<std::thread> pumps_;
  std::thread accept_;
};

class EtcdTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(std::filesystem::temp_directory_path() / ("etcd-test-" + std::to_string(getpid())));
    std::filesystem::create_directories(*dir_);
    client_port_ = FreePort();
    int peer = FreePort();
    pid_ = ::fork();
    if (pid_ == 0) {
      std::string c = "http://127.0.0.1:" + std::to_string(client_port_), p = "http://127.0.0.1:" + std::to_string(peer);
      std::string log = *dir_ + "/etcd.log";
      FILE* f = std::freopen(log.c_str(), "w", stderr);
      (void)f;
      ::execlp("etcd", "etcd", "--name", "t", "--data-dir", (*dir_ + "/data").c_str(), "--listen-client-urls", c.c_str(),
               "--advertise-client-urls", c.c_str(), "--listen-peer-urls", p.c_str(), "--initial-advertise-peer-urls",
               p.c_str(), "--initial-cluster", ("t=" + p).c_str(), nullptr);
      std::_Exit(127);
    }
  }
  static void TearDownTestSuite() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    std::filesystem::remove_all(*dir_);
    delete dir_;
  }
  std::string Endpoint(int port = 0) const { return "127.0.0.1:" + std::to_string(port ? port : client_port_); }
  std::unique_ptr<EtcdClient> Client(int port = 0) {
    Result<std::unique_ptr<EtcdClient>> c = EtcdClient::Connect({{Endpoint(port)}, "", "", "", "", 3000});
    EXPECT_TRUE(c.ok()) << c.status().message();
    // etcd is up within a second or so of the fork; wait for it with a deadline.
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (std::chrono::steady_clock::now() < end && !(*c)->Get("/probe").ok())
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    return std::move(c.value());
  }
  // A key of this test's own.
  std::string K(const std::string& rest) const {
    return "/t/" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "/" + rest;
  }
  static std::string* dir_;
  static int client_port_;
  static pid_t pid_;
};
std::string* EtcdTest::dir_ = nullptr;
int EtcdTest::client_port_ = 0;
pid_t EtcdTest::pid_ = -1;

// Waits (with a deadline) until pred holds.
template <typename P>
bool WaitFor(P pred, int ms = 10000) {
  auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return pred();
}

// Collects a watch's events.
struct Seen {
  std::mutex mu;
  std::vector<WatchEvent> events;
  std::atomic<int> ups{0}, downs{0}, compacted{0};
  std::vector<std::string> keys() {
    std::lock_guard<std::mutex> l(mu);
    std::vector<std::string> out;
    for (auto& e : events) out.push_back((e.kind == WatchEvent::kDelete ? "-" : "") + e.kv.key);
    return out;
  }
  size_t size() {
    std::lock_guard<std::mutex> l(mu);
    return events.size();
  }
};

std::unique_ptr<Watch> WatchInto(EtcdClient* c, const std::string& prefix, int64_t from, Seen* s,
                                 Watch::OnCompacted on_compacted = nullptr) {
  return c->WatchPrefix(
      prefix, from,
      [s](const std::vector<WatchEvent>& ev, int64_t) {
        std::lock_guard<std::mutex> l(s->mu);
        s->events.insert(s->events.end(), ev.begin(), ev.end());
      },
      [s](bool up, const std::string&) { (up ? s->ups : s->downs)++; },
      on_compacted ? on_compacted : [s]() -> int64_t {
        s->compacted++;
        return 0;
      });
}

TEST(EtcdPrefix, PrefixEndCoversExactlyThePrefix) {
  EXPECT_EQ(EtcdClient::PrefixEnd("/a/"), "/a0");
  EXPECT_EQ(EtcdClient::PrefixEnd(std::string("a\xff", 2)), "b");
  EXPECT_EQ(EtcdClient::PrefixEnd(std::string("\xff\xff", 2)), std::string(1, '\0'));
}

TEST(EtcdConnect, RefusesMixedAndEmptyEndpoints) {
  EXPECT_FALSE(EtcdClient::Connect({{}, "", "", "", "", 1000}).ok());
  EXPECT_FALSE(EtcdClient::Connect({{"127.0.0.1:1", "[::1]:2"}, "", "", "", "", 1000}).ok());
}

TEST_F(EtcdTest, PutGetAndRevisions) {
  auto c = Client();
  Result<int64_t> r1 = c->Put(K("a"), "1");
  Result<int64_t> r2 = c->Put(K("b"), "2");
  ASSERT_TRUE(r1.ok() && r2.ok());
  EXPECT_GT(*r2, *r1);
  Result<RangeResult> g = c->Get(K("a"));
  ASSERT_TRUE(g.ok());
  ASSERT_EQ(g->kvs.size(), 1u);
  EXPECT_EQ(g->kvs[0].value, "1");
  EXPECT_EQ(g->kvs[0].mod_revision, *r1);
  EXPECT_GE(g->revision, *r2);
  Result<RangeResult> all = c->GetPrefix(K(""));
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->kvs.size(), 2u);
  EXPECT_EQ(all->kvs[1].key, K("b"));
  ASSERT_TRUE(c->Delete(K("a")).ok());
  EXPECT_TRUE(c->Get(K("a"))->kvs.empty());
}

TEST_F(EtcdTest, TransactionsCompareAndSwap) {
  auto c = Client();
  const std::string k = K("cas");
  Result<TxnResult> t1 = c->Txn({Compare{k, Compare::kCreateRevision, 0, ""}}, {Op{Op::kPut, k, "first", 0}});
  ASSERT_TRUE(t1.ok());
  EXPECT_TRUE(t1->succeeded);
  Result<TxnResult> t2 = c->Txn({Compare{k, Compare::kCreateRevision, 0, ""}}, {Op{Op::kPut, k, "second", 0}});
  ASSERT_TRUE(t2.ok());
  EXPECT_FALSE(t2->succeeded) << "create-if-absent succeeds once";
  int64_t mod = c->Get(k)->kvs[0].mod_revision;
  EXPECT_TRUE(c->Txn({Compare{k, Compare::kModRevision, mod, ""}}, {Op{Op::kPut, k, "third", 0}})->succeeded);
  EXPECT_FALSE(c->Txn({Compare{k, Compare::kModRevision, mod, ""}}, {Op{Op::kPut, k, "stale", 0}})->succeeded)
      << "a write from a stale revision loses";
  EXPECT_EQ(c->Get(k)->kvs[0].value, "third");
  EXPECT_TRUE(c->Txn({Compare{k, Compare::kValue, 0, "third"}}, {Op{Op::kDelete, k, "", 0}})->succeeded);
  EXPECT_TRUE(c->Get(k)->kvs.empty());
}

TEST_F(EtcdTest, LeaseKeepsKeysAliveAndTheyGoWhenItExpires) {
  auto c = Client();
  Result<int64_t> lease = c->LeaseGrant(2);
  ASSERT_TRUE(lease.ok());
  ASSERT_TRUE(c->Put(K("alive"), "x", *lease).ok());
  auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(3500);
  while (std::chrono::steady_clock::now() < until) {   // longer than the TTL, renewed
    ASSERT_TRUE(c->LeaseKeepAlive(*lease).ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  EXPECT_EQ(c->Get(K("alive"))->kvs.size(), 1u) << "renewed: the key stays past the TTL";
  EXPECT_EQ(c->Get(K("alive"))->kvs[0].lease, *lease);
  EXPECT_TRUE(WaitFor([&] { return c->Get(K("alive"))->kvs.empty(); }, 6000)) << "not renewed: gone";
  Result<int64_t> again = c->LeaseKeepAlive(*lease);
  EXPECT_EQ(again.status().code(), StatusCode::kNotFound) << "an expired lease is reported as such";
  Result<int64_t> l2 = c->LeaseGrant(30);
  ASSERT_TRUE(l2.ok());
  ASSERT_TRUE(c->Put(K("revoked"), "x", *l2).ok());
  ASSERT_TRUE(c->LeaseRevoke(*l2).ok());
  EXPECT_TRUE(c->Get(K("revoked"))->kvs.empty()) << "revoked: its keys go at once";
}

TEST_F(EtcdTest, WatchFromARevisionDeliversHistoryThenNewEventsInOrder) {
  auto c = Client();
  (void)c->Put(K("1"), "a");
  Result<int64_t> from = c->Put(K("2"), "b");
  (void)c->Put(K("3"), "c");
  ASSERT_TRUE(from.ok());
  Seen s;
  auto w = WatchInto(c.get(), K(""), *from, &s);
  ASSERT_TRUE(WaitFor([&] { return s.size() >= 2; }));
  (void)c->Delete(K("2"));
  (void)c->Put(K("4"), "d");
  ASSERT_TRUE(WaitFor([&] { return s.size() >= 4; }));
  w->Stop();
  EXPECT_EQ(s.keys(), (std::vector<std::string>{K("2"), K("3"), "-" + K("2"), K("4")}));
}

TEST_F(EtcdTest, WatchResumesAfterDisconnectWithoutMissingOrRepeatingAnEvent) {
  auto writer = Client();
  Relay relay(client_port_);
  auto watcher = Client(relay.port());
  Result<int64_t> start = writer->Put(K("0"), "start");
  ASSERT_TRUE(start.ok());
  Seen s;
  auto w = WatchInto(watcher.get(), K(""), *start + 1, &s);
  ASSERT_TRUE(WaitFor([&] { return s.ups.load() >= 1; }));
  (void)writer->Put(K("1"), "before");
  ASSERT_TRUE(WaitFor([&] { return s.size() == 1; }));
  relay.Cut();   // the watcher's connection is gone; etcd keeps taking writes
  ASSERT_TRUE(WaitFor([&] { return s.downs.load() >= 1; })) << "the watch noticed the cut";
  for (int i = 2; i <= 6; ++i) ASSERT_TRUE(writer->Put(K(std::to_string(i)), "while cut").ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(s.size(), 1u) << "nothing arrives while cut";
  relay.Mend();
  ASSERT_TRUE(WaitFor([&] { return s.size() >= 6; }, 15000)) << "resumed";
  (void)writer->Put(K("7"), "after");
  ASSERT_TRUE(WaitFor([&] { return s.size() >= 7; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  w->Stop();
  std::vector<std::string> want;
  for (int i = 1; i <= 7; ++i) want.push_back(K(std::to_string(i)));
  EXPECT_EQ(s.keys(), want) << "every event once, in order";
}

TEST_F(EtcdTest, WatchIsToldWhenItsRevisionWasCompacted) {
  auto c = Client();
  Result<int64_t> old = c->Put(K("a"), "1");
  Result<int64_t> last = c->Put(K("a"), "2");
  ASSERT_TRUE(old.ok() && last.ok());
  std::string cmd = "ETCDCTL_API=3 etcdctl --endpoints=" + Endpoint() + " compact " + std::to_string(*last) +
                    " >/dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  Seen s;
  int64_t resume_at = *last + 1;
  auto w = WatchInto(c.get(), K(""), *old, &s, [&s, resume_at]() -> int64_t {
    s.compacted++;
    return resume_at;   // as a caller does after reading the state again
  });
  ASSERT_TRUE(WaitFor([&] { return s.compacted.load() >= 1; })) << "compaction reported";
  (void)c->Put(K("b"), "after");
  ASSERT_TRUE(WaitFor([&] { return s.size() >= 1; }));
  w->Stop();
  EXPECT_EQ(s.keys(), std::vector<std::string>{K("b")}) << "goes on from the revision the caller gave";
}

// TLS to etcd: a member started with a server certificate and --client-cert-auth; the client
// with the CA and a client certificate works, without the client certificate or with another CA
// it gets nothing.
TEST(EtcdTls, ServerCheckedAndClientCertificateRequired) {
  std::string dir = std::filesystem::temp_directory_path() / ("etcd-tls-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  auto sh = [&](const std::string& cmd) { return std::system(("cd " + dir + " && " + cmd + " >/dev/null 2>&1").c_str()); };
  ASSERT_EQ(sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt "
               "-subj /CN=etcd-ca -days 2"), 0);
  ASSERT_EQ(sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout other.key -out other.crt "
               "-subj /CN=other-ca -days 2"), 0);
  for (std::string who : {"server", "client"}) {
    std::string san = who == "server" ? "-addext subjectAltName=IP:127.0.0.1,DNS:etcd.test" : "";
    ASSERT_EQ(sh("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout " + who + ".key -out " +
                 who + ".csr -subj /CN=" + who + " " + san),
              0);
    ASSERT_EQ(sh("openssl x509 -req -in " + who + ".csr -CA ca.crt -CAkey ca.key -CAcreateserial -copy_extensions copy "
                 "-days 2 -out " + who + ".crt"),
              0);
  }
  int port = FreePort(), peer = FreePort();
  pid_t pid = ::fork();
  if (pid == 0) {
    std::string c = "https://127.0.0.1:" + std::to_string(port), p = "http://127.0.0.1:" + std::to_string(peer);
    FILE* f = std::freopen((dir + "/etcd.log").c_str(), "w", stderr);
    (void)f;
    ::execlp("etcd", "etcd", "--name", "t", "--data-dir", (dir + "/data").c_str(), "--listen-client-urls", c.c_str(),
             "--advertise-client-urls", c.c_str(), "--listen-peer-urls", p.c_str(), "--initial-advertise-peer-urls",
             p.c_str(), "--initial-cluster", ("t=" + p).c_str(), "--cert-file", (dir + "/server.crt").c_str(),
             "--key-file", (dir + "/server.key").c_str(), "--client-cert-auth", "--trusted-ca-file",
             (dir + "/ca.crt").c_str(), nullptr);
    std::_Exit(127);
  }
  std::string ep = "127.0.0.1:" + std::to_string(port);
  auto good = EtcdClient::Connect({{ep}, dir + "/ca.crt", dir + "/client.crt", dir + "/client.key", "etcd.test", 2000});
  ASSERT_TRUE(good.ok()) << good.status().message();
  EXPECT_TRUE(WaitFor([&] { return (*good)->Put("/tls/k", "v").ok(); }, 30000)) << "mutual TLS works";
  EXPECT_EQ((*good)->Get("/tls/k")->kvs.at(0).value, "v");
  auto no_cert = EtcdClient::Connect({{ep}, dir + "/ca.crt", "", "", "etcd.test", 1000});
  ASSERT_TRUE(no_cert.ok());
  EXPECT_FALSE((*no_cert)->Get("/tls/k").ok()) << "no client certificate: refused";
  auto wrong_ca = EtcdClient::Connect({{ep}, dir + "/other.crt", dir + "/client.crt", dir + "/client.key", "etcd.test", 1000});
  ASSERT_TRUE(wrong_ca.ok());
  EXPECT_FALSE((*wrong_ca)->Get("/tls/k").ok()) << "a server not signed by our CA: refused";
  auto wrong_name = EtcdClient::Connect({{ep}, dir + "/ca.crt", dir + "/client.crt", dir + "/client.key", "other.test", 1000});
  ASSERT_TRUE(wrong_name.ok());
  EXPECT_FALSE((*wrong_name)->Get("/tls/k").ok()) << "a server certificate without the expected name: refused";
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  std::filesystem::remove_all(dir);
}

TEST_F(EtcdTest, UnreachableEtcdIsUnavailableNotAnInsideFault) {
  Result<std::unique_ptr<EtcdClient>> c = EtcdClient::Connect({{Endpoint(FreePort())}, "", "", "", "", 500});
  ASSERT_TRUE(c.ok());
  Result<RangeResult> g = (*c)->Get("/x");
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), StatusCode::kUnavailable) << g.status().message();
}

}  // namespace
}  // namespace mailseal::cluster
