// The tamper-evident audit log (issue #5; REQUIREMENTS.md §7): RFC 9162 Merkle proofs, and
// detection of a flipped byte, a rewritten record and a truncated log; fail closed when the
// log cannot be written.
#include <gtest/gtest.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <zlib.h>

#include <csignal>
#include <unistd.h>

#include <fstream>
#include <set>
#include <thread>
#include <random>
#include <sstream>

#include "control/audit/log.h"

namespace mailseal::audit {
namespace {
using mailseal::v1::AuditRecord;

std::vector<Hash> Leaves(size_t n) {
  std::vector<Hash> v;
  for (size_t i = 0; i < n; ++i) v.push_back(LeafHash("leaf " + std::to_string(i)));
  return v;
}

TEST(Merkle, EveryInclusionProofVerifiesAndNoForgedOneDoes) {
  std::vector<Hash> leaves = Leaves(70);
  for (size_t size = 1; size <= leaves.size(); ++size) {
    Hash root = Root(leaves, 0, size);
    for (size_t i = 0; i < size; ++i) {
      std::vector<Hash> proof = InclusionProof(leaves, i, size);
      ASSERT_TRUE(VerifyInclusion(leaves[i], i, size, proof, root)) << i << "/" << size;
      EXPECT_FALSE(VerifyInclusion(LeafHash("other"), i, size, proof, root));
      if (!proof.empty()) {
        proof[0][0] ^= 1;
        EXPECT_FALSE(VerifyInclusion(leaves[i], i, size, proof, root));
      }
    }
  }
  // RFC 9162's shape: the root of 3 leaves is H(1 || H(1 || l0 || l1) || l2).
  EXPECT_EQ(Root(leaves, 0, 3), NodeHash(NodeHash(leaves[0], leaves[1]), leaves[2]));
}

TEST(Merkle, EveryConsistencyProofVerifiesAndARewrittenHistoryDoesNot) {
  std::vector<Hash> leaves = Leaves(40);
  for (size_t n = 1; n <= leaves.size(); ++n) {
    for (size_t m = 1; m <= n; ++m) {
      std::vector<Hash> proof = ConsistencyProof(leaves, m, n);
      ASSERT_TRUE(VerifyConsistency(m, n, Root(leaves, 0, m), Root(leaves, 0, n), proof)) << m << "->" << n;
      if (m < n) {
        std::vector<Hash> rewritten = leaves;
        rewritten[m - 1] = LeafHash("rewritten");
        EXPECT_FALSE(VerifyConsistency(m, n, Root(leaves, 0, m), Root(rewritten, 0, n),
                                       ConsistencyProof(rewritten, m, n)))
            << m << "->" << n;
      }
    }
  }
}

class AuditLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mailseal-audit-XXXXXX";
    dir_ = mkdtemp(tmpl);
    EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_EC, nullptr);
    EVP_PKEY_keygen_init(ctx);
    EVP_PKEY_CTX_set_ec_paramgen_curve_nid(ctx, NID_X9_62_prime256v1);
    EVP_PKEY_keygen(ctx, &key_);
    EVP_PKEY_CTX_free(ctx);
  }
  void TearDown() override {
    EVP_PKEY_free(key_);
    std::system(("chmod -R u+w " + dir_ + "; rm -rf " + dir_).c_str());
  }
  LogOptions Options(uint64_t every = 100) { return {dir_ + "/audit.log", dir_ + "/audit.heads", every, SignerFor(key_)}; }
  std::unique_ptr<AuditLog> Fill(size_t n, uint64_t every = 100) {
    auto log = AuditLog::Open(Options(every));
    EXPECT_TRUE(log.ok()) << log.status().ToString();
    for (size_t i = 0; i < n; ++i) {
      AuditRecord r;
      r.set_actor("CN=admin-1");
      r.set_action(i % 2 ? "policy.set" : "mail.sealed");
      r.set_object("obj-" + std::to_string(i));
      r.set_outcome(AuditRecord::OUTCOME_ALLOWED);
      EXPECT_TRUE((*log)->Append(r).ok());
    }
    return std::move(log.value());
  }
  std::string Read(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  void Write(const std::string& p, const std::string& data) { std::ofstream(p, std::ios::binary | std::ios::trunc) << data; }
  // RewriteRecord changes record `index`'s actor and writes the log again properly framed,
  // checksums and all — what someone with file access (not the audit key) can do.
  void RewriteRecord(size_t index) {
    Framed f = ReadFramed(dir_ + "/audit.log", "MSAUDIT1\n");
    AuditRecord r;
    r.ParseFromString(f.payloads[index]);
    r.set_actor("CN=nobody");
    std::string out = "MSAUDIT1\n";
    for (size_t i = 0; i < f.payloads.size(); ++i) {
      std::string p = i == index ? r.SerializeAsString() : f.payloads[i];
      uint32_t len = static_cast<uint32_t>(p.size());
      uint32_t crc = static_cast<uint32_t>(crc32(0L, reinterpret_cast<const Bytef*>(p.data()), static_cast<uInt>(p.size())));
      for (int k = 0; k < 4; ++k) out.push_back(static_cast<char>((len >> (8 * k)) & 0xFF));
      for (int k = 0; k < 4; ++k) out.push_back(static_cast<char>((crc >> (8 * k)) & 0xFF));
      out += p;
    }
    Write(dir_ + "/audit.log", out);
  }
  std::string dir_;
  EVP_PKEY* key_ = nullptr;
};

