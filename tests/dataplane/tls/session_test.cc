// session_test.cc — the sans-I/O TLS core, a client and a server talking through strings.
#include "dataplane/tls/session.h"

#include "tests/common/self_signed.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace mailseal::tls {
namespace {

// A self-signed P-256 certificate and key written to a fresh directory (key mode 0600).
struct Files {
  std::string dir, cert, key;
  Files() {
    char tmpl[] = "/tmp/tls-test-XXXXXX";
    dir = mkdtemp(tmpl);
    cert = dir + "/cert.pem";
    key = dir + "/key.pem";
    test_support::WriteSelfSigned(cert, key, "mx.test");
  }
  ~Files() {
    unlink(cert.c_str());
    unlink(key.c_str());
    rmdir(dir.c_str());
  }
};

class TlsCoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Result<SSL_CTX*> s = MakeServerContext(files_.cert, files_.key);
    ASSERT_TRUE(s.ok()) << s.status().message();
    server_ctx_ = *s;
    Result<SSL_CTX*> c = MakeClientContext();
    ASSERT_TRUE(c.ok());
    client_ctx_ = *c;
    server_ = std::move(Session::Start(server_ctx_, Session::Role::kServer).value());
    client_ = std::move(Session::Start(client_ctx_, Session::Role::kClient, "mx.test").value());
  }
  void TearDown() override {
    server_.reset();
    client_.reset();
    FreeContext(server_ctx_);
    FreeContext(client_ctx_);
  }
  // Shuttle moves ciphertext both ways, `chunk` bytes at a time, until neither has any.
  void Shuttle(size_t chunk = 1 << 20) {
    for (int round = 0; round < 100; ++round) {
      client_->Handshake();
      std::string c = client_->TakeCiphertext();
      for (size_t i = 0; i < c.size(); i += chunk) server_->FeedCiphertext(std::string_view(c).substr(i, chunk));
      server_->Handshake();
      std::string s = server_->TakeCiphertext();
      for (size_t i = 0; i < s.size(); i += chunk) client_->FeedCiphertext(std::string_view(s).substr(i, chunk));
      if (c.empty() && s.empty()) return;
    }
  }
  Files files_;
  SSL_CTX* server_ctx_ = nullptr;
  SSL_CTX* client_ctx_ = nullptr;
  std::unique_ptr<Session> server_, client_;
};

TEST_F(TlsCoreTest, HandshakeAndDataBothWays) {
  Shuttle();
  ASSERT_TRUE(client_->established()) << client_->error();
  ASSERT_TRUE(server_->established()) << server_->error();
  EXPECT_NE(client_->description().find("TLSv1.3"), std::string::npos) << client_->description();
  ASSERT_TRUE(client_->WritePlain("EHLO client.test\r\n"));
  server_->FeedCiphertext(client_->TakeCiphertext());
  std::string got;
  EXPECT_EQ(server_->ReadPlain(&got, 1024), Session::Read::kData);
  EXPECT_EQ(got, "EHLO client.test\r\n");
  ASSERT_TRUE(server_->WritePlain("250 ok\r\n"));
  client_->FeedCiphertext(server_->TakeCiphertext());
  got.clear();
  EXPECT_EQ(client_->ReadPlain(&got, 1024), Session::Read::kData);
  EXPECT_EQ(got, "250 ok\r\n");
  EXPECT_EQ(client_->ReadPlain(&got, 1024), Session::Read::kWouldBlock);
}

TEST_F(TlsCoreTest, ByteByByteDeliveryCompletesTheHandshake) {
  Shuttle(1);   // every TLS record split into single bytes
  EXPECT_TRUE(client_->established());
  EXPECT_TRUE(server_->established());
}

TEST_F(TlsCoreTest, ReadPlainHonoursItsBound) {
  Shuttle();
  std::string big(100000, 'x');
  ASSERT_TRUE(client_->WritePlain(big));
  server_->FeedCiphertext(client_->TakeCiphertext());
  std::string got;
  EXPECT_EQ(server_->ReadPlain(&got, 1000), Session::Read::kData);
  EXPECT_EQ(got.size(), 1000u) << "the rest waits in the core";
  while (server_->ReadPlain(&got, 1 << 20) == Session::Read::kData) {
  }
  EXPECT_EQ(got, big);
}

TEST_F(TlsCoreTest, TamperedRecordFailsTheSession) {
  Shuttle();
  ASSERT_TRUE(client_->WritePlain("secret"));
  std::string wire = client_->TakeCiphertext();
  wire[wire.size() - 3] ^= 1;
  server_->FeedCiphertext(wire);
  std::string got;
  EXPECT_EQ(server_->ReadPlain(&got, 1024), Session::Read::kFailed);
  EXPECT_TRUE(server_->failed());
  EXPECT_TRUE(got.empty()) << "nothing of a forged record is given out";
  EXPECT_FALSE(server_->WritePlain("more"));
}

TEST_F(TlsCoreTest, GarbageInsteadOfAHandshakeFails) {
  server_->FeedCiphertext("EHLO not tls at all\r\n");
  EXPECT_FALSE(server_->Handshake());
  EXPECT_TRUE(server_->failed());
  EXPECT_NE(server_->error().find("TLS handshake failed"), std::string::npos) << server_->error();
}

TEST_F(TlsCoreTest, CloseNotifyEndsTheStream) {
  Shuttle();
  client_->Close();
  server_->FeedCiphertext(client_->TakeCiphertext());
  std::string got;
  EXPECT_EQ(server_->ReadPlain(&got, 1024), Session::Read::kClosed);
}

TEST(TlsContextTest, AKeyOthersMayReadIsRefused) {
  Files f;
  chmod(f.key.c_str(), 0644);
  Result<SSL_CTX*> s = MakeServerContext(f.cert, f.key);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("chmod 600"), std::string::npos);
}

}  // namespace
}  // namespace mailseal::tls
