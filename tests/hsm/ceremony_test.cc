// Quorum key ceremonies (issue #3; CARD: "generation, backup and restore of keys under quorum
// (M of N custodians), each step recorded and signed").
#include <fstream>

#include "hsm/backup.h"
#include "hsm/ceremony.h"
#include "tests/hsm/custodians.h"
#include "tests/hsm/softhsm_fixture.h"

namespace mailseal::hsm {
namespace {
using mailseal::v1::CeremonyTranscript;

class CeremonyTest : public testing::SoftHsmTest {
 protected:
  void SetUp() override {
    SoftHsmTest::SetUp();
    if (HasFatalFailure()) return;
    people_ = testing::MakeCustodians(dir_, 5, /*mixed=*/true);  // RSA and P-256 custodians
    ASSERT_EQ(people_.size(), 5u);
    for (const auto& p : people_) records_.push_back(p.Record());
    Result<KeyPair> audit = GenerateKeyPair(*session_, {KeyType::kEcP256, Purpose::kAudit, "audit"});
    ASSERT_TRUE(audit.ok());
    audit_ = *audit;
    ASSERT_TRUE(GenerateKeyPair(*session_, {KeyType::kRsa2048, Purpose::kDsaSign, "dsa-sign", true}).ok());
  }
  std::string ApproveAs(int i, const std::string& statement) {
    EVP_PKEY* k = people_[static_cast<size_t>(i - 1)].Key();
    Result<std::string> sig = SignApproval(k, statement);
    EVP_PKEY_free(k);
    return sig.ok() ? *sig : "";
  }
  std::vector<testing::TestCustodian> people_;
  std::vector<mailseal::v1::CustodianRecord> records_;
  KeyPair audit_;
};

TEST_F(CeremonyTest, BackupCeremonyWithThreeApprovalsIsRecordedSignedAndVerifiesOffline) {
  Result<Ceremony> c = Ceremony::Begin("backup", 3, records_, "quarterly backup of gw-test");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  Result<std::string> statement = c->Propose("backup-keys", "keys: dsa-sign; shares: 3 of 5");
  ASSERT_TRUE(statement.ok());
  // Custodian 1 approves with plain openssl, as they would on their own machine.
  std::ofstream(dir_ + "/statement.txt", std::ios::binary) << *statement;
  int rc = 0;
  std::string out = Run(StrCat("openssl dgst -sha256 -sign ", people_[0].key_path, " -out ", dir_, "/a1.sig ", dir_, "/statement.txt"), &rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_TRUE(c->Approve("custodian-1", testing::Slurp(dir_ + "/a1.sig")).ok());
  EXPECT_TRUE(c->Approve("custodian-2", ApproveAs(2, *statement)).ok()) << "P-256 custodian";
  EXPECT_TRUE(c->Approve("custodian-4", ApproveAs(4, *statement)).ok());
  std::vector<Custodian> share_holders;
  for (const auto& p : people_) share_holders.push_back({p.name, p.cert_pem});
  BackupBundle bundle;
  Status ran = c->Execute([&]() -> Result<std::string> {
    Result<BackupBundle> b = CreateBackup(*session_, testing::kTokenLabel, {"dsa-sign"}, share_holders, 3);
    if (!b.ok()) return b.status();
    bundle = *b;
    return StrCat("backup ", b->backup.backup_id(), " with ", b->backup.keys_size(), " key(s)");
  });
  ASSERT_TRUE(ran.ok()) << ran.ToString();
  EXPECT_EQ(bundle.share_files.size(), 5u);
  Result<CeremonyTranscript> t = c->Finish(*session_, audit_);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_TRUE(VerifyTranscript(*t).ok()) << VerifyTranscript(*t).ToString();
  ASSERT_GE(t->steps_size(), 4);
  EXPECT_EQ(t->steps(2).action(), "result");
  EXPECT_NE(t->steps(2).detail().find(bundle.backup.backup_id()), std::string::npos);
  // Pinning the appliance's audit key: the right key passes, another is refused.
  EXPECT_TRUE(VerifyTranscript(*t, t->audit_public_key_der()).ok());
  EXPECT_EQ(VerifyTranscript(*t, "other key").code(), StatusCode::kPermissionDenied);
}

TEST_F(CeremonyTest, TooFewRepeatedForeignOrWrongApprovalsChangeNothing) {
  Result<Ceremony> c = Ceremony::Begin("destroy", 3, records_, "retire old DSA key");
  ASSERT_TRUE(c.ok());
  Result<std::string> st = c->Propose("destroy-key", "label: dsa-sign");
  ASSERT_TRUE(st.ok());
  EXPECT_TRUE(c->Approve("custodian-1", ApproveAs(1, *st)).ok());
  Status dup = c->Approve("custodian-1", ApproveAs(1, *st));
  EXPECT_EQ(dup.code(), StatusCode::kAlreadyExists);
  Status stranger = c->Approve("mallory", ApproveAs(2, *st));
  EXPECT_EQ(stranger.code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(stranger.message(), "step 1: mallory is not a registered custodian");
  Status wrong_key = c->Approve("custodian-3", ApproveAs(2, *st));
  EXPECT_EQ(wrong_key.code(), StatusCode::kPermissionDenied);
  Status other_text = c->Approve("custodian-3", ApproveAs(3, "mailseal ceremony approval v1\nsomething else\n"));
  EXPECT_EQ(other_text.code(), StatusCode::kPermissionDenied);
  EXPECT_TRUE(c->Approve("custodian-5", ApproveAs(5, *st)).ok());
  bool called = false;
  Status ran = c->Execute([&]() -> Result<std::string> { called = true; return std::string("destroyed"); });
  EXPECT_EQ(ran.code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(ran.message(), "step 1 (destroy-key) needs 3 approvals, has 2");
  EXPECT_FALSE(called) << "M-1 approvals never run the action";
  EXPECT_TRUE(FindKeyPair(*session_, "dsa-sign").ok()) << "the key is still there";
  Result<CeremonyTranscript> t = c->Finish(*session_, audit_);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->steps(2).action(), "refused") << "refusals are part of the record";
  EXPECT_TRUE(VerifyTranscript(*t).ok());
}

// Issue #20: a pending ceremony resumes from its stored transcript — with its approvals — and
// a stored transcript that was changed, belongs to other custodians or is not waiting is refused.
TEST_F(CeremonyTest, PendingCeremonyResumesFromItsTranscriptOnlyWhenIntact) {
  Result<Ceremony> c = Ceremony::Begin("destroy", 2, records_, "retire old DSA key");
  ASSERT_TRUE(c.ok());
  Result<std::string> st = c->Propose("destroy-key", "dsa-sign");
  ASSERT_TRUE(st.ok());
  ASSERT_TRUE(c->Approve("custodian-1", ApproveAs(1, *st)).ok());
  const CeremonyTranscript stored = c->transcript();

  Result<Ceremony> again = Ceremony::Resume(stored, 2, records_);
  ASSERT_TRUE(again.ok()) << again.status().message();
  EXPECT_EQ(again->Approve("custodian-1", ApproveAs(1, *st)).code(), StatusCode::kAlreadyExists) << "its approval kept";
  ASSERT_TRUE(again->Approve("custodian-2", ApproveAs(2, *st)).ok());
  bool ran = false;
  EXPECT_TRUE(again->Execute([&]() -> Result<std::string> { ran = true; return std::string("done"); }).ok());
  EXPECT_TRUE(ran);

  CeremonyTranscript changed = stored;
  changed.mutable_steps(1)->set_detail("dsa-other");
  EXPECT_EQ(Ceremony::Resume(changed, 2, records_).status().code(), StatusCode::kDataLoss) << "a changed step";
  EXPECT_EQ(Ceremony::Resume(stored, 3, records_).status().code(), StatusCode::kFailedPrecondition) << "another quorum";
  std::vector<mailseal::v1::CustodianRecord> others = records_;
  others[0] = records_[1];
  EXPECT_EQ(Ceremony::Resume(stored, 2, others).status().code(), StatusCode::kFailedPrecondition) << "other custodians";
  Result<Ceremony> done = Ceremony::Resume(stored, 2, records_);
  ASSERT_TRUE(done->Approve("custodian-3", ApproveAs(3, *st)).ok());
  EXPECT_EQ(Ceremony::Resume(done->transcript(), 2, records_).status().code(), StatusCode::kFailedPrecondition)
      << "a ceremony with its quorum is not waiting";
}

TEST_F(CeremonyTest, TamperedTranscriptsAreDetected) {
  Result<Ceremony> c = Ceremony::Begin("backup", 2, records_, "test");
  ASSERT_TRUE(c.ok());
  Result<std::string> st = c->Propose("backup-keys", "keys: dsa-sign");
  ASSERT_TRUE(c->Approve("custodian-2", ApproveAs(2, *st)).ok());
  ASSERT_TRUE(c->Approve("custodian-3", ApproveAs(3, *st)).ok());
  ASSERT_TRUE(c->Execute([]() -> Result<std::string> { return std::string("done"); }).ok());
  Result<CeremonyTranscript> good = c->Finish(*session_, audit_);
  ASSERT_TRUE(good.ok());
  ASSERT_TRUE(VerifyTranscript(*good).ok());

  CeremonyTranscript t = *good;
  t.mutable_steps(1)->set_detail("keys: dsa-sign, and every other key");
  EXPECT_EQ(VerifyTranscript(t).message(), "step 1 (backup-keys): hash does not match its content or its predecessor");

  t = *good;
  t.mutable_steps(1)->mutable_approvals()->RemoveLast();
  EXPECT_EQ(VerifyTranscript(t).message(), "step 1 ran with 1 of 2 approvals");

  t = *good;
  *t.mutable_steps(1)->add_approvals() = t.steps(1).approvals(0);
  EXPECT_EQ(VerifyTranscript(t).message(), "step 1: custodian-2 approved twice");

  t = *good;
  t.mutable_steps()->RemoveLast();  // drop the end: the audit signature no longer matches
  EXPECT_EQ(VerifyTranscript(t).message(), "the audit signature over the transcript does not verify");

  t = *good;
  std::string sig = t.audit_signature();
  sig[sig.size() / 2] ^= 1;
  t.set_audit_signature(sig);
  EXPECT_EQ(VerifyTranscript(t).code(), StatusCode::kDataLoss);

  // Offline: the serialized transcript verifies in a fresh parse, no HSM involved.
  std::string wire;
  good->SerializeToString(&wire);
  CeremonyTranscript parsed;
  ASSERT_TRUE(parsed.ParseFromString(wire));
  session_.reset();
  module_.reset();
  EXPECT_TRUE(VerifyTranscript(parsed).ok());
}

TEST_F(CeremonyTest, BadQuorumDefinitionsAreRefused) {
  EXPECT_EQ(Ceremony::Begin("backup", 1, records_, "").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Ceremony::Begin("backup", 6, records_, "").status().code(), StatusCode::kInvalidArgument);
  auto twice = records_;
  twice[1].set_name("custodian-1");
  EXPECT_EQ(Ceremony::Begin("backup", 3, twice, "").status().code(), StatusCode::kInvalidArgument);
  Result<Ceremony> c = Ceremony::Begin("backup", 3, records_, "");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->Approve("custodian-1", "x").code(), StatusCode::kFailedPrecondition) << "nothing proposed yet";
}

}  // namespace
}  // namespace mailseal::hsm

namespace mailseal::hsm {
namespace {

// DE-21 e-records recovery: an archived message's data key is opened only by a quorum.
TEST_F(CeremonyTest, OpeningAnArchiveKeyNeedsTheQuorum) {
  Result<CK_OBJECT_HANDLE> archive_kek = GenerateAesKey(*session_, "archive-kek", Purpose::kArchive);
  ASSERT_TRUE(archive_kek.ok());
  // At archive time: a fresh data key, wrapped; only the wrapped form is kept with the copy.
  Result<Secret> dk = NewDataKey();
  Result<std::string> wrapped = WrapDataKey(*session_, *archive_kek, *dk);
  ASSERT_TRUE(wrapped.ok());
  for (int approvals : {2, 3}) {
    Result<Ceremony> c = Ceremony::Begin("open-archive", 3, records_, "court order 2026/17");
    ASSERT_TRUE(c.ok());
    Result<std::string> st = c->Propose("open-archive-key", "archive record 660D75778EA4B20A89F402");
    for (int i = 1; i <= approvals; ++i) ASSERT_TRUE(c->Approve(StrCat("custodian-", i), ApproveAs(i, *st)).ok());
    bool opened = false;
    Status ran = c->Execute([&]() -> Result<std::string> {
      Result<Secret> key = UnwrapDataKey(*session_, *archive_kek, *wrapped);
      if (!key.ok()) return key.status();
      opened = key->Reveal() == dk->Reveal();
      return std::string("archive data key opened for record 660D75778EA4B20A89F402");
    });
    if (approvals == 2) {
      EXPECT_EQ(ran.code(), StatusCode::kPermissionDenied);
      EXPECT_FALSE(opened);
    } else {
      EXPECT_TRUE(ran.ok()) << ran.ToString();
      EXPECT_TRUE(opened);
    }
    Result<CeremonyTranscript> t = c->Finish(*session_, audit_);
    ASSERT_TRUE(t.ok());
    EXPECT_TRUE(VerifyTranscript(*t).ok());
  }
}

// Initialising an appliance: token init with SO and user PINs and the first keys, under quorum.
TEST_F(CeremonyTest, InitialiseCeremonyCreatesTokenAndFirstKeys) {
  Result<Ceremony> c = Ceremony::Begin("initialise", 2, records_, "appliance gw-2");
  ASSERT_TRUE(c.ok());
  Result<std::string> st = c->Propose("init-token", "label gw-2; keys: dsa-sign, dca-encrypt, audit, spool, archive");
  ASSERT_TRUE(c->Approve("custodian-2", ApproveAs(2, *st)).ok());
  ASSERT_TRUE(c->Approve("custodian-5", ApproveAs(5, *st)).ok());
  std::unique_ptr<Session> s2;
  KeyPair audit2;
  Status ran = c->Execute([&]() -> Result<std::string> {
    CK_SLOT_ID slot = InitToken("gw-2");
    auto s = Session::Open(module_.get(), slot);
    if (!s.ok()) return s.status();
    s2 = std::move(s.value());
    if (Status l = s2->Login(Secret(testing::kTestUserPin)); !l.ok()) return l;
    for (auto [type, purpose, label] : {std::tuple{KeyType::kRsa3072, Purpose::kDsaSign, "dsa-sign"},
                                        std::tuple{KeyType::kRsa3072, Purpose::kDcaEncrypt, "dca-encrypt"},
                                        std::tuple{KeyType::kEcP384, Purpose::kAudit, "audit"}}) {
      Result<KeyPair> k = GenerateKeyPair(*s2, {type, purpose, label, /*backup_wrappable=*/true});
      if (!k.ok()) return k.status();
      if (purpose == Purpose::kAudit) audit2 = *k;
    }
    for (auto [label, purpose] : {std::pair{"spool-kek", Purpose::kSpool}, std::pair{"archive-kek", Purpose::kArchive}}) {
      Result<CK_OBJECT_HANDLE> k = GenerateAesKey(*s2, label, purpose);
      if (!k.ok()) return k.status();
    }
    return std::string("token gw-2 initialised with 5 keys");
  });
  ASSERT_TRUE(ran.ok()) << ran.ToString();
  Result<CeremonyTranscript> t = c->Finish(*s2, audit2);  // signed by the new appliance's audit key
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_TRUE(VerifyTranscript(*t).ok());
  EXPECT_TRUE(FindKeyPair(*s2, "dsa-sign").ok());
  EXPECT_TRUE(FindSecretKey(*s2, "archive-kek").ok());
}

}  // namespace
}  // namespace mailseal::hsm