TEST_F(AuditLogTest, VerifiesAndServesProofsAcrossRestarts) {
  Fill(250).reset();
  auto log = Fill(60);   // reopened: continues the sequence
  ASSERT_EQ(log->size(), 310u);
  Result<mailseal::v1::TreeHead> head = log->SignHead();
  ASSERT_TRUE(head.ok());
  EXPECT_TRUE(VerifyHeadSignature(*head, key_));
  VerifyReport r = VerifyLog(dir_ + "/audit.log", dir_ + "/audit.heads", key_);
  EXPECT_TRUE(r.error.empty()) << r.error;
  EXPECT_EQ(r.records, 310u);
  EXPECT_EQ(r.heads_checked, 4u) << "heads at 100, 200, 300 and the explicit one";
  Result<std::vector<Hash>> consistency = log->ConsistencyProofFor(200, 310);
  ASSERT_TRUE(consistency.ok());
  std::vector<Hash> leaves;  // what a client can check with only the heads' roots
  Framed f = ReadFramed(dir_ + "/audit.log", "MSAUDIT1\n");
  for (const std::string& p : f.payloads) leaves.push_back(LeafHash(p));
  EXPECT_TRUE(VerifyConsistency(200, 310, Root(leaves, 0, 200), head->root_hash(), *consistency));
  Result<std::vector<Hash>> inclusion = log->InclusionProofFor(123, 310);
  ASSERT_TRUE(inclusion.ok());
  EXPECT_TRUE(VerifyInclusion(leaves[123], 123, 310, *inclusion, head->root_hash()));
}

