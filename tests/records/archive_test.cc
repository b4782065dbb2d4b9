// The e-records archive (DE-21, issue #19; dataplane/records/archive.h): the key exists only
// as custodian shares, records are sealed and read back byte for byte, exports filter and
// keep bytes, a torn record is skipped, expiry takes whole days.
#include "dataplane/records/archive.h"

#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace mailseal::records {
namespace {

struct KeyCert {
  Pkey key;
  std::string cert_pem;
};

// A custodian: an EC P-256 key and a self-signed certificate (as `openssl req -x509` makes).
KeyCert MakeCustodian(const std::string& cn) {
  KeyCert kc;
  kc.key.reset(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  X509* x = X509_new();
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), 0);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400);
  X509_set_pubkey(x, kc.key.get());
  X509_NAME* n = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(x, n);
  X509_sign(x, kc.key.get(), EVP_sha256());
  BIO* b = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(b, x);
  char* p = nullptr;
  long len = BIO_get_mem_data(b, &p);
  kc.cert_pem.assign(p, static_cast<size_t>(len));
  BIO_free(b);
  X509_free(x);
  return kc;
}

std::string Slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class ArchiveTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mailseal-archive-XXXXXX";
    dir_ = std::string(mkdtemp(tmpl)) + "/archive";
    for (int i = 1; i <= 3; ++i) people_.push_back(MakeCustodian("custodian-" + std::to_string(i)));
    for (int i = 0; i < 3; ++i) custodians_.push_back({"custodian-" + std::to_string(i + 1), people_[i].cert_pem});
  }
  void TearDown() override { std::filesystem::remove_all(std::filesystem::path(dir_).parent_path()); }

  hsm::Share ShareOf(int i) {
    Result<std::string> text = DecryptShare(Slurp(dir_ + "/shares/custodian-" + std::to_string(i + 1) + ".pem"),
                                            people_[i].key.get(), "");
    EXPECT_TRUE(text.ok()) << text.status().ToString();
    Result<hsm::Share> s = ParseShare(text.ok() ? *text : "");
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? *s : hsm::Share{};
  }

  static mailseal::v1::ArchiveRecord Rec(int64_t ms, const std::string& from, const std::string& to, const std::string& msg) {
    mailseal::v1::ArchiveRecord r;
    r.set_time_unix_ms(ms);
    r.set_direction("outbound");
    r.set_mail_from(from);
    r.add_recipients(to);
    r.set_message(msg);
    return r;
  }

  std::string dir_;
  std::vector<KeyCert> people_;
  std::vector<Custodian> custodians_;
};

constexpr int64_t kDay = 86400000;
constexpr int64_t kT0 = 1764633600000;   // 2025-12-02 00:00 UTC

TEST_F(ArchiveTest, TheKeyExistsOnlyAsSharesAndTwoOfThreeRebuildIt) {
  bool created = false;
  Result<Pkey> pub = EnsureArchiveKey(dir_, custodians_, 2, &created);
  ASSERT_TRUE(pub.ok()) << pub.status().ToString();
  EXPECT_TRUE(created);
  Result<Pkey> again = EnsureArchiveKey(dir_, custodians_, 2, &created);
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(created) << "made once";
  EXPECT_EQ(EVP_PKEY_eq(pub->get(), again->get()), 1);
  // No private key anywhere on disk: only the public half and CMS envelopes.
  for (const auto& f : std::filesystem::recursive_directory_iterator(dir_)) {
    if (!f.is_regular_file()) continue;
    std::string d = Slurp(f.path());
    EXPECT_EQ(d.find("PRIVATE KEY"), std::string::npos) << f.path();
    EXPECT_EQ(d.find("mailseal archive share"), std::string::npos) << f.path() << ": a share in clear";
  }
  // Another custodian's key does not open a share.
  EXPECT_FALSE(DecryptShare(Slurp(dir_ + "/shares/custodian-1.pem"), people_[1].key.get(), "").ok());
  for (auto pair : {std::pair{0, 1}, std::pair{0, 2}, std::pair{1, 2}}) {
    Result<Pkey> k = RebuildArchiveKey(dir_, {ShareOf(pair.first), ShareOf(pair.second)}, 2);
    ASSERT_TRUE(k.ok()) << k.status().ToString();
  }
  EXPECT_FALSE(RebuildArchiveKey(dir_, {ShareOf(0)}, 2).ok()) << "one share is not enough";
  hsm::Share bad = ShareOf(1);
  bad.y[5] ^= 1;
  Result<Pkey> wrong = RebuildArchiveKey(dir_, {ShareOf(0), bad}, 2);
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.status().message().find("do not rebuild the archive key"), std::string::npos);
}