TEST_F(AuditLogTest, RotationKeepsOneTreeAcrossSegments) {
  LogOptions o = Options(100);
  o.rotate_bytes = 4096;   // a few dozen records a segment
  std::vector<std::string> bytes;
  {
    auto log = AuditLog::Open(o);
    ASSERT_TRUE(log.ok());
    for (int i = 0; i < 400; ++i) {
      AuditRecord r;
      r.set_actor("CN=admin-1");
      r.set_action("policy.set");
      r.set_object("obj-" + std::to_string(i));
      ASSERT_TRUE((*log)->Append(r).ok());
    }
    EXPECT_GE((*log)->segments(), 4u);
    // Reads come from every segment, each record checked against its leaf.
    Result<std::vector<AuditRecord>> recs = (*log)->ReadRecords(0, 400);
    ASSERT_TRUE(recs.ok()) << recs.status().ToString();
    ASSERT_EQ(recs->size(), 400u);
    for (int i = 0; i < 400; ++i) EXPECT_EQ((*recs)[i].object(), "obj-" + std::to_string(i));
  }
  std::vector<std::string> files = LogSegments(dir_ + "/audit.log");
  ASSERT_GE(files.size(), 4u);
  EXPECT_EQ(files.back(), dir_ + "/audit.log");
  // Reopened: the sequence and the tree go on over all segments.
  auto log = AuditLog::Open(o);
  ASSERT_TRUE(log.ok()) << log.status().ToString();
  EXPECT_EQ((*log)->size(), 400u);
  AuditRecord r;
  r.set_action("after-restart");
  ASSERT_EQ(*(*log)->Append(r), 400u);
  Result<mailseal::v1::TreeHead> head = (*log)->SignHead();
  ASSERT_TRUE(head.ok());
  VerifyReport rep = VerifyLog(dir_ + "/audit.log", dir_ + "/audit.heads", key_);
  EXPECT_TRUE(rep.error.empty()) << rep.error;
  EXPECT_EQ(rep.records, 401u);
  Result<std::string> b = (*log)->RecordBytes(123);
  ASSERT_TRUE(b.ok());
  Result<std::vector<Hash>> proof = (*log)->InclusionProofFor(123, 401);
  ASSERT_TRUE(proof.ok());
  EXPECT_TRUE(VerifyInclusion(LeafHash(*b), 123, 401, *proof, head->root_hash()));
  // A segment removed from the middle: verification names where the sequence breaks.
  std::rename(files[2].c_str(), (dir_ + "/moved-away").c_str());
  rep = VerifyLog(dir_ + "/audit.log", dir_ + "/audit.heads", key_);
  EXPECT_FALSE(rep.error.empty());
  EXPECT_NE(rep.error.find("out of sequence"), std::string::npos) << rep.error;
  Result<std::unique_ptr<AuditLog>> gap = AuditLog::Open(o);
  ASSERT_TRUE(gap.ok()) << "opened, to be read and to raise the alarm";
  EXPECT_FALSE((*gap)->healthy()) << "a log with a missing segment is not continued";
  EXPECT_NE((*gap)->report().damage.find("out of sequence"), std::string::npos) << (*gap)->report().damage;
}

TEST_F(AuditLogTest, HeadsEveryNRecordsOrTSeconds) {
  auto log = Fill(5, 100);   // fewer than N: no head yet
  EXPECT_EQ(*log->SignHeadIfStale(0), true) << "records without a head: signed";
  EXPECT_EQ(*log->SignHeadIfStale(0), false) << "nothing new since: no head";
  AuditRecord r;
  r.set_action("x");
  ASSERT_TRUE(log->Append(r).ok());
  EXPECT_EQ(*log->SignHeadIfStale(3600 * 1000), false) << "the last head is recent";
  EXPECT_EQ(*log->SignHeadIfStale(0), true);
  VerifyReport rep = VerifyLog(dir_ + "/audit.log", dir_ + "/audit.heads", key_);
  EXPECT_TRUE(rep.error.empty()) << rep.error;
  EXPECT_EQ(rep.heads_checked, 2u);
}

TEST_F(AuditLogTest, AnyFlippedByteIsFoundAndTheRecordNamed) {
  Fill(300).reset();
  std::string original = Read(dir_ + "/audit.log");
  std::mt19937 rnd(7);
  for (int trial = 0; trial < 40; ++trial) {
    std::string damaged = original;
    size_t pos = 9 + rnd() % (damaged.size() - 9);   // anywhere after the magic
    damaged[pos] = static_cast<char>(damaged[pos] ^ (1 << (rnd() % 8)));
    Write(dir_ + "/audit.log", damaged);
    VerifyReport r = VerifyLog(dir_ + "/audit.log", dir_ + "/audit.heads", key_);
    EXPECT_FALSE(r.error.empty()) << "byte " << pos;
    EXPECT_GE(r.first_bad_record, 0) << r.error;
    // The named record is the one holding the byte: its frame starts at or before `pos`.
    Framed f = ReadFramed(dir_ + "/audit.log", "MSAUDIT1\n");
    EXPECT_EQ(static_cast<size_t>(r.first_bad_record), f.payloads.size()) << r.error;
  }
  Write(dir_ + "/audit.log", original);
  auto reopened = AuditLog::Open(Options());
  EXPECT_TRUE(reopened.ok()) << "the restored log is accepted again";
}

TEST_F(AuditLogTest, ARewrittenRecordWithAValidChecksumIsCaughtByTheSignedHeads) {
  Fill(300).reset();
  RewriteRecord(150);
  VerifyReport rep = VerifyLog(dir_ + "/audit.log", dir_ + "/audit.heads", key_);
  EXPECT_NE(rep.error.find("[100, 200)"), std::string::npos) << rep.error;
  EXPECT_EQ(rep.first_bad_record, 100);
}

TEST_F(AuditLogTest, TruncationIsCaughtByAnExportedHead) {
  auto log = Fill(250);
  Result<mailseal::v1::TreeHead> last = log->SignHead();   // exported, e.g. to etcd
  ASSERT_TRUE(last.ok());
  log.reset();
  // Truncate to 180 records and drop the heads that mention more: the log's own files agree.
  Framed f = ReadFramed(dir_ + "/audit.log", "MSAUDIT1\n");
  std::string data = Read(dir_ + "/audit.log");
  size_t cut = 9;
  for (size_t i = 0; i < 180; ++i) cut += 8 + f.payloads[i].size();
  Write(dir_ + "/audit.log", data.substr(0, cut));
  Framed heads = ReadFramed(dir_ + "/audit.heads", "MSAHEAD1\n");
  std::string hdata = Read(dir_ + "/audit.heads");
  Write(dir_ + "/audit.heads", hdata.substr(0, 9 + 8 + heads.payloads[0].size()));   // keep the head at 100
  EXPECT_TRUE(VerifyLog(dir_ + "/audit.log", dir_ + "/audit.heads", key_).error.empty())
      << "on its own, a consistently truncated log looks fine";
  VerifyReport rep = VerifyLog(dir_ + "/audit.log", dir_ + "/audit.heads", key_, {*last});
  EXPECT_NE(rep.error.find("truncated"), std::string::npos) << rep.error;
  EXPECT_EQ(rep.first_bad_record, 180);
}

TEST_F(AuditLogTest, AnUnwritableLogFailsClosed) {
  auto log = Fill(10);
  // The disk fills up (a file-size limit makes the next write fail with EFBIG).
  std::signal(SIGXFSZ, SIG_IGN);
  rlimit old{};
  getrlimit(RLIMIT_FSIZE, &old);
  struct stat st{};
  ASSERT_EQ(stat((dir_ + "/audit.log").c_str(), &st), 0);
  rlimit small = old;
  small.rlim_cur = static_cast<rlim_t>(st.st_size) + 10;
  setrlimit(RLIMIT_FSIZE, &small);
  AuditRecord r;
  r.set_action("policy.set");
  Result<uint64_t> failed = log->Append(r);
  setrlimit(RLIMIT_FSIZE, &old);
  ASSERT_FALSE(failed.ok()) << "a write that fails is an error: the action it audits is refused";
  EXPECT_NE(failed.status().message().find("audit log write failed"), std::string::npos) << failed.status().message();
  struct stat after{};
  ASSERT_EQ(stat((dir_ + "/audit.log").c_str(), &after), 0);
  EXPECT_EQ(after.st_size, st.st_size) << "issue #13: the half-written record is cut back";
  // With space again the log goes on right after the last whole record; nothing is damaged.
  Result<uint64_t> later = log->Append(r);
  ASSERT_TRUE(later.ok()) << later.status().ToString();
  EXPECT_EQ(*later, 10u) << "the failed record took no sequence number";
  ASSERT_TRUE(log->SignHead().ok());
  log.reset();
  VerifyReport rep = VerifyLog(dir_ + "/audit.log", dir_ + "/audit.heads", key_);
  EXPECT_TRUE(rep.error.empty()) << rep.error;
  EXPECT_EQ(rep.records, 11u);
  auto reopened = AuditLog::Open(Options());
  ASSERT_TRUE(reopened.ok());
  EXPECT_TRUE((*reopened)->healthy()) << (*reopened)->report().damage;
  EXPECT_FALSE(AuditLog::Open({"/proc/version", dir_ + "/x.heads", 100, SignerFor(key_)}).ok())
      << "a log that cannot be opened for writing is refused";
}