TEST_F(ArchiveTest, RecordsAreSealedAndReadBackByteForByteWithFilters) {
  Result<Pkey> pub = EnsureArchiveKey(dir_, custodians_, 2);
  ASSERT_TRUE(pub.ok());
  std::string tricky = "Received: by gw\r\nSubject: Operation OSPREY\r\n\r\nFrom the start\r\n>From quoted\r\nbinary \x01\x02\r\n";
  {
    ArchiveWriter w(dir_, pub->get(), "RUN1", 0);
    ASSERT_TRUE(w.Append(Rec(kT0 + 1000, "alice@a.test", "bob@b.test", tricky)).ok());
    ASSERT_TRUE(w.Append(Rec(kT0 + 2000, "carol@a.test", "Bob@B.test", "Subject: two\r\n\r\nOSPREY two\r\n")).ok());
    ASSERT_TRUE(w.Append(Rec(kT0 + kDay + 5, "alice@a.test", "dan@b.test", "Subject: next day\r\n\r\nOSPREY three\r\n")).ok());
  }
  for (const auto& f : std::filesystem::recursive_directory_iterator(dir_)) {
    if (!f.is_regular_file()) continue;
    std::string d = Slurp(f.path());
    EXPECT_EQ(d.find("OSPREY"), std::string::npos) << f.path();
    EXPECT_EQ(d.find("alice@a.test"), std::string::npos) << f.path();
  }
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/2025-12-02")) << "one directory per UTC day";
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/2025-12-03"));
  Result<Pkey> key = RebuildArchiveKey(dir_, {ShareOf(0), ShareOf(2)}, 2);
  ASSERT_TRUE(key.ok());
  Result<Export> all = Read(dir_, key->get(), Query{}, 1 << 20);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  ASSERT_EQ(all->records.size(), 3u);
  EXPECT_EQ(all->records[0].message(), tricky);
  Result<Export> by_sender = Read(dir_, key->get(), Query{0, 0, "ALICE@a.test", ""}, 1 << 20);
  ASSERT_TRUE(by_sender.ok());
  EXPECT_EQ(by_sender->records.size(), 2u);
  Result<Export> by_rcpt = Read(dir_, key->get(), Query{0, 0, "", "bob@b.test"}, 1 << 20);
  ASSERT_TRUE(by_rcpt.ok());
  EXPECT_EQ(by_rcpt->records.size(), 2u) << "recipients match in any case";
  Result<Export> day1 = Read(dir_, key->get(), Query{kT0, kT0 + kDay, "", ""}, 1 << 20);
  ASSERT_TRUE(day1.ok());
  EXPECT_EQ(day1->records.size(), 2u);
  EXPECT_EQ(Read(dir_, key->get(), Query{}, 10).status().code(), StatusCode::kResourceExhausted) << "bounded";
  // mboxrd quotes From_ lines reversibly; Maildir keeps the bytes.
  std::string mbox = ToMbox(*day1);
  EXPECT_NE(mbox.find("\n>From the start\r\n>>From quoted\r\n"), std::string::npos) << mbox;
  std::vector<ExportFile> md = ToMaildir(*day1);
  ASSERT_EQ(md.size(), 2u);
  EXPECT_EQ(md[0].content, tricky);
  EXPECT_EQ(md[0].name.rfind("cur/", 0), 0u);
}

// A crash during an append leaves a torn record: the reader skips it and says so; what was
// appended before is whole.
TEST_F(ArchiveTest, ATornLastRecordIsSkipped) {
  Result<Pkey> pub = EnsureArchiveKey(dir_, custodians_, 2);
  ASSERT_TRUE(pub.ok());
  {
    ArchiveWriter w(dir_, pub->get(), "RUN2", 1);
    ASSERT_TRUE(w.Append(Rec(kT0, "a@a.test", "b@b.test", "one")).ok());
    ASSERT_TRUE(w.Append(Rec(kT0 + 1, "a@a.test", "b@b.test", "two")).ok());
  }
  std::string file;
  for (const auto& f : std::filesystem::recursive_directory_iterator(dir_))
    if (f.path().extension() == ".arc") file = f.path();
  std::filesystem::resize_file(file, std::filesystem::file_size(file) - 3);
  Result<Pkey> key = RebuildArchiveKey(dir_, {ShareOf(1), ShareOf(2)}, 2);
  ASSERT_TRUE(key.ok());
  Result<Export> e = Read(dir_, key->get(), Query{}, 1 << 20);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  ASSERT_EQ(e->records.size(), 1u);
  EXPECT_EQ(e->records[0].message(), "one");
  EXPECT_EQ(e->torn, 1u);
}

TEST_F(ArchiveTest, ExpiryRemovesWholeDaysPastRetention) {
  Result<Pkey> pub = EnsureArchiveKey(dir_, custodians_, 2);
  ASSERT_TRUE(pub.ok());
  ArchiveWriter w(dir_, pub->get(), "RUN3", 0);
  for (int d = 0; d < 5; ++d) ASSERT_TRUE(w.Append(Rec(kT0 + d * kDay, "a@a.test", "b@b.test", "x")).ok());
  Result<std::vector<Expired>> gone = Expire(dir_, 2, kT0 + 4 * kDay + 1000);   // keep the last 2 days before today
  ASSERT_TRUE(gone.ok());
  ASSERT_EQ(gone->size(), 2u);
  EXPECT_EQ((*gone)[0].day, "2025-12-02");
  EXPECT_EQ((*gone)[0].files, 1u);
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/2025-12-03"));
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/2025-12-04"));
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/archive-key.pem")) << "never the key";
}

}  // namespace
}  // namespace mailseal::records