// `mailseal-audit verify`: exit 0 and a count for a good log; exit 1 naming the record when a
// byte is flipped; the exported heads catch a truncation the log's own files hide.
TEST_F(AuditLogTest, MailsealAuditVerifyCommand) {
  X509* cert = X509_new();
  X509_set_version(cert, 2);
  X509_gmtime_adj(X509_getm_notBefore(cert), 0);
  X509_gmtime_adj(X509_getm_notAfter(cert), 86400);
  X509_set_pubkey(cert, key_);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(cert), "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("audit"), -1, -1, 0);
  X509_set_issuer_name(cert, X509_get_subject_name(cert));
  X509_sign(cert, key_, EVP_sha256());
  FILE* f = std::fopen((dir_ + "/audit.crt").c_str(), "w");
  PEM_write_X509(f, cert);
  std::fclose(f);
  X509_free(cert);
  auto log = Fill(150);
  ASSERT_TRUE(log->SignHead().ok());
  log.reset();
  std::string cmd = StrCat(MAILSEAL_AUDIT_BIN, " verify ", dir_, "/audit.log ", dir_, "/audit.heads ", dir_,
                           "/audit.crt > ", dir_, "/out.txt 2>&1");
  EXPECT_EQ(WEXITSTATUS(std::system(cmd.c_str())), 0);
  EXPECT_NE(Read(dir_ + "/out.txt").find("verified: 150 records, 2 signed tree heads"), std::string::npos)
      << Read(dir_ + "/out.txt");
  std::string data = Read(dir_ + "/audit.log");
  Framed fr = ReadFramed(dir_ + "/audit.log", "MSAUDIT1\n");
  size_t at = 9;
  for (size_t i = 0; i < 77; ++i) at += 8 + fr.payloads[i].size();
  data[at + 8 + 3] ^= 0x20;   // inside record 77's payload
  Write(dir_ + "/audit.log", data);
  EXPECT_EQ(WEXITSTATUS(std::system(cmd.c_str())), 1);
  EXPECT_NE(Read(dir_ + "/out.txt").find("first bad record: 77"), std::string::npos) << Read(dir_ + "/out.txt");
  EXPECT_EQ(WEXITSTATUS(std::system(StrCat(MAILSEAL_AUDIT_BIN, " frobnicate >/dev/null 2>&1").c_str())), 2);
}

// Issue #13 item 2: a torn tail (a write that never returned) is cut back at Open and reported
// as such — by the daemon and by the verifier —, not as tampering; nothing acknowledged is lost.
TEST_F(AuditLogTest, ATornTailIsCutBackNotCalledTampering) {
  auto log = Fill(120);
  ASSERT_TRUE(log->SignHead().ok());
  log.reset();
  std::string whole = Read(dir_ + "/audit.log");
  for (size_t torn : {size_t{3}, size_t{8}, size_t{40}}) {   // part of a header, a header, header+payload
    std::string extra = std::string("\x30\x00\x00\x00\x11\x22\x33\x44", 8) + std::string(100, 'p');   // 0x30 = 48
    Write(dir_ + "/audit.log", whole + extra.substr(0, torn));
    VerifyReport v = VerifyLog(dir_ + "/audit.log", dir_ + "/audit.heads", key_);
    EXPECT_TRUE(v.error.empty()) << torn << ": " << v.error;
    EXPECT_EQ(v.torn_bytes, torn);
    EXPECT_EQ(v.records, 120u);
    auto reopened = AuditLog::Open(Options());
    ASSERT_TRUE(reopened.ok());
    EXPECT_TRUE((*reopened)->healthy()) << (*reopened)->report().damage;
    EXPECT_EQ((*reopened)->report().torn_bytes, torn);
    EXPECT_TRUE(Read(dir_ + "/audit.log") == whole) << "cut back to the last whole record";
  }
}

// Issue #13 item 3: the daemon checks the stored log against its signed heads at Open and does
// not extend a log that no longer matches them; the records stay readable, the alarm says why.
TEST_F(AuditLogTest, ALogThatNoLongerMatchesItsHeadsIsNotExtended) {
  Fill(150).reset();   // a head at 100
  std::string data = Read(dir_ + "/audit.log");
  RewriteRecord(50);
  auto tampered = AuditLog::Open(Options());
  ASSERT_TRUE(tampered.ok()) << "opened: the gateway starts and raises the alarm";
  EXPECT_FALSE((*tampered)->healthy());
  EXPECT_NE((*tampered)->report().damage.find("tampering"), std::string::npos) << (*tampered)->report().damage;
  AuditRecord next;
  next.set_action("x");
  EXPECT_FALSE((*tampered)->Append(next).ok()) << "never extended";
  EXPECT_FALSE((*tampered)->SignHead().ok()) << "never re-signed (that would launder the change)";
  Result<std::vector<AuditRecord>> readable = (*tampered)->ReadRecords(0, 10);
  EXPECT_TRUE(readable.ok()) << "its records can still be read";
  // Heads that are not the audit key's: a forged heads file over a forged log is caught when
  // the daemon can check signatures.
  Write(dir_ + "/audit.log", data);
  LogOptions o = Options();
  o.verify_head = [](const mailseal::v1::TreeHead&) -> Result<bool> { return false; };
  auto forged = AuditLog::Open(o);
  ASSERT_TRUE(forged.ok());
  EXPECT_FALSE((*forged)->healthy());
  EXPECT_NE((*forged)->report().damage.find("not signed by the audit key"), std::string::npos);
  o.verify_head = [this](const mailseal::v1::TreeHead& h) -> Result<bool> { return VerifyHeadSignature(h, key_); };
  auto good = AuditLog::Open(o);
  ASSERT_TRUE(good.ok());
  EXPECT_TRUE((*good)->healthy()) << (*good)->report().damage;
  EXPECT_EQ((*good)->report().heads_checked, 1u);
  EXPECT_EQ((*good)->report().uncovered, 50u) << "records 100..149 are after the last head";
}

TEST_F(AuditLogTest, TheVerifierNamesUncoveredRecordsAndRefusesALogWithoutHeads) {
  Fill(30, 0).reset();   // no head at all
  VerifyReport none = VerifyLog(dir_ + "/audit.log", dir_ + "/audit.heads", key_);
  EXPECT_NE(none.error.find("no signed tree head"), std::string::npos) << none.error;
  auto log = AuditLog::Open(Options(0));
  ASSERT_TRUE((*log)->SignHead().ok());
  AuditRecord r;
  r.set_action("after");
  ASSERT_TRUE((*log)->Append(r).ok());
  log->reset();
  VerifyReport some = VerifyLog(dir_ + "/audit.log", dir_ + "/audit.heads", key_);
  EXPECT_TRUE(some.error.empty()) << some.error;
  EXPECT_EQ(some.records, 31u);
  EXPECT_EQ(some.covered, 30u) << "the record after the last head is reported, not passed silently";
}

// Mail events go through the Recorder: many threads, batched appends (one sync per batch),
// nothing lost, heads still at every multiple of head_every, the log verifies.
TEST_F(AuditLogTest, RecorderBatchesMailEventsWithoutLosingAny) {
  auto log = AuditLog::Open(Options(100));
  ASSERT_TRUE(log.ok());
  {
    Recorder rec(log->get(), nullptr, 64);   // a small queue: producers must wait, not drop
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&rec, t] {
        for (int i = 0; i < 250; ++i) {
          AuditRecord r;
          r.set_actor("mailseald");
          r.set_action("mail.delivered");
          r.set_object(StrCat("q", t, "-", i));
          rec.Record(r);
        }
      });
    for (auto& th : threads) th.join();
    rec.Flush();
  }
  EXPECT_EQ((*log)->size(), 1000u);
  VerifyReport r = VerifyLog(dir_ + "/audit.log", dir_ + "/audit.heads", key_);
  EXPECT_TRUE(r.error.empty()) << r.error;
  EXPECT_EQ(r.heads_checked, 10u) << "a head at each multiple of 100, batches or not";
  std::set<std::string> objects;
  Result<std::vector<AuditRecord>> all = (*log)->ReadRecords(0, 2000);
  ASSERT_TRUE(all.ok());
  for (const AuditRecord& rec : *all) objects.insert(rec.object());
  EXPECT_EQ(objects.size(), 1000u) << "every event, once";
}

}  // namespace
}  // namespace mailseal::audit
